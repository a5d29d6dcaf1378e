"""A loopback fake of the X API v2 endpoints that tweepy's Client calls.

``FakeXApi`` serves, on 127.0.0.1 and a free port:

- ``GET /2/users/by/username/<username>``: the user, an invalid-request 400
  for bad handles, and "not found" or "suspended" errors inside HTTP 200;
- ``GET /2/users/<id>/tweets``: reverse-chronological pages with
  ``pagination_token``, ``since_id``, ``until_id``, ``exclude=retweets``,
  the ``attachments.media_keys`` expansion and the 3,200-tweet cap, or an
  authorization error inside HTTP 200 for protected users;
- ``GET /2/tweets/search/recent``: ``from:<handle>`` queries over the last
  7 days, with ``has:images`` and ``-is:retweet``, paged with ``next_token``;
- ``GET /media/<name>.<ext>`` and ``/media/<name>?format=<ext>&name=<size>``:
  the image bytes, like ``pbs.twimg.com``, or 404 once deleted.

Every API response carries ``x-rate-limit-*`` headers. Each endpoint allows
``rate_limit`` calls per window before it returns 429, and
``rate_limit_next_calls`` forces 429s. Tweets come from the demo corpus
(``load_demo_account``) or ``add_tweet``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from stages.sources.archive import list_archive

DEMO_FOLDER = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "demo"
BEARER_TOKEN = "fake-bearer-token"
TIMELINE_CAP = 3200
RECENT_SEARCH_DAYS = 7
RATE_LIMIT_WINDOW_SECS = 15 * 60
PROBLEMS = "https://api.twitter.com/2/problems/"
HANDLE_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,15}$")
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass
class FakeMedia:
    """One attached media item. Only photos have an image file."""

    media_key: str
    kind: str  # "photo", "video" or "animated_gif"
    name: str  # the 15-character media name of pbs.twimg.com URLs
    extension: str
    path: Path | None = None
    width: int = 1200
    height: int = 1200
    deleted: bool = False


@dataclass
class FakeTweet:
    tweet_id: int
    author_id: int
    created_at: datetime
    text: str
    media: list[FakeMedia] = field(default_factory=list)
    retweeted_id: int | None = None


@dataclass
class FakeUser:
    user_id: int
    handle: str
    protected: bool = False
    suspended: bool = False
    tweets: list[FakeTweet] = field(default_factory=list)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None


class FakeXApi:
    """State and HTTP server of the fake; see the module docstring."""

    def __init__(self, *, bearer_token: str = BEARER_TOKEN, rate_limit: int = 900):
        self.bearer_token = bearer_token
        self.rate_limit = rate_limit
        self.users: dict[int, FakeUser] = {}
        self.media: dict[str, FakeMedia] = {}
        self.requests: list[RecordedRequest] = []
        self.lock = threading.RLock()
        self._forced_limits = 0
        self._forced_reset_secs = 60.0
        self._calls: dict[str, int] = {}
        self._window_reset = time.time() + RATE_LIMIT_WINDOW_SECS
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Server ---------------------------------------------------------------

    def start(self) -> str:
        """Start serving on 127.0.0.1 and a free port, and return the base URL."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        # A short poll interval keeps stop() fast, since shutdown() waits for it.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-x-api",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake X API is not running: call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # Test controls --------------------------------------------------------

    def add_user(
        self, handle: str, user_id: int, *, protected: bool = False
    ) -> FakeUser:
        with self.lock:
            user = FakeUser(user_id=user_id, handle=handle, protected=protected)
            self.users[user_id] = user
            return user

    def load_demo_account(
        self, handle: str, demo_folder: Path = DEMO_FOLDER
    ) -> FakeUser:
        """Add a demo account with every archived tweet and image file.

        Positions whose file is missing from the archive are dropped, so
        later photos of such a tweet move up one position.
        """
        listing = list_archive(demo_folder)
        records = [r for r in listing.tweets if r.handle.lower() == handle.lower()]
        if not records:
            raise ValueError(f"no tweets of @{handle} in {demo_folder}")
        user = self.add_user(records[0].handle, records[0].account_id)
        for record in records:
            by_position = {
                image.position: Path(image.location) for image in record.images
            }
            files = [by_position.get(p) for p in range(1, record.image_count + 1)]
            self.add_tweet(
                user.handle,
                [path for path in files if path is not None],
                tweet_id=record.tweet_id,
                created_at=datetime.fromtimestamp(record.created_at or 0, timezone.utc),
            )
        return user

    def add_tweet(
        self,
        handle: str,
        images: Sequence[Path],
        *,
        tweet_id: int | None = None,
        created_at: datetime | None = None,
        video_positions: Sequence[int] = (),
        retweeted_id: int | None = None,
        text: str = "new piece",
    ) -> FakeTweet:
        """Add a tweet to a user's timeline, by default newer than all others.

        ``video_positions`` (1-based) insert videos between the photos.
        """
        with self.lock:
            user = self.user_by_handle(handle)
            if tweet_id is None:
                newest = max((t.tweet_id for t in self._all_tweets()), default=0)
                tweet_id = newest + 1000
            tweet = FakeTweet(
                tweet_id=tweet_id,
                author_id=user.user_id,
                created_at=created_at or datetime.now(timezone.utc),
                text=text,
                retweeted_id=retweeted_id,
            )
            photos = iter(images)
            total = len(images) + len(video_positions)
            for position in range(1, total + 1):
                is_video = position in video_positions
                tweet.media.append(
                    self._new_media(tweet_id, position, is_video, photos)
                )
            user.tweets.append(tweet)
            user.tweets.sort(key=lambda t: t.tweet_id, reverse=True)
            return tweet

    def rate_limit_next_calls(self, count: int, *, reset_in_secs: float = 60.0) -> None:
        """Return HTTP 429 for the next ``count`` API calls."""
        with self.lock:
            self._forced_limits = count
            self._forced_reset_secs = reset_in_secs

    def set_protected(self, handle: str, protected: bool = True) -> None:
        with self.lock:
            self.user_by_handle(handle).protected = protected

    def set_suspended(self, handle: str, suspended: bool = True) -> None:
        with self.lock:
            self.user_by_handle(handle).suspended = suspended

    def delete_media(self, name: str) -> None:
        """Make the image URL of media ``name`` return 404."""
        with self.lock:
            self.media[name].deleted = True

    def user_by_handle(self, handle: str) -> FakeUser:
        for user in self.users.values():
            if user.handle.lower() == handle.lower():
                return user
        raise KeyError(handle)

    def api_requests(self, prefix: str = "/2/") -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    # Internals ------------------------------------------------------------

    def _all_tweets(self) -> Iterator[FakeTweet]:
        for user in self.users.values():
            yield from user.tweets

    def _new_media(self, tweet_id, position, is_video, photos) -> FakeMedia:
        media_id = tweet_id + position
        digest = hashlib.sha256(str(media_id).encode()).digest()
        name = base64.urlsafe_b64encode(digest).decode()[:15]
        if is_video:
            media = FakeMedia(f"7_{media_id}", "video", name, "mp4")
        else:
            path = next(photos)
            with Image.open(path) as image:
                width, height = image.size
            extension = "png" if path.suffix.lower() == ".png" else "jpg"
            media = FakeMedia(
                f"3_{media_id}", "photo", name, extension, path, width, height
            )
        self.media[name] = media
        return media

    def _take_rate_limit(self, endpoint: str) -> tuple[bool, dict[str, str]]:
        """Count one call and return (allowed, rate-limit headers)."""
        with self.lock:
            now = time.time()
            if now >= self._window_reset:
                self._window_reset = now + RATE_LIMIT_WINDOW_SECS
                self._calls.clear()
            if self._forced_limits > 0:
                self._forced_limits -= 1
                reset = int(now + self._forced_reset_secs)
                return False, _limit_headers(self.rate_limit, 0, reset)
            used = self._calls.get(endpoint, 0)
            allowed = used < self.rate_limit
            if allowed:
                used += 1
                self._calls[endpoint] = used
            remaining = max(self.rate_limit - used, 0)
            reset = int(self._window_reset)
            return allowed, _limit_headers(self.rate_limit, remaining, reset)


def _limit_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "x-rate-limit-limit": str(limit),
        "x-rate-limit-remaining": str(remaining),
        "x-rate-limit-reset": str(reset),
    }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeXApi

    def log_message(self, format, *args):  # noqa: A002 (signature fixed by http.server)
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        with self.fake.lock:
            self.fake.requests.append(
                RecordedRequest(
                    "GET", parts.path, query, self.headers.get("Authorization")
                )
            )
        if parts.path.startswith("/media/"):
            self._send_media(parts.path[len("/media/") :])
            return
        routes = (
            (r"/2/users/by/username/([^/]+)", "users/by/username", _user_by_username),
            (r"/2/users/(\d+)/tweets", "users/:id/tweets", _user_tweets),
            (r"/2/tweets/search/recent", "tweets/search/recent", _search_recent),
        )
        for pattern, endpoint, route in routes:
            match = re.fullmatch(pattern, parts.path)
            if match:
                self._send_api(endpoint, route, match.groups(), query)
                return
        self._send_json(404, {"title": "Not Found", "status": 404}, {})

    def _send_api(self, endpoint, route, arguments, query) -> None:
        expected = f"Bearer {self.fake.bearer_token}"
        if self.headers.get("Authorization") != expected:
            body = {"title": "Unauthorized", "type": "about:blank", "status": 401,
                    "detail": "Unauthorized"}
            self._send_json(401, body, {})
            return
        allowed, headers = self.fake._take_rate_limit(endpoint)
        if not allowed:
            body = {"title": "Too Many Requests", "detail": "Too Many Requests",
                    "type": "about:blank", "status": 429}
            self._send_json(429, body, headers)
            return
        with self.fake.lock:
            status, body = route(self.fake, *arguments, query)
        self._send_json(status, body, headers)

    def _send_json(self, status: int, body: dict, headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_media(self, file_name: str) -> None:
        name = re.split(r"[.:]", file_name, maxsplit=1)[0]
        with self.fake.lock:
            media = self.fake.media.get(name)
        if media is None or media.deleted or media.path is None:
            self.send_error(404)
            return
        data = media.path.read_bytes()
        self.send_response(200)
        content_type = CONTENT_TYPES.get(media.extension, "image/jpeg")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# Routes: each returns (HTTP status, JSON body) and runs under the fake's lock.


def _user_by_username(fake: FakeXApi, username: str, query: dict) -> tuple[int, dict]:
    if not HANDLE_PATTERN.match(username):
        return 400, {
            "errors": [{
                "parameters": {"username": [username]},
                "message": f"The `username` query parameter value [{username}] "
                "does not match ^[A-Za-z0-9_]{1,15}$",
            }],
            "title": "Invalid Request",
            "detail": "One or more parameters to your request was invalid.",
            "type": PROBLEMS + "invalid-request",
        }
    try:
        user = fake.user_by_handle(username)
    except KeyError:
        return 200, {"errors": [_not_found("username", username, "username")]}
    if user.suspended:
        return 200, {"errors": [_suspended("username", username)]}
    data = {
        "id": str(user.user_id),
        "name": user.handle.title(),
        "username": user.handle,
    }
    if "protected" in query.get("user.fields", "").split(","):
        data["protected"] = user.protected
    return 200, {"data": data}


def _user_tweets(fake: FakeXApi, user_id: str, query: dict) -> tuple[int, dict]:
    max_results = int(query.get("max_results", 10))
    if not 5 <= max_results <= 100:
        return 400, _invalid_request("max_results", "must be between 5 and 100")
    user = fake.users.get(int(user_id))
    if user is None:
        return 200, {"errors": [_not_found("id", user_id, "id")]}
    if user.suspended:
        return 200, {"errors": [_suspended("id", user_id)]}
    if user.protected:
        return 200, {"errors": [{
            "resource_id": user_id, "parameter": "id", "resource_type": "user",
            "section": "data", "title": "Authorization Error", "value": user_id,
            "detail": f"Sorry, you are not authorized to see the user with id: "
            f"[{user_id}].",
            "type": PROBLEMS + "not-authorized-for-resource",
        }]}
    tweets = user.tweets[:TIMELINE_CAP]
    if "retweets" in query.get("exclude", "").split(","):
        tweets = [t for t in tweets if t.retweeted_id is None]
    return 200, _page(fake, tweets, query, max_results, "pagination_token")


def _search_recent(fake: FakeXApi, query: dict) -> tuple[int, dict]:
    max_results = int(query.get("max_results", 10))
    if not 10 <= max_results <= 100:
        return 400, _invalid_request("max_results", "must be between 10 and 100")
    text = query.get("query", "")
    author = re.search(r"(?<![-\w])from:@?(\w+)", text)
    if author is None:
        return 400, _invalid_request("query", "this fake needs a from: operator")
    try:
        user = fake.user_by_handle(author.group(1))
    except KeyError:
        return 200, {"meta": {"result_count": 0}}
    if user.suspended or user.protected:
        return 200, {"meta": {"result_count": 0}}
    oldest = datetime.now(timezone.utc) - timedelta(days=RECENT_SEARCH_DAYS)
    tweets = [t for t in user.tweets if t.created_at >= oldest]
    if "-is:retweet" in text:
        tweets = [t for t in tweets if t.retweeted_id is None]
    if "has:images" in text:
        tweets = [t for t in tweets if any(m.kind == "photo" for m in t.media)]
    return 200, _page(fake, tweets, query, max_results, "next_token")


def _page(
    fake: FakeXApi,
    tweets: list[FakeTweet],
    query: dict,
    max_results: int,
    token_param: str,
) -> dict:
    """Build one page of ``tweets`` (newest first) after the request's filters."""
    if "since_id" in query:
        tweets = [t for t in tweets if t.tweet_id > int(query["since_id"])]
    if "until_id" in query:
        tweets = [t for t in tweets if t.tweet_id < int(query["until_id"])]
    token = query.get(token_param)
    if token:
        # A token names the id the previous page stopped before, so tweets
        # added meanwhile do not shift the pages.
        before = int(base64.urlsafe_b64decode(token.encode()).decode())
        tweets = [t for t in tweets if t.tweet_id < before]
    page, rest = tweets[:max_results], tweets[max_results:]
    if not page:
        return {"meta": {"result_count": 0}}

    media = {}
    for tweet in page:
        for item in tweet.media:
            media[item.media_key] = item
    # The real API neither orders nor groups includes.media by tweet.
    media_base = f"{fake.base_url}/media"
    media_json = [_media_json(m, media_base) for m in reversed(list(media.values()))]
    body = {
        "data": [_tweet_json(tweet) for tweet in page],
        "includes": {"media": media_json},
        "meta": {
            "result_count": len(page),
            "newest_id": str(page[0].tweet_id),
            "oldest_id": str(page[-1].tweet_id),
        },
    }
    if rest:
        next_token = base64.urlsafe_b64encode(str(page[-1].tweet_id).encode()).decode()
        body["meta"]["next_token"] = next_token
    return body


def _tweet_json(tweet: FakeTweet) -> dict:
    data = {
        "id": str(tweet.tweet_id),
        "text": tweet.text,
        "edit_history_tweet_ids": [str(tweet.tweet_id)],
        "created_at": tweet.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "author_id": str(tweet.author_id),
    }
    if tweet.media:
        data["attachments"] = {"media_keys": [m.media_key for m in tweet.media]}
    if tweet.retweeted_id is not None:
        data["text"] = "RT @someone: " + tweet.text
        reference = {"type": "retweeted", "id": str(tweet.retweeted_id)}
        data["referenced_tweets"] = [reference]
    return data


def _media_json(media: FakeMedia, media_base: str) -> dict:
    data = {
        "media_key": media.media_key,
        "type": media.kind,
        "width": media.width,
        "height": media.height,
    }
    if media.kind == "photo":
        data["url"] = f"{media_base}/{media.name}.{media.extension}"
        return data
    data["preview_image_url"] = f"{media_base}/{media.name}.jpg"
    data["variants"] = [
        {
            "bit_rate": 2176000,
            "content_type": "video/mp4",
            "url": f"{media_base}/{media.name}.mp4",
        }
    ]
    return data


def _not_found(parameter: str, value: str, label: str) -> dict:
    return {
        "value": value,
        "detail": f"Could not find user with {label}: [{value}].",
        "title": "Not Found Error",
        "resource_type": "user",
        "parameter": parameter,
        "resource_id": value,
        "type": PROBLEMS + "resource-not-found",
    }


def _suspended(parameter: str, value: str) -> dict:
    return {
        "detail": f"User has been suspended: [{value}].",
        "parameter": parameter,
        "resource_id": value,
        "resource_type": "user",
        "title": "Forbidden",
        "type": PROBLEMS + "resource-not-found",
        "value": value,
    }


def _invalid_request(parameter: str, message: str) -> dict:
    return {
        "errors": [
            {"parameters": {parameter: []}, "message": f"{parameter} {message}"}
        ],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": PROBLEMS + "invalid-request",
    }


@contextmanager
def running_fake_x_api(**options) -> Iterator[FakeXApi]:
    """Run a FakeXApi for the duration of a ``with`` block."""
    fake = FakeXApi(**options)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_x_api() -> Iterator[FakeXApi]:
    """A running FakeXApi with no users; ``fake_x_api.base_url`` is its URL."""
    with running_fake_x_api() as fake:
        yield fake

"""Tweet listings from the X API v2, through ``tweepy.Client``.

tweepy 4.17 sends every call to the fixed host ``https://api.twitter.com``
and has no base-URL option. ``XApiSource`` therefore mounts a requests
transport adapter on ``client.session`` for that prefix, which rewrites each
URL onto ``XApiConfig.base_url`` (``https://api.x.com`` in production, a
loopback fake in tests) and applies a timeout, since tweepy sets none.
Mounting adapters on a session is the extension point requests documents,
so tweepy itself is used unchanged.

Rate limits are read from the ``x-rate-limit-remaining`` and
``x-rate-limit-reset`` headers of every response by a session response
hook. A call whose endpoint has no requests left before its reset time, or
that receives HTTP 429, raises ``RateLimitedError`` with
``reset_at``. The source never sleeps, so the caller can reschedule.
"""

from __future__ import annotations

import logging
import os
import re
import time
from datetime import datetime
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import requests.adapters
import tweepy

from broker.config import Config, XApiConfig
from stages.sources.base import (
    AccountInfo,
    AccountState,
    AccountUnavailableError,
    ImageRef,
    RateLimitedError,
    SourceError,
    TweetPage,
    TweetRecord,
)

logger = logging.getLogger(__name__)

TWEEPY_HOST = "https://api.twitter.com"
HANDLE_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,15}$")
PAGE_SIZE = 100  # the maximum max_results of both timeline and search
DEFAULT_TIMEOUT_SECS = 15.0
# Used when a 429 response carries no x-rate-limit-reset header. X API rate
# limits are counted in 15-minute windows.
FALLBACK_RATE_LIMIT_SECS = 15 * 60

TWEET_FIELDS = ["created_at", "attachments", "author_id", "referenced_tweets"]
MEDIA_FIELDS = ["url", "type", "width", "height"]
EXPANSIONS = ["attachments.media_keys"]

# Endpoint names for rate-limit bookkeeping, keyed by a pattern of the path.
ENDPOINTS = (
    (re.compile(r"^/2/users/by/username/[^/]+$"), "users/by/username"),
    (re.compile(r"^/2/users/\d+/tweets$"), "users/:id/tweets"),
    (re.compile(r"^/2/tweets/search/recent$"), "tweets/search/recent"),
)


class BaseUrlAdapter(requests.adapters.HTTPAdapter):
    """A transport adapter that sends tweepy's requests to another base URL."""

    def __init__(self, base_url: str, timeout_secs: float):
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.timeout_secs = timeout_secs

    def send(self, request, **kwargs):
        if request.url.startswith(TWEEPY_HOST):
            request.url = self.base_url + request.url[len(TWEEPY_HOST) :]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_secs
        return super().send(request, **kwargs)


class _RedactBearerToken(logging.Filter):
    """Hide bearer tokens in tweepy's debug lines, which print request headers."""

    pattern = re.compile(r"Bearer [^'\"\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "Bearer " in record.msg:
            record.msg = self.pattern.sub("Bearer (redacted)", record.msg)
        return True


_REDACT_FILTER = _RedactBearerToken()


def original_image_url(url: str) -> str:
    """Return the ``name=orig`` form of a ``pbs.twimg.com`` media URL.

    ``https://pbs.twimg.com/media/NAME.jpg`` becomes
    ``https://pbs.twimg.com/media/NAME?format=jpg&name=orig``. URLs already
    in the query form get ``name=orig``. Only the path and query change,
    so loopback hosts in tests keep working.
    """
    parts = urlsplit(url)
    path = parts.path
    query = dict(parse_qsl(parts.query))
    folder, _, file_name = path.rpartition("/")
    if ":" in file_name:
        file_name = file_name.split(":", 1)[0]  # legacy ".jpg:large" suffix
    stem, dot, extension = file_name.rpartition(".")
    if dot and extension:
        path = f"{folder}/{stem}"
        query.setdefault("format", extension)
    else:
        path = f"{folder}/{file_name}"
    query["name"] = "orig"
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


def read_bearer_token(
    config: XApiConfig, environ: Mapping[str, str] | None = None
) -> str:
    """Return the bearer token from the configured variable or the config.

    Raises SourceError when neither is set.
    """
    environ = os.environ if environ is None else environ
    token = environ.get(config.bearer_token_env, "") or config.bearer_token
    if not token:
        raise SourceError(
            "X API bearer token missing: set the environment variable "
            f"{config.bearer_token_env} or [x_api] bearer_token"
        )
    return token


class XApiSource:
    """A tweet source over the X API v2 user timeline and recent search.

    The timeline endpoint only reaches an account's 3,200 most recent
    tweets, retweets included even though they are excluded from the
    results, so older tweets of prolific accounts cannot be listed this way.
    Recent search only covers the last 7 days.
    """

    name = "x_api"

    def __init__(
        self,
        config: XApiConfig,
        *,
        environ: Mapping[str, str] | None = None,
        timeout_secs: float = DEFAULT_TIMEOUT_SECS,
    ):
        token = read_bearer_token(config, environ)
        self.base_url = config.base_url
        self.client = tweepy.Client(
            bearer_token=token, return_type=dict, wait_on_rate_limit=False
        )
        adapter = BaseUrlAdapter(config.base_url, timeout_secs)
        self.client.session.mount(TWEEPY_HOST + "/", adapter)
        self.client.session.hooks["response"].append(self._record_rate_limit)
        # Endpoint name -> (requests remaining, reset time as unix time).
        self.rate_limits: dict[str, tuple[int, float]] = {}
        tweepy_logger = logging.getLogger("tweepy.client")
        if _REDACT_FILTER not in tweepy_logger.filters:
            tweepy_logger.addFilter(_REDACT_FILTER)

    @classmethod
    def from_config(cls, config: Config) -> XApiSource:
        return cls(config.x_api, timeout_secs=config.network.timeout_secs)

    # Accounts -------------------------------------------------------------

    def lookup_account(self, handle: str) -> AccountInfo:
        """Resolve a handle with ``GET /2/users/by/username/:username``.

        Returns protected accounts with state PROTECTED. Raises
        AccountUnavailableError for invalid, unknown and suspended handles.
        """
        handle = handle.lstrip("@")
        if not HANDLE_PATTERN.match(handle):
            raise AccountUnavailableError(
                f"invalid X handle {handle!r}: expected 1-15 letters, digits or _",
                state=AccountState.NOT_FOUND,
            )
        body = self._call(
            "users/by/username",
            self.client.get_user,
            username=handle,
            user_fields=["protected"],
        )
        user = body.get("data")
        if not isinstance(user, dict):
            raise self._account_error(body.get("errors"), f"@{handle}")
        try:
            account_id = int(user["id"])
            canonical = str(user["username"])
        except (KeyError, TypeError, ValueError) as error:
            raise SourceError(
                f"invalid X API user object for @{handle}: {error!r}",
                permanent=False,
            ) from error
        state = AccountState.PROTECTED if user.get("protected") else AccountState.ACTIVE
        return AccountInfo(account_id, canonical, state)

    # Listings -------------------------------------------------------------

    def list_pages(
        self, handle: str, since_tweet_id: int | None = None
    ) -> Iterator[TweetPage]:
        """Yield the account's timeline tweets with photos, page by page.

        Looks the handle up first and raises AccountUnavailableError for
        protected, suspended and unknown accounts.
        """
        account = self.lookup_account(handle)
        if account.state is AccountState.PROTECTED:
            raise AccountUnavailableError(
                f"@{account.handle} is protected: its tweets are not visible "
                "to the X API token",
                state=AccountState.PROTECTED,
            )
        yield from self.list_account_pages(account, since_tweet_id)

    def list_tweets(
        self, handle: str, since_tweet_id: int | None = None
    ) -> Iterator[TweetRecord]:
        for page in self.list_pages(handle, since_tweet_id):
            yield from page.tweets

    def list_account_pages(
        self, account: AccountInfo, since_tweet_id: int | None = None
    ) -> Iterator[TweetPage]:
        """Yield ``GET /2/users/:id/tweets`` pages, retweets excluded.

        Replies are kept, because artists often post artworks in threads.
        """
        params: dict[str, Any] = {
            "max_results": PAGE_SIZE,
            "exclude": ["retweets"],
            "expansions": EXPANSIONS,
            "media_fields": MEDIA_FIELDS,
            "tweet_fields": TWEET_FIELDS,
        }
        if since_tweet_id is not None:
            params["since_id"] = since_tweet_id
        yield from self._paginate(
            "users/:id/tweets",
            lambda **extra: self.client.get_users_tweets(
                account.account_id, **params, **extra
            ),
            "pagination_token",
            account,
        )

    def list_recent_pages(
        self, handle: str, since_tweet_id: int | None = None
    ) -> Iterator[TweetPage]:
        """Yield recent-search pages for ``from:<handle> has:images``.

        Covers the last 7 days only, retweets excluded. Tweets by other
        authors are dropped.
        """
        account = self.lookup_account(handle)
        params: dict[str, Any] = {
            "max_results": PAGE_SIZE,
            "expansions": EXPANSIONS,
            "media_fields": MEDIA_FIELDS,
            "tweet_fields": TWEET_FIELDS,
        }
        if since_tweet_id is not None:
            params["since_id"] = since_tweet_id
        query = f"from:{account.handle} has:images -is:retweet"
        yield from self._paginate(
            "tweets/search/recent",
            lambda **extra: self.client.search_recent_tweets(query, **params, **extra),
            "next_token",
            account,
        )

    def _paginate(self, endpoint, fetch, token_param, account) -> Iterator[TweetPage]:
        next_token = None
        while True:
            extra = {token_param: next_token} if next_token else {}
            body = self._call(endpoint, fetch, **extra)
            if "data" not in body and body.get("errors"):
                raise self._account_error(body["errors"], f"@{account.handle}")
            meta = body.get("meta") or {}
            next_token = meta.get("next_token")
            yield TweetPage(
                tweets=tuple(_records_from_body(body, account)),
                newest_id=_optional_int(meta.get("newest_id")),
                oldest_id=_optional_int(meta.get("oldest_id")),
                is_last=not next_token,
            )
            if not next_token:
                return

    # Calls and errors -----------------------------------------------------

    def _call(self, endpoint: str, method, **params) -> dict:
        """Call a tweepy method, mapping rate limits and errors to SourceError."""
        remaining, reset_at = self.rate_limits.get(endpoint, (1, 0.0))
        if remaining <= 0 and reset_at > time.time():
            raise RateLimitedError(
                f"X API {endpoint} has no requests left until {_clock(reset_at)}",
                reset_at=reset_at,
            )
        try:
            body = method(**params)
        except tweepy.TooManyRequests as error:
            reset_at = float(error.reset_time or time.time() + FALLBACK_RATE_LIMIT_SECS)
            logger.warning("X API %s rate-limited until %s", endpoint, _clock(reset_at))
            raise RateLimitedError(
                f"X API {endpoint} rate-limited until {_clock(reset_at)}",
                reset_at=reset_at,
            ) from error
        except tweepy.Unauthorized as error:
            raise SourceError(
                "X API rejected the bearer token (HTTP 401): check "
                "the configured token"
            ) from error
        except tweepy.Forbidden as error:
            raise SourceError(
                f"X API {endpoint} forbidden (HTTP 403): {error}"
            ) from error
        except tweepy.BadRequest as error:
            raise SourceError(f"X API {endpoint} invalid request: {error}") from error
        except tweepy.TwitterServerError as error:
            raise SourceError(
                f"X API {endpoint} server error: {error}", permanent=False
            ) from error
        except tweepy.HTTPException as error:
            raise SourceError(f"X API {endpoint} failed: {error}") from error
        except requests.RequestException as error:
            raise SourceError(
                f"X API {endpoint} request failed at {self.base_url}: {error}",
                permanent=False,
            ) from error
        except ValueError as error:
            # A 2xx body that is not JSON; requests' JSONDecodeError is a ValueError.
            raise SourceError(
                f"X API {endpoint} returned invalid JSON: {error}", permanent=False
            ) from error
        if not isinstance(body, dict):
            raise SourceError(f"X API {endpoint} returned {type(body).__name__}")
        return body

    def _record_rate_limit(self, response: requests.Response, *args, **kwargs):
        endpoint = _endpoint_name(urlsplit(response.url).path)
        remaining = response.headers.get("x-rate-limit-remaining")
        reset = response.headers.get("x-rate-limit-reset")
        if endpoint is None or remaining is None or reset is None:
            return response
        try:
            self.rate_limits[endpoint] = (int(remaining), float(reset))
        except ValueError:
            logger.warning(
                "invalid X API rate-limit headers on %s: remaining=%r reset=%r",
                endpoint,
                remaining,
                reset,
            )
        return response

    @staticmethod
    def _account_error(errors: object, who: str) -> SourceError:
        """Map the ``errors`` of a 200 response without ``data`` to an exception."""
        if not isinstance(errors, list):
            errors = []
        problems = [
            error
            for error in errors
            if isinstance(error, dict) and error.get("section", "data") == "data"
        ]
        for problem in problems:
            kind = str(problem.get("type", ""))
            detail = str(problem.get("detail", ""))
            if "suspended" in detail.lower():
                state = AccountState.SUSPENDED
            elif kind.endswith("/not-authorized-for-resource"):
                state = AccountState.PROTECTED
            elif kind.endswith("/resource-not-found"):
                state = AccountState.NOT_FOUND
            else:
                continue
            return AccountUnavailableError(
                f"X account {who} is {state.value.replace('_', ' ')}: {detail}",
                state=state,
            )
        details = "; ".join(str(p.get("detail") or p) for p in problems)
        return SourceError(f"X API returned no data for {who}: {details or errors}")


def _endpoint_name(path: str) -> str | None:
    for pattern, name in ENDPOINTS:
        if pattern.search(path):
            return name
    return None


def _records_from_body(body: dict, account: AccountInfo) -> Iterator[TweetRecord]:
    """Yield a record for each tweet of a page that carries photos."""
    media_list = (body.get("includes") or {}).get("media") or []
    media_by_key = {
        media["media_key"]: media
        for media in media_list
        if isinstance(media, dict) and "media_key" in media
    }
    for tweet in body.get("data") or ():
        try:
            record = _record_from_tweet(tweet, media_by_key, account)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            logger.warning(
                "skipped invalid X API tweet of @%s: %r (%r)",
                account.handle,
                tweet,
                error,
            )
            continue
        if record is not None:
            yield record


def _record_from_tweet(
    tweet: dict, media_by_key: dict, account: AccountInfo
) -> TweetRecord | None:
    references = tweet.get("referenced_tweets") or ()
    if any(reference.get("type") == "retweeted" for reference in references):
        return None
    author_id = _optional_int(tweet.get("author_id"))
    if author_id is not None and author_id != account.account_id:
        return None
    media_keys = (tweet.get("attachments") or {}).get("media_keys") or []
    images = []
    for position, key in enumerate(media_keys, start=1):
        media = media_by_key.get(key)
        if media is None or media.get("type") != "photo" or not media.get("url"):
            continue
        location = original_image_url(media["url"])
        images.append(ImageRef(position=position, location=location, is_file=False))
    if not images:
        return None
    return TweetRecord(
        tweet_id=int(tweet["id"]),
        account_id=account.account_id,
        handle=account.handle,
        created_at=_parse_created_at(tweet.get("created_at")),
        images=tuple(images),
        image_count=len(media_keys),
        source="x_api",
    )


def _parse_created_at(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _optional_int(value: object) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _clock(unix_time: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix_time))

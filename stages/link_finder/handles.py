"""X/Twitter handles: reading them from URLs and text, and validating them.

``parse_twitter_url`` reads one URL (profile, tweet, intent or ID link)
after unwrapping the sites' outgoing-link wrappers. ``handles_in_text``
finds handles in free text such as a bio. ``HandleList`` keeps valid
handles in discovery order, without case-insensitive duplicates and
without the sites' own house accounts.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from dataclasses import dataclass

logger = logging.getLogger(__name__)

HANDLE_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,15}$")
MAX_TWEET_ID = 2**63 - 1

TWITTER_HOSTS = frozenset({
    "twitter.com", "www.twitter.com", "mobile.twitter.com", "m.twitter.com",
    "x.com", "www.x.com", "mobile.x.com",
    "fxtwitter.com", "vxtwitter.com", "fixupx.com", "fixvx.com", "twittpr.com",
    "nitter.net", "xcancel.com", "nitter.poast.org", "nitter.privacydev.net",
})  # fmt: skip

# First path segments that are site pages, never accounts.
RESERVED_PATHS = frozenset({
    "home", "explore", "i", "intent", "share", "search", "hashtag", "messages",
    "notifications", "settings", "login", "logout", "signup", "compose", "account",
    "download", "privacy", "tos", "rules", "about", "jobs", "who_to_follow", "lists",
    "topics", "communities", "twitter", "x",
})  # fmt: skip

# The sites' own accounts, linked from every page footer.
HOUSE_ACCOUNTS = frozenset({
    "deviantart", "twitter", "x", "derpibooru", "furbooru", "patreon", "pixiv",
    "pixiv_en", "danbooru",
})  # fmt: skip

_TWEET_ID = re.compile(r"^[0-9]{1,19}$")
_STATUS_WORDS = ("status", "statuses")
_MENTION = re.compile(
    r"(?<![A-Za-z0-9_@/.])@([A-Za-z0-9_]{1,15})(?![A-Za-z0-9_@]|\.[A-Za-z])"
)
_LABELLED = re.compile(
    r"(?<![A-Za-z0-9])(?:twitter|x)\s*(?:[:：]|->|→)\s*"
    r"@?([A-Za-z0-9_]{1,15})(?![A-Za-z0-9_])",
    re.IGNORECASE,
)
_TWITTER_URL_IN_TEXT = re.compile(
    r"(?<![A-Za-z0-9.-])(?:https?://)?(?:[a-z0-9-]+\.)*"
    r"(?:twitter|x)\.com/[^\s\"'<>()]*",
    re.IGNORECASE,
)
URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+", re.IGNORECASE)


@dataclass(frozen=True)
class TwitterLink:
    """What a Twitter URL names: a handle, a tweet, a numeric user id, a photo."""

    handle: str | None = None
    tweet_id: str | None = None
    user_id: str | None = None
    photo: int | None = None


def is_valid_handle(handle: str) -> bool:
    """Check a handle against the X rule: 1 to 15 letters, digits or ``_``."""
    return bool(HANDLE_PATTERN.match(handle))


def unwrap_redirect(url: str) -> str:
    """Return the target of an outgoing-link wrapper, or ``url`` unchanged.

    Handles pixiv ``jump.php``, DeviantArt ``users/outgoing``, Tumblr
    ``t.umblr.com/redirect``, ``href.li`` and Wayback Machine URLs,
    nested up to three times.
    """
    for _ in range(3):
        target = _unwrap_once(url)
        if target is None:
            return url
        url = target
    return url


def _unwrap_once(url: str) -> str | None:
    split = urllib.parse.urlsplit(url)
    host = (split.hostname or "").lower()
    path = split.path
    if host.endswith("pixiv.net") and path.endswith("/jump.php"):
        query = urllib.parse.parse_qs(split.query)
        if "url" in query:
            return query["url"][0]
        return urllib.parse.unquote(split.query) or None
    if host.endswith("deviantart.com") and path == "/users/outgoing":
        return split.query or None
    if host == "t.umblr.com" and path == "/redirect":
        return urllib.parse.parse_qs(split.query).get("z", [None])[0]
    if host == "href.li":
        return split.query or None
    if host == "web.archive.org":
        match = re.match(r"^/web/[0-9a-z_]+/(.+)$", path)
        if match:
            return match.group(1) + (f"?{split.query}" if split.query else "")
    return None


def is_twitter_host(host: str) -> bool:
    """Check that a host is X/Twitter or one of its mirrors (exact match)."""
    host = host.lower().rstrip(".")
    return host in TWITTER_HOSTS or host.startswith("nitter.")


def parse_twitter_url(url: str) -> TwitterLink | None:
    """Read a handle, tweet id or user id from an X/Twitter URL.

    Returns None for other hosts, site pages (search, hashtags, intents
    to tweet, ``/i/`` pages) and invalid handles or ids.
    """
    url = unwrap_redirect(url.strip())
    if "://" not in url[:10]:
        url = "https://" + url
    split = urllib.parse.urlsplit(url)
    if not is_twitter_host(split.hostname or ""):
        return None
    path = split.path
    if path in ("", "/") and split.fragment.startswith("!/"):
        path = split.fragment[1:]  # Old "#!/handle" links.
    segments = [urllib.parse.unquote(s) for s in path.split("/") if s]
    query = urllib.parse.parse_qs(split.query)
    if not segments:
        return None
    first = segments[0].lower()
    if first == "i":
        return _parse_i_path(segments)
    if first == "intent" and len(segments) == 2 and segments[1] in ("user", "follow"):
        return _parse_intent(query)
    if first in RESERVED_PATHS:
        return None

    handle = segments[0].removeprefix("@")
    if not is_valid_handle(handle):
        return None
    if len(segments) >= 3 and segments[1].lower() in _STATUS_WORDS:
        tweet_id = _tweet_id(segments[2].split(".")[0])
        if tweet_id is None:
            return None
        photo = None
        if len(segments) >= 5 and segments[3] == "photo" and segments[4].isdigit():
            photo = int(segments[4])
        return TwitterLink(handle=handle, tweet_id=tweet_id, photo=photo)
    return TwitterLink(handle=handle)


def _tweet_id(text: str) -> str | None:
    if not _TWEET_ID.match(text) or int(text) == 0 or int(text) > MAX_TWEET_ID:
        return None
    return str(int(text))


def _parse_i_path(segments: list[str]) -> TwitterLink | None:
    rest = [s.lower() for s in segments[1:]]
    if len(rest) == 2 and rest[0] == "user" and rest[1].isdigit():
        return TwitterLink(user_id=rest[1])
    if len(rest) >= 2 and rest[-2] == "status" and rest[:-2] in ([], ["web"]):
        tweet_id = _tweet_id(rest[-1])
        return TwitterLink(tweet_id=tweet_id) if tweet_id else None
    return None


def _parse_intent(query: dict[str, list[str]]) -> TwitterLink | None:
    screen_name = query.get("screen_name", [""])[0].removeprefix("@")
    if is_valid_handle(screen_name):
        return TwitterLink(handle=screen_name)
    user_id = query.get("user_id", [""])[0]
    if user_id.isdigit():
        return TwitterLink(user_id=user_id)
    return None


def handles_in_text(text: str) -> list[str]:
    """Find handles in free text: Twitter URLs, ``@handle``, ``twitter: handle``.

    The order is the order of appearance. E-mail addresses and
    ``#hashtags`` are not handles.
    """
    found: list[tuple[int, str]] = []
    for match in _TWITTER_URL_IN_TEXT.finditer(text):
        link = parse_twitter_url(match.group(0))
        if link is not None and link.handle:
            found.append((match.start(), link.handle))
    for pattern in (_MENTION, _LABELLED):
        for match in pattern.finditer(text):
            found.append((match.start(), match.group(1)))
    found.sort(key=lambda item: item[0])
    return [handle for _position, handle in found]


class HandleList:
    """Valid handles in discovery order, de-duplicated case-insensitively."""

    def __init__(self, house_accounts: frozenset[str] = HOUSE_ACCOUNTS):
        self._house_accounts = house_accounts
        self._seen: set[str] = set()
        self.handles: list[str] = []

    def add(self, handle: str) -> bool:
        """Add one handle; return False when invalid, a house account or known."""
        handle = handle.strip().removeprefix("@")
        key = handle.lower()
        if not is_valid_handle(handle) or key in self._house_accounts:
            return False
        if key in self._seen:
            return False
        self._seen.add(key)
        self.handles.append(handle)
        return True

    def __len__(self) -> int:
        return len(self.handles)

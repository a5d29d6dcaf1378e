"""Parsing of user-given URLs, and the canonical forms used as keys.

Nothing here touches the network. ``clean_url`` turns what a user typed
into ``UrlParts`` or raises a LinkFinderError with an input code.
``canonical_url`` gives one spelling for URLs that name the same
resource, so they can be compared and used as keys.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from dataclasses import dataclass

import idna

from .errors import NOT_AN_URL, URL_TOO_LONG, LinkFinderError

logger = logging.getLogger(__name__)

# Characters users paste around URLs: whitespace and zero-width marks.
_TRIM_CHARS = " \t\r\n\f\v\u00a0\u200b\u200c\u200d\u2060\ufeff"
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_HOST_NAME = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
                        r"[a-z][a-z0-9-]{0,62}$")
_SCHEMELESS_START = re.compile(r"^[A-Za-z0-9.-]+\.[A-Za-z]{2,}(?:[:/]|$)")
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986 unreserved and sub-delimiter characters, plus ":@/" for paths and
# "?" for queries: these stay as they are, everything else is encoded.
_PATH_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/"
)
_QUERY_SAFE = _PATH_SAFE | {"?"}
DEFAULT_PORTS = {"http": 80, "https": 443}
_TWIMG_MEDIA = re.compile(r"^/media/([A-Za-z0-9_-]+)(?:\.[a-z0-9]+)?(?::[a-z0-9]+)?$")


@dataclass(frozen=True)
class ArtworkKey:
    """One artwork page (0-based) on one site; ``str()`` gives the request key."""

    site: str
    artwork_id: str
    page: int = 0

    def __str__(self) -> str:
        return f"{self.site}:{self.artwork_id}:{self.page}"


@dataclass(frozen=True)
class UrlParts:
    """A URL split into lower-case host, path, decoded query and fragment."""

    url: str
    scheme: str
    host: str
    path: str
    query: dict[str, list[str]]
    fragment: str

    def segments(self) -> list[str]:
        """Return the non-empty path segments, percent-decoded."""
        return [urllib.parse.unquote(s) for s in self.path.split("/") if s]

    def first(self, name: str) -> str | None:
        """Return the first value of a query parameter, or None."""
        values = self.query.get(name)
        return values[0] if values else None


def clean_url(text: str, max_chars: int = 256) -> UrlParts:
    """Trim a user-given URL, check its shape and split it.

    A missing scheme is taken as https. Raises LinkFinderError with
    ``URL_TOO_LONG`` or ``NOT_AN_URL``.
    """
    if not isinstance(text, str):
        message = f"URL must be a string, got {type(text).__name__}"
        raise LinkFinderError(NOT_AN_URL, message)
    if len(text) > max_chars:
        text = text.strip(_TRIM_CHARS)
    if len(text) > max_chars:
        raise LinkFinderError(
            URL_TOO_LONG,
            f"URL is {len(text)} characters long, over the limit of {max_chars}",
        )
    url = text.strip(_TRIM_CHARS)
    if _FORBIDDEN_CHARS.search(url):
        message = f"URL contains spaces or control characters: {url!r}"
        raise LinkFinderError(NOT_AN_URL, message)
    if _SCHEMELESS_START.match(url):
        url = "https://" + url

    split = urllib.parse.urlsplit(url)
    scheme = split.scheme.lower()
    if scheme not in DEFAULT_PORTS or not url.lower().startswith(scheme + "://"):
        message = f"URL must start with http:// or https://: {url!r}"
        raise LinkFinderError(NOT_AN_URL, message)
    if "@" in split.netloc:
        raise LinkFinderError(NOT_AN_URL, f"URL must not contain user info: {url!r}")
    host = _normalise_host(split.hostname or "")
    if host is None:
        raise LinkFinderError(NOT_AN_URL, f"URL has no valid host name: {url!r}")
    query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
    return UrlParts(url, scheme, host, split.path or "/", query, split.fragment)


def _normalise_host(host: str) -> str | None:
    host = host.rstrip(".")
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            return None
    host = host.lower()
    return host if _HOST_NAME.match(host) else None


def canonical_url(url: str) -> str:
    """Return one spelling of ``url`` for comparison and keys.

    Lower-cases scheme and host, encodes an international host as
    punycode, drops the default port, the fragment and dot segments, and
    percent-encodes the path and query exactly once with upper-case hex.
    Existing escapes are kept, so ``%2525`` stays double-encoded. Raises
    ValueError for a URL without a valid host.
    """
    split = urllib.parse.urlsplit(url.strip(_TRIM_CHARS))
    scheme = split.scheme.lower()
    host = _normalise_host(split.hostname or "")
    if host is None:
        raise ValueError(f"URL has no valid host name: {url!r}")
    netloc = host
    if split.port is not None and split.port != DEFAULT_PORTS.get(scheme):
        netloc = f"{host}:{split.port}"
    path = _encode_once(_remove_dot_segments(split.path or "/"), _PATH_SAFE)
    query = _encode_once(split.query, _QUERY_SAFE)
    return urllib.parse.urlunsplit((scheme, netloc, path, query, ""))


def _encode_once(text: str, safe: frozenset[str]) -> str:
    parts = []
    index = 0
    while index < len(text):
        escape = _PERCENT_ESCAPE.match(text, index)
        if escape:
            parts.append("%" + escape.group(1).upper())
            index += 3
            continue
        char = text[index]
        if char in safe:
            parts.append(char)
        else:
            parts.append(urllib.parse.quote(char, safe=""))
        index += 1
    return "".join(parts)


def _remove_dot_segments(path: str) -> str:
    """Resolve ``.`` and ``..`` segments as RFC 3986 section 5.2.4 does."""
    output: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        is_last = index == len(segments) - 1
        if segment == ".":
            if is_last:
                output.append("")
        elif segment == "..":
            if len(output) > 1:
                output.pop()
            if is_last:
                output.append("")
        else:
            output.append(segment)
    result = "/".join(output)
    return result if result.startswith("/") else "/" + result


def twimg_media_name(url: str) -> str | None:
    """Return the media name of a pbs.twimg.com image URL, or None.

    Every rendition (``:orig``, ``?name=small``, ``.png``) of one image
    gives the same name.
    """
    split = urllib.parse.urlsplit(url.strip(_TRIM_CHARS))
    if (split.hostname or "").lower() != "pbs.twimg.com":
        return None
    match = _TWIMG_MEDIA.match(split.path)
    return match.group(1) if match else None

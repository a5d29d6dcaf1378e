"""The interface every site module implements, and helpers they share."""

from __future__ import annotations

import datetime
import json
import logging
import re
from dataclasses import dataclass
from typing import ClassVar

from broker.config import SitesConfig
from stages.http_client import FetchError, HttpStatusError, SafeHttpClient

from ..errors import SITE_ERROR, LinkFinderError
from ..linkinbio import LinkFollower
from ..urls import ArtworkKey, UrlParts

logger = logging.getLogger(__name__)

MAX_API_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class SiteResult:
    """What a site returns about one artwork; its handles go to the follower."""

    image_urls: list[str]
    published_at: float | None
    artist: str


@dataclass
class FinderContext:
    """The configuration, client and handle collector of one lookup."""

    sites: SitesConfig
    http: SafeHttpClient
    follower: LinkFollower


class Site:
    """One artwork site: which URLs it owns and how to read an artwork.

    ``host_pattern`` matches every host the site serves pages on;
    ``example_url`` is an artwork URL that ``parse_key`` must accept.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    host_pattern: ClassVar[re.Pattern[str]]
    example_url: ClassVar[str]

    def owns_host(self, host: str) -> bool:
        return bool(self.host_pattern.match(host))

    def parse_key(self, parts: UrlParts) -> ArtworkKey | None:
        """Return the artwork a URL of this site names, or None."""
        raise NotImplementedError

    def find(self, key: ArtworkKey, context: FinderContext) -> SiteResult:
        """Fetch the artwork, give its handles and links to the follower.

        Raises LinkFinderError (NOT_AN_ARTWORK_PAGE when the site has no
        such artwork, SITE_ERROR when the site fails).
        """
        raise NotImplementedError

    def read_profile(self, url: str, context: FinderContext) -> list[str] | None:
        """Return the outgoing links of a profile page of this site.

        Returns None when the URL is not a page this site module reads.
        """
        return None

    def base_url(self, context: FinderContext) -> str:
        return getattr(context.sites, self.name).rstrip("/")

    def site_error(self, url: str, error: Exception) -> LinkFinderError:
        """Build the SITE_ERROR for a failed request, and log it."""
        logger.warning("%s request failed: %s", self.label, error)
        message = f"{self.label} request {url} failed: {error}"
        return LinkFinderError(SITE_ERROR, message)


def fetch_json(context: FinderContext, url: str, **options) -> object:
    """Fetch JSON; an HTTP error status is raised with its body attached."""
    return context.http.get_json(url, max_bytes=MAX_API_BYTES, **options)


def error_json(error: HttpStatusError) -> object | None:
    """Decode the JSON body of an HTTP error, or return None."""
    try:
        return json.loads(error.content) if error.content.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def parse_timestamp(text: object) -> float | None:
    """Parse an ISO 8601 date to unix time; a date without offset is UTC."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        logger.info("invalid date %r", text)
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def as_dict(value: object) -> dict:
    """Return ``value`` when it is a dict, else an empty dict (PHP's ``[]``)."""
    return value if isinstance(value, dict) else {}


__all__ = [
    "FetchError",
    "FinderContext",
    "HttpStatusError",
    "Site",
    "SiteResult",
    "as_dict",
    "error_json",
    "fetch_json",
    "parse_timestamp",
]

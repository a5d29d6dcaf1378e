"""The Link Finder: from an artwork page URL to the artist's X handles.

``parse_artwork_url`` finds, without the network, which artwork a URL
names. ``find_artwork`` fetches it from its site (through the base URLs
of ``SitesConfig``) and returns the image URLs to search, the date and
the handles found on the artwork, the artist's profiles and the
link-in-bio pages they link to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from broker.config import SitesConfig
from stages.http_client import SafeHttpClient

from .errors import (
    NO_TWITTER_ACCOUNT_FOUND,
    NOT_AN_ARTWORK_PAGE,
    UNSUPPORTED_WEBSITE,
    LinkFinderError,
)
from .handles import is_twitter_host
from .linkinbio import LinkFollower, LinkInBioConfig
from .sites import SITES, FinderContext, site_for_host, site_named
from .urls import ArtworkKey, clean_url

logger = logging.getLogger(__name__)

SUPPORTED_SITES = "DeviantArt, Pixiv, Danbooru, Derpibooru or Furbooru"


@dataclass(frozen=True)
class ArtworkInfo:
    """What the Link Finder found about one artwork."""

    key: ArtworkKey
    image_urls: list[str]  # best first
    published_at: float | None  # unix time
    artist: str
    handles: list[str]  # valid, de-duplicated case-insensitively, discovery order


def parse_artwork_url(url: str, max_chars: int = 256) -> ArtworkKey:
    """Return the artwork a URL names, without using the network.

    Raises LinkFinderError with code NOT_AN_URL, URL_TOO_LONG,
    UNSUPPORTED_WEBSITE or NOT_AN_ARTWORK_PAGE.
    """
    parts = clean_url(url, max_chars)
    site = site_for_host(parts.host)
    if site is None:
        if is_twitter_host(parts.host):
            raise LinkFinderError(
                NOT_AN_ARTWORK_PAGE,
                f"{parts.host} pages are not artwork pages; give the artwork's page "
                f"on {SUPPORTED_SITES}",
            )
        raise LinkFinderError(
            UNSUPPORTED_WEBSITE,
            f"{parts.host} is not a supported website; use a page on {SUPPORTED_SITES}",
        )
    key = site.parse_key(parts)
    if key is None:
        raise LinkFinderError(
            NOT_AN_ARTWORK_PAGE,
            f"{parts.url} is a {site.label} page but not an artwork page; "
            f"example of an artwork page: {site.example_url}",
        )
    return key


def find_artwork(
    url: str,
    sites: SitesConfig,
    http: SafeHttpClient,
    *,
    link_in_bio: LinkInBioConfig | None = None,
    max_chars: int = 256,
) -> ArtworkInfo:
    """Identify the artwork of ``url``, fetch it and collect the artist's handles.

    ``link_in_bio`` gives the URLs of the link-in-bio services (real
    hosts by default). Raises LinkFinderError: the codes of
    ``parse_artwork_url``, NO_TWITTER_ACCOUNT_FOUND, or SITE_ERROR when a
    site fails.
    """
    key = parse_artwork_url(url, max_chars)
    site = site_named(key.site)
    context = FinderContext(sites, http, follower=None)  # type: ignore[arg-type]
    readers = [_profile_reader(other, context) for other in SITES]
    context.follower = LinkFollower(http, link_in_bio or LinkInBioConfig(), readers)

    logger.info("finding artwork %s", key)
    result = site.find(key, context)
    handles = list(context.follower.handles.handles)
    if not handles:
        raise LinkFinderError(
            NO_TWITTER_ACCOUNT_FOUND,
            f"no X/Twitter account found for {site.label} artwork {key.artwork_id} "
            f"by {result.artist or 'an unknown artist'}",
        )
    logger.info("artwork %s: %d handles, %d image URLs", key, len(handles),
                len(result.image_urls))
    return ArtworkInfo(
        key=key,
        image_urls=list(result.image_urls),
        published_at=result.published_at,
        artist=result.artist,
        handles=handles,
    )


def _profile_reader(site, context: FinderContext):
    return lambda url: site.read_profile(url, context)


__all__ = [
    "ArtworkInfo",
    "ArtworkKey",
    "LinkFinderError",
    "LinkInBioConfig",
    "find_artwork",
    "parse_artwork_url",
]

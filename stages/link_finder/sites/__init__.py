"""The registry of artwork sites, in alphabetical order of their names."""

from __future__ import annotations

from .base import FinderContext, Site, SiteResult
from .danbooru import DanbooruSite
from .derpibooru import DerpibooruSite
from .deviantart import DeviantArtSite
from .furbooru import FurbooruSite
from .pixiv import PixivSite

SITES: tuple[Site, ...] = (
    DanbooruSite(),
    DerpibooruSite(),
    DeviantArtSite(),
    FurbooruSite(),
    PixivSite(),
)


def site_for_host(host: str) -> Site | None:
    """Return the site that serves pages on ``host``, or None."""
    for site in SITES:
        if site.owns_host(host):
            return site
    return None


def site_named(name: str) -> Site:
    """Return the registered site called ``name``; raise KeyError if none is."""
    for site in SITES:
        if site.name == name:
            return site
    raise KeyError(f"no site named {name!r}; known: {', '.join(s.name for s in SITES)}")


__all__ = [
    "SITES",
    "FinderContext",
    "Site",
    "SiteResult",
    "site_for_host",
    "site_named",
]

"""Following an artist's links to link-in-bio pages to find more handles.

``LinkFollower`` collects handles for one artwork. Each URL it is given
is unwrapped from outgoing-link wrappers, then read as a Twitter URL, or
fetched when it is a link-in-bio page (linktr.ee, lit.link, potofu,
carrd, bio.link) or a profile that a site module can read. Links found on
a fetched page are followed in turn, at most ``MAX_HOPS`` fetches away
from the artwork, and no page is fetched twice.
"""

from __future__ import annotations

import html
import json
import logging
import re
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Callable, Iterable, Sequence

from broker.config import LinkInBioConfig
from stages.http_client import FetchError, HttpStatusError, SafeHttpClient

from .handles import URL_IN_TEXT, HandleList, handles_in_text, parse_twitter_url
from .handles import unwrap_redirect

logger = logging.getLogger(__name__)

MAX_HOPS = 2
MAX_PAGE_BYTES = 4 * 1024 * 1024

_NEXT_DATA = re.compile(
    r'<script[^>]*id="__NEXT_DATA__"[^>]*>(.*?)</script>', re.DOTALL | re.IGNORECASE
)


@dataclass(frozen=True)
class LinkInBioPage:
    """A link-in-bio page named by a URL."""

    service: str
    name: str
    domain: str = ""

    def fetch_url(self, config: LinkInBioConfig) -> str:
        template = getattr(config, self.service)
        return template.format(name=urllib.parse.quote(self.name), domain=self.domain)


# (service, host pattern, path pattern whose group 1 is the user name)
_SERVICES = tuple(
    (service, re.compile(host), re.compile(path))
    for service, host, path in (
        ("linktree", r"^(?:www\.)?linktr\.ee$", r"^/([A-Za-z0-9_.]+)/?$"),
        ("litlink", r"^(?:www\.)?lit\.link$", r"^/(?:[a-z]{2}/)?(\w+)/?$"),
        ("potofu", r"^(?:www\.)?potofu\.(?:me|jp)$", r"^/([\w-]+)/?$"),
        ("biolink", r"^(?:www\.)?bio\.link$", r"^/([\w.-]+)/?$"),
    )
)
_CARRD_HOST = re.compile(r"^([a-z0-9-]{3,})\.(carrd\.co|crd\.co|uwu\.ai)$")


def match_link_in_bio(url: str) -> LinkInBioPage | None:
    """Return the link-in-bio page a URL names, or None."""
    split = urllib.parse.urlsplit(url)
    host = (split.hostname or "").lower().rstrip(".")
    carrd = _CARRD_HOST.match(host)
    if carrd and carrd.group(1) != "www":
        return LinkInBioPage("carrd", carrd.group(1), carrd.group(2))
    for service, host_pattern, path_pattern in _SERVICES:
        if host_pattern.match(host):
            match = path_pattern.match(split.path or "/")
            return LinkInBioPage(service, match.group(1)) if match else None
    return None


class _AnchorParser(HTMLParser):
    """Collect ``<a href>`` values, optionally only inside one element id."""

    def __init__(self, region_id: str | None):
        super().__init__(convert_charrefs=True)
        self._region_id = region_id
        self._depth = 0 if region_id else 1
        self.links: list[str] = []
        self.region_found = region_id is None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if self._depth > 0 and tag not in _VOID_TAGS:
            self._depth += 1
        elif self._region_id and attributes.get("id") == self._region_id:
            self._depth = 1
            self.region_found = True
        if self._depth > 0 and tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"])

    def handle_endtag(self, tag):
        if self._region_id and self._depth > 0 and tag not in _VOID_TAGS:
            self._depth -= 1


_VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input",
                        "link", "meta", "source", "track", "wbr"})


def page_links(
    page: str, base_url: str, region_id: str | None = None
) -> list[str] | None:
    """Return the absolute ``<a href>`` URLs of an HTML page.

    With ``region_id``, only links inside the element of that id count,
    and None is returned when the page has no such element.
    """
    parser = _AnchorParser(region_id)
    parser.feed(page)
    parser.close()
    if not parser.region_found:
        return None
    return [urllib.parse.urljoin(base_url, link) for link in parser.links]


def next_data(page: str) -> dict | None:
    """Return the parsed ``__NEXT_DATA__`` JSON of a Next.js page, or None."""
    match = _NEXT_DATA.search(page)
    if not match:
        return None
    try:
        data = json.loads(match.group(1))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _urls_of(items: object, *keys: str) -> list[str]:
    """Return the string values at ``keys`` of every dict in a list."""
    urls = []
    for item in items if isinstance(items, list) else []:
        value = item
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            urls.append(value)
    return urls


def _linktree_links(page: str, _url: str) -> list[str]:
    props = (next_data(page) or {}).get("props", {}).get("pageProps", {})
    account = props.get("account") or {}
    urls = []
    for source in (account, props):
        urls += _urls_of(source.get("links"), "url")
        urls += _urls_of(source.get("socialLinks"), "url")
    # TODO: links gated as sensitive content carry url null here; reading
    # them needs a POST to linktr.ee's gate API, which this client lacks.
    return urls


def _litlink_links(page: str, url: str) -> list[str]:
    profile = (next_data(page) or {}).get("props", {}).get("pageProps", {})
    profile = profile.get("profile") or {}
    urls = _urls_of(profile.get("snsIconLinks"), "url")
    for link in profile.get("profileLinks") or []:
        button = link.get("buttonLink") if isinstance(link, dict) else None
        if isinstance(button, dict) and button.get("urlType") != "email":
            urls += _urls_of([button], "url")
    if isinstance(profile.get("profileText"), str):
        urls += URL_IN_TEXT.findall(profile["profileText"])
    if not profile:
        # Newer pages stream the profile as escaped strings in script chunks.
        unescaped = page.replace("\\/", "/").replace('\\"', '"')
        urls += URL_IN_TEXT.findall(unescaped)
    return urls + (page_links(page, url) or [])


def _potofu_links(page: str, _url: str) -> list[str]:
    try:
        data = json.loads(page)
    except json.JSONDecodeError:
        return []
    user = data.get("user") if isinstance(data, dict) else None
    return _urls_of((user or {}).get("links"), "url")


def _anchor_links(page: str, url: str) -> list[str]:
    return page_links(page, url) or []


_PAGE_READERS: dict[str, Callable[[str, str], list[str]]] = {
    "biolink": _anchor_links,
    "carrd": _anchor_links,
    "linktree": _linktree_links,
    "litlink": _litlink_links,
    "potofu": _potofu_links,
}

# A profile reader returns the outgoing links of a site profile or artwork
# page, or None when the URL is not one it reads.
ProfileReader = Callable[[str], "list[str] | None"]


class LinkFollower:
    """Collect handles from URLs and text, following links up to MAX_HOPS."""

    def __init__(
        self,
        http: SafeHttpClient,
        config: LinkInBioConfig,
        profile_readers: Sequence[ProfileReader] = (),
    ):
        self._http = http
        self._config = config
        self._profile_readers = profile_readers
        self._visited: set[str] = set()
        self.handles = HandleList()

    def add_handle(self, handle: str | None) -> None:
        if handle:
            self.handles.add(handle)

    def add_text(self, text: str | None, hop: int = 0) -> None:
        """Take handles and links from free text found ``hop`` fetches away."""
        if not text:
            return
        for handle in handles_in_text(text):
            self.handles.add(handle)
        self.add_urls(URL_IN_TEXT.findall(html.unescape(text)), hop)

    def add_urls(self, urls: Iterable[str], hop: int = 0) -> None:
        for url in urls:
            self.add_url(url, hop)

    def add_url(self, url: str | None, hop: int = 0) -> None:
        """Read one link found ``hop`` fetches away from the artwork."""
        if not url or not isinstance(url, str):
            return
        url = unwrap_redirect(url.strip())
        if not re.match(r"^https?://", url, re.IGNORECASE):
            url = "https://" + url
        twitter = parse_twitter_url(url)
        if twitter is not None:
            self.add_handle(twitter.handle)
            return
        if hop >= MAX_HOPS:
            return
        page = match_link_in_bio(url)
        if page is not None:
            self._follow_link_in_bio(page, hop + 1)
            return
        key = "profile:" + url.lower().rstrip("/")
        if key in self._visited:
            return
        for reader in self._profile_readers:
            links = reader(url)
            if links is not None:
                self._visited.add(key)
                self.add_urls(links, hop + 1)
                return

    def _follow_link_in_bio(self, page: LinkInBioPage, hop: int) -> None:
        fetch_url = page.fetch_url(self._config)
        if fetch_url in self._visited:
            return
        self._visited.add(fetch_url)
        try:
            response = self._http.get(fetch_url, max_bytes=MAX_PAGE_BYTES)
        except HttpStatusError as error:
            logger.info("link-in-bio page %s answered %s", fetch_url, error.status)
            return
        except FetchError as error:
            logger.warning("cannot read link-in-bio page %s: %s", fetch_url, error)
            return
        links = _PAGE_READERS[page.service](response.text, fetch_url)
        logger.debug("%d links on %s page %s", len(links), page.service, page.name)
        self.add_urls(links, hop)

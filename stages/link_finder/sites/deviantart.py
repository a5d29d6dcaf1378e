"""DeviantArt: deviations through oEmbed, artists through their about page.

The oEmbed response gives the image, the date and the author. The links an
artist lists (website, social links, Twitter field, bio) are in the
``about`` module of the state the profile page embeds as
``window.__INITIAL_STATE__ = JSON.parse("...")``.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse

from ..errors import NOT_AN_ARTWORK_PAGE, LinkFinderError
from ..linkinbio import page_links
from ..urls import ArtworkKey, UrlParts, clean_url
from .base import (
    FetchError,
    FinderContext,
    HttpStatusError,
    Site,
    SiteResult,
    as_dict,
    fetch_json,
    parse_timestamp,
)

logger = logging.getLogger(__name__)

# First path segments on www.deviantart.com that are not user names.
RESERVED_PATHS = frozenset({
    "tag", "art", "users", "search", "about", "join", "submit", "core-membership",
    "account", "settings", "chat", "groups", "shop", "forum", "notifications", "watch",
    "daily-deviations", "topic", "popular", "developers", "team", "deviation",
    "download", "stash", "view", "view.php", "view-full.php",
})  # fmt: skip
_MAIN_HOST = re.compile(r"^(?:www\.)?(?:fx)?deviantart\.com$")
_USER_HOST = re.compile(r"^([a-z0-9-]+)\.deviantart\.com$")
_FAV_HOST = re.compile(r"^(?:www\.)?fav\.me$")
_ART_ID = re.compile(r"^(?:.*-)?([1-9][0-9]{0,11})$")
_INITIAL_STATE = re.compile(
    r'window\.__INITIAL_STATE__\s*=\s*JSON\.parse\("((?:[^"\\]|\\.)*)"\)'
)
_NOT_USER_SUBDOMAINS = frozenset({"www", "backend", "fx"})


class DeviantArtSite(Site):
    """Deviations on deviantart.com, legacy user subdomains and fav.me."""

    name = "deviantart"
    label = "DeviantArt"
    host_pattern = re.compile(
        r"^(?:[a-z0-9-]+\.)?deviantart\.com$|^(?:www\.)?fxdeviantart\.com$"
        r"|^(?:www\.)?fav\.me$"
    )
    example_url = (
        "https://www.deviantart.com/invented-artist/art/Sunny-Meadow-1000000001"
    )

    def parse_key(self, parts: UrlParts) -> ArtworkKey | None:
        artwork_id = _artwork_id(parts)
        if artwork_id is None:
            return None
        page = 0
        image = re.fullmatch(r"image-([1-9][0-9]{0,2})", parts.fragment)
        if image:
            page = int(image[1]) - 1
        return ArtworkKey(self.name, artwork_id, page)

    def find(self, key: ArtworkKey, context: FinderContext) -> SiteResult:
        oembed = self._oembed(key.artwork_id, context)
        if oembed is None:
            raise LinkFinderError(
                NOT_AN_ARTWORK_PAGE, f"DeviantArt has no deviation {key.artwork_id}"
            )
        if oembed.get("type") != "photo" or not isinstance(oembed.get("url"), str):
            raise LinkFinderError(
                NOT_AN_ARTWORK_PAGE,
                f"DeviantArt deviation {key.artwork_id} is not an image "
                f"(oEmbed type {oembed.get('type')!r})",
            )
        # TODO: multi-image deviations (#image-N) and the full-size file need
        # the deviation HTML page. oEmbed gives only the first image, and for
        # large works a size-limited copy.
        username = _username_of(oembed)
        if username:
            context.follower.add_urls(self._about_links(username, context))
        return SiteResult(
            image_urls=[oembed["url"]],
            published_at=parse_timestamp(oembed.get("pubdate")),
            artist=str(oembed.get("author_name") or username or ""),
        )

    def read_profile(self, url: str, context: FinderContext) -> list[str] | None:
        try:
            parts = clean_url(url, max_chars=2048)
        except LinkFinderError:
            return None
        if not self.owns_host(parts.host):
            return None
        key = self.parse_key(parts)
        if key is not None:
            oembed = self._oembed(key.artwork_id, context) or {}
            username = _username_of(oembed)
            return self._about_links(username, context) if username else []
        username = _profile_username(parts)
        return self._about_links(username, context) if username else None

    def _oembed(self, artwork_id: str, context: FinderContext) -> dict | None:
        """Return the oEmbed response of a deviation, or None when it is unknown."""
        page_url = f"https://fav.me/d{_to_base36(int(artwork_id))}"
        query = urllib.parse.urlencode({"url": page_url, "format": "json"})
        url = f"{_oembed_base(self.base_url(context))}/oembed?{query}"
        try:
            answer = fetch_json(context, url)
        except HttpStatusError as error:
            if error.status == 404:
                return None
            raise self.site_error(url, error) from error
        except FetchError as error:
            raise self.site_error(url, error) from error
        if not isinstance(answer, dict):
            raise self.site_error(url, "the oEmbed response is not an object")
        return answer

    def _about_links(self, username: str, context: FinderContext) -> list[str]:
        """Return the links of a user's about module; [] when it is unreadable."""
        url = f"{self.base_url(context)}/{urllib.parse.quote(username)}/about"
        try:
            page = context.http.get(url, max_bytes=8 * 1024 * 1024).text
        except FetchError as error:
            logger.info("cannot read DeviantArt profile %s: %s", username, error)
            return []
        about = _about_module(page)
        if about is None:
            logger.warning("DeviantArt profile %s has no about module", username)
            return []
        links = []
        twitter = about.get("twitterUsername")
        if isinstance(twitter, str) and twitter:
            links.append(f"https://twitter.com/{twitter.removeprefix('@')}")
        website = about.get("website")
        if isinstance(website, str) and website:
            links.append(website if "://" in website else "https://" + website)
        links += [as_dict(item).get("value") for item in about.get("socialLinks") or []]
        text_content = as_dict(about.get("textContent"))
        links += _text_content_links(as_dict(text_content.get("html")))
        # Profiles of other DeviantArt users in a bio are usually friends.
        links = [link for link in links if isinstance(link, str)]
        return [link for link in links if not _is_profile(link)]


def _artwork_id(parts: UrlParts) -> str | None:
    segments = parts.segments()
    if _FAV_HOST.match(parts.host):
        if len(segments) == 1 and re.fullmatch(r"d[0-9a-z]{1,10}", segments[0]):
            return str(int(segments[0][1:], 36))
        return None
    if _USER_HOST.match(parts.host) and not _MAIN_HOST.match(parts.host):
        segments = ["user"] + segments  # Legacy {user}.deviantart.com/art/...
    if len(segments) == 3 and segments[1] == "art":
        match = _ART_ID.match(segments[2])
        return match[1] if match else None
    if len(segments) == 2 and segments[0] in ("deviation", "view"):
        return segments[1] if re.fullmatch(r"[1-9][0-9]{0,11}", segments[1]) else None
    if segments in (["view.php"], ["view-full.php"]):
        value = parts.first("id") or ""
        return value if re.fullmatch(r"[1-9][0-9]{0,11}", value) else None
    return None


def _profile_username(parts: UrlParts) -> str | None:
    user_host = _USER_HOST.match(parts.host)
    if user_host and user_host[1] not in _NOT_USER_SUBDOMAINS:
        return user_host[1]
    segments = parts.segments()
    if not _MAIN_HOST.match(parts.host) or not segments:
        return None
    if segments[0].lower() in RESERVED_PATHS or len(segments) > 2:
        return None
    if len(segments) == 2 and segments[1] not in ("about", "gallery"):
        return None
    return segments[0] if re.fullmatch(r"[A-Za-z0-9-]+", segments[0]) else None


def _is_profile(url: str) -> bool:
    try:
        parts = clean_url(url, max_chars=2048)
    except LinkFinderError:
        return False
    return _profile_username(parts) is not None


def _username_of(oembed: dict) -> str | None:
    author_url = oembed.get("author_url")
    if isinstance(author_url, str):
        segments = [s for s in urllib.parse.urlsplit(author_url).path.split("/") if s]
        if segments:
            return segments[0]
    name = oembed.get("author_name")
    return name.lower() if isinstance(name, str) and name else None


def _oembed_base(base_url: str) -> str:
    """Return the oEmbed host for a site base URL.

    The real oEmbed endpoint is on backend.deviantart.com; a base URL
    without a ``www.`` host (a test server) serves oEmbed itself.
    """
    split = urllib.parse.urlsplit(base_url)
    if split.netloc.startswith("www."):
        return f"{split.scheme}://backend.{split.netloc[4:]}"
    return base_url


def _about_module(page: str) -> dict | None:
    match = _INITIAL_STATE.search(page)
    if not match:
        return None
    try:
        # The state is a JavaScript string literal holding JSON text.
        literal = match.group(1).replace("\\'", "'")
        state = json.loads(json.loads(f'"{literal}"'))
    except json.JSONDecodeError as error:
        logger.warning("invalid DeviantArt profile state: %s", error)
        return None
    grusers = as_dict(as_dict(as_dict(state).get("@@gruser")).get("grusers"))
    for gruser in grusers.values():
        modules = as_dict(gruser).get("modules")
        modules = modules.values() if isinstance(modules, dict) else modules or []
        for module in modules:
            module = as_dict(module)
            if module.get("name") == "about":
                return as_dict(as_dict(module.get("moduleData")).get("about"))
    return None


def _text_content_links(content: dict) -> list[str]:
    """Return the links of a bio stored as HTML, Draft.js or TipTap JSON."""
    markup = content.get("markup")
    if not isinstance(markup, str) or not markup:
        return []
    if content.get("type") == "writer":
        return page_links(markup, "https://www.deviantart.com/") or []
    try:
        document = json.loads(markup)
    except json.JSONDecodeError:
        return []
    if content.get("type") == "draft":
        entities = as_dict(as_dict(document).get("entityMap")).values()
        return [as_dict(as_dict(e).get("data")).get("url") for e in entities
                if as_dict(e).get("type") == "LINK"]
    return list(_href_values(document))


def _href_values(node: object):
    """Yield every ``href`` string in a nested JSON document (TipTap marks)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "href" and isinstance(value, str):
                yield value
            else:
                yield from _href_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from _href_values(item)


def _to_base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while number:
        number, remainder = divmod(number, 36)
        text = digits[remainder] + text
    return text or "0"

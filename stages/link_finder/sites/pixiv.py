"""Pixiv: artworks and user profiles through the ajax JSON API.

Every ajax response is an envelope ``{"error", "message", "body"}``. A
failure has ``error: true`` and an empty list as body, often with HTTP
404, so the envelope decides, not the status.
"""

from __future__ import annotations

import logging
import re

from ..errors import NOT_AN_ARTWORK_PAGE, SITE_ERROR, LinkFinderError
from ..handles import URL_IN_TEXT, handles_in_text
from ..linkinbio import page_links
from ..urls import ArtworkKey, UrlParts, clean_url
from .base import (
    FetchError,
    FinderContext,
    HttpStatusError,
    Site,
    SiteResult,
    as_dict,
    error_json,
    fetch_json,
    parse_timestamp,
)

logger = logging.getLogger(__name__)

MAX_PAGE_FRAGMENT = 200
# Relative links in captions (``/jump.php?...``) are read as links on the
# real site, whatever base URL the API is fetched from.
PIXIV_ORIGIN = "https://www.pixiv.net/"
_ID = r"([1-9][0-9]{0,11})"
_ARTWORK_PATH = re.compile(
    rf"^/(?:[a-z]{{2}}(?:-[a-z]{{2,4}})?/)?(?:artworks|i)/{_ID}/?$"
)
_IMAGE_PATH = re.compile(
    rf"^/(?:c/[^/]+/)?(?:img-original|img-master|custom-thumb)/img/"
    rf"(?:[0-9]{{2,4}}/){{6}}{_ID}(?:-[0-9a-f]{{32}})?_p([0-9]{{1,3}})"
    rf"(?:_[a-z]+[0-9]*)?\.[a-z]+$"
)
_USER_PATH = re.compile(rf"^/(?:[a-z]{{2}}/)?(?:users|u)/{_ID}(?:/.*)?$")
_PIXIV_HOST = re.compile(r"^(?:(?:www|touch)\.)?pixiv\.net$|^(?:www\.)?phixiv\.net$")


class PixivSite(Site):
    """Artworks on www.pixiv.net, touch.pixiv.net and direct i.pximg.net files."""

    name = "pixiv"
    label = "Pixiv"
    host_pattern = re.compile(
        r"^(?:(?:www|touch)\.)?pixiv\.net$|^(?:www\.)?phixiv\.net$|^i\.pximg\.net$"
    )
    example_url = "https://www.pixiv.net/en/artworks/120000001"

    def parse_key(self, parts: UrlParts) -> ArtworkKey | None:
        if parts.host == "i.pximg.net":
            match = _IMAGE_PATH.match(parts.path)
            return ArtworkKey(self.name, match[1], int(match[2])) if match else None
        match = _ARTWORK_PATH.match(parts.path)
        if match:
            return ArtworkKey(self.name, match[1], _fragment_page(parts.fragment))
        if parts.path.rstrip("/") == "/member_illust.php":
            illust_id = parts.first("illust_id") or ""
            if not re.fullmatch(_ID, illust_id):
                return None
            page = parts.first("page") or ""
            if parts.first("mode") == "manga_big" and page.isdigit():
                return ArtworkKey(self.name, illust_id, int(page))
            return ArtworkKey(self.name, illust_id, _fragment_page(parts.fragment))
        return None

    def find(self, key: ArtworkKey, context: FinderContext) -> SiteResult:
        illust = self._ajax(context, f"/ajax/illust/{key.artwork_id}?lang=en")
        if illust is None:
            raise LinkFinderError(
                NOT_AN_ARTWORK_PAGE,
                f"Pixiv has no artwork {key.artwork_id}, or it was deleted",
            )
        image_urls = self._image_urls(key, illust, context)
        context.follower.add_urls(self._user_links(illust.get("userId"), context))
        description = illust.get("illustComment") or illust.get("description")
        description = str(description or "")
        context.follower.add_urls(page_links(description, PIXIV_ORIGIN) or [])
        context.follower.add_text(description)
        return SiteResult(
            image_urls=image_urls,
            published_at=parse_timestamp(illust.get("createDate")),
            artist=str(illust.get("userName") or illust.get("userAccount") or ""),
        )

    def read_profile(self, url: str, context: FinderContext) -> list[str] | None:
        try:
            parts = clean_url(url, max_chars=2048)
        except LinkFinderError:
            return None
        if not _PIXIV_HOST.match(parts.host):
            return None
        user = _USER_PATH.match(parts.path)
        if user:
            return self._user_links(user[1], context)
        member_id = parts.first("id") or ""
        if parts.path.rstrip("/") == "/member.php" and member_id.isdigit():
            return self._user_links(member_id, context)
        key = self.parse_key(parts)
        if key is None:
            return None
        illust = self._ajax(context, f"/ajax/illust/{key.artwork_id}?lang=en")
        return self._user_links(illust.get("userId"), context) if illust else []

    def _ajax(self, context: FinderContext, path: str) -> dict | list | None:
        """Return the body of an ajax response, or None when it reports an error."""
        url = self.base_url(context) + path
        referer = self.base_url(context) + "/"
        try:
            envelope = fetch_json(context, url, referer=referer)
        except HttpStatusError as error:
            envelope = error_json(error)
            if not isinstance(envelope, dict) or envelope.get("error") is not True:
                raise self.site_error(url, error) from error
        except FetchError as error:
            raise self.site_error(url, error) from error
        envelope = as_dict(envelope)
        if envelope.get("error") is True:
            logger.info("Pixiv %s returned an error: %s", path, envelope.get("message"))
            return None
        body = envelope.get("body")
        if not isinstance(body, (dict, list)):
            raise self.site_error(url, "the response has no body")
        return body

    def _image_urls(self, key: ArtworkKey, illust: dict, context: FinderContext):
        urls = as_dict(illust.get("urls"))
        page_count = illust.get("pageCount")
        page_count = page_count if isinstance(page_count, int) else 1
        if 0 < key.page < page_count:
            pages = self._ajax(context, f"/ajax/illust/{key.artwork_id}/pages")
            if isinstance(pages, list) and key.page < len(pages):
                urls = as_dict(as_dict(pages[key.page]).get("urls"))
        elif key.page:
            logger.info("Pixiv artwork %s has no page %d; using the first page",
                        key.artwork_id, key.page)
        image_urls = [urls.get("original"), urls.get("regular")]
        image_urls = [url for url in image_urls if isinstance(url, str) and url]
        if not image_urls:
            # Restricted works hide their URLs; the user's list still has a thumbnail.
            thumbnail = as_dict(as_dict(illust.get("userIllusts")).get(key.artwork_id))
            if isinstance(thumbnail.get("url"), str):
                image_urls = [thumbnail["url"]]
        if not image_urls:
            raise LinkFinderError(
                SITE_ERROR, f"Pixiv hides the image of artwork {key.artwork_id}"
            )
        return image_urls

    def _user_links(self, user_id: object, context: FinderContext) -> list[str]:
        """Return the links of a user profile, handles as Twitter URLs."""
        if not isinstance(user_id, (str, int)) or not str(user_id).isdigit():
            return []
        try:
            user = self._ajax(context, f"/ajax/user/{user_id}?full=1&lang=en")
        except LinkFinderError as error:
            logger.warning("cannot read Pixiv user %s: %s", user_id, error)
            return []
        if not isinstance(user, dict):
            logger.info("Pixiv user %s is missing or left pixiv", user_id)
            return []
        social = as_dict(user.get("social"))
        links = [as_dict(social.get("twitter")).get("url"), user.get("webpage")]
        links += [as_dict(entry).get("url") for name, entry in social.items()
                  if name != "twitter"]
        links += page_links(str(user.get("commentHtml") or ""), PIXIV_ORIGIN) or []
        comment = str(user.get("comment") or "")
        links += URL_IN_TEXT.findall(comment)
        handles = handles_in_text(comment)
        links += [f"https://twitter.com/{handle}" for handle in handles]
        return [link for link in links if isinstance(link, str) and link]


def _fragment_page(fragment: str) -> int:
    """Convert a 1-based ``#N`` page fragment to a 0-based page index."""
    if fragment.isdigit() and 1 <= int(fragment) <= MAX_PAGE_FRAGMENT:
        return int(fragment) - 1
    return 0

"""Danbooru: posts, their artist tags, and the URLs of each artist entry."""

from __future__ import annotations

import logging
import re
import urllib.parse

from ..errors import NOT_AN_ARTWORK_PAGE, SITE_ERROR, LinkFinderError
from ..handles import parse_twitter_url
from ..urls import ArtworkKey, UrlParts
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

_POST_PATH = re.compile(r"^/posts?/(?:show/)?([1-9][0-9]{0,11})(?:\.json|/[^/]*)?/?$")


class DanbooruSite(Site):
    """Posts on danbooru.donmai.us, its mirrors and safebooru."""

    name = "danbooru"
    label = "Danbooru"
    host_pattern = re.compile(
        r"^(?:(?:danbooru|safebooru|hijiribe|sonohara|shima)\.donmai\.us|"
        r"(?:www\.)?donmai\.moe)$"
    )
    example_url = "https://danbooru.donmai.us/posts/7654321"

    def parse_key(self, parts: UrlParts) -> ArtworkKey | None:
        # "/posts/{id}" and the legacy "/post/show/{id}/{slug}"; "/posts/{id}/x"
        # is a sub-page, so a slug is only allowed after "show".
        match = _POST_PATH.match(parts.path)
        if not match:
            return None
        if parts.path.startswith("/posts/") and parts.path.count("/") > 2:
            if not parts.path.rstrip("/").endswith(match.group(1)):
                return None
        return ArtworkKey(self.name, match.group(1))

    def find(self, key: ArtworkKey, context: FinderContext) -> SiteResult:
        post = self._fetch_post(key, context)
        image_urls = _image_urls(post)
        if not image_urls:
            raise LinkFinderError(
                SITE_ERROR,
                f"Danbooru post {key.artwork_id} shows no image file to anonymous "
                "users (banned, restricted or deleted)",
            )
        artist_tags = str(post.get("tag_string_artist", "")).split(" ")
        artists = [tag for tag in artist_tags if tag]
        for artist in artists:
            self._collect_artist(artist, context)

        source = post.get("source")
        if isinstance(source, str):
            twitter = parse_twitter_url(source) if source.startswith("http") else None
            if twitter is not None:
                context.follower.add_handle(twitter.handle)
            elif post.get("pixiv_id"):
                pixiv_url = f"https://www.pixiv.net/artworks/{post['pixiv_id']}"
                context.follower.add_url(pixiv_url, hop=0)
            elif source.startswith("http"):
                context.follower.add_url(source, hop=0)

        return SiteResult(
            image_urls=image_urls,
            published_at=parse_timestamp(post.get("created_at")),
            artist=" ".join(artists),
        )

    def _fetch_post(self, key: ArtworkKey, context: FinderContext) -> dict:
        url = f"{self.base_url(context)}/posts/{key.artwork_id}.json"
        try:
            post = fetch_json(context, url)
        except HttpStatusError as error:
            body = as_dict(error_json(error))
            if error.status == 404:
                raise LinkFinderError(
                    NOT_AN_ARTWORK_PAGE, f"Danbooru has no post {key.artwork_id}"
                ) from error
            detail = body.get("message") or body.get("error") or ""
            raise self.site_error(url, f"{error} {detail}".strip()) from error
        except FetchError as error:
            raise self.site_error(url, error) from error
        if not isinstance(post, dict) or post.get("success") is False:
            raise LinkFinderError(
                NOT_AN_ARTWORK_PAGE, f"Danbooru has no post {key.artwork_id}"
            )
        return post

    def _collect_artist(self, artist: str, context: FinderContext) -> None:
        query = urllib.parse.urlencode({
            "search[name]": artist,
            "only": "id,name,is_deleted,is_banned,urls",
        })
        url = f"{self.base_url(context)}/artists.json?{query}"
        try:
            entries = fetch_json(context, url)
        except FetchError as error:
            logger.warning("cannot read Danbooru artist %r: %s", artist, error)
            return
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or entry.get("is_deleted"):
                continue
            urls = [u for u in entry.get("urls") or [] if isinstance(u, dict)]
            # Active URLs first; inactive Twitter URLs are former handles of
            # the same artist, kept as fallbacks.
            for item in sorted(urls, key=lambda u: not u.get("is_active", True)):
                link = item.get("url")
                if not isinstance(link, str):
                    continue
                if item.get("is_active", True) or parse_twitter_url(link):
                    context.follower.add_url(link, hop=0)


def _image_urls(post: dict) -> list[str]:
    urls = [post.get("file_url"), post.get("large_file_url")]
    variants = as_dict(post.get("media_asset")).get("variants") or []
    by_type = {v.get("type"): v.get("url") for v in variants if isinstance(v, dict)}
    urls += [by_type.get("original"), by_type.get("sample")]
    unique = []
    for url in urls:
        if isinstance(url, str) and url and url not in unique:
            unique.append(url)
    return unique

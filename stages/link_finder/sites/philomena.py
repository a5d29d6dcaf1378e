"""Sites running Philomena (Derpibooru, Furbooru): images and artist tags.

The JSON API gives the image, its tags and sources. The links an artist
verified for their ``artist:`` tag are shown only in HTML, in the tag
information block of the search page for that tag.
"""

from __future__ import annotations

import logging
import re
import urllib.parse

from ..errors import NOT_AN_ARTWORK_PAGE, LinkFinderError
from ..linkinbio import page_links
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

_IMAGE_PATH = re.compile(r"^/(?:images/)?([1-9][0-9]{0,11})/?$")
MAX_DUPLICATE_HOPS = 3


class PhilomenaSite(Site):
    """A Philomena booru; subclasses set the name, label and hosts."""

    def parse_key(self, parts: UrlParts) -> ArtworkKey | None:
        match = _IMAGE_PATH.match(parts.path)
        return ArtworkKey(self.name, match.group(1)) if match else None

    def find(self, key: ArtworkKey, context: FinderContext) -> SiteResult:
        image = self._fetch_image(key.artwork_id, context)
        for _ in range(MAX_DUPLICATE_HOPS):
            if not image.get("duplicate_of"):
                break
            logger.debug("%s image %s is a duplicate of %s",
                         self.label, image.get("id"), image["duplicate_of"])
            image = self._fetch_image(str(image["duplicate_of"]), context)

        representations = as_dict(image.get("representations"))
        image_urls = [representations.get(size) for size in ("full", "large")]
        image_urls = [url for url in image_urls if isinstance(url, str) and url]
        image_urls = list(dict.fromkeys(image_urls))
        if image.get("hidden_from_users") or not image_urls:
            reason = image.get("deletion_reason") or "no reason given"
            raise LinkFinderError(
                NOT_AN_ARTWORK_PAGE,
                f"{self.label} image {key.artwork_id} was deleted ({reason})",
            )

        tags = [tag for tag in image.get("tags") or [] if isinstance(tag, str)]
        artists = [
            tag.removeprefix("artist:") for tag in tags if tag.startswith("artist:")
        ]
        for artist in artists:
            self._collect_tag_links(f"artist:{artist}", context)
        context.follower.add_text(image.get("description"))
        sources = image.get("source_urls") or [image.get("source_url")]
        for source in sources:
            context.follower.add_url(source, hop=0)

        return SiteResult(
            image_urls=image_urls,
            published_at=parse_timestamp(image.get("created_at")),
            artist=", ".join(artists),
        )

    def _fetch_image(self, image_id: str, context: FinderContext) -> dict:
        url = f"{self.base_url(context)}/api/v1/json/images/{image_id}"
        try:
            data = fetch_json(context, url)
        except HttpStatusError as error:
            # A missing image is a 404 whose body is empty on older Philomena
            # and {"error": "Not found"} on newer releases.
            if error.status == 404:
                raise LinkFinderError(
                    NOT_AN_ARTWORK_PAGE, f"{self.label} has no image {image_id}"
                ) from error
            detail = as_dict(error_json(error)).get("error", "")
            raise self.site_error(url, f"{error} {detail}".strip()) from error
        except FetchError as error:
            raise self.site_error(url, error) from error
        image = as_dict(data).get("image")
        if not isinstance(image, dict):
            raise self.site_error(url, "the response has no image object")
        return image

    def _collect_tag_links(self, tag: str, context: FinderContext) -> None:
        url = f"{self.base_url(context)}/search?{urllib.parse.urlencode({'q': tag})}"
        try:
            page = context.http.get(url, max_bytes=4 * 1024 * 1024).text
        except FetchError as error:
            logger.warning("cannot read %s tag page %s: %s", self.label, url, error)
            return
        links = page_links(page, url, region_id="content")
        if links is None:
            logger.warning("%s tag page %s has no main content block", self.label, url)
            return
        own_host = urllib.parse.urlsplit(url).netloc
        external = [
            link for link in links if urllib.parse.urlsplit(link).netloc != own_host
        ]
        context.follower.add_urls(external, hop=0)

"""Link finder stage: artwork pages to handles, and query images to bytes.

Both requests go out through the one guarded HTTP client, so they obey
the same timeouts, size cap, redirect cap and address rules.
"""

from __future__ import annotations

import logging
from typing import Any

from broker.config import Config
from broker.worker import HandlerError, RequestContext
from stages.http_client import (
    FetchError,
    HttpStatusError,
    ResponseTooLargeError,
    SafeHttpClient,
)
from stages.link_finder import LinkFinderError, find_artwork

log = logging.getLogger(__name__)


class LinkFinderStage:
    def __init__(self, config: Config):
        self.config = config
        self.http = SafeHttpClient(config.network)

    def handle_find(self, body: dict[str, Any], context: RequestContext) -> dict:
        url = str(body.get("url", ""))
        context.set_activity(f"finding {url[:120]}")
        try:
            info = find_artwork(url, self.config.sites, self.http,
                                link_in_bio=self.config.link_in_bio,
                                max_chars=self.config.http.max_url_chars)
        except LinkFinderError as error:
            log.info("link finder: %s: %s", error.code, error)
            raise HandlerError(error.code, str(error)) from error
        return {
            "key": str(info.key),
            "image_urls": info.image_urls,
            "published_at": info.published_at,
            "artist": info.artist,
            "handles": info.handles,
            "referer": body.get("url"),
        }

    def handle_fetch(self, body: dict[str, Any], context: RequestContext) -> dict:
        """Fetch the first of ``urls`` that returns an image within the size limit."""
        urls = [str(url) for url in body.get("urls") or []]
        limit = self.config.http.max_upload_bytes
        too_big = None
        last_error = None
        for url in urls:
            context.set_activity(f"fetching {url[:120]}")
            try:
                response = self.http.get(url, max_bytes=limit,
                                         referer=body.get("referer"))
            except ResponseTooLargeError as error:
                too_big = error
                continue
            except (HttpStatusError, FetchError) as error:
                log.warning("cannot fetch query image %s: %s", url, error)
                last_error = error
                continue
            return {"image": response.content, "url": url}
        if too_big is not None:
            raise HandlerError("QUERY_IMAGE_TOO_BIG",
                               f"every image URL is over {limit} bytes: {too_big}")
        raise HandlerError("CANNOT_GET_IMAGE",
                           f"no image URL of the artwork could be fetched: {last_error}")


def handlers(config: Config) -> dict:
    stage = LinkFinderStage(config)
    return {"artwork.find": stage.handle_find, "image.fetch": stage.handle_fetch}

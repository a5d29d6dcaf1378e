"""Indexer stage: decode one tweet image, describe it and store it.

Requests are idempotent: an image already stored under its
(tweet_id, position) is not decoded again, so a request delivered twice
after a crash adds nothing. An unreadable image is recorded in the
``failed_images`` table and reported by name, never fatal.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from broker.config import Config
from broker.worker import HandlerError, RequestContext
from index.decoding import decode_file, decode_image
from index.descriptors import describe_image
from index.errors import ImageError
from index.store import ImageRecord, Store
from stages.http_client import FetchError, HttpStatusError, SafeHttpClient

log = logging.getLogger(__name__)

# Images are decoded at a reduced scale whose long side stays at least this.
DESCRIBE_SIDE_PX = 1024
# HTTP statuses after which fetching the same image again cannot help.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 410, 451})


class Indexer:
    """Handle ``image.index`` requests for one process."""

    def __init__(self, config: Config):
        self.config = config
        self.store = Store(config.database_path)
        self.http = SafeHttpClient(config.network)

    def handle_index(self, body: dict[str, Any], context: RequestContext) -> dict:
        tweet_id = int(body["tweet_id"])
        position = int(body["position"])
        location = str(body["location"])
        if self.store.has_image(tweet_id, position):
            image_id, _ = self._existing(tweet_id, position)
            return {"image_id": image_id, "added": False}

        context.set_activity(f"indexing tweet {tweet_id} image {position}")
        try:
            image = self._load(location, bool(body.get("is_file", True)))
        except ImageError as error:
            self._record_failure(body, str(error), permanent=True)
            raise HandlerError(error.code, f"{location}: {error}") from error
        except OSError as error:
            self._record_failure(body, str(error), permanent=True)
            raise HandlerError("IMAGE_UNREADABLE", f"{location}: {error}") from error
        except HttpStatusError as error:
            permanent = error.status in PERMANENT_STATUSES
            self._record_failure(body, str(error), permanent=permanent)
            raise HandlerError("CANNOT_GET_IMAGE", str(error),
                               permanent=permanent) from error
        except FetchError as error:
            self._record_failure(body, str(error), permanent=False)
            raise HandlerError("CANNOT_GET_IMAGE", str(error),
                               permanent=False) from error

        description = describe_image(image)
        record = ImageRecord(
            tweet_id=tweet_id,
            position=position,
            image_count=int(body.get("image_count") or position),
            account_id=int(body["account_id"]),
            location=location,
            width=description.width,
            height=description.height,
            phash=description.phash,
            pdq=description.pdq,
            pdq_quality=description.pdq_quality,
            local_features=description.local_features,
            tweet_created_at=body.get("created_at"),
            source=str(body.get("source", "archive")),
        )
        handle = body.get("handle")
        if handle:
            self.store.upsert_account(record.account_id, str(handle))
        image_id, added = self.store.add_image(record)
        log.debug("stored tweet %d image %d as %d", tweet_id, position, image_id)
        return {"image_id": image_id, "added": added}

    def _existing(self, tweet_id: int, position: int) -> tuple[int, bool]:
        row = self.store.connection.execute(
            "SELECT id FROM images WHERE tweet_id = ? AND position = ?",
            (tweet_id, position),
        ).fetchone()
        return row[0], False

    def _load(self, location: str, is_file: bool):
        images = self.config.images
        if is_file:
            return decode_file(
                Path(location),
                images.max_pixels,
                max_bytes=images.max_bytes,
                reduce_to=DESCRIBE_SIDE_PX,
            )
        data = self.http.get(location, max_bytes=images.max_bytes).content
        return decode_image(data, images.max_pixels, reduce_to=DESCRIBE_SIDE_PX)

    def _record_failure(self, body: dict, error: str, permanent: bool) -> None:
        log.warning("cannot index %s (tweet %s image %s): %s", body.get("location"),
                    body.get("tweet_id"), body.get("position"), error)
        self.store.record_failed_image(
            int(body["tweet_id"]), int(body["position"]), int(body["account_id"]),
            str(body["location"]), error, permanent,
        )


def handlers(config: Config) -> dict:
    indexer = Indexer(config)
    return {"image.index": indexer.handle_index}

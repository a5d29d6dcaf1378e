"""Searcher stage: reverse search of a query image over the indexed images.

The searcher owns the in-memory FAISS index. It loads the copy saved
under ``<data>/faiss/`` at start, rebuilds it from SQLite when that copy
is missing, unreadable or out of step, and before every search it adds
the images stored since (ids only grow, see ``index.store``). A search
therefore finds every image whose indexing was acknowledged before it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import faiss

from broker.config import Config
from broker.worker import HandlerError, RequestContext
from index.decoding import decode_image
from index.errors import ImageError
from index.matcher import Matcher, MatcherSettings
from index.store import Store
from index.vector_index import (
    BinaryIndex,
    IndexFileError,
    build_from_store,
    index_in_step,
)
from stages.indexer import DESCRIBE_SIDE_PX

log = logging.getLogger(__name__)

# Save the index to disk when this many images were added since the last save.
SAVE_EVERY_IMAGES = 5000
SAVE_EVERY_SECS = 300.0


class Searcher:
    """Handle ``image.search`` and ``index.sync`` requests."""

    def __init__(self, config: Config, persist: bool = True):
        self.config = config
        self.persist = persist
        self.store = Store(config.database_path)
        self.folder = config.data_folder / "faiss"
        self.lock = threading.Lock()
        # One FAISS thread: single queries are fastest that way and do not
        # compete with the other processes of the group for cores.
        faiss.omp_set_num_threads(1)
        matching = config.matching
        self.matcher = Matcher(MatcherSettings(
            max_pdq_distance=matching.max_pdq_distance,
            min_pdq_quality=matching.min_pdq_quality,
            shortlist_size=matching.shortlist_size,
        ))
        self.index = self._load_or_rebuild()
        self.saved_max_id = self.index.max_id
        self.saved_at = time.monotonic()

    def _load_or_rebuild(self) -> BinaryIndex:
        min_quality = self.config.matching.min_pdq_quality
        try:
            index = BinaryIndex.load(self.folder)
        except IndexFileError as error:
            log.info("rebuilding the FAISS index from SQLite: %s", error)
            return self._rebuild()
        if index.min_quality != min_quality:
            log.info("saved FAISS index was built with quality gate %d, not %d; "
                     "rebuilding", index.min_quality, min_quality)
            return self._rebuild()
        if index.max_id > self.store.max_image_id():
            log.warning("saved FAISS index is ahead of SQLite (max id %d > %d), "
                        "rebuilding", index.max_id, self.store.max_image_id())
            return self._rebuild()
        index = build_from_store(self.store, index, min_quality=min_quality)
        if not index_in_step(index, self.store):
            log.warning("saved FAISS index is out of step with SQLite, rebuilding")
            return self._rebuild()
        log.info("loaded the FAISS index: %d images, max id %d", len(index),
                 index.max_id)
        return index

    def _rebuild(self) -> BinaryIndex:
        started = time.monotonic()
        index = build_from_store(self.store,
                                 min_quality=self.config.matching.min_pdq_quality)
        log.info("built the FAISS index from SQLite: %d images in %.1f s",
                 len(index), time.monotonic() - started)
        if self.persist:
            index.save(self.folder)
        return index

    def sync(self) -> None:
        """Add the images stored since the last sync; save now and then."""
        build_from_store(self.store, self.index,
                         min_quality=self.config.matching.min_pdq_quality,
                         compact=False)
        unsaved = self.index.max_id - self.saved_max_id
        if unsaved >= SAVE_EVERY_IMAGES or (
            unsaved and time.monotonic() - self.saved_at > SAVE_EVERY_SECS
        ):
            self.save()

    def save(self) -> None:
        if not self.persist:
            self.index.compact()
            self.saved_max_id = self.index.max_id
            self.saved_at = time.monotonic()
            return
        self.index.save(self.folder)
        self.saved_max_id = self.index.max_id
        self.saved_at = time.monotonic()

    def handle_sync(self, body: dict[str, Any], context: RequestContext) -> dict:
        with self.lock:
            self.sync()
            return {"size": len(self.index), "max_id": self.index.max_id}

    def handle_search(self, body: dict[str, Any], context: RequestContext) -> dict:
        data = body.get("image")
        if not isinstance(data, bytes) or not data:
            raise HandlerError("IMAGE_MISSING", "the request carries no image bytes")
        account_ids = body.get("account_ids")
        limit = int(body.get("limit") or 10)
        context.set_activity(f"searching an image of {len(data)} bytes")
        try:
            # Same reduced decode as the indexers, so both sides see alike pixels.
            image = decode_image(data, self.config.images.max_pixels,
                                 reduce_to=DESCRIBE_SIDE_PX)
        except ImageError as error:
            raise HandlerError(error.code, str(error)) from error
        with self.lock:
            self.sync()
            matches = self.matcher.search(
                image, self.index, self.store,
                account_ids=set(account_ids) if account_ids is not None else None,
                limit=limit,
            )
        images = self.store.get_images(match.image_id for match in matches)
        results = []
        for match in matches:
            stored = images.get(match.image_id)
            if stored is None:
                continue
            results.append({
                "image_id": stored.id,
                "tweet_id": str(stored.tweet_id),
                "account_id": str(stored.account_id),
                "handle": stored.handle,
                "position": stored.position,
                "image_count": stored.image_count,
                "distance": int(match.distance),
                "score": round(float(match.score), 4),
            })
        return {"results": results}

    def close(self) -> None:
        with self.lock:
            if self.index.max_id != self.saved_max_id:
                self.save()


def build(config: Config, persist: bool = True) -> tuple[dict, Searcher]:
    searcher = Searcher(config, persist)
    handlers = {
        "image.search": searcher.handle_search,
        "index.sync": searcher.handle_sync,
    }
    return handlers, searcher

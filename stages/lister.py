"""Archive lister stage: list an archive folder and feed its images to indexers.

An ``archive.list`` request walks the folder (gallery-dl downloads or X
data exports), skips images already stored, and keeps a window of
``image.index`` requests in flight towards the indexer service. Progress
is reported to the pipeline as ``ingest.progress`` messages, and the reply
comes only after every image is stored or recorded as failed, so an
ingest reported done is fully searchable.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from broker.client import BrokerClient
from broker.config import Config
from broker.worker import HandlerError, RequestContext
from index.store import Store
from stages.sources.archive import list_archive
from stages.sources.base import TweetRecord

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECS = 0.5
# An image with no indexer reply within this time is recorded as failed.
IMAGE_TIMEOUT_SECS = 300.0
# Sends of one image to the indexers. The broker already delivers a request
# again when its worker dies, so one send survives one crash; sending again
# would repeat an image that crashes every indexer that reads it.
IMAGE_ATTEMPTS = 1
# Largest id SQLite stores as an integer.
MAX_ID = 2**63 - 1


class ArchiveLister:
    """Handle ``archive.list`` requests."""

    def __init__(self, config: Config):
        self.config = config
        self.store = Store(config.database_path)

    def handle_list(self, body: dict[str, Any], context: RequestContext) -> dict:
        path = str(body["path"])
        job_id = int(body.get("job_id", 0))
        context.set_activity(f"listing {path}")
        try:
            listing = list_archive(path)
        except OSError as error:
            raise HandlerError("ARCHIVE_UNREADABLE", f"cannot read {path}: {error}")
        problems = [list(problem) for problem in listing.problems]
        tweets = [tweet for tweet in listing.tweets
                  if self._valid_tweet(tweet, problems)]
        if not listing.tweets and not problems:
            problems.append([path, "no gallery-dl folder or X data export found "
                             "under this folder"])
        for problem_path, reason in problems:
            log.warning("skipped %s: %s", problem_path, reason)

        tasks = self._new_images(tweets)
        progress = _Progress(context.client(), job_id, len(tasks), problems)
        progress.report("indexing", force=True)
        context.set_activity(f"indexing {len(tasks)} images of {path}")
        _IndexingWindow(context.client(), self.config.stages.ingest_window,
                        progress).run(tasks)
        progress.report("done", force=True)
        log.info("archive %s: %d new images, %d added, %d failed, %d problems",
                 path, len(tasks), progress.added, progress.failed, len(problems))
        return {
            "total": len(tasks),
            "added": progress.added,
            "failed": progress.failed,
            "problems": progress.problems,
        }

    @staticmethod
    def _valid_tweet(tweet: TweetRecord, problems: list) -> bool:
        """Return whether the tweet's ids fit the store; record it if not."""
        location = tweet.images[0].location if tweet.images else str(tweet.tweet_id)
        if not 0 < tweet.tweet_id <= MAX_ID or not 0 < tweet.account_id <= MAX_ID:
            problems.append([location, f"tweet id {tweet.tweet_id} or account id "
                             f"{tweet.account_id} is not between 1 and {MAX_ID}"])
            return False
        bad = [image.position for image in tweet.images if image.position < 1]
        if bad:
            problems.append([location, f"image position {bad[0]} is below 1"])
            return False
        return True

    def _new_images(self, tweets: list[TweetRecord]) -> list[dict]:
        known: set[tuple[int, int]] = set()
        accounts = {(tweet.account_id, tweet.handle) for tweet in tweets}
        for account_id, handle in accounts:
            self.store.upsert_account(account_id, handle)
            known |= self.store.known_image_keys(account_id)
        return index_requests(tweets, known)


def index_requests(
    tweets: list[TweetRecord], known: set[tuple[int, int]]
) -> list[dict]:
    """Build the image.index requests for the images not in ``known``.

    ``known`` contains (tweet_id, position) of images already stored.
    """
    requests = []
    for tweet in tweets:
        for image in tweet.images:
            if (tweet.tweet_id, image.position) in known:
                continue
            requests.append({
                "kind": "image.index",
                "tweet_id": tweet.tweet_id,
                "position": image.position,
                "image_count": tweet.image_count,
                "account_id": tweet.account_id,
                "handle": tweet.handle,
                "location": image.location,
                "is_file": image.is_file,
                "created_at": tweet.created_at,
                "source": tweet.source,
            })
    return requests


class _Progress:
    """Counts of one ingest, sent to the pipeline at most twice a second."""

    def __init__(self, client: BrokerClient, job_id: int, total: int, problems: list):
        self.client = client
        self.job_id = job_id
        self.total = total
        self.done = 0
        self.added = 0
        self.failed = 0
        self.problems = problems
        self.last_report = 0.0

    def record(self, task: dict, reply: dict) -> None:
        self.done += 1
        if reply.get("ok"):
            self.added += bool(reply.get("added"))
        else:
            self.failed += 1
            self.problems.append([task["location"], reply.get("message", "")])

    def report(self, status: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.job_id or (not force and now - self.last_report
                               < PROGRESS_INTERVAL_SECS):
            return
        self.last_report = now
        # Progress is advisory: it is sent without waiting for a reply.
        self.client.send("pipeline", {
            "kind": "ingest.progress", "job_id": self.job_id, "status": status,
            "total": self.total, "done": self.done, "added": self.added,
            "failed": self.failed, "problems": self.problems[-200:],
        })


class _IndexingWindow:
    """Keep up to ``size`` image.index requests in flight until all have replies."""

    def __init__(self, client: BrokerClient, size: int, progress: _Progress):
        self.client = client
        self.size = max(1, size)
        self.progress = progress
        self.in_flight: dict[bytes, tuple[dict, int, float]] = {}

    def run(self, tasks: list[dict]) -> None:
        queue = list(reversed(tasks))
        while queue or self.in_flight:
            while queue and len(self.in_flight) < self.size:
                self._send(queue.pop(), attempt=1)
            received = self.client.receive(timeout_secs=1.0)
            if received is not None:
                self._on_reply(*received, queue)
            self._expire()
            self.progress.report("indexing")

    def _send(self, task: dict, attempt: int) -> None:
        request_id = self.client.send("indexer", task)
        self.in_flight[request_id] = (task, attempt, time.monotonic())

    def _on_reply(self, request_id: bytes, reply: dict, queue: list) -> None:
        entry = self.in_flight.pop(request_id, None)
        if entry is None:
            return  # A reply to another request of this client (progress).
        task, attempt, _ = entry
        transport_failure = reply.get("code") in ("WORKER_DIED", "NO_WORKER")
        if transport_failure and attempt < IMAGE_ATTEMPTS:
            log.warning("indexer failed on %s (%s), sending it again",
                        task["location"], reply.get("code"))
            self._send(task, attempt + 1)
            return
        self.progress.record(task, reply)

    def _expire(self) -> None:
        now = time.monotonic()
        for request_id, (task, _, sent_at) in list(self.in_flight.items()):
            if now - sent_at > IMAGE_TIMEOUT_SECS:
                del self.in_flight[request_id]
                self.progress.record(task, {
                    "ok": False, "code": "TIMED_OUT",
                    "message": f"no indexer answered within {IMAGE_TIMEOUT_SECS:.0f} s",
                })


def handlers(config: Config) -> dict:
    lister = ArchiveLister(config)
    return {"archive.list": lister.handle_list}

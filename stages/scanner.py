"""Scanner stage: resolve handles and index accounts from the configured source.

``[scans] backend`` picks the source: ``archive`` (accounts come only
from ingested archives, so a scan has nothing to fetch), ``x_api`` or
``snscrape``. One scan runs per account at a time; every request for an
account that is being scanned waits for that same scan.

A scan sends every listed image to the indexers and saves the account's
cursor (the newest tweet id seen) only after every page up to the last
is stored, so a crash at any point loses nothing: the next scan lists
the same tweets again and the indexers skip those already stored.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from broker.config import Config
from broker.worker import HandlerError, RequestContext
from index.store import Store, thread_store
from stages.lister import index_requests
from stages.sources import create_source
from stages.sources.base import (
    AccountState,
    AccountUnavailableError,
    RateLimitedError,
    SourceError,
)

log = logging.getLogger(__name__)

SCAN_WAIT_SECS = 3600.0
IMAGE_TIMEOUT_SECS = 300.0
# Failed image fetches: first retry after RETRY_BASE_SECS * 2, then doubling.
RETRY_BASE_SECS = 300.0
MAX_IMAGE_ATTEMPTS = 6
RETRY_BATCH = 200


def make_source(config: Config):
    """Build the tweet source named by ``[scans] backend``, or None for archives.

    Archive accounts are indexed by ingest jobs, so that backend needs no
    source here; the others come from the registry in ``stages.sources``.
    """
    if config.scans.backend == "archive":
        return None
    return create_source(config)


class _Scan:
    def __init__(self, account_id: int):
        self.account_id = account_id
        self.done = threading.Event()
        self.reply: dict | None = None
        self.progress = {"listed": 0, "stored": 0, "failed": 0}


class Scanner:
    def __init__(self, config: Config):
        self.config = config
        self.source_error: str | None = None
        try:
            self.source = make_source(config)
        except SourceError as error:
            # The stage keeps serving so that queries end with this message
            # instead of waiting for a scanner that restarts forever.
            log.error("tweet source unavailable: %s", error)
            self.source_error = str(error)
            self.source = None
        self.lock = threading.Lock()
        self.scans: dict[int, _Scan] = {}
        self.rate_limited_until = 0.0

    def store(self) -> Store:
        return thread_store(self.config.database_path)

    def _check_source(self) -> None:
        if self.source_error is not None:
            raise HandlerError("SOURCE_ERROR", self.source_error)

    # Lookup

    def handle_lookup(self, body: dict[str, Any], context: RequestContext) -> dict:
        handle = str(body.get("handle", "")).lstrip("@")
        self._check_source()
        if self.source is None:
            account = self.store().find_account(handle)
            if account is None:
                raise HandlerError("ACCOUNT_NOT_FOUND",
                                   f"@{handle} is in no ingested archive",
                                   state="not_found")
            return _account_reply(account)
        try:
            info = self.source.lookup_account(handle)
        except RateLimitedError as error:
            self.rate_limited_until = error.reset_at
            raise HandlerError("RATE_LIMITED", str(error), reset_at=error.reset_at)
        except AccountUnavailableError as error:
            raise HandlerError("ACCOUNT_UNAVAILABLE", str(error),
                               state=error.state.value) from error
        except SourceError as error:
            raise HandlerError("SOURCE_ERROR", str(error)) from error
        store = self.store()
        store.upsert_account(info.account_id, info.handle)
        if info.state is not AccountState.ACTIVE:
            store.set_account_state(info.account_id, info.state.value)
            raise HandlerError("ACCOUNT_UNAVAILABLE",
                               f"@{info.handle} is {info.state.value}",
                               state=info.state.value)
        store.set_account_state(info.account_id, "ok")
        return _account_reply(store.get_account(info.account_id))

    # Scans

    def handle_scan(self, body: dict[str, Any], context: RequestContext) -> dict:
        account_id = int(body["account_id"])
        handle = str(body["handle"])
        self._check_source()
        if self.source is None:
            # Archive accounts are indexed by ingest; nothing to fetch.
            return {"listed": 0, "stored": 0, "failed": 0}
        with self.lock:
            scan = self.scans.get(account_id)
            owner = scan is None
            if owner:
                scan = self.scans[account_id] = _Scan(account_id)
        if owner:
            context.set_activity(f"scanning @{handle}")
            try:
                scan.reply = self._run_scan(scan, handle, context)
            except HandlerError as error:
                scan.reply = {"ok": False, "code": error.code, "message": str(error),
                              **error.fields}
            finally:
                scan.done.set()
                with self.lock:
                    self.scans.pop(account_id, None)
        else:
            context.set_activity(f"waiting for the scan of @{handle}")
            scan.done.wait(SCAN_WAIT_SECS)
        reply = dict(scan.reply or {"ok": False, "code": "TIMED_OUT",
                                    "message": f"scan of @{handle} did not end"})
        if not reply.get("ok", True):
            raise HandlerError(reply["code"], reply.get("message", ""),
                               **{k: v for k, v in reply.items()
                                  if k not in ("ok", "code", "message")})
        return reply

    def _run_scan(self, scan: _Scan, handle: str, context: RequestContext) -> dict:
        store = self.store()
        account = store.get_account(scan.account_id) or {}
        since = None
        if account.get("first_scan_done") and account.get("cursor"):
            since = int(account["cursor"])
        cursor = None
        client = context.client()
        try:
            for page in self.source.list_pages(handle, since):
                if cursor is None and page.newest_id is not None:
                    cursor = page.newest_id
                self._index_page(page, client, scan, store)
        except RateLimitedError as error:
            self.rate_limited_until = error.reset_at
            raise HandlerError("RATE_LIMITED", str(error), reset_at=error.reset_at)
        except AccountUnavailableError as error:
            store.set_account_state(scan.account_id, error.state.value, str(error))
            raise HandlerError("ACCOUNT_UNAVAILABLE", str(error),
                               state=error.state.value) from error
        except SourceError as error:
            raise HandlerError("SOURCE_ERROR", str(error)) from error
        if scan.progress["failed"] and self._transient_failures(store, scan.account_id):
            # Images left to retry keep the cursor where it was.
            log.warning("scan of @%s left images to retry; cursor not moved", handle)
            cursor = None
        store.finish_account_scan(scan.account_id,
                                  None if cursor is None else str(cursor))
        log.info("scan of @%s done: %s", handle, scan.progress)
        return dict(scan.progress)

    def _transient_failures(self, store: Store, account_id: int) -> bool:
        return any(not row["permanent"] for row in store.failed_images(account_id))

    def _index_page(self, page, client, scan: _Scan, store: Store) -> None:
        known = store.known_image_keys(scan.account_id)
        scan.progress["listed"] += sum(len(tweet.images) for tweet in page.tweets)
        pending = {
            client.send("indexer", task): task
            for task in index_requests(list(page.tweets), known)
        }
        deadline = time.monotonic() + IMAGE_TIMEOUT_SECS
        while pending and time.monotonic() < deadline:
            received = client.receive(timeout_secs=1.0)
            if received is None:
                continue
            task = pending.pop(received[0], None)
            if task is None:
                continue
            if received[1].get("ok"):
                scan.progress["stored"] += 1
            else:
                scan.progress["failed"] += 1
        if pending:
            raise HandlerError("TIMED_OUT", f"{len(pending)} images of a page were "
                               f"not indexed within {IMAGE_TIMEOUT_SECS:.0f} s")

    # Periodic work, asked for by the maintenance stage

    def handle_update_due(self, body: dict[str, Any], context: RequestContext):
        """Scan the accounts whose last update is older than the update period.

        At most ``ceil(accounts * interval / period)`` accounts are scanned
        per call, the oldest first, so updates spread evenly over the period.
        """
        if self.source is None:
            return {"scanned": []}
        period = self.config.scans.update_every_days * 86400.0
        interval = float(body.get("interval_secs") or 60.0)
        accounts = [a for a in self.store().list_accounts()
                    if a["first_scan_done"] and a["state"] == "ok"]
        due = sorted((a for a in accounts
                      if (a["last_update_at"] or 0) + period <= time.time()),
                     key=lambda a: a["last_update_at"] or 0)
        budget = max(1, -(-len(accounts) * int(interval) // int(max(period, 1))))
        scanned = []
        for account in due[:budget]:
            try:
                self.handle_scan({"account_id": account["id"],
                                  "handle": account["handle"]}, context)
                scanned.append(account["handle"])
            except HandlerError as error:
                log.warning("update of @%s failed: %s %s", account["handle"],
                            error.code, error)
                if error.code == "RATE_LIMITED":
                    break
        return {"scanned": scanned}

    def handle_retry_images(self, body: dict[str, Any], context: RequestContext):
        """Index again the images whose fetch failed for a transient reason.

        Each failure doubles the wait before the next attempt; after
        ``MAX_IMAGE_ATTEMPTS`` the failure becomes permanent.
        """
        store = self.store()
        now = time.time()
        rows = [row for row in store.failed_images()
                if not row["permanent"] and (row["next_attempt_at"] or 0) <= now]
        client = context.client()
        retried = stored = 0
        for row in rows[:RETRY_BATCH]:
            retried += 1
            account = store.get_account(row["account_id"]) or {}
            reply = client.request("indexer", {
                "kind": "image.index", "tweet_id": row["tweet_id"],
                "position": row["position"], "image_count": row["position"],
                "account_id": row["account_id"], "handle": account.get("handle"),
                "location": row["location"], "is_file": False, "source": "retry",
            }, timeout_secs=IMAGE_TIMEOUT_SECS)
            if reply.get("ok"):
                stored += 1
                continue
            attempts = row["attempts"] + 1
            permanent = attempts >= MAX_IMAGE_ATTEMPTS or reply.get("permanent")
            store.record_failed_image(
                row["tweet_id"], row["position"], row["account_id"], row["location"],
                reply.get("message", ""), bool(permanent),
                retry_after_secs=RETRY_BASE_SECS * 2 ** attempts,
            )
        return {"retried": retried, "stored": stored}

    def handle_status(self, body: dict[str, Any], context: RequestContext) -> dict:
        with self.lock:
            running = {str(k): dict(v.progress) for k, v in self.scans.items()}
        return {"backend": self.config.scans.backend, "running": running,
                "rate_limited_until": self.rate_limited_until}


def _account_reply(account: dict) -> dict:
    return {
        "account_id": str(account["id"]),
        "handle": account["handle"],
        "state": account["state"],
        "first_scan_done": bool(account["first_scan_done"]),
        "last_update_at": account["last_update_at"],
    }


def handlers(config: Config) -> dict:
    scanner = Scanner(config)
    return {
        "account.lookup": scanner.handle_lookup,
        "account.scan": scanner.handle_scan,
        "scanner.status": scanner.handle_status,
        "accounts.update_due": scanner.handle_update_due,
        "images.retry": scanner.handle_retry_images,
    }

"""Pipeline stage: owns user requests and ingest jobs and drives them.

The HTTP API and the command line talk only to this service. It keeps
each request's status in ``requests_state``, so a restart resumes. It
sends the work to the searcher, the lister and the scanner, and enforces
the per-address limit on unfinished requests.

Statuses follow the earlier system: ``WAIT_LINK_FINDER``, ``LINK_FINDER``,
``WAIT_INDEX_ACCOUNTS_TWEETS``, ``INDEX_ACCOUNTS_TWEETS``,
``WAIT_IMAGE_REVERSE_SEARCH``, ``IMAGE_REVERSE_SEARCH``, ``END``.
"""

from __future__ import annotations

import collections
import logging
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from broker.client import BrokerError, thread_client
from broker.config import Config
from broker.worker import HandlerError, RequestContext
from index.store import Store, thread_store
from stages.requests_state import RequestsState

log = logging.getLogger(__name__)

HANDLE_PATTERN = re.compile(r"^@?[A-Za-z0-9_]{1,15}$")
SEARCH_TIMEOUT_SECS = 120.0
# An ingest reply may take as long as indexing the whole archive.
INGEST_TIMEOUT_SECS = 7 * 24 * 3600.0
INGEST_ATTEMPTS = 3
# Error codes caused by the user's own input; such requests are kept briefly.
INPUT_ERRORS = frozenset({
    "NOT_AN_URL", "NOT_AN_ARTWORK_PAGE", "UNSUPPORTED_WEBSITE", "URL_TOO_LONG",
    "ERROR_DURING_REVERSE_SEARCH", "NOT_AN_IMAGE", "TRUNCATED_IMAGE",
    "QUERY_IMAGE_TOO_BIG", "UNSUPPORTED_IMAGE",
})
# Decoding error codes mapped to the earlier system's request error codes.
IMAGE_ERROR_CODES = {"IMAGE_TOO_LARGE": "QUERY_IMAGE_TOO_BIG"}


def empty_request(status: str | None = "WAIT_IMAGE_REVERSE_SEARCH") -> dict:
    return {
        "status": status,
        "has_first_time_scan": False,
        "twitter_accounts": [],
        "results": [],
        "error": None,
        "message": None,
    }


class InFlightCounter:
    """Unfinished requests per client address."""

    def __init__(self, limit: int, unlimited: tuple[str, ...]):
        self.limit = limit
        self.unlimited = set(unlimited)
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def acquire(self, ip: str | None) -> bool:
        if ip is None or ip in self.unlimited:
            return True
        with self.lock:
            if self.counts[ip] >= self.limit:
                return False
            self.counts[ip] += 1
            return True

    def release(self, ip: str | None) -> None:
        if ip is None or ip in self.unlimited:
            return
        with self.lock:
            self.counts[ip] -= 1
            if self.counts[ip] <= 0:
                del self.counts[ip]


class Pipeline:
    """Handlers of the ``pipeline`` service."""

    def __init__(self, config: Config):
        self.config = config
        self.state = RequestsState(config.data_folder / "requests.sqlite3")
        self.in_flight = InFlightCounter(
            config.http.max_requests_in_flight_per_ip,
            config.http.unlimited_ip_addresses,
        )
        self.jobs_lock = threading.Lock()
        self.running_jobs: dict[int, dict] = {}
        self._resume_jobs()
        self._end_interrupted_searches()
        from stages.query_flow import QueryFlow

        self.queries = QueryFlow(self)
        self.queries.resume()

    def store(self) -> Store:
        return thread_store(self.config.database_path)

    # Direct image search

    def handle_search_submit(self, body: dict[str, Any], context: RequestContext):
        data = body.get("image")
        if not isinstance(data, bytes) or not data:
            raise HandlerError("IMAGE_MISSING", "the request carries no image")
        accounts = self._resolve_account(body.get("account"))
        ip = body.get("ip")
        if not self.in_flight.acquire(ip):
            raise HandlerError(
                "YOUR_IP_HAS_MAX_PROCESSING_REQUESTS",
                f"{ip} already has {self.in_flight.limit} unfinished requests; "
                "wait for one to end",
            )
        identifier = secrets.token_hex(16)
        request = empty_request("IMAGE_REVERSE_SEARCH")
        request["twitter_accounts"] = accounts
        request["identifier"] = identifier
        self.state.save_request(identifier, "search", request)
        context.set_activity(f"search {identifier}")
        try:
            self._run_search(request, data, accounts, context)
        finally:
            self.in_flight.release(ip)
            request["status"] = "END"
            self.state.save_request(identifier, "search", request)
        if request["error"] is not None:
            # The caller sees the failure by its code; the finished request
            # stays readable under its identifier.
            fields = {key: value for key, value in _public(request).items()
                      if key not in ("error", "message")}
            raise HandlerError(request["error"], request["message"] or "", **fields)
        return _public(request)

    def _resolve_account(self, handle: Any) -> list[dict] | None:
        if handle is None or handle == "":
            return None
        if not isinstance(handle, str) or not HANDLE_PATTERN.match(handle):
            raise HandlerError(
                "INVALID_TWITTER_ACCOUNT",
                f"invalid account name {str(handle)[:40]!r}: expected 1 to 15 "
                "letters, digits or underscores",
            )
        account = self.store().find_account(handle)
        if account is None:
            raise HandlerError(
                "TWITTER_ACCOUNT_NOT_INDEXED",
                f"account {handle!r} is not in the database; ingest or scan it first",
            )
        return [{"account_name": account["handle"], "account_id": str(account["id"])}]

    def _run_search(self, request, data, accounts, context) -> None:
        account_ids = None if accounts is None else [
            int(account["account_id"]) for account in accounts
        ]
        try:
            reply = context.client().request(
                "searcher",
                {"kind": "image.search", "image": data, "account_ids": account_ids,
                 "limit": 10},
                timeout_secs=SEARCH_TIMEOUT_SECS,
            )
        except BrokerError as error:
            log.error("search %s failed: %s", request["identifier"], error)
            _set_error(request, "PROCESSING_ERROR", str(error))
            return
        if not reply.get("ok"):
            code = reply.get("code", "PROCESSING_ERROR")
            _set_error(request, IMAGE_ERROR_CODES.get(code, code),
                       reply.get("message"))
            request["image_error"] = code
            return
        request["results"] = [_public_result(result) for result in reply["results"]]
        if accounts is None:
            seen = {}
            for result in reply["results"]:
                seen.setdefault(result["account_id"], result["handle"])
            request["twitter_accounts"] = [
                {"account_name": handle, "account_id": account_id}
                for account_id, handle in seen.items()
            ]

    def handle_search_get(self, body: dict[str, Any], context: RequestContext):
        identifier = body.get("identifier")
        if not isinstance(identifier, str) or not identifier:
            raise HandlerError("IDENTIFIER_MISSING", "no identifier given")
        request = self.state.load_request(identifier)
        if request is None:
            raise HandlerError(
                "NO_SUCH_REQUEST",
                f"no request with identifier {identifier[:64]!r}; it may have "
                "expired",
            )
        return _public(request)

    # Ingest jobs

    def handle_ingest_submit(self, body: dict[str, Any], context: RequestContext):
        path = body.get("path")
        if not isinstance(path, str) or not path:
            raise HandlerError("PATH_MISSING", "no archive path given")
        folder = Path(path).expanduser().resolve()
        if not folder.exists():
            raise HandlerError("PATH_NOT_FOUND", f"archive folder not found: {folder}")
        if not folder.is_dir():
            raise HandlerError("NOT_A_FOLDER",
                               f"{folder} is a file; give the archive's folder")
        job = {"path": str(folder), "status": "listing", "total": 0, "done": 0,
               "added": 0, "failed": 0, "problems": [], "error": None,
               "started_at": time.time()}
        job_id = self.state.create_job(job)
        job["id"] = job_id
        self.state.save_job(job_id, job)
        self._start_job(job)
        return {"job": job}

    def _start_job(self, job: dict) -> None:
        with self.jobs_lock:
            self.running_jobs[job["id"]] = job
        thread = threading.Thread(target=self._run_job, args=(job,), daemon=True,
                                  name=f"ingest-{job['id']}")
        thread.start()

    def _run_job(self, job: dict) -> None:
        client = thread_client(self.config.broker.endpoint)
        log.info("ingest %d of %s started", job["id"], job["path"])
        for attempt in range(1, INGEST_ATTEMPTS + 1):
            try:
                reply = client.request(
                    "lister", {"kind": "archive.list", "job_id": job["id"],
                               "path": job["path"]},
                    timeout_secs=INGEST_TIMEOUT_SECS,
                )
                break
            except BrokerError as error:
                reply = {"ok": False, "code": error.code, "message": str(error)}
                if error.code not in ("BROKER_RESTARTED", "WORKER_DIED"):
                    break
                # Listing again is cheap: images already stored are skipped.
                log.warning("ingest %d: %s; listing again (attempt %d)", job["id"],
                            error, attempt + 1)
        with self.jobs_lock:
            if reply.get("ok"):
                job.update(status="done", total=reply["total"], done=reply["total"],
                           added=reply["added"], failed=reply["failed"],
                           problems=reply["problems"][-200:])
            else:
                job.update(status="failed",
                           error=f"{reply.get('code')}: {reply.get('message')}")
            job["finished_at"] = time.time()
            self.running_jobs.pop(job["id"], None)
        self.state.save_job(job["id"], job)
        log.info("ingest %d of %s %s: %d added, %d failed", job["id"], job["path"],
                 job["status"], job["added"], job["failed"])

    def handle_ingest_progress(self, body: dict[str, Any], context: RequestContext):
        job_id = int(body.get("job_id", 0))
        with self.jobs_lock:
            job = self.running_jobs.get(job_id)
            if job is None or job["status"] in ("done", "failed"):
                return {}
            for key in ("total", "done", "added", "failed"):
                job[key] = int(body.get(key, job[key]))
            job["problems"] = list(body.get("problems", job["problems"]))[-200:]
            # The job becomes done only when the lister's reply arrives.
            job["status"] = "indexing"
        return {}

    def handle_ingest_get(self, body: dict[str, Any], context: RequestContext):
        job_id = body.get("job_id")
        with self.jobs_lock:
            job = self.running_jobs.get(job_id)
            if job is not None:
                return {"job": dict(job)}
        job = self.state.load_job(int(job_id)) if isinstance(job_id, int) else None
        if job is None:
            raise HandlerError("NO_SUCH_JOB", f"no ingest job {job_id!r}")
        return {"job": job}

    def _end_interrupted_searches(self) -> None:
        """End the image searches a previous pipeline process left unfinished.

        Their image bytes were never stored, so they cannot be run again.
        A client polling one gets an error instead of waiting forever.
        """
        for identifier, request in self.state.unfinished_requests("search"):
            request["status"] = "END"
            _set_error(request, "PROCESSING_ERROR",
                       "the search was interrupted by a restart; send it again")
            self.state.save_request(identifier, "search", request)
            log.warning("search %s ended: interrupted by a restart", identifier)

    def _resume_jobs(self) -> None:
        for job in self.state.unfinished_jobs():
            log.info("resuming ingest %d of %s", job["id"], job["path"])
            job["status"] = "listing"
            self._start_job(job)

    # Artwork queries and account scans

    def handle_query_submit(self, body: dict[str, Any], context: RequestContext):
        return _public(self.queries.submit(body.get("url"), body.get("ip")))

    def handle_scan_submit(self, body: dict[str, Any], context: RequestContext):
        handle = body.get("handle")
        if not isinstance(handle, str) or not HANDLE_PATTERN.match(handle):
            raise HandlerError("INVALID_TWITTER_ACCOUNT",
                               f"invalid account name {str(handle)[:40]!r}")
        client = context.client()
        context.set_activity(f"scan of @{handle}")
        account = client.request("scanner", {"kind": "account.lookup",
                                             "handle": handle}, timeout_secs=120)
        if not account.get("ok"):
            raise HandlerError(account["code"], account.get("message", ""))
        key = f"scan:{account['account_id']}"
        request = {"status": "INDEX_ACCOUNTS_TWEETS", "handle": account["handle"],
                   "account_id": account["account_id"]}
        self.state.save_request(key, "scan", request)
        reply = client.request("scanner", {
            "kind": "account.scan", "account_id": int(account["account_id"]),
            "handle": account["handle"]}, timeout_secs=3600)
        request["status"] = "END"
        request["result"] = {k: v for k, v in reply.items() if k != "ok"}
        self.state.save_request(key, "scan", request)
        if not reply.get("ok"):
            raise HandlerError(reply["code"], reply.get("message", ""))
        return request

    # Statistics and retention

    def handle_stats(self, body: dict[str, Any], context: RequestContext):
        counts = self.store().counts()
        unfinished = self.state.count_unfinished()
        with self.jobs_lock:
            pending = sum(job["total"] - job["done"] for job in self.running_jobs.values())
            jobs = len(self.running_jobs)
        scanner = self._scanner_status(context)
        return {
            **counts,
            "scan_backend": scanner.get("backend"),
            "rate_limited_until": scanner.get("rate_limited_until") or None,
            "running_scans": scanner.get("running", {}),
            "processing_user_requests_count": unfinished.get("search", 0)
            + unfinished.get("query", 0),
            "processing_scan_requests_count": unfinished.get("scan", 0),
            "processing_ingest_jobs_count": jobs,
            "pending_tweets_count": pending,
        }

    def _scanner_status(self, context: RequestContext) -> dict:
        try:
            reply = context.client().request(
                "scanner", {"kind": "scanner.status"}, timeout_secs=2.0)
        except BrokerError as error:
            log.warning("scanner status unavailable: %s", error)
            return {}
        return reply if reply.get("ok") else {}

    def handle_drop_finished(self, body: dict[str, Any], context: RequestContext):
        dropped = self.state.drop_finished(self._retention)
        if dropped:
            log.info("dropped %d finished requests", dropped)
        return {"dropped": dropped}

    def _retention(self, request: dict) -> float:
        keep = self.config.requests
        if "account_id" in request and "handle" in request:
            return self.config.scans.keep_finished_secs
        error = request.get("error")
        if error is None:
            return keep.keep_finished_secs
        if error in INPUT_ERRORS:
            return keep.keep_input_error_secs
        return keep.keep_failed_secs


def _set_error(request: dict, code: str, message: str | None) -> None:
    request["error"] = code
    request["message"] = message


def _public_result(result: dict) -> dict:
    return {
        "tweet_id": str(result["tweet_id"]),
        "account_id": str(result["account_id"]),
        "image_position": f"{result['position']}/{result['image_count']}",
        "distance": int(result["distance"]),
    }


def _public(request: dict) -> dict:
    keys = ("status", "has_first_time_scan", "twitter_accounts", "results", "error",
            "message", "identifier", "image_error")
    return {key: request.get(key) for key in keys if key in request}


def handlers(config: Config) -> dict:
    pipeline = Pipeline(config)
    return {
        "search.submit": pipeline.handle_search_submit,
        "search.get": pipeline.handle_search_get,
        "ingest.submit": pipeline.handle_ingest_submit,
        "ingest.progress": pipeline.handle_ingest_progress,
        "ingest.get": pipeline.handle_ingest_get,
        "stats.get": pipeline.handle_stats,
        "query.submit": pipeline.handle_query_submit,
        "scan.submit": pipeline.handle_scan_submit,
        "requests.drop_finished": pipeline.handle_drop_finished,
    }

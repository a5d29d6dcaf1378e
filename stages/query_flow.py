"""The lifecycle of a ``/query`` request, from an artwork URL to tweets.

1. ``LINK_FINDER``: the link finder identifies the artwork and the
   artist's handles; each handle is resolved by the scanner and unusable
   accounts (not found, suspended, protected) are dropped.
2. ``INDEX_ACCOUNTS_TWEETS``: accounts never scanned, or last updated
   less than ``UPDATE_MARGIN_SECS`` after the artwork was published, are
   scanned first, so a recent artwork's tweet is indexed before the search.
3. ``IMAGE_REVERSE_SEARCH``: the artwork's image is fetched and searched
   among the valid accounts' images.

Requests are keyed by the canonical artwork (site, id, page), so every
URL form of one artwork joins the same request.
"""

from __future__ import annotations

import logging
import threading
import time

from broker.client import BrokerError, thread_client
from broker.worker import HandlerError
from stages.link_finder import LinkFinderError, parse_artwork_url

log = logging.getLogger(__name__)

# The artist may post on X some days after the artwork site.
UPDATE_MARGIN_SECS = 7 * 24 * 3600.0
STEP_TIMEOUT_SECS = 120.0
# A rate-limited lookup or scan is tried again after the limit resets, this
# many times, waiting at most MAX_RATE_LIMIT_WAIT_SECS each time.
RATE_LIMIT_ATTEMPTS = 3
MAX_RATE_LIMIT_WAIT_SECS = 900.0
# Stage failure codes shown to users under the earlier system's code.
PUBLIC_CODES = {"SITE_ERROR": "PROCESSING_ERROR", "IMAGE_TOO_LARGE": "QUERY_IMAGE_TOO_BIG"}
SCAN_TIMEOUT_SECS = 3600.0


class QueryFlow:
    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.config = pipeline.config
        self.lock = threading.Lock()
        self.running: dict[str, dict] = {}

    def submit(self, url: object, ip: str | None) -> dict:
        if not isinstance(url, str) or not url.strip():
            raise HandlerError("NO_URL_FIELD", "no artwork URL given")
        try:
            key = str(parse_artwork_url(url.strip(), self.config.http.max_url_chars))
        except LinkFinderError as error:
            raise HandlerError(error.code, str(error)) from error
        request_key = f"query:{key}"
        with self.lock:
            request = self.running.get(request_key)
            if request is None:
                request = self.pipeline.state.load_request(request_key)
            if request is not None:
                return dict(request)
            if not self.pipeline.in_flight.acquire(ip):
                raise HandlerError(
                    "YOUR_IP_HAS_MAX_PROCESSING_REQUESTS",
                    f"{ip} already has {self.pipeline.in_flight.limit} unfinished "
                    "requests; wait for one to end",
                )
            request = {
                "status": "WAIT_LINK_FINDER", "has_first_time_scan": False,
                "twitter_accounts": [], "results": [], "error": None,
                "message": None, "url": url.strip(), "key": key, "ip": ip,
            }
            self.running[request_key] = request
            self.pipeline.state.save_request(request_key, "query", request)
        threading.Thread(target=self._run, args=(request_key, request), daemon=True,
                         name=f"query-{key}").start()
        return dict(request)

    def resume(self) -> None:
        """Start again the queries a previous pipeline process left unfinished."""
        for request_key, request in self.pipeline.state.unfinished_requests("query"):
            request["status"] = "WAIT_LINK_FINDER"
            with self.lock:
                self.running[request_key] = request
            threading.Thread(target=self._run, args=(request_key, request),
                             daemon=True).start()

    # The steps

    def _run(self, request_key: str, request: dict) -> None:
        client = thread_client(self.config.broker.endpoint)
        try:
            self._steps(request_key, request, client)
        except _Stop:
            pass
        except BrokerError as error:
            log.error("query %s failed: %s", request_key, error)
            self._fail(request, "PROCESSING_ERROR", str(error))
        except Exception as error:  # noqa: BLE001 - the request must end
            log.exception("query %s failed", request_key)
            self._fail(request, "PROCESSING_ERROR", str(error))
        request["status"] = "END"
        self.pipeline.state.save_request(request_key, "query", request)
        self.pipeline.in_flight.release(request.get("ip"))
        with self.lock:
            self.running.pop(request_key, None)
        log.info("query %s ended: %s, %d results", request_key, request["error"],
                 len(request["results"]))

    def _steps(self, request_key: str, request: dict, client) -> None:
        self._set(request_key, request, "LINK_FINDER")
        artwork = self._call(client, "link_finder",
                             {"kind": "artwork.find", "url": request["url"]}, request)
        accounts = self._valid_accounts(artwork["handles"], client, request)
        request["twitter_accounts"] = [
            {"account_name": a["handle"], "account_id": a["account_id"]}
            for a in accounts
        ]
        self._set(request_key, request, "WAIT_INDEX_ACCOUNTS_TWEETS")
        self._set(request_key, request, "INDEX_ACCOUNTS_TWEETS")
        searchable = self._scan_accounts(accounts, artwork.get("published_at"),
                                         client, request, request_key)
        self._set(request_key, request, "WAIT_IMAGE_REVERSE_SEARCH")
        self._set(request_key, request, "IMAGE_REVERSE_SEARCH")
        fetched = self._call(client, "link_finder",
                             {"kind": "image.fetch", "urls": artwork["image_urls"],
                              "referer": request["url"]}, request)
        reply = client.request("searcher", {
            "kind": "image.search", "image": fetched["image"],
            "account_ids": [int(a["account_id"]) for a in searchable], "limit": 10,
        }, timeout_secs=STEP_TIMEOUT_SECS)
        if not reply.get("ok"):
            code = "ERROR_DURING_REVERSE_SEARCH"
            if reply.get("code") == "IMAGE_TOO_LARGE":
                code = "QUERY_IMAGE_TOO_BIG"
            self._fail(request, code, reply.get("message"))
            raise _Stop()
        from stages.pipeline import _public_result

        request["results"] = [_public_result(r) for r in reply["results"]]

    def _valid_accounts(self, handles: list[str], client, request) -> list[dict]:
        accounts = []
        for handle in handles[:20]:
            reply = self._scanner_call(client, {"kind": "account.lookup",
                                                "handle": handle},
                                       STEP_TIMEOUT_SECS, request)
            if reply.get("ok"):
                if all(a["account_id"] != reply["account_id"] for a in accounts):
                    accounts.append(reply)
            else:
                log.info("account @%s dropped: %s", handle, reply.get("message"))
        if not accounts:
            self._fail(request, "NO_VALID_TWITTER_ACCOUNT_FOUND",
                       f"none of the accounts found ({', '.join(handles[:20])}) can "
                       "be searched: not found, suspended, protected or not indexed")
            raise _Stop()
        return accounts

    def _scan_accounts(self, accounts, published_at, client, request, request_key):
        """Scan the accounts that need it; return those that can be searched."""
        searchable = []
        for account in accounts:
            last = account.get("last_update_at")
            first_time = not account.get("first_scan_done")
            stale = (published_at is not None and last is not None
                     and last - UPDATE_MARGIN_SECS < published_at)
            if not (first_time or stale):
                searchable.append(account)
                continue
            if first_time:
                request["has_first_time_scan"] = True
                self.pipeline.state.save_request(request_key, "query", request)
            reply = self._scanner_call(client, {
                "kind": "account.scan", "account_id": int(account["account_id"]),
                "handle": account["handle"],
            }, SCAN_TIMEOUT_SECS, request)
            if reply.get("ok") or not first_time:
                # An update that failed still leaves the older tweets searchable.
                searchable.append(account)
            else:
                log.warning("scan of @%s failed: %s", account["handle"],
                            reply.get("message"))
        if not searchable:
            self._fail(request, "PROCESSING_ERROR",
                       "no account of the artist could be indexed")
            raise _Stop()
        return searchable

    def _scanner_call(self, client, body: dict, timeout_secs: float, request):
        """Send a request to the scanner, waiting out X API rate limits."""
        for _attempt in range(RATE_LIMIT_ATTEMPTS):
            reply = client.request("scanner", body, timeout_secs=timeout_secs)
            if reply.get("code") != "RATE_LIMITED":
                return reply
            wait = min(max(0.0, float(reply.get("reset_at") or 0) - time.time()) + 1,
                       MAX_RATE_LIMIT_WAIT_SECS)
            log.info("%s rate limited, trying again in %.0f s", body["kind"], wait)
            request["message"] = f"waiting {wait:.0f} s for the X API rate limit"
            time.sleep(wait)
            request["message"] = None
        return reply

    def _call(self, client, service: str, body: dict, request: dict) -> dict:
        reply = client.request(service, body, timeout_secs=STEP_TIMEOUT_SECS)
        if not reply.get("ok"):
            code = reply.get("code", "PROCESSING_ERROR")
            self._fail(request, PUBLIC_CODES.get(code, code), reply.get("message"))
            raise _Stop()
        return reply

    def _set(self, request_key: str, request: dict, status: str) -> None:
        request["status"] = status
        self.pipeline.state.save_request(request_key, "query", request)

    @staticmethod
    def _fail(request: dict, code: str, message: str | None) -> None:
        request["error"] = code
        request["message"] = message


class _Stop(Exception):
    """Ends a query early; the request already carries its error."""


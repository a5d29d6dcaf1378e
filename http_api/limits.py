"""Per-address request rate limit and the client address of a request."""

from __future__ import annotations

import threading
import time

import falcon

from broker.config import HttpConfig

# Paths that are never rate limited: they are cheap and cached.
UNLIMITED_PATHS = frozenset({"/stats", "/config"})
# Forget addresses idle for longer than this, so the table stays small.
FORGET_AFTER_SECS = 600.0


def client_address(req: falcon.Request, trust_forwarded_for: bool) -> str:
    """Return the client's address: the first X-Forwarded-For hop if trusted."""
    if trust_forwarded_for:
        forwarded = req.get_header("X-Forwarded-For")
        if forwarded:
            return forwarded.split(",")[0].strip()
    return req.remote_addr or "unknown"


class RateLimiter:
    """Accept at most one request per address every ``min_request_interval_secs``.

    A rejected request gets 429 and does not move the address's window,
    so a client that retries too fast is not locked out for longer.
    """

    def __init__(self, http: HttpConfig):
        self.http = http
        self.interval = http.min_request_interval_secs
        self.unlimited = set(http.unlimited_ip_addresses)
        self.last_accepted: dict[str, float] = {}
        self.lock = threading.Lock()
        self.next_cleanup = time.monotonic() + FORGET_AFTER_SECS

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        address = client_address(req, self.http.trust_forwarded_for)
        req.context.client_address = address
        if self.interval <= 0 or address in self.unlimited:
            return
        if req.path in UNLIMITED_PATHS or req.method == "OPTIONS":
            return
        now = time.monotonic()
        with self.lock:
            last = self.last_accepted.get(address)
            if last is not None and now - last <= self.interval:
                retry_after = max(1, int(self.interval - (now - last) + 0.999))
                raise falcon.HTTPTooManyRequests(
                    title="Too Many Requests",
                    description=(
                        f"at most one request every {self.interval:g} s per address"
                    ),
                    retry_after=retry_after,
                )
            self.last_accepted[address] = now
            if now > self.next_cleanup:
                self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        self.last_accepted = {
            address: last for address, last in self.last_accepted.items()
            if now - last < FORGET_AFTER_SECS
        }
        self.next_cleanup = now + FORGET_AFTER_SECS

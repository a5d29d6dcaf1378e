"""The HTTP API process: the Falcon application served by waitress."""

from __future__ import annotations

import json
import logging
import time

import waitress

from broker.config import Config
from http_api.app import create_app

log = logging.getLogger(__name__)

# A client that stops sending mid-request gets 408 after this long.
CHANNEL_TIMEOUT_SECS = 10
# How often waitress looks for such idle connections.
CLEANUP_INTERVAL_SECS = 2


class ApiServer:
    def __init__(self, config: Config):
        http = config.http
        self.server = waitress.create_server(
            create_app(config),
            host=http.host,
            port=http.port,
            threads=http.threads,
            ident="art2tweet",
            channel_timeout=CHANNEL_TIMEOUT_SECS,
            # Waitress rejects bodies over this with 413 before the app runs.
            max_request_body_size=http.max_upload_bytes + 1024 * 1024,
            connection_limit=200,
            expose_tracebacks=False,
            cleanup_interval=CLEANUP_INTERVAL_SECS,
        )
        self._close_idle = self.server.maintenance
        self.server.maintenance = self._answer_stalled_requests

    def run(self) -> None:
        log.info("HTTP API listening on http://%s:%s", self.server.effective_host,
                 self.server.effective_port)
        try:
            self.server.run()
        except _StopServing:
            pass
        self.server.close()
        self.server.task_dispatcher.shutdown(timeout=5)
        log.info("HTTP API stopped")

    def _answer_stalled_requests(self, now: float) -> None:
        """Send 408 to connections stuck in the middle of a request.

        Waitress reads a whole request before the application receives it, so a
        body shorter than its Content-Length would otherwise end in a silent
        close. This runs in waitress's event loop thread.
        """
        cutoff = now - CHANNEL_TIMEOUT_SECS
        for channel in list(self.server.active_channels.values()):
            stalled = (not channel.requests and channel.request is not None
                       and channel.last_activity < cutoff)
            if not stalled:
                continue
            log.info("request from %s stalled for %d s; responding 408",
                     channel.addr, CHANNEL_TIMEOUT_SECS)
            channel.write_soon(_timeout_response())
            channel.request = None
            channel.close_when_flushed = True
            channel.last_activity = time.time()
        self._close_idle(now)

    def stop(self) -> None:
        """Stop serving; call it from a signal handler in the serving thread.

        Closing the listening socket from the handler would leave waitress's
        select() on a closed descriptor, so the loop is interrupted instead.
        """
        raise _StopServing()


class _StopServing(BaseException):
    """Raised in the serving thread to leave waitress's event loop."""


def _timeout_response() -> bytes:
    body = json.dumps({
        "status": None, "has_first_time_scan": False, "twitter_accounts": [],
        "results": [], "error": "REQUEST_TIMEOUT",
        "message": f"the request was incomplete after {CHANNEL_TIMEOUT_SECS} s: "
        "its body is shorter than its Content-Length",
    }).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        "Server: art2tweet\r\n\r\n"
    ).encode()
    return head + body

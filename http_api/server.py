"""The HTTP API process: the Falcon application served by waitress."""

from __future__ import annotations

import logging

import waitress

from broker.config import Config
from http_api.app import create_app

log = logging.getLogger(__name__)

# A client that stops sending mid-request is disconnected after this long.
CHANNEL_TIMEOUT_SECS = 15


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
            # Bodies over this are answered 413 by waitress before the app runs.
            max_request_body_size=http.max_upload_bytes + 1024 * 1024,
            connection_limit=200,
            expose_tracebacks=False,
        )

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

    def stop(self) -> None:
        """Stop serving; call it from a signal handler in the serving thread.

        Closing the listening socket from the handler would leave waitress's
        select() on a closed descriptor, so the loop is interrupted instead.
        """
        raise _StopServing()


class _StopServing(BaseException):
    """Raised in the serving thread to leave waitress's event loop."""

"""The Falcon application: HTTP requests in, pipeline requests out.

The API keeps no database or index. Each waitress thread has its own
broker client (``broker.client.thread_client``) and every endpoint is a
request to the ``pipeline`` service.

Endpoints: ``GET /``, ``GET|POST /query``, ``POST /search``,
``GET /search?identifier=``, ``GET /stats``, ``GET /config``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import falcon

from broker.client import BrokerError, thread_client
from broker.config import Config
from http_api.errors import ApiError
from http_api.limits import RateLimiter

log = logging.getLogger(__name__)

SERVER_NAME = "art2tweet"
STATS_CACHE_SECS = 3.0
PIPELINE_TIMEOUT_SECS = 150.0
EMPTY_DOCUMENT = {
    "status": None,
    "has_first_time_scan": False,
    "twitter_accounts": [],
    "results": [],
    "error": None,
    "message": None,
}


def error_document(code: str, message: str, document: dict | None = None) -> dict:
    body = dict(EMPTY_DOCUMENT)
    if document:
        body.update(document)
    body["error"] = code
    body["message"] = message
    return body


class Pipeline:
    """Send requests to the pipeline service and map its failures."""

    def __init__(self, config: Config):
        self.endpoint = config.broker.endpoint

    def call(self, body: dict[str, Any], timeout_secs: float = PIPELINE_TIMEOUT_SECS):
        try:
            reply = thread_client(self.endpoint).request(
                "pipeline", body, timeout_secs=timeout_secs
            )
        except BrokerError as error:
            log.error("pipeline %s failed: %s", body.get("kind"), error)
            raise ApiError(
                "SERVICE_UNAVAILABLE",
                f"the service did not answer ({error.code}); try again shortly",
            ) from error
        if not reply.get("ok"):
            document = {key: reply[key] for key in EMPTY_DOCUMENT if key in reply}
            if "identifier" in reply:
                document["identifier"] = reply["identifier"]
            raise ApiError(reply.get("code", "PROCESSING_ERROR"),
                           reply.get("message") or "", document)
        return reply


class RootResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = (
            "art2tweet API: GET /query?url=ARTWORK_URL finds the artist's tweet "
            "holding the artwork; see the README for every endpoint.\n"
        )


class StatsResource:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.cached: tuple[float, dict] | None = None
        self.lock = threading.Lock()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self.lock:
            if self.cached and time.monotonic() - self.cached[0] < STATS_CACHE_SECS:
                resp.media = self.cached[1]
                return
        reply = self.pipeline.call({"kind": "stats.get"}, timeout_secs=10.0)
        reply.pop("ok", None)
        with self.lock:
            self.cached = (time.monotonic(), reply)
        resp.media = reply


class ConfigResource:
    def __init__(self, config: Config):
        self.config = config

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        http = self.config.http
        address = req.context.client_address
        resp.media = {
            "limit_per_ip_address": http.max_requests_in_flight_per_ip,
            "ip_can_bypass_limit": address in http.unlimited_ip_addresses,
            "ip_can_use_advanced": address in http.advanced_ip_addresses,
            "update_accounts_frequency": self.config.scans.update_every_days,
            "max_illust_url_size": http.max_url_chars,
            "max_upload_bytes": http.max_upload_bytes,
        }


def handle_api_error(req, resp, error: ApiError, params) -> None:
    if error.status == falcon.HTTP_500:
        log.error("request %s %s failed: %s %s", req.method, req.path, error.code,
                  error.message)
    resp.status = error.status
    resp.media = error_document(error.code, error.message, error.document)


def handle_unexpected(req, resp, error: Exception, params) -> None:
    if isinstance(error, falcon.HTTPError):
        # Falcon's own errors (404, 405, bad headers) keep their status, as JSON.
        resp.status = error.status
        # The code is the status's reason phrase: "404 Not Found" -> NOT_FOUND.
        reason = str(error.status).partition(" ")[2] or "HTTP error"
        code = reason.upper().replace(" ", "_").replace("-", "_")
        resp.media = error_document(code, error.description or error.title or reason)
        for name, value in (error.headers or {}).items():
            resp.set_header(name, value)
        return
    log.exception("unexpected error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = error_document("PROCESSING_ERROR", "internal error; see the logs")


class CommonHeaders:
    """Add the Server header and allow cross-origin reads."""

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        resp.set_header("Server", SERVER_NAME)
        resp.set_header("Access-Control-Allow-Origin", "*")


def create_app(config: Config) -> falcon.App:
    """Build the WSGI application for ``config``."""
    from http_api.resources import QueryResource, SearchResource

    pipeline = Pipeline(config)
    app = falcon.App(
        middleware=[CommonHeaders(), RateLimiter(config.http)],
        cors_enable=False,
    )
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.auto_parse_qs_csv = False
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(
        dumps=lambda obj: json.dumps(obj, ensure_ascii=False)
    )
    app.add_route("/", RootResource())
    app.add_route("/stats", StatsResource(pipeline))
    app.add_route("/config", ConfigResource(config))
    app.add_route("/search", SearchResource(config, pipeline))
    app.add_route("/query", QueryResource(config, pipeline))
    app.add_error_handler(Exception, handle_unexpected)
    # Falcon's own HTTPError handler is more specific than Exception's, so
    # it is replaced explicitly to keep every error in the same JSON shape.
    app.add_error_handler(falcon.HTTPError, handle_unexpected)
    app.add_error_handler(ApiError, handle_api_error)
    return app


__all__ = ["create_app", "ApiError", "Pipeline"]

"""The ``/search`` and ``/query`` resources.

``POST /search`` takes an image as the raw request body (the earlier
system's form) or as a ``multipart/form-data`` upload, optionally limited
to one account with ``?account_name=``; it returns an identifier to
poll with ``GET /search?identifier=``.

``GET /query?url=`` and ``POST /query`` take an artwork page URL; the
POST body is the URL as ``text/plain`` (the earlier system's form) or a
JSON object ``{"url": "..."}``.
"""

from __future__ import annotations

import json
import logging

import falcon

from broker.config import Config
from http_api.app import Pipeline
from http_api.errors import ApiError

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 64 * 1024


def single_param(req: falcon.Request, name: str, missing_code: str) -> str:
    """Return a query parameter given once and not empty."""
    values = req.get_param_as_list(name) or []
    if len(values) > 1:
        raise ApiError("INVALID_PARAMETER",
                       f"parameter {name!r} given {len(values)} times; give it once")
    value = values[0].strip() if values else ""
    if not value:
        raise ApiError(missing_code, f"parameter {name!r} is missing or empty")
    return value


def read_body(req: falcon.Request, limit: int, too_big_code: str) -> bytes:
    """Read the whole body, rejecting it from Content-Length when over ``limit``."""
    length = req.content_length
    if length is not None and length > limit:
        raise ApiError(too_big_code,
                       f"request body of {length} bytes is over the {limit} byte limit")
    chunks = []
    size = 0
    while True:
        chunk = req.bounded_stream.read(READ_CHUNK_BYTES)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ApiError(too_big_code,
                           f"request body is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def require_advanced(config: Config, req: falcon.Request) -> None:
    if req.context.client_address not in config.http.advanced_ip_addresses:
        raise ApiError("ADVANCED_ONLY",
                       "image search is only open to the addresses listed in "
                       "[http] advanced_ip_addresses")


class SearchResource:
    def __init__(self, config: Config, pipeline: Pipeline):
        self.config = config
        self.pipeline = pipeline

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_advanced(self.config, req)
        identifier = single_param(req, "identifier", "IDENTIFIER_MISSING")
        reply = self.pipeline.call({"kind": "search.get", "identifier": identifier})
        resp.media = _document(reply)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_advanced(self.config, req)
        accounts = req.get_param_as_list("account_name") or []
        if len(accounts) > 1:
            raise ApiError("INVALID_PARAMETER",
                           f"parameter 'account_name' given {len(accounts)} times; "
                           "give it once")
        account = accounts[0] if accounts else None
        image = self._read_image(req)
        if not image:
            raise ApiError("IMAGE_MISSING", "the request body is empty; send the image bytes")
        reply = self.pipeline.call({
            "kind": "search.submit",
            "image": image,
            "account": account.strip() if account else None,
            "ip": req.context.client_address,
        })
        resp.media = _document(reply)

    def _read_image(self, req: falcon.Request) -> bytes:
        limit = self.config.http.max_upload_bytes
        if req.content_type and req.content_type.startswith("multipart/form-data"):
            return self._read_multipart(req, limit)
        return read_body(req, limit, "QUERY_IMAGE_TOO_BIG")

    def _read_multipart(self, req: falcon.Request, limit: int) -> bytes:
        if req.content_length is not None and req.content_length > limit + 65536:
            raise ApiError("QUERY_IMAGE_TOO_BIG",
                           f"upload of {req.content_length} bytes is over the "
                           f"{limit} byte limit")
        try:
            form = req.get_media()
            for part in form:
                if part.filename is not None or part.name in ("image", "file"):
                    data = part.stream.read(limit + 1)
                    if len(data) > limit:
                        raise ApiError("QUERY_IMAGE_TOO_BIG",
                                       f"uploaded file is over the {limit} byte limit")
                    return data
        except falcon.MediaMalformedError as error:
            raise ApiError("INVALID_BODY",
                           f"malformed multipart body: {error.description}") from error
        raise ApiError("IMAGE_MISSING",
                       "the multipart body has no file part (name it 'image')")


class QueryResource:
    def __init__(self, config: Config, pipeline: Pipeline):
        self.config = config
        self.pipeline = pipeline

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        url = single_param(req, "url", "NO_URL_FIELD")
        self._submit(req, resp, url)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # An URL longer than the limit is rejected without reading the rest;
        # the margin leaves room for a JSON wrapper.
        limit = self.config.http.max_url_chars * 4 + 1024
        body = read_body(req, limit, "URL_TOO_LONG")
        url = self._url_from_body(req, body)
        self._submit(req, resp, url)

    def _url_from_body(self, req: falcon.Request, body: bytes) -> str:
        if not body.strip():
            raise ApiError("NO_URL_FIELD", "the request body is empty; send the URL")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ApiError("NOT_AN_URL",
                           f"the request body is not valid UTF-8 (byte "
                           f"{error.start})") from error
        content_type = (req.content_type or "").split(";")[0].strip().lower()
        looks_json = text.lstrip().startswith(("{", "["))
        if content_type == "application/json" or (not content_type and looks_json):
            return _url_from_json(text)
        if content_type not in ("", "text/plain", "application/x-www-form-urlencoded"):
            raise ApiError("UNSUPPORTED_MEDIA_TYPE",
                           f"unsupported Content-Type {content_type!r}; send the "
                           "URL as text/plain or JSON {\"url\": ...}")
        return text.strip()

    def _submit(self, req: falcon.Request, resp: falcon.Response, url: str) -> None:
        reply = self.pipeline.call({
            "kind": "query.submit", "url": url, "ip": req.context.client_address,
        })
        resp.media = _document(reply)


def _url_from_json(text: str) -> str:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError("INVALID_BODY",
                       f"the body is not valid JSON: {error.msg} at character "
                       f"{error.pos}") from error
    if not isinstance(document, dict):
        raise ApiError("INVALID_BODY",
                       f"the JSON body must be an object like {{\"url\": ...}}, "
                       f"got {type(document).__name__}")
    if "url" not in document:
        raise ApiError("NO_URL_FIELD", "the JSON body has no \"url\" field")
    url = document["url"]
    if not isinstance(url, str):
        raise ApiError("NOT_AN_URL",
                       f"\"url\" must be a string, got {type(url).__name__}")
    if not url.strip():
        raise ApiError("NO_URL_FIELD", "the \"url\" field is empty")
    return url.strip()


def _document(reply: dict) -> dict:
    document = {
        "status": reply.get("status"),
        "has_first_time_scan": bool(reply.get("has_first_time_scan")),
        "twitter_accounts": reply.get("twitter_accounts") or [],
        "results": reply.get("results") or [],
        "error": reply.get("error"),
        "message": reply.get("message"),
    }
    if "identifier" in reply:
        document["identifier"] = reply["identifier"]
    return document

"""Error codes of the HTTP API and the status each one is sent with.

Codes are the earlier system's where one existed, so clients written for
it keep working; the HTTP status is new (the earlier system sent 200 for
every JSON error). Unknown codes from the pipeline are sent as 500 with
their message, and logged.
"""

from __future__ import annotations

import falcon

STATUS_BY_CODE = {
    # Request shape
    "NO_URL_FIELD": falcon.HTTP_400,
    "URL_TOO_LONG": falcon.HTTP_400,
    "NOT_AN_URL": falcon.HTTP_400,
    "INVALID_BODY": falcon.HTTP_400,
    "UNSUPPORTED_MEDIA_TYPE": falcon.HTTP_415,
    "IDENTIFIER_MISSING": falcon.HTTP_400,
    "IMAGE_MISSING": falcon.HTTP_400,
    "INVALID_TWITTER_ACCOUNT": falcon.HTTP_400,
    "INVALID_PARAMETER": falcon.HTTP_400,
    # What the request names
    "UNSUPPORTED_WEBSITE": falcon.HTTP_422,
    "NOT_AN_ARTWORK_PAGE": falcon.HTTP_422,
    "NO_SUCH_REQUEST": falcon.HTTP_404,
    "TWITTER_ACCOUNT_NOT_INDEXED": falcon.HTTP_404,
    # Images
    "NOT_AN_IMAGE": falcon.HTTP_415,
    "UNSUPPORTED_IMAGE": falcon.HTTP_415,
    "TRUNCATED_IMAGE": falcon.HTTP_422,
    "ERROR_DURING_REVERSE_SEARCH": falcon.HTTP_422,
    "QUERY_IMAGE_TOO_BIG": falcon.HTTP_413,
    # Limits
    "YOUR_IP_HAS_MAX_PROCESSING_REQUESTS": falcon.HTTP_429,
    "ADVANCED_ONLY": falcon.HTTP_403,
    # The service
    "SERVICE_UNAVAILABLE": falcon.HTTP_503,
    "PROCESSING_ERROR": falcon.HTTP_500,
}


class ApiError(Exception):
    """An error sent to the client as JSON with its code and message."""

    def __init__(self, code: str, message: str, document: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.document = document

    @property
    def status(self) -> str:
        return STATUS_BY_CODE.get(self.code, falcon.HTTP_500)

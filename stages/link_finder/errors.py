"""The error the Link Finder raises, with the codes the HTTP API returns.

One exception class carries a ``code``. Input codes mean the URL itself
cannot be used. ``NO_TWITTER_ACCOUNT_FOUND`` means the artwork was found
but no handle was. ``SITE_ERROR`` means the site failed or returned an
unexpected shape, so trying again later may help.
"""

from __future__ import annotations

NOT_AN_URL = "NOT_AN_URL"
URL_TOO_LONG = "URL_TOO_LONG"
UNSUPPORTED_WEBSITE = "UNSUPPORTED_WEBSITE"
NOT_AN_ARTWORK_PAGE = "NOT_AN_ARTWORK_PAGE"
NO_TWITTER_ACCOUNT_FOUND = "NO_TWITTER_ACCOUNT_FOUND"
SITE_ERROR = "SITE_ERROR"

INPUT_CODES = frozenset(
    {NOT_AN_URL, URL_TOO_LONG, UNSUPPORTED_WEBSITE, NOT_AN_ARTWORK_PAGE}
)


class LinkFinderError(Exception):
    """The Link Finder could not give a result, for the reason in ``code``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code

    @property
    def is_input_error(self) -> bool:
        """True when the URL given by the user is at fault, not a site."""
        return self.code in INPUT_CODES

"""The interface every tweet source implements, and the records it yields.

A source lists the tweets of one account that carry images: an archive on
disk (gallery-dl folder, X data export), the X API, or snscrape. The
lister stage drives a source and hands each image to the indexers; the
source never decodes or stores anything itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterator, Protocol


class SourceError(RuntimeError):
    """A source could not list an account or fetch an image.

    ``permanent`` is True when trying again cannot help (file unreadable,
    HTTP 404/403, account gone); False for timeouts, 5xx and rate limits.
    """

    def __init__(self, message: str, *, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent


class AccountState(enum.Enum):
    """Whether an account's tweets can be listed."""

    ACTIVE = "active"
    PROTECTED = "protected"
    SUSPENDED = "suspended"
    NOT_FOUND = "not_found"


class AccountUnavailableError(SourceError):
    """The account is protected, suspended or does not exist."""

    def __init__(self, message: str, *, state: AccountState, permanent: bool = True):
        super().__init__(message, permanent=permanent)
        self.state = state


class RateLimitedError(SourceError):
    """The source refused a call until ``reset_at`` (unix time).

    Sources raise it instead of sleeping, so the caller can reschedule the
    scan. It is never permanent.
    """

    def __init__(self, message: str, *, reset_at: float):
        super().__init__(message, permanent=False)
        self.reset_at = reset_at


@dataclass(frozen=True)
class AccountInfo:
    """An account as a source resolved it from a handle."""

    account_id: int
    handle: str  # canonical casing, as the source returns it
    state: AccountState = AccountState.ACTIVE


@dataclass(frozen=True)
class ImageRef:
    """Where one image of a tweet can be read: a file path or a URL."""

    position: int  # 1-based, as in "position/count"
    location: str
    is_file: bool


@dataclass(frozen=True)
class TweetRecord:
    """A tweet with the images it carries, as listed by a source."""

    tweet_id: int
    account_id: int
    handle: str
    created_at: float | None  # unix time
    images: tuple[ImageRef, ...]
    image_count: int  # images in the tweet, even if some were not downloaded
    source: str = "archive"


@dataclass(frozen=True)
class TweetPage:
    """One page of a listing, newest tweets first.

    ``newest_id`` and ``oldest_id`` cover every tweet the source saw on the
    page, with or without images, so they can be larger or smaller than any
    id in ``tweets``. They are None when the page saw no tweet at all.
    """

    tweets: tuple[TweetRecord, ...]
    newest_id: int | None
    oldest_id: int | None
    is_last: bool


@dataclass
class ArchiveListing:
    """The tweets found in an archive folder, with what could not be read."""

    tweets: list[TweetRecord] = field(default_factory=list)
    # (path, reason) of every file or sidecar that was skipped.
    problems: list[tuple[str, str]] = field(default_factory=list)


class TweetSource(Protocol):
    """A source of tweets for account scans (X API, snscrape, archives)."""

    name: str

    def lookup_account(self, handle: str) -> AccountInfo:
        """Resolve a handle to the account's id and state.

        Raises AccountUnavailableError when the account is suspended or not
        found, RateLimitedError or SourceError.
        """
        ...

    def list_pages(
        self, handle: str, since_tweet_id: int | None = None
    ) -> Iterator[TweetPage]:
        """Yield the account's tweets with images page by page, newest first.

        The update cursor of a scan is the ``newest_id`` of the first page
        that has one. The caller saves it only after it has stored the
        tweets of every page up to the one with ``is_last`` set. The later
        pages are older than the cursor, so a scan that stopped early and
        saved it would never list them again.
        """
        ...

    def list_tweets(
        self, handle: str, since_tweet_id: int | None = None
    ) -> Iterator[TweetRecord]:
        """Yield the account's tweets with images, newest first.

        With ``since_tweet_id`` only tweets newer than it are listed.
        Raises SourceError.
        """
        ...

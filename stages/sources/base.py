"""The interface every tweet source implements, and the records it yields.

A source lists the tweets of one account that carry images: an archive on
disk (gallery-dl folder, X data export), the X API, or snscrape. The
lister stage drives a source and hands each image to the indexers; the
source never decodes or stores anything itself.
"""

from __future__ import annotations

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


@dataclass
class ArchiveListing:
    """The tweets found in an archive folder, with what could not be read."""

    tweets: list[TweetRecord] = field(default_factory=list)
    # (path, reason) of every file or sidecar that was skipped.
    problems: list[tuple[str, str]] = field(default_factory=list)


class TweetSource(Protocol):
    """A source of tweets for account scans (X API, snscrape, archives)."""

    name: str

    def list_tweets(
        self, handle: str, since_tweet_id: int | None = None
    ) -> Iterator[TweetRecord]:
        """Yield the account's tweets with images, newest first.

        With ``since_tweet_id`` only tweets newer than it are listed.
        Raises SourceError.
        """
        ...

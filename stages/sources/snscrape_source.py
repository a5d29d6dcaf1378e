"""Tweet listings through snscrape's Twitter profile and search scrapers.

X has rejected snscrape's requests with "blocked (404)" since late June
2023 and snscrape 0.7.0.20230622 is its last release, so in practice every
listing raises a SourceError that says so. The source is kept for
deployments whose network path still works and so that a configured
``snscrape`` backend fails with a clear message instead of a traceback.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Callable, Iterator

import snscrape.base
import snscrape.modules.twitter as twitter

from broker.config import Config
from stages.sources.base import (
    AccountInfo,
    AccountState,
    AccountUnavailableError,
    ImageRef,
    SourceError,
    TweetPage,
    TweetRecord,
)
from stages.sources.x_api import original_image_url

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
DEFAULT_RETRIES = 1
BLOCKED_MESSAGE = (
    "snscrape could not reach X for @{handle}: {error}. X has blocked "
    "snscrape's Twitter scraping since June 2023 and it needs outside network "
    "access, so use the x_api or archive backend in [scans] backend."
)

# Builds a scraper from (handle, since_tweet_id).
ScraperFactory = Callable[[str, "int | None"], snscrape.base.Scraper]


def build_scraper(
    handle: str, since_tweet_id: int | None, retries: int = DEFAULT_RETRIES
) -> snscrape.base.Scraper:
    """Return the profile scraper, or a search scraper for updates.

    The profile timeline lists everything. An update searches
    ``from:<handle> filter:images -filter:retweets since_id:<id>``.
    """
    if since_tweet_id is None:
        return twitter.TwitterProfileScraper(handle, retries=retries)
    query = f"from:{handle} filter:images -filter:retweets since_id:{since_tweet_id}"
    return twitter.TwitterSearchScraper(query, retries=retries)


class SnscrapeSource:
    """A tweet source over snscrape, which X currently blocks."""

    name = "snscrape"

    def __init__(self, scraper_factory: ScraperFactory = build_scraper):
        self.scraper_factory = scraper_factory

    @classmethod
    def from_config(cls, config: Config) -> SnscrapeSource:
        return cls()

    def lookup_account(self, handle: str) -> AccountInfo:
        handle = handle.lstrip("@")
        scraper = self._create_scraper(handle, None)
        try:
            user = scraper.entity
        except snscrape.base.EntityUnavailable as error:
            raise AccountUnavailableError(
                f"X account @{handle} is unavailable to snscrape: {error}",
                state=AccountState.NOT_FOUND,
            ) from error
        except snscrape.base.ScraperException as error:
            raise _blocked_error(handle, error) from error
        if user is None:
            raise AccountUnavailableError(
                f"X account @{handle} not found by snscrape",
                state=AccountState.NOT_FOUND,
            )
        state = AccountState.PROTECTED if user.protected else AccountState.ACTIVE
        return AccountInfo(int(user.id), str(user.username), state)

    def list_pages(
        self, handle: str, since_tweet_id: int | None = None
    ) -> Iterator[TweetPage]:
        """Yield the account's tweets with photos in pages of 100 tweets."""
        handle = handle.lstrip("@")
        scraper = self._create_scraper(handle, since_tweet_id)
        page: list[TweetRecord] = []
        seen_ids: list[int] = []
        try:
            for tweet in scraper.get_items():
                if getattr(tweet, "pinned", False):
                    # The pinned tweet comes first whatever its age.
                    continue
                if since_tweet_id is not None and tweet.id <= since_tweet_id:
                    break
                seen_ids.append(tweet.id)
                record = _record_from_tweet(tweet, handle)
                if record is not None:
                    page.append(record)
                if len(seen_ids) == PAGE_SIZE:
                    yield _page(page, seen_ids, is_last=False)
                    page, seen_ids = [], []
        except snscrape.base.EntityUnavailable as error:
            raise AccountUnavailableError(
                f"X account @{handle} is unavailable to snscrape: {error}",
                state=AccountState.NOT_FOUND,
            ) from error
        except snscrape.base.ScraperException as error:
            raise _blocked_error(handle, error) from error
        yield _page(page, seen_ids, is_last=True)

    def list_tweets(
        self, handle: str, since_tweet_id: int | None = None
    ) -> Iterator[TweetRecord]:
        for page in self.list_pages(handle, since_tweet_id):
            yield from page.tweets

    def _create_scraper(
        self, handle: str, since_tweet_id: int | None
    ) -> snscrape.base.Scraper:
        try:
            return self.scraper_factory(handle, since_tweet_id)
        except ValueError as error:
            # snscrape raises ValueError("Invalid username") for bad handles.
            raise AccountUnavailableError(
                f"invalid X handle {handle!r}: {error}", state=AccountState.NOT_FOUND
            ) from error


def _blocked_error(handle: str, error: Exception) -> SourceError:
    logger.warning("snscrape failed for @%s: %s", handle, error)
    return SourceError(
        BLOCKED_MESSAGE.format(handle=handle, error=error), permanent=False
    )


def _page(records: list[TweetRecord], seen_ids: list[int], is_last: bool) -> TweetPage:
    return TweetPage(
        tweets=tuple(records),
        newest_id=max(seen_ids) if seen_ids else None,
        oldest_id=min(seen_ids) if seen_ids else None,
        is_last=is_last,
    )


def _record_from_tweet(tweet, handle: str) -> TweetRecord | None:
    """Map a snscrape Tweet to a record, or None for retweets and no photos."""
    if getattr(tweet, "retweetedTweet", None) is not None:
        return None
    user = getattr(tweet, "user", None)
    if user is None or str(getattr(user, "username", "")).lower() != handle.lower():
        return None
    media = getattr(tweet, "media", None) or []
    images = tuple(
        ImageRef(position, original_image_url(item.fullUrl), is_file=False)
        for position, item in enumerate(media, start=1)
        if isinstance(item, twitter.Photo)
    )
    if not images:
        return None
    date = getattr(tweet, "date", None)
    return TweetRecord(
        tweet_id=int(tweet.id),
        account_id=int(user.id),
        handle=str(user.username),
        created_at=date.timestamp() if isinstance(date, datetime) else None,
        images=images,
        image_count=len(media),
        source="snscrape",
    )

"""Tests for the snscrape source, with no outside connection.

snscrape is given either a stand-in scraper or a real scraper whose
requests session refuses every request before any DNS lookup.
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone

import pytest
import requests
import requests.adapters
import snscrape.base
import snscrape.modules.twitter as twitter

from stages.sources.base import AccountState, AccountUnavailableError, SourceError
from stages.sources.snscrape_source import SnscrapeSource, build_scraper

USER = twitter.User(username="kestrel_inks", id=2900000002, protected=False)
OTHER = twitter.User(username="someone_else", id=3100000000)


class RefusingAdapter(requests.adapters.BaseAdapter):
    """A transport that records each URL and fails without connecting."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def send(self, request, **kwargs):
        self.urls.append(request.url)
        raise requests.ConnectionError(f"no network in tests: {request.url}")

    def close(self):
        pass


class StubScraper:
    """A scraper that yields the given tweets or raises the given error."""

    def __init__(self, items=(), error: Exception | None = None):
        self.items = list(items)
        self.error = error

    def get_items(self):
        yield from self.items
        if self.error is not None:
            raise self.error

    @property
    def entity(self):
        if self.error is not None:
            raise self.error
        return USER


def photo(name: str) -> twitter.Photo:
    base = f"https://pbs.twimg.com/media/{name}?format=jpg"
    return twitter.Photo(previewUrl=f"{base}&name=small", fullUrl=f"{base}&name=orig")


def video() -> twitter.Video:
    return twitter.Video(thumbnailUrl="https://pbs.twimg.com/t.jpg", variants=[])


def tweet(tweet_id: int, media, *, user=USER, **fields) -> twitter.Tweet:
    return twitter.Tweet(
        url=f"https://twitter.com/{user.username}/status/{tweet_id}",
        date=datetime(2023, 5, 1, tzinfo=timezone.utc),
        rawContent="new piece",
        renderedContent="new piece",
        id=tweet_id,
        user=user,
        replyCount=0,
        retweetCount=0,
        likeCount=0,
        quoteCount=0,
        conversationId=tweet_id,
        lang="en",
        media=media,
        **fields,
    )


def source_with(scraper) -> SnscrapeSource:
    return SnscrapeSource(lambda handle, since: scraper)


def test_blocked_scrape_raises_source_error():
    error = snscrape.base.ScraperException(
        "4 requests to https://twitter.com/i/api/graphql/x/UserTweetsAndReplies "
        "failed, giving up."
    )

    with pytest.raises(SourceError) as caught:
        list(source_with(StubScraper(error=error)).list_tweets("kestrel_inks"))

    message = str(caught.value)
    assert "blocked" in message
    assert "June 2023" in message
    assert "kestrel_inks" in message
    assert not caught.value.permanent


def test_real_scraper_without_network(monkeypatch):
    adapter = RefusingAdapter()
    lookups = []

    def refuse_lookup(host, *args, **kwargs):
        lookups.append(host)
        raise OSError(f"DNS lookup of {host} attempted in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)

    def offline_scraper(handle, since):
        scraper = build_scraper(handle, since, retries=0)
        # snscrape mounts its own adapters for twitter.com, so all of them
        # are replaced, and nothing leaves the process.
        scraper._session.adapters.clear()
        scraper._session.mount("https://", adapter)
        scraper._session.mount("http://", adapter)
        return scraper

    with pytest.raises(SourceError) as caught:
        list(SnscrapeSource(offline_scraper).list_tweets("kestrel_inks"))

    assert "snscrape could not reach X" in str(caught.value)
    assert not isinstance(caught.value, AccountUnavailableError)
    assert lookups == []
    assert adapter.urls
    assert all(url.startswith("https://twitter.com/") for url in adapter.urls)


def test_lookup_blocked():
    error = snscrape.base.ScraperException("blocked (404)")

    with pytest.raises(SourceError) as caught:
        source_with(StubScraper(error=error)).lookup_account("kestrel_inks")

    assert "June 2023" in str(caught.value)


def test_unavailable_user():
    error = snscrape.base.EntityUnavailable("User unavailable")

    with pytest.raises(AccountUnavailableError) as caught:
        list(source_with(StubScraper(error=error)).list_tweets("kestrel_inks"))

    assert caught.value.state is AccountState.NOT_FOUND


def test_invalid_handle():
    with pytest.raises(AccountUnavailableError) as caught:
        list(SnscrapeSource().list_tweets("bad.handle"))

    assert caught.value.state is AccountState.NOT_FOUND
    assert "bad.handle" in str(caught.value)


def test_tweets_mapped_to_records():
    items = [
        tweet(90, [photo("PinnedAAAAAAAAA")], pinned=True),
        tweet(300, [photo("FirstAAAAAAAAAA"), video(), photo("ThirdAAAAAAAAAA")]),
        tweet(250, [video()]),
        tweet(200, [photo("RetweetAAAAAAAA")], retweetedTweet=tweet(1, [], user=OTHER)),
        tweet(150, [photo("OtherAAAAAAAAAA")], user=OTHER),
        tweet(100, [photo("OldAAAAAAAAAAAA")]),
    ]

    pages = list(source_with(StubScraper(items)).list_pages("kestrel_inks"))

    records = [record for page in pages for record in page.tweets]
    assert [record.tweet_id for record in records] == [300, 100]
    assert [image.position for image in records[0].images] == [1, 3]
    assert records[0].image_count == 3
    assert records[0].images[0].location.endswith("?format=jpg&name=orig")
    assert records[0].account_id == 2900000002
    assert records[0].source == "snscrape"
    assert pages[-1].is_last
    assert pages[0].newest_id == 300


def test_update_stops_at_cursor():
    items = [
        tweet(300, [photo("NewAAAAAAAAAAAA")]),
        tweet(200, [photo("OldAAAAAAAAAAAA")]),
    ]

    records = list(
        source_with(StubScraper(items)).list_tweets("kestrel_inks", since_tweet_id=200)
    )

    assert [record.tweet_id for record in records] == [300]


def test_scraper_kind_per_listing():
    full = build_scraper("kestrel_inks", None)
    update = build_scraper("kestrel_inks", 5)

    assert isinstance(full, twitter.TwitterProfileScraper)
    assert isinstance(update, twitter.TwitterSearchScraper)
    assert not isinstance(update, twitter.TwitterUserScraper)

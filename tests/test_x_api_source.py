"""Tests for the X API v2 source against the loopback fake X API."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from broker.config import XApiConfig
from stages.sources.archive import list_archive
from stages.sources.base import (
    AccountState,
    AccountUnavailableError,
    RateLimitedError,
    SourceError,
)
from stages.sources.x_api import XApiSource, original_image_url
from tests.fakes.x_api import BEARER_TOKEN, DEMO_FOLDER, fake_x_api  # noqa: F401

pytestmark = pytest.mark.skipif(
    not DEMO_FOLDER.is_dir(), reason="demo corpus not found"
)
IMAGE = next((DEMO_FOLDER / "gallery-dl" / "twitter" / "mizuiro_brush").glob("*.jpg"))


def make_source(fake, token: str = BEARER_TOKEN) -> XApiSource:
    config = XApiConfig(base_url=fake.base_url, bearer_token=token)
    return XApiSource(config, environ={})


def timeline_requests(fake) -> list:
    return [r for r in fake.api_requests() if r.path.endswith("/tweets")]


def test_lookup_returns_canonical_handle(fake_x_api):
    fake_x_api.add_user("Kestrel_Inks", 2900000002)

    account = make_source(fake_x_api).lookup_account("@kestrel_inks")

    assert account.account_id == 2900000002
    assert account.handle == "Kestrel_Inks"
    assert account.state is AccountState.ACTIVE


@pytest.mark.parametrize(
    ("change", "state"),
    [
        ("unknown", AccountState.NOT_FOUND),
        ("suspended", AccountState.SUSPENDED),
        ("invalid", AccountState.NOT_FOUND),
    ],
)
def test_lookup_unavailable_accounts(fake_x_api, change, state):
    fake_x_api.add_user("kestrel_inks", 2900000002)
    handle = "kestrel_inks"
    if change == "unknown":
        handle = "nobody_here"
    elif change == "suspended":
        fake_x_api.set_suspended(handle)
    else:
        handle = "bad.handle"

    with pytest.raises(AccountUnavailableError) as caught:
        make_source(fake_x_api).lookup_account(handle)

    assert caught.value.state is state
    assert handle in str(caught.value)
    assert caught.value.permanent


def test_lookup_protected(fake_x_api):
    fake_x_api.add_user("kestrel_inks", 2900000002, protected=True)

    account = make_source(fake_x_api).lookup_account("kestrel_inks")

    assert account.state is AccountState.PROTECTED


def test_timeline_matches_archive(fake_x_api):
    fake_x_api.load_demo_account("orchard_notes")
    archived = [
        r for r in list_archive(DEMO_FOLDER).tweets if r.handle == "orchard_notes"
    ]

    pages = list(make_source(fake_x_api).list_pages("orchard_notes"))

    tweets = [record for page in pages for record in page.tweets]
    assert [r.tweet_id for r in tweets] == [r.tweet_id for r in archived]
    assert len(pages) == (len(archived) + 99) // 100
    assert [page.is_last for page in pages] == [False] * (len(pages) - 1) + [True]
    assert pages[0].newest_id == archived[0].tweet_id
    for listed, archived_record in zip(tweets, archived):
        positions = [image.position for image in listed.images]
        assert positions == [image.position for image in archived_record.images]
        assert listed.image_count == archived_record.image_count
        assert listed.account_id == archived_record.account_id
        assert listed.source == "x_api"


def test_timeline_request_parameters(fake_x_api):
    fake_x_api.load_demo_account("kestrel_inks")

    list(make_source(fake_x_api).list_tweets("kestrel_inks"))

    request = timeline_requests(fake_x_api)[0]
    assert request.authorization == f"Bearer {BEARER_TOKEN}"
    assert request.query["expansions"] == "attachments.media_keys"
    assert set(request.query["media.fields"].split(",")) >= {
        "url", "type", "width", "height"
    }
    assert request.query["exclude"] == "retweets"
    assert request.query["max_results"] == "100"


def test_timeline_pagination_tokens(fake_x_api):
    fake_x_api.load_demo_account("orchard_notes")

    list(make_source(fake_x_api).list_tweets("orchard_notes"))

    requests_made = timeline_requests(fake_x_api)
    assert "pagination_token" not in requests_made[0].query
    assert all("pagination_token" in r.query for r in requests_made[1:])
    assert len(requests_made) > 1


def test_images_at_original_size(fake_x_api):
    fake_x_api.load_demo_account("kestrel_inks")

    tweets = list(make_source(fake_x_api).list_tweets("kestrel_inks"))

    image = tweets[0].images[0]
    response = requests.get(image.location, timeout=5)
    assert not image.is_file
    assert image.location.startswith(fake_x_api.base_url + "/media/")
    assert "name=orig" in image.location
    assert "format=" in image.location
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("image/")


def test_deleted_media_answers_404(fake_x_api):
    fake_x_api.add_user("kestrel_inks", 2900000002)
    tweet = fake_x_api.add_tweet("kestrel_inks", [IMAGE])
    fake_x_api.delete_media(tweet.media[0].name)

    record = next(make_source(fake_x_api).list_tweets("kestrel_inks"))

    response = requests.get(record.images[0].location, timeout=5)
    assert response.status_code == 404


def test_update_lists_only_new_tweets(fake_x_api):
    fake_x_api.load_demo_account("kestrel_inks")
    source = make_source(fake_x_api)
    first_pages = list(source.list_pages("kestrel_inks"))
    cursor = first_pages[0].newest_id
    new_tweets = [fake_x_api.add_tweet("kestrel_inks", [IMAGE]) for _ in range(3)]

    second = list(source.list_tweets("kestrel_inks", since_tweet_id=cursor))

    expected = sorted((t.tweet_id for t in new_tweets), reverse=True)
    assert [r.tweet_id for r in second] == expected
    assert timeline_requests(fake_x_api)[-1].query["since_id"] == str(cursor)


def test_update_with_nothing_new(fake_x_api):
    fake_x_api.load_demo_account("kestrel_inks")
    source = make_source(fake_x_api)
    cursor = next(source.list_pages("kestrel_inks")).newest_id

    pages = list(source.list_pages("kestrel_inks", since_tweet_id=cursor))

    assert len(pages) == 1
    assert pages[0].tweets == ()
    assert pages[0].newest_id is None
    assert pages[0].is_last


def test_videos_and_retweets(fake_x_api):
    fake_x_api.add_user("kestrel_inks", 2900000002)
    mixed = fake_x_api.add_tweet("kestrel_inks", [IMAGE, IMAGE], video_positions=[2])
    only_video = fake_x_api.add_tweet("kestrel_inks", [], video_positions=[1])
    retweet = fake_x_api.add_tweet("kestrel_inks", [IMAGE], retweeted_id=5)

    listed = make_source(fake_x_api).list_tweets("kestrel_inks")
    records = {record.tweet_id: record for record in listed}

    assert [image.position for image in records[mixed.tweet_id].images] == [1, 3]
    assert records[mixed.tweet_id].image_count == 3
    assert only_video.tweet_id not in records
    assert retweet.tweet_id not in records


def test_rate_limited_call_raises(fake_x_api):
    fake_x_api.add_user("kestrel_inks", 2900000002)
    fake_x_api.rate_limit_next_calls(1, reset_in_secs=120)
    started = time.monotonic()

    with pytest.raises(RateLimitedError) as caught:
        make_source(fake_x_api).lookup_account("kestrel_inks")

    assert time.monotonic() - started < 5
    assert caught.value.reset_at == pytest.approx(time.time() + 120, abs=5)
    assert not caught.value.permanent


def test_remaining_zero_stops_before_call(fake_x_api):
    fake_x_api.rate_limit = 1
    fake_x_api.add_user("kestrel_inks", 2900000002)
    source = make_source(fake_x_api)
    source.lookup_account("kestrel_inks")
    calls = len(fake_x_api.api_requests())

    with pytest.raises(RateLimitedError) as caught:
        source.lookup_account("kestrel_inks")

    assert len(fake_x_api.api_requests()) == calls
    assert caught.value.reset_at > time.time()


def test_rate_limit_during_pagination(fake_x_api):
    fake_x_api.load_demo_account("orchard_notes")
    source = make_source(fake_x_api)
    pages = source.list_pages("orchard_notes")
    first = next(pages)
    fake_x_api.rate_limit_next_calls(1)

    with pytest.raises(RateLimitedError):
        next(pages)

    assert not first.is_last


def test_protected_account_not_listed(fake_x_api):
    fake_x_api.load_demo_account("kestrel_inks")
    fake_x_api.set_protected("kestrel_inks")

    with pytest.raises(AccountUnavailableError) as caught:
        list(make_source(fake_x_api).list_tweets("kestrel_inks"))

    assert caught.value.state is AccountState.PROTECTED
    assert timeline_requests(fake_x_api) == []


@pytest.mark.parametrize(
    ("change", "state"),
    [("protected", AccountState.PROTECTED), ("suspended", AccountState.SUSPENDED)],
)
def test_timeline_errors_inside_200(fake_x_api, change, state):
    fake_x_api.load_demo_account("kestrel_inks")
    source = make_source(fake_x_api)
    account = source.lookup_account("kestrel_inks")
    if change == "protected":
        fake_x_api.set_protected("kestrel_inks")
    else:
        fake_x_api.set_suspended("kestrel_inks")

    with pytest.raises(AccountUnavailableError) as caught:
        list(source.list_account_pages(account))

    assert caught.value.state is state


def test_recent_search_sees_new_tweets(fake_x_api):
    fake_x_api.load_demo_account("kestrel_inks")
    old = datetime.now(timezone.utc) - timedelta(days=30)
    fake_x_api.add_tweet("kestrel_inks", [IMAGE], created_at=old)
    recent = [fake_x_api.add_tweet("kestrel_inks", [IMAGE]) for _ in range(2)]

    pages = list(make_source(fake_x_api).list_recent_pages("kestrel_inks"))

    listed = [record.tweet_id for page in pages for record in page.tweets]
    search = [r for r in fake_x_api.api_requests() if "search" in r.path][0]
    assert listed == sorted((t.tweet_id for t in recent), reverse=True)
    assert search.query["query"] == "from:kestrel_inks has:images -is:retweet"


def test_timeline_cap_ends_pagination(fake_x_api):
    fake_x_api.add_user("prolific", 2900000009)
    for number in range(3250):
        fake_x_api.add_tweet("prolific", [], tweet_id=1_000_000 + number)

    pages = list(make_source(fake_x_api).list_pages("prolific"))

    assert len(pages) == 32
    assert pages[-1].is_last
    assert pages[-1].oldest_id == 1_000_000 + 50


def test_bad_token_rejected(fake_x_api):
    fake_x_api.add_user("kestrel_inks", 2900000002)

    with pytest.raises(SourceError) as caught:
        make_source(fake_x_api, token="wrong-token").lookup_account("kestrel_inks")

    assert "401" in str(caught.value)
    assert "wrong-token" not in str(caught.value)
    assert caught.value.permanent


def test_token_from_environment(fake_x_api):
    fake_x_api.add_user("kestrel_inks", 2900000002)
    config = XApiConfig(base_url=fake_x_api.base_url, bearer_token="config-token")
    environ = {config.bearer_token_env: BEARER_TOKEN}

    XApiSource(config, environ=environ).lookup_account("kestrel_inks")

    assert fake_x_api.api_requests()[0].authorization == f"Bearer {BEARER_TOKEN}"


def test_missing_token_rejected():
    with pytest.raises(SourceError) as caught:
        XApiSource(XApiConfig(bearer_token=""), environ={})

    assert "A2T_X_BEARER_TOKEN" in str(caught.value)


def test_token_never_logged(fake_x_api, caplog):
    fake_x_api.add_user("kestrel_inks", 2900000002)
    caplog.set_level(logging.DEBUG)

    make_source(fake_x_api).lookup_account("kestrel_inks")

    assert caplog.records
    assert all(BEARER_TOKEN not in record.getMessage() for record in caplog.records)


def test_default_base_url_is_x():
    source = XApiSource(XApiConfig(bearer_token="unused"), environ={})

    adapter = source.client.session.get_adapter("https://api.twitter.com/2/users/me")

    assert adapter.base_url == "https://api.x.com"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://pbs.twimg.com/media/GAbCdEfGhIjKlMn.jpg",
            "https://pbs.twimg.com/media/GAbCdEfGhIjKlMn?format=jpg&name=orig",
        ),
        (
            "https://pbs.twimg.com/media/GAbCdEfGhIjKlMn.png:large",
            "https://pbs.twimg.com/media/GAbCdEfGhIjKlMn?format=png&name=orig",
        ),
        (
            "https://pbs.twimg.com/media/GAbCdEfGhIjKlMn?format=webp&name=small",
            "https://pbs.twimg.com/media/GAbCdEfGhIjKlMn?format=webp&name=orig",
        ),
    ],
)
def test_original_image_url(url, expected):
    assert original_image_url(url) == expected


def test_fake_serves_legacy_image_forms(fake_x_api):
    fake_x_api.add_user("kestrel_inks", 2900000002)
    media = fake_x_api.add_tweet("kestrel_inks", [IMAGE]).media[0]
    base = f"{fake_x_api.base_url}/media/{media.name}"

    for url in (f"{base}.jpg", f"{base}.jpg:orig", f"{base}?format=jpg&name=orig"):
        response = requests.get(url, timeout=5)
        assert response.status_code == 200, url
        assert response.content == Path(IMAGE).read_bytes(), url

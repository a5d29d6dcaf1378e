"""Handle extraction from Twitter URLs and free text, and handle lists."""

from __future__ import annotations

import json

import pytest

from stages.link_finder.handles import (
    HandleList,
    TwitterLink,
    handles_in_text,
    is_valid_handle,
    parse_twitter_url,
    unwrap_redirect,
)
from tests.conftest import CASES

TWEET = "1790000000000000002"
HANDLE = TwitterLink(handle="Invented_Artist")

HANDLE_TABLE = [
    ("https://twitter.com/Invented_Artist", HANDLE),
    ("https://x.com/invented_artist/", TwitterLink(handle="invented_artist")),
    ("https://mobile.twitter.com/Invented_Artist/media", HANDLE),
    ("https://twitter.com/@Invented_Artist", HANDLE),
    ("https://twitter.com/#!/Invented_Artist", HANDLE),
    ("twitter.com/Invented_Artist", HANDLE),
    (f"https://x.com/Invented_Artist/status/{TWEET}/photo/1",
     TwitterLink(handle="Invented_Artist", tweet_id=TWEET, photo=1)),
    (f"https://fxtwitter.com/Invented_Artist/status/{TWEET}",
     TwitterLink(handle="Invented_Artist", tweet_id=TWEET)),
    ("https://nitter.net/Invented_Artist", HANDLE),
    (f"https://twitter.com/i/web/status/{TWEET}", TwitterLink(tweet_id=TWEET)),
    ("https://x.com/i/user/1234567890", TwitterLink(user_id="1234567890")),
    ("https://twitter.com/intent/user?user_id=1234567890",
     TwitterLink(user_id="1234567890")),
    ("https://twitter.com/intent/user?screen_name=Invented_Artist", HANDLE),
    ("https://twitter.com/intent/follow?screen_name=Invented_Artist", HANDLE),
    ("https://twitter.com/intent/tweet?text=hi", None),
    ("https://twitter.com/share?url=https%3A%2F%2Fexample.org", None),
    ("https://twitter.com/home?status=hello", None),
    ("https://twitter.com/search?q=%23art", None),
    ("https://twitter.com/hashtag/art", None),
    ("https://twitter.com/", None),
    ("https://twitter.com/this_handle_is_too_long", None),
    ("https://twitter.com/bad-name", None),
    ("https://help.twitter.com/en", None),
    ("https://twitter.com.example.org/foo", None),
    ("https://www.pixiv.net/jump.php?https%3A%2F%2Ftwitter.com%2FInvented_Artist",
     HANDLE),
    ("https://www.deviantart.com/users/outgoing?https://x.com/Invented_Artist", HANDLE),
    ("https://t.co/AbCdEf1234", None),
]


@pytest.mark.parametrize(("url", "expected"), HANDLE_TABLE)
def test_twitter_url_table(url, expected):
    assert parse_twitter_url(url) == expected


def test_table_has_every_row():
    assert len(HANDLE_TABLE) == 27


@pytest.mark.parametrize(
    "url",
    [
        "https://x.com/example_artist/status/notanumber",
        "https://x.com/example_artist/status/99999999999999999999999999",
        "https://x.com/example_artist/status/-5",
        "https://x.com.evil.test/a/status/1790000000000000123",
        "https://evil.test/?u=https://x.com/a/status/1790000000000000123",
    ],
)
def test_invalid_tweet_urls_give_no_tweet(url):
    link = parse_twitter_url(url)
    assert link is None or link.tweet_id is None


def test_equivalent_tweet_urls_share_id():
    cases = json.loads((CASES / "b16_urls_equivalent.json").read_text("utf-8"))
    tweet_cases = [c for c in cases if c["expect_key"].startswith("tweet:")]
    assert len(tweet_cases) > 20
    for case in tweet_cases:
        link = parse_twitter_url(case["input"].strip().rstrip("\u200b"))
        assert link is not None, case["input"]
        key = f"tweet:{link.tweet_id}" + (f"#photo{link.photo}" if link.photo else "")
        assert key == case["expect_key"], case["input"]


@pytest.mark.parametrize(
    ("handle", "valid"),
    [("a", True), ("A_b_9", True), ("x" * 15, True), ("x" * 16, False), ("", False),
     ("bad-name", False), ("dot.name", False), ("名前", False)],
)
def test_handle_validation(handle, valid):
    assert is_valid_handle(handle) is valid


def test_text_mentions_and_labels():
    text = ("Commissions closed. Twitter: Label_One, contact me@example.com, "
            "follow @Mention_Two! Also twitter.com/Url_Three and #hashtag")
    assert handles_in_text(text) == ["Label_One", "Mention_Two", "Url_Three"]


def test_text_ignores_email_and_domains():
    assert handles_in_text("mail artist@example.org or see @site.com") == []


def test_text_ignores_reserved_paths():
    assert handles_in_text("https://twitter.com/search?q=art x.com/intent/tweet") == []


def test_unwrap_nested_wrappers():
    wrapped = ("https://href.li/?https://www.deviantart.com/users/outgoing?"
               "https://x.com/Invented_Artist")
    assert unwrap_redirect(wrapped) == "https://x.com/Invented_Artist"


def test_unwrap_wayback_url():
    url = "https://web.archive.org/web/20240101000000/https://twitter.com/Old_Name"
    assert unwrap_redirect(url) == "https://twitter.com/Old_Name"


def test_handle_list_dedupes_case_insensitively():
    handles = HandleList()
    assert handles.add("Invented_Artist")
    assert not handles.add("invented_artist")
    assert not handles.add("@INVENTED_ARTIST")
    assert handles.add("@second")
    assert handles.handles == ["Invented_Artist", "second"]


def test_handle_list_drops_house_and_invalid():
    handles = HandleList()
    assert not handles.add("DeviantArt")
    assert not handles.add("pixiv")
    assert not handles.add("way_too_long_handle_name")
    assert len(handles) == 0

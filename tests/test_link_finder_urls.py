"""Artwork URL parsing, request keys and canonical URLs (no network)."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from stages.link_finder import ArtworkKey, LinkFinderError, parse_artwork_url
from stages.link_finder.errors import (
    NOT_AN_ARTWORK_PAGE,
    NOT_AN_URL,
    UNSUPPORTED_WEBSITE,
    URL_TOO_LONG,
)
from stages.link_finder.sites import SITES
from stages.link_finder.urls import canonical_url, twimg_media_name
from tests.conftest import CASES


def load_cases(name: str) -> list[dict]:
    return json.loads((CASES / name).read_text("utf-8"))


def error_code(url: str, **options) -> str:
    with pytest.raises(LinkFinderError) as caught:
        parse_artwork_url(url, **options)
    return caught.value.code


def test_equivalent_pixiv_urls_share_key():
    groups = defaultdict(set)
    for case in load_cases("b16_urls_equivalent.json"):
        if case["expect_key"].startswith("pixiv:"):
            groups[case["expect_key"]].add(parse_artwork_url(case["input"]))
    assert len(groups) == 3
    for expect_key, keys in groups.items():
        assert len(keys) == 1, expect_key


def test_pixiv_pages_get_distinct_keys():
    first = parse_artwork_url("https://www.pixiv.net/artworks/100000001")
    second = parse_artwork_url("https://www.pixiv.net/artworks/100000001#2")
    assert str(first) == "pixiv:100000001:0"
    assert str(second) == "pixiv:100000001:1"


def test_equivalent_plain_urls_share_canonical_form():
    for case in load_cases("b16_urls_equivalent.json"):
        if case["expect_key"].startswith("https://"):
            assert canonical_url(case["input"]) == case["expect_key"], case["input"]


def test_equivalent_twimg_urls_share_media_name():
    for case in load_cases("b16_urls_equivalent.json"):
        if case["expect_key"].startswith("twimg:media:"):
            name = twimg_media_name(case["input"])
            assert f"twimg:media:{name}" == case["expect_key"], case["input"]


@pytest.mark.parametrize("case", load_cases("b16_urls_not_artwork.json"),
                         ids=lambda case: case["input"][:60])
def test_not_artwork_urls_rejected(case):
    code = error_code(case["input"])
    if "evil.test" in case["input"]:
        assert code == UNSUPPORTED_WEBSITE
    else:
        assert code == NOT_AN_ARTWORK_PAGE


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://danbooru.donmai.us/posts/7654321", "danbooru:7654321:0"),
        ("https://danbooru.donmai.us/posts/7654321?q=solo#x", "danbooru:7654321:0"),
        ("https://safebooru.donmai.us/posts/7654321/", "danbooru:7654321:0"),
        ("https://danbooru.donmai.us/post/show/7654321/tag_slug", "danbooru:7654321:0"),
        ("https://donmai.moe/posts/7654321", "danbooru:7654321:0"),
        ("https://derpibooru.org/images/3456789", "derpibooru:3456789:0"),
        ("https://www.derpibooru.org/3456789?q=safe", "derpibooru:3456789:0"),
        ("https://furbooru.org/images/42/", "furbooru:42:0"),
        ("https://www.deviantart.com/invented-artist/art/Sunny-Meadow-1000000001",
         "deviantart:1000000001:0"),
        ("https://www.deviantart.com/invented-artist/art/1000000001",
         "deviantart:1000000001:0"),
        ("https://invented-artist.deviantart.com/art/Sunny-Meadow-1000000001",
         "deviantart:1000000001:0"),
        ("https://fav.me/dgjdgxt", "deviantart:1000000001:0"),
        ("https://www.deviantart.com/view.php?id=1000000001",
         "deviantart:1000000001:0"),
        ("https://www.deviantart.com/deviation/1000000001", "deviantart:1000000001:0"),
        ("https://www.deviantart.com/a/art/Title-1000000001#image-3",
         "deviantart:1000000001:2"),
        ("https://www.pixiv.net/member_illust.php?mode=manga_big&illust_id=5&page=4",
         "pixiv:5:4"),
        ("www.pixiv.net/en/artworks/5", "pixiv:5:0"),
        ("https://www.pixiv.net/artworks/5#0", "pixiv:5:0"),
        ("https://www.pixiv.net/artworks/5#201", "pixiv:5:0"),
    ],
)
def test_artwork_url_forms(url, expected):
    assert str(parse_artwork_url(url)) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://danbooru.donmai.us/posts",
        "https://danbooru.donmai.us/posts/123/favorites",
        "https://danbooru.donmai.us/media_assets/123",
        "https://derpibooru.org/tags/artist-colon-someone",
        "https://derpibooru.org/search?q=artist:someone",
        "https://www.deviantart.com/invented-artist",
        "https://www.deviantart.com/invented-artist/gallery",
        "https://fav.me/",
        "https://www.pixiv.net/en/users/12345/artworks",
        "https://www.pixiv.net/member_illust.php?id=12345",
        "https://i.pximg.net/user-profile/img/2020/01/01/00/00/00/100_abcdef_50.png",
    ],
)
def test_site_pages_not_artwork(url):
    assert error_code(url) == NOT_AN_ARTWORK_PAGE


@pytest.mark.parametrize(
    "url",
    ["", "   ", "not a url", "ftp://www.pixiv.net/artworks/1", "javascript:alert(1)",
     "https://user@www.pixiv.net/artworks/1", "https:///artworks/1",
     "https://www.pixiv.net/art works/1"],
)
def test_invalid_urls_not_an_url(url):
    assert error_code(url) == NOT_AN_URL


def test_long_url_too_long():
    url = "https://www.pixiv.net/artworks/1?" + "a" * 300
    assert error_code(url) == URL_TOO_LONG


def test_hundred_thousand_chars_too_long():
    url = (CASES / "b17_url_100k_chars.txt").read_text("utf-8")
    assert error_code(url) == URL_TOO_LONG


def test_max_chars_is_configurable():
    url = "https://www.pixiv.net/artworks/1?" + "a" * 300
    assert parse_artwork_url(url, max_chars=400) == ArtworkKey("pixiv", "1", 0)


def test_unknown_site_unsupported():
    assert error_code("https://example.org/art/1") == UNSUPPORTED_WEBSITE


def test_error_names_the_value():
    with pytest.raises(LinkFinderError) as caught:
        parse_artwork_url("https://www.pixiv.net/users/12345")
    assert "https://www.pixiv.net/users/12345" in str(caught.value)


def test_registry_is_alphabetical():
    names = [site.name for site in SITES]
    assert names == sorted(names)


@pytest.mark.parametrize("site", SITES, ids=lambda site: site.name)
def test_example_url_parses_to_its_site(site):
    assert parse_artwork_url(site.example_url).site == site.name


def test_canonical_url_keeps_query_and_port():
    url = "HTTP://Example.org:8080/a/./b/../c?x=%7e&y=a b#frag"
    assert canonical_url(url) == "http://example.org:8080/a/c?x=%7E&y=a%20b"

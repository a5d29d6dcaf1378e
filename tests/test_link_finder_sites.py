"""Each site module against the loopback fakes: results and error codes."""

from __future__ import annotations

import json

import pytest

from broker.config import NetworkConfig
from stages.http_client import SafeHttpClient
from stages.link_finder import LinkFinderError, find_artwork
from stages.link_finder.errors import (
    NO_TWITTER_ACCOUNT_FOUND,
    NOT_AN_ARTWORK_PAGE,
    SITE_ERROR,
)
from tests.fakes.sites import start_fake_sites

PUBLISHED = 1_717_245_296.0  # 2024-06-01T12:34:56Z
SITE_NAMES = ["danbooru", "derpibooru", "deviantart", "furbooru", "pixiv"]
SERVICES = ["biolink", "carrd", "linktree", "litlink", "potofu"]


@pytest.fixture(scope="module")
def fakes():
    running = start_fake_sites()
    yield running
    running.close()


@pytest.fixture(scope="module")
def http():
    return SafeHttpClient(NetworkConfig(allow_private_addresses=True, timeout_secs=5.0))


def find(fakes, http, url):
    return find_artwork(url, fakes.sites_config(), http,
                        link_in_bio=fakes.link_in_bio_config())


def find_error(fakes, http, url) -> LinkFinderError:
    with pytest.raises(LinkFinderError) as caught:
        find(fakes, http, url)
    return caught.value


@pytest.mark.parametrize("site", SITE_NAMES)
def test_happy_path(fakes, http, site):
    url = fakes.add_artwork(site, "1001", f"{site} painter",
                            [f"{site}_One", "Second_Handle"], published_at=PUBLISHED)
    info = find(fakes, http, url)
    assert info.key.site == site
    assert info.handles == [f"{site}_One", "Second_Handle"]
    assert info.published_at == PUBLISHED
    assert info.image_urls[0].startswith(fakes.base_urls[site])
    image = http.get(info.image_urls[0], referer=url).content
    assert image == fakes.find(site, "1001").image


@pytest.mark.parametrize("site", SITE_NAMES)
def test_missing_artwork_not_artwork_page(fakes, http, site):
    url = fakes.add_artwork(site, "1002", "someone", ["Someone"])
    missing = url.replace("1002", "99999")
    assert find_error(fakes, http, missing).code == NOT_AN_ARTWORK_PAGE


@pytest.mark.parametrize("site", SITE_NAMES)
def test_private_artist_no_account(fakes, http, site):
    url = fakes.add_artwork(site, "1003", f"hidden {site}", ["Hidden_One"],
                            artist_visible=False)
    assert find_error(fakes, http, url).code == NO_TWITTER_ACCOUNT_FOUND


@pytest.mark.parametrize("site", SITE_NAMES)
def test_artist_without_handles(fakes, http, site):
    url = fakes.add_artwork(site, "1004", f"quiet {site}", [])
    error = find_error(fakes, http, url)
    assert error.code == NO_TWITTER_ACCOUNT_FOUND
    assert "1004" in str(error)


@pytest.mark.parametrize("service", SERVICES)
def test_link_in_bio_pages(fakes, http, service):
    url = fakes.add_artwork("pixiv", f"20{SERVICES.index(service)}",
                            f"bio {service}", ["Bio_Handle", "Bio_Alt"],
                            link_in_bio=service)
    assert find(fakes, http, url).handles == ["Bio_Handle", "Bio_Alt"]


def test_two_hops_followed_not_three(fakes, http):
    fakes.add_link_page("biolink", "thirdhop", ["https://x.com/Too_Far"])
    fakes.add_link_page("linktree", "secondhop",
                        ["https://x.com/Second_Hop", "https://bio.link/thirdhop"])
    url = fakes.add_artwork("deviantart", "1005", "chain artist", [],
                            link_in_bio="linktree")
    fakes.link_pages[("linktree", "chainartist")] = ["https://linktr.ee/secondhop"]
    info = find(fakes, http, url)
    assert info.handles == ["Second_Hop"]
    assert "/linktree/secondhop" in fakes.paths_requested("linkinbio")
    assert "/biolink/thirdhop" not in fakes.paths_requested("linkinbio")


def test_link_loop_fetched_once(fakes, http):
    fakes.add_link_page("linktree", "loopb", ["https://lit.link/loopa",
                                              "https://x.com/Loop_Handle"])
    url = fakes.add_artwork("danbooru", "1006", "loop a", [], link_in_bio="litlink")
    fakes.link_pages[("litlink", "loopa")] = ["https://linktr.ee/loopb"]
    before = fakes.paths_requested("linkinbio").count("/litlink/loopa")
    assert find(fakes, http, url).handles == ["Loop_Handle"]
    assert fakes.paths_requested("linkinbio").count("/litlink/loopa") == before + 1


def test_danbooru_tweet_source_adds_handle(fakes, http):
    source = "https://twitter.com/Source_Handle/status/1790000000000000002"
    url = fakes.add_artwork("danbooru", "1007", "source artist", ["Listed_Handle"],
                            source=source)
    assert find(fakes, http, url).handles == ["Listed_Handle", "Source_Handle"]


def test_danbooru_server_error_site_error(fakes, http):
    url = fakes.add_artwork("danbooru", "1008", "busy artist", ["Busy"])
    body = {"success": False, "error": "RateLimiter::RateLimitError",
            "message": "You're doing that too fast."}
    fakes.set_response("danbooru", "/posts/1008.json", 429, json.dumps(body))
    error = find_error(fakes, http, url)
    assert error.code == SITE_ERROR
    assert "too fast" in str(error)


def test_danbooru_hidden_file_site_error(fakes, http):
    url = fakes.add_artwork("danbooru", "1009", "banned artist", ["Banned"])
    body = {"id": 1009, "created_at": "2024-05-06T07:08:09.123-04:00",
            "tag_string_artist": "banned_artist", "source": ""}
    fakes.set_response("danbooru", "/posts/1009.json", 200, json.dumps(body))
    assert find_error(fakes, http, url).code == SITE_ERROR


def test_philomena_empty_404_body(fakes, http):
    assert find_error(fakes, http, "https://derpibooru.org/images/777").code == (
        NOT_AN_ARTWORK_PAGE)
    assert fakes.paths_requested("derpibooru")[-1] == "/api/v1/json/images/777"


def test_philomena_json_404_body(fakes, http):
    error = find_error(fakes, http, "https://furbooru.org/777")
    assert error.code == NOT_AN_ARTWORK_PAGE


def test_philomena_follows_duplicate(fakes, http):
    fakes.add_artwork("derpibooru", "1010", "original artist", ["Original_Artist"])
    merged = {"image": {"id": 1011, "created_at": "2024-06-01T12:34:56Z",
                        "duplicate_of": 1010, "hidden_from_users": True}}
    path = "/api/v1/json/images/1011"
    fakes.set_response("derpibooru", path, 200, json.dumps(merged))
    info = find(fakes, http, "https://derpibooru.org/1011")
    assert info.handles == ["Original_Artist"]


def test_philomena_deleted_image(fakes, http):
    deleted = {"image": {"id": 1012, "duplicate_of": None, "hidden_from_users": True,
                         "deletion_reason": "Rule #1"}}
    fakes.set_response("furbooru", "/api/v1/json/images/1012", 200, json.dumps(deleted))
    error = find_error(fakes, http, "https://furbooru.org/images/1012")
    assert error.code == NOT_AN_ARTWORK_PAGE
    assert "Rule #1" in str(error)


def test_philomena_ignores_links_outside_content(fakes, http):
    url = fakes.add_artwork("furbooru", "1013", "content artist", ["Content_Artist"])
    assert find(fakes, http, url).handles == ["Content_Artist"]


def test_philomena_overload_site_error(fakes, http):
    url = fakes.add_artwork("derpibooru", "1014", "overload artist", ["Overload"])
    fakes.set_response("derpibooru", "/api/v1/json/images/1014", 501,
                       "<html>slow down</html>", "text/html")
    assert find_error(fakes, http, url).code == SITE_ERROR


def test_pixiv_second_page(fakes, http):
    url = fakes.add_artwork("pixiv", "1015", "pager", ["Pager"], pages=3)
    info = find(fakes, http, url + "#2")
    assert info.key.page == 1
    assert info.image_urls[0].endswith("/1015_p1.png")


def test_pixiv_page_out_of_range(fakes, http):
    url = fakes.add_artwork("pixiv", "1016", "single", ["Single"])
    info = find(fakes, http, url + "#5")
    assert info.image_urls[0].endswith("/1016_p0.png")


def test_pixiv_error_envelope_message(fakes, http):
    message = "The creator has limited who can view this content"
    body = {"error": True, "message": message, "body": []}
    fakes.set_response("pixiv", "/ajax/illust/1017", 200, json.dumps(body))
    error = find_error(fakes, http, "https://www.pixiv.net/artworks/1017")
    assert error.code == NOT_AN_ARTWORK_PAGE


def test_pixiv_hidden_urls_site_error(fakes, http):
    body = {"error": False, "message": "", "body": {
        "illustId": "1018", "userId": "1", "pageCount": 1, "createDate": None,
        "urls": {"original": None, "regular": None}, "userIllusts": {"1018": None}}}
    fakes.set_response("pixiv", "/ajax/illust/1018", 200, json.dumps(body))
    error = find_error(fakes, http, "https://www.pixiv.net/artworks/1018")
    assert error.code == SITE_ERROR


def test_pixiv_image_needs_referer(fakes, http):
    url = fakes.add_artwork("pixiv", "1019", "referer artist", ["Referer_Artist"])
    image_url = find(fakes, http, url).image_urls[0]
    with pytest.raises(Exception, match="403"):
        http.get(image_url)


def test_deviantart_skips_friend_profiles(fakes, http):
    url = fakes.add_artwork("deviantart", "1020", "friendly", ["Friendly"])
    find(fakes, http, url)
    assert "/some-friend/about" not in fakes.paths_requested("deviantart")


def test_deviantart_non_photo_not_artwork(fakes, http):
    body = {"version": "1.0", "type": "rich", "title": "A story", "author_name": "w"}
    fakes.set_response("deviantart", "/oembed", 200, json.dumps(body))
    try:
        error = find_error(fakes, http, "https://fav.me/dgjdgxt")
    finally:
        del fakes.overrides[("deviantart", "/oembed")]
    assert error.code == NOT_AN_ARTWORK_PAGE


def test_not_artwork_page_makes_no_request(fakes, http):
    before = len(fakes.requests)
    error = find_error(fakes, http, "https://www.pixiv.net/users/12345")
    assert error.code == NOT_AN_ARTWORK_PAGE
    assert len(fakes.requests) == before

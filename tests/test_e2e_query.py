"""End to end: /query from an artwork URL on each fake site to the right tweet.

The real process group runs with the archive backend on the demo corpus;
the five artwork sites and the link-in-bio services are loopback fakes
started by this module, reached through ``[sites]`` and ``[link_in_bio]``.
"""

from __future__ import annotations

import csv
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fakes.sites import start_fake_sites
from tests.service import PROJECT_ROOT, RunningService

DEMO = PROJECT_ROOT.parent / "shared" / "corpus" / "demo"
SITES = ("danbooru", "derpibooru", "furbooru", "pixiv", "deviantart")
POLL_TIMEOUT_SECS = 120.0

pytestmark = pytest.mark.skipif(not DEMO.is_dir(), reason="demo corpus not found")


def posted_queries() -> list[dict]:
    with (DEMO / "queries" / "manifest.csv").open(newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f)
                if row["transform"] == "original" and row["tweet_id"]]


def service_config(fakes, extra: str = "") -> str:
    sites = "\n".join(f'{name} = "{url}"'
                      for name, url in fakes.sites_config().__dict__.items())
    bio = fakes.link_in_bio_config()
    links = "\n".join(f'{name} = "{getattr(bio, name)}"'
                      for name in ("linktree", "litlink", "potofu", "carrd", "biolink"))
    return f"""
[network]
allow_private_addresses = true
timeout_secs = 5.0
[sites]
{sites}
[link_in_bio]
{links}
{extra}
"""


@pytest.fixture(scope="module")
def fakes():
    running = start_fake_sites()
    yield running
    running.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory, fakes):
    running = RunningService(tmp_path_factory.mktemp("query"),
                             extra_config=service_config(fakes))
    try:
        job = running.ingest(str(DEMO))
        assert job["status"] == "done", job
        yield running
    finally:
        running.close()


def poll_query(service, url: str, headers: dict | None = None) -> tuple[int, dict]:
    path = "/query?url=" + urllib.parse.quote(url, safe="")
    deadline = time.monotonic() + POLL_TIMEOUT_SECS
    while True:
        status, reply = service.http("GET", path, headers=headers)
        if status != 200 or reply["status"] == "END":
            return status, reply
        if time.monotonic() > deadline:
            raise TimeoutError(f"query {url} still {reply['status']}")
        time.sleep(0.2)


@pytest.mark.parametrize("site", SITES)
def test_query_reaches_right_tweet(service, fakes, site):
    row = posted_queries()[SITES.index(site)]
    image = (DEMO / row["query"]).read_bytes()
    url = fakes.add_artwork(site, str(7000 + SITES.index(site)), f"artist_{site}",
                            [row["handle"], "someone_unknown"], image=image)

    status, reply = poll_query(service, url)

    assert status == 200, reply
    assert reply["error"] is None, reply
    assert reply["status"] == "END"
    names = [account["account_name"] for account in reply["twitter_accounts"]]
    assert names == [row["handle"]]
    assert reply["results"], reply
    assert reply["results"][0]["tweet_id"] == row["tweet_id"]
    assert reply["results"][0]["image_position"].split("/")[0] == row["image_position"]


def test_query_url_forms_share_request(service, fakes):
    row = posted_queries()[0]
    url = fakes.add_artwork("pixiv", "8100", "artist_forms", [row["handle"]],
                            image=(DEMO / row["query"]).read_bytes())
    variants = [url, url.replace("https://www.", "http://") + "?utm_source=x",
                url.replace("/en/", "/") + "/"]

    first = poll_query(service, variants[0])[1]
    others = [service.http("GET", "/query?url=" + urllib.parse.quote(v, safe=""))[1]
              for v in variants[1:]]

    for reply in others:
        assert reply["status"] == "END"
        assert reply["results"] == first["results"]
    assert fakes.paths_requested("pixiv").count("/ajax/illust/8100") == 1


def test_post_query_text_and_json(service, fakes):
    row = posted_queries()[1]
    url = fakes.add_artwork("danbooru", "8200", "artist_post", [row["handle"]],
                            image=(DEMO / row["query"]).read_bytes())

    text_status, text_reply = service.http("POST", "/query", url.encode(),
                                           {"Content-Type": "text/plain"})
    json_status, json_reply = service.http(
        "POST", "/query", f'{{"url": "{url}"}}'.encode(),
        {"Content-Type": "application/json"})

    assert text_status == 200
    assert json_status == 200
    assert text_reply["error"] is None
    assert json_reply["error"] is None


@pytest.mark.parametrize("path, status, code", [
    ("/query", 400, "NO_URL_FIELD"),
    ("/query?url=", 400, "NO_URL_FIELD"),
    ("/query?url=https://danbooru.donmai.us/posts/1&url=https://x.com/a", 400,
     "INVALID_PARAMETER"),
    ("/query?url=" + "https://danbooru.donmai.us/posts/1?" + "a" * 300, 400,
     "URL_TOO_LONG"),
    ("/query?url=not%20an%20url", 400, "NOT_AN_URL"),
    ("/query?url=https://example.com/art/1", 422, "UNSUPPORTED_WEBSITE"),
    ("/query?url=https://www.pixiv.net/en/users/123", 422, "NOT_AN_ARTWORK_PAGE"),
])
def test_query_input_errors(service, path, status, code):
    got_status, reply = service.http("GET", path)

    assert got_status == status, reply
    assert reply["error"] == code
    assert reply["message"]


def test_query_no_account_found(service, fakes):
    url = fakes.add_artwork("furbooru", "8300", "artist_none", [])

    _, reply = poll_query(service, url)

    assert reply["error"] == "NO_TWITTER_ACCOUNT_FOUND"


def test_query_no_valid_account(service, fakes):
    url = fakes.add_artwork("derpibooru", "8400", "artist_gone",
                            ["nobody_here_1", "nobody_here_2"])

    _, reply = poll_query(service, url)

    assert reply["error"] == "NO_VALID_TWITTER_ACCOUNT_FOUND"
    assert reply["twitter_accounts"] == []


def test_query_image_not_decodable(service, fakes):
    row = posted_queries()[2]
    url = fakes.add_artwork("danbooru", "8500", "artist_html", [row["handle"]],
                            image=b"<html><body>gone</body></html>")

    _, reply = poll_query(service, url)

    assert reply["error"] == "ERROR_DURING_REVERSE_SEARCH"


def test_query_site_failure(service, fakes):
    url = fakes.add_artwork("danbooru", "8600", "artist_down", ["kestrel_inks"])
    fakes.set_response("danbooru", "/posts/8600.json", 500, '{"success": false}')

    _, reply = poll_query(service, url)

    assert reply["error"] == "PROCESSING_ERROR"
    assert reply["message"]


class _SlowSite(BaseHTTPRequestHandler):
    """A site that takes seconds to respond, to keep requests in flight."""

    def do_GET(self):  # noqa: N802 (name fixed by http.server)
        time.sleep(3)
        self.send_response(503)
        self.end_headers()

    def log_message(self, format, *args):  # noqa: A002
        pass


def test_per_address_limits(tmp_path, fakes):
    slow = ThreadingHTTPServer(("127.0.0.1", 0), _SlowSite)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    extra = service_config(fakes).replace(
        fakes.base_urls["danbooru"], f"http://127.0.0.1:{slow.server_address[1]}")
    limits = """min_request_interval_secs = 1.0
max_requests_in_flight_per_ip = 1
unlimited_ip_addresses = []
trust_forwarded_for = true"""
    running = RunningService(tmp_path, extra_config=extra, http_extra=limits)
    try:
        client = {"X-Forwarded-For": "192.0.2.10"}
        first, _ = running.http("GET", "/query?url=https://danbooru.donmai.us/posts/1",
                                headers=client)
        too_fast, _ = running.http(
            "GET", "/query?url=https://danbooru.donmai.us/posts/2", headers=client)
        time.sleep(1.2)
        over_quota, quota_reply = running.http(
            "GET", "/query?url=https://danbooru.donmai.us/posts/3", headers=client)
        stats_status, _ = running.http("GET", "/stats", headers=client)
    finally:
        running.close()
        slow.shutdown()

    assert first == 200
    assert too_fast == 429
    assert over_quota == 429
    assert quota_reply["error"] == "YOUR_IP_HAS_MAX_PROCESSING_REQUESTS"
    assert stats_status == 200


def test_query_image_too_big(service, fakes):
    row = posted_queries()[3]
    huge = b"\xff\xd8\xff\xe0" + b"\x00" * (service.config.http.max_upload_bytes + 1)
    url = fakes.add_artwork("danbooru", "8700", "artist_huge", [row["handle"]],
                            image=huge)

    _, reply = poll_query(service, url)

    assert reply["error"] == "QUERY_IMAGE_TOO_BIG"


def test_finished_requests_dropped(tmp_path, fakes):
    url = fakes.add_artwork("furbooru", "8800", "artist_dropped", [])
    extra = service_config(fakes, """
[requests]
keep_finished_secs = 0.0
keep_failed_secs = 0.0
keep_input_error_secs = 0.0
""")
    running = RunningService(tmp_path, extra_config=extra, indexers=1)
    try:
        ended = poll_query(running, url)[1]
        fetches_before = fakes.paths_requested("furbooru").count("/api/v1/json/images/8800")
        time.sleep(0.1)
        dropped = running.call("pipeline", {"kind": "requests.drop_finished"})
        again = poll_query(running, url)[1]
        fetches_after = fakes.paths_requested("furbooru").count("/api/v1/json/images/8800")
    finally:
        running.close()

    assert ended["error"] == "NO_TWITTER_ACCOUNT_FOUND"
    assert dropped["dropped"] >= 1
    assert again["status"] == "END"
    assert fetches_after == fetches_before + 1

"""End to end: account scans from the fake X API through the real process group.

The group runs with ``[scans] backend = "x_api"`` pointed at a loopback
fake X API v2 started by this module; the fake serves the demo accounts'
tweets and images.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from broker.client import BrokerError
from tests.fakes.sites import start_fake_sites
from tests.fakes.x_api import BEARER_TOKEN, running_fake_x_api
from tests.service import PROJECT_ROOT, RunningService

SHARED = PROJECT_ROOT.parent / "shared"
DEMO = SHARED / "corpus" / "demo"
MUSEUM = SHARED / "corpus" / "museum" / "images"

pytestmark = pytest.mark.skipif(not DEMO.is_dir(), reason="demo corpus not found")


def x_api_config(fake, extra: str = "") -> str:
    return f"""
[network]
allow_private_addresses = true
timeout_secs = 5.0
[scans]
backend = "x_api"
[x_api]
base_url = "{fake.base_url}"
bearer_token = "{BEARER_TOKEN}"
{extra}
"""


def photo_count(fake, handle: str) -> int:
    user = fake.user_by_handle(handle)
    return sum(1 for tweet in user.tweets for media in tweet.media
               if media.kind == "photo")


def stored_keys(service, account_id: int) -> list[tuple[int, int]]:
    connection = sqlite3.connect(service.config.database_path)
    try:
        return connection.execute(
            "SELECT tweet_id, position FROM images WHERE account_id = ?",
            (account_id,)).fetchall()
    finally:
        connection.close()


def scan(service, handle: str, timeout: float = 600.0) -> dict:
    try:
        return service.call("pipeline", {"kind": "scan.submit", "handle": handle},
                            timeout_secs=timeout)
    except BrokerError as error:
        return {"ok": False, "code": error.code, "message": str(error)}


@pytest.fixture(scope="module")
def fake():
    with running_fake_x_api() as running:
        for handle in ("kestrel_inks", "mizuiro_brush", "orchard_notes"):
            running.load_demo_account(handle)
        yield running


@pytest.fixture(scope="module")
def service(tmp_path_factory, fake):
    running = RunningService(tmp_path_factory.mktemp("scan"),
                             extra_config=x_api_config(fake))
    yield running
    running.close()


def test_scan_indexes_every_page_then_only_new(service, fake):
    user = fake.user_by_handle("kestrel_inks")

    first = scan(service, "kestrel_inks")
    after_first = stored_keys(service, user.user_id)
    new_images = sorted(MUSEUM.glob("*.png"))[:3]
    fake.add_tweet("kestrel_inks", new_images[:2])
    fake.add_tweet("kestrel_inks", new_images[2:])
    second = scan(service, "kestrel_inks")
    after_second = stored_keys(service, user.user_id)
    timeline_calls = [r for r in fake.api_requests("/2/users/")
                      if r.path.endswith("/tweets")]

    assert first["ok"], first
    assert len(after_first) == photo_count(fake, "kestrel_inks") - 3
    assert len(set(after_first)) == len(after_first)
    assert second["ok"], second
    assert len(after_second) == len(after_first) + 3
    assert "since_id" in timeline_calls[-1].query


def test_scanner_killed_mid_scan_loses_nothing(service, fake):
    user = fake.user_by_handle("orchard_notes")
    expected = photo_count(fake, "orchard_notes")
    outcome = {}
    worker = threading.Thread(
        target=lambda: outcome.update(scan(service, "orchard_notes")))
    worker.start()
    deadline = time.monotonic() + 120
    while len(stored_keys(service, user.user_id)) < 40:
        assert time.monotonic() < deadline, "scan did not start"
        time.sleep(0.2)
    scanner = next(p for p in service.processes() if p["name"] == "scanner")
    os.kill(scanner["pid"], signal.SIGKILL)
    worker.join(600)

    if not outcome.get("ok"):
        # The broker gave up on the killed request; a new scan resumes.
        outcome = scan(service, "orchard_notes")
    keys = stored_keys(service, user.user_id)

    assert outcome.get("ok"), outcome
    assert len(keys) == expected
    assert len(set(keys)) == len(keys)


def test_deleted_media_recorded_not_retried(service, fake):
    user = fake.user_by_handle("mizuiro_brush")
    victim = next(m for t in user.tweets for m in t.media if m.kind == "photo")
    fake.delete_media(victim.name)

    reply = scan(service, "mizuiro_brush")
    connection = sqlite3.connect(service.config.database_path)
    failed = connection.execute(
        "SELECT permanent, error FROM failed_images WHERE account_id = ?",
        (user.user_id,)).fetchall()
    connection.close()

    assert reply["ok"], reply
    assert len(stored_keys(service, user.user_id)) == photo_count(fake,
                                                                  "mizuiro_brush") - 1
    assert len(failed) == 1
    assert failed[0][0] == 1
    assert "404" in failed[0][1]


@pytest.mark.parametrize("state", ["protected", "suspended"])
def test_unavailable_account_states(service, fake, state):
    handle = f"gone_{state}"[:15]
    fake.add_user(handle, 990000 + len(state))
    fake.add_tweet(handle, sorted(MUSEUM.glob("*.png"))[3:4])
    getattr(fake, f"set_{state}")(handle)

    started = time.monotonic()
    reply = scan(service, handle, timeout=60)

    assert time.monotonic() - started < 30
    assert reply["ok"] is False
    assert reply["code"] == "ACCOUNT_UNAVAILABLE"
    assert state in reply["message"]


def test_not_found_account(service):
    reply = scan(service, "no_such_user_1", timeout=60)

    assert reply["ok"] is False
    assert reply["code"] == "ACCOUNT_UNAVAILABLE"


def test_rate_limited_scan_reports_state(service, fake):
    fake.add_user("limited_artist", 991000)
    fake.add_tweet("limited_artist", sorted(MUSEUM.glob("*.png"))[4:5])
    fake.rate_limit_next_calls(3, reset_in_secs=8)
    started_at = time.time()

    started = time.monotonic()
    try:
        reply = scan(service, "limited_artist", timeout=60)
        status = service.call("scanner", {"kind": "scanner.status"})
        # /stats is cached for a few seconds by the HTTP API.
        time.sleep(3.5)
        stats = service.http("GET", "/stats")[1]
    finally:
        # Later tests share the service: let the limit lapse first.
        fake.rate_limit_next_calls(0)
        time.sleep(max(0.0, status_reset(service) - time.time()) + 0.5)

    assert time.monotonic() - started < 30
    assert reply["ok"] is False
    assert reply["code"] == "RATE_LIMITED"
    assert status["rate_limited_until"] > started_at + 4
    assert stats["rate_limited_until"] > started_at + 4


def status_reset(service) -> float:
    return service.call("scanner", {"kind": "scanner.status"})["rate_limited_until"]


def test_query_uses_valid_account_only(tmp_path, fake):
    fakes = start_fake_sites()
    valid = fake.user_by_handle("kestrel_inks")
    fake.add_user("suspended_twin", 992000)
    fake.set_suspended("suspended_twin")
    tweet = valid.tweets[-1]
    image_path = Path(next(m for m in tweet.media if m.kind == "photo").path)
    url = fakes.add_artwork("danbooru", "9100", "artist_two",
                            ["suspended_twin", "kestrel_inks"],
                            image=image_path.read_bytes())
    sites = "\n".join(f'{name} = "{value}"'
                      for name, value in fakes.sites_config().__dict__.items())
    running = RunningService(tmp_path, extra_config=x_api_config(
        fake, f"[sites]\n{sites}"))
    try:
        deadline = time.monotonic() + 300
        while True:
            status, reply = running.http(
                "GET", "/query?url=" + urllib.parse.quote(url, safe=""))
            if status != 200 or reply["status"] == "END":
                break
            assert time.monotonic() < deadline, reply
            time.sleep(0.3)
    finally:
        running.close()
        fakes.close()

    assert reply["error"] is None, reply
    assert [a["account_name"] for a in reply["twitter_accounts"]] == ["kestrel_inks"]
    assert reply["has_first_time_scan"] is True
    assert reply["results"][0]["tweet_id"] == str(tweet.tweet_id)


def test_due_account_updated_by_maintenance_call(service, fake):
    user = fake.user_by_handle("kestrel_inks")
    assert scan(service, "kestrel_inks")["ok"]
    before = len(stored_keys(service, user.user_id))
    fake.add_tweet("kestrel_inks", sorted(MUSEUM.glob("*.png"))[5:6])
    connection = sqlite3.connect(service.config.database_path)
    connection.execute("UPDATE accounts SET last_update_at = 0 WHERE id = ?",
                       (user.user_id,))
    connection.commit()
    connection.close()

    reply = service.call("scanner", {"kind": "accounts.update_due",
                                     "interval_secs": 60}, timeout_secs=300)

    assert "kestrel_inks" in reply["scanned"]
    assert len(stored_keys(service, user.user_id)) == before + 1


def test_transient_failure_retried(service, fake):
    user = fake.user_by_handle("mizuiro_brush")
    tweet = fake.add_tweet("mizuiro_brush", sorted(MUSEUM.glob("*.png"))[6:7])
    media = tweet.media[0]
    url = f"{fake.base_url}/media/{media.name}?format={media.extension}&name=orig"
    connection = sqlite3.connect(service.config.database_path)
    connection.execute(
        "INSERT INTO failed_images (tweet_id, position, account_id, location, error,"
        " permanent, attempts, next_attempt_at, failed_at) "
        "VALUES (?, 1, ?, ?, 'HTTP status 503', 0, 1, 0, 0)",
        (tweet.tweet_id, user.user_id, url))
    connection.commit()
    connection.close()

    reply = service.call("scanner", {"kind": "images.retry"}, timeout_secs=300)

    assert reply["stored"] >= 1
    assert (tweet.tweet_id, 1) in stored_keys(service, user.user_id)


def test_renamed_account_tracked_by_id(service, fake):
    user = fake.add_user("old_name", 993000)
    fake.add_tweet("old_name", sorted(MUSEUM.glob("*.png"))[7:8])
    first = scan(service, "old_name")
    user.handle = "new_name"
    fake.add_tweet("new_name", sorted(MUSEUM.glob("*.png"))[8:9])

    second = scan(service, "new_name")
    connection = sqlite3.connect(service.config.database_path)
    handles = connection.execute("SELECT handle FROM accounts WHERE id = ?",
                                 (993000,)).fetchall()
    connection.close()

    assert first["ok"], first
    assert second["ok"], second
    assert len(stored_keys(service, 993000)) == 2
    assert handles == [("new_name",)]

"""End to end over the real process group: ingest the demo archives, search.

These tests start ``run_server.py serve`` with a real broker, indexers,
searcher, pipeline and HTTP API on loopback ports and a temporary data
folder, and talk to it over HTTP and the broker as users would.
"""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.client import BrokerError
from tests.service import PROJECT_ROOT, RunningService

SHARED = PROJECT_ROOT.parent / "shared"
DEMO = SHARED / "corpus" / "demo"
MANIFEST = DEMO / "queries" / "manifest.csv"
# Transforms the global descriptor alone must survive.
PLAIN_TRANSFORMS = ("original", "downscale", "jpeg_low", "colour")

pytestmark = pytest.mark.skipif(not DEMO.is_dir(), reason="demo corpus not found")


def demo_image_count() -> int:
    gallery = [p for p in (DEMO / "gallery-dl").rglob("*")
               if p.suffix.lower() in (".jpg", ".png", ".jpeg", ".webp")]
    export = list((DEMO / "x-archive").rglob("tweets_media/*"))
    return len(gallery) + len(export)


def manifest_rows(transforms=PLAIN_TRANSFORMS) -> list[dict]:
    with MANIFEST.open(newline="", encoding="utf-8") as file:
        return [row for row in csv.DictReader(file) if row["transform"] in transforms]


def database_rows(service: RunningService) -> list[tuple]:
    connection = sqlite3.connect(service.config.database_path)
    try:
        return connection.execute("SELECT tweet_id, position FROM images").fetchall()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def demo_service(tmp_path_factory):
    service = RunningService(tmp_path_factory.mktemp("demo"))
    try:
        job = service.ingest(str(DEMO))
        service.job = job
        yield service
    finally:
        service.close()


def test_ingest_stores_every_demo_image(demo_service):
    job = demo_service.job
    rows = database_rows(demo_service)

    assert job["status"] == "done"
    assert job["failed"] == 0
    assert len(rows) == demo_image_count()
    assert len(set(rows)) == len(rows)


def test_ingest_twice_adds_nothing(demo_service):
    before = len(database_rows(demo_service))

    job = demo_service.ingest(str(DEMO))

    assert job["status"] == "done"
    assert job["added"] == 0
    assert len(database_rows(demo_service)) == before


@pytest.mark.parametrize("row", manifest_rows(), ids=lambda row: Path(row["query"]).stem)
def test_search_finds_manifest_tweet(demo_service, row):
    image = (DEMO / row["query"]).read_bytes()

    status, reply = demo_service.http("POST", "/search", image)

    assert status == 200, reply
    assert reply["status"] == "END"
    assert reply["error"] is None
    if not row["tweet_id"]:
        assert reply["results"] == []
        return
    assert reply["results"], f"no result for {row['query']}"
    first = reply["results"][0]
    assert first["tweet_id"] == row["tweet_id"]
    assert first["image_position"].split("/")[0] == row["image_position"]


def test_search_result_readable_by_identifier(demo_service):
    row = next(r for r in manifest_rows(("original",)) if r["tweet_id"])
    status, submitted = demo_service.http("POST", "/search",
                                          (DEMO / row["query"]).read_bytes())

    status, polled = demo_service.http(
        "GET", f"/search?identifier={submitted['identifier']}")

    assert status == 200
    assert polled["results"] == submitted["results"]
    assert polled["status"] == "END"


def test_search_limited_to_account(demo_service):
    row = next(r for r in manifest_rows(("original",)) if r["tweet_id"])
    image = (DEMO / row["query"]).read_bytes()
    other = "orchard_notes" if row["handle"] != "orchard_notes" else "kestrel_inks"

    _, own = demo_service.http("POST", f"/search?account_name={row['handle']}", image)
    _, elsewhere = demo_service.http("POST", f"/search?account_name={other}", image)

    assert own["results"][0]["tweet_id"] == row["tweet_id"]
    assert own["twitter_accounts"][0]["account_name"] == row["handle"]
    assert own["twitter_accounts"][0]["account_id"] != "None"
    assert elsewhere["results"] == []


def test_cli_search_prints_tweet(demo_service):
    row = next(r for r in manifest_rows(("original",)) if r["tweet_id"])
    command = [sys.executable, str(PROJECT_ROOT / "run_server.py"), "--config",
               str(demo_service.config_path), "search", str(DEMO / row["query"])]

    output = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            cwd=PROJECT_ROOT)

    assert output.returncode == 0, output.stderr
    assert f"tweet {row['tweet_id']} image {row['image_position']}/" in output.stdout


def test_cli_stats_and_workers(demo_service):
    base = [sys.executable, str(PROJECT_ROOT / "run_server.py"), "--config",
            str(demo_service.config_path)]

    stats = subprocess.run(base + ["stats"], capture_output=True, text=True,
                           timeout=60, cwd=PROJECT_ROOT)
    workers = subprocess.run(base + ["workers"], capture_output=True, text=True,
                             timeout=60, cwd=PROJECT_ROOT)

    assert stats.returncode == 0, stats.stderr
    assert f"indexed_images_count: {demo_image_count()}" in stats.stdout
    assert workers.returncode == 0, workers.stderr
    assert workers.stdout.count("indexer") == 2
    assert "searcher" in workers.stdout


def test_indexer_killed_mid_ingest_loses_nothing(tmp_path):
    service = RunningService(tmp_path)
    try:
        job = service.call("pipeline", {"kind": "ingest.submit",
                                        "path": str(DEMO)})["job"]
        service.wait_job(job["id"], 120, until=lambda j: j["done"] >= 50)
        indexer = next(p for p in service.processes() if p["name"] == "indexer-1")
        os.kill(indexer["pid"], signal.SIGKILL)

        finished = service.wait_job(job["id"], 600)
        rows = database_rows(service)
        restarted = next(p for p in service.processes() if p["name"] == "indexer-1")
        crash_record = (service.config.log_folder / "exits.log").read_text()
    finally:
        service.close()

    assert finished["status"] == "done"
    assert finished["failed"] == 0
    assert len(rows) == demo_image_count()
    assert len(set(rows)) == len(rows)
    assert restarted["restarts"] >= 1
    assert "indexer-1" in crash_record
    assert "SIGKILL" in crash_record


def test_restart_resumes_from_store(tmp_path):
    gallery = DEMO / "gallery-dl" / "twitter" / "mizuiro_brush"
    service = RunningService(tmp_path)
    try:
        first = service.ingest(str(gallery))
    finally:
        service.close()
    faiss_folder = service.config.data_folder / "faiss"

    service = RunningService(tmp_path)
    try:
        again = service.ingest(str(gallery))
        row = next(r for r in manifest_rows(("original",))
                   if r["handle"] == "mizuiro_brush" and r["tweet_id"])
        _, reply = service.http("POST", "/search", (DEMO / row["query"]).read_bytes())
    finally:
        service.close()

    assert first["added"] > 0
    assert again["added"] == 0
    assert faiss_folder.is_dir()
    assert reply["results"][0]["tweet_id"] == row["tweet_id"]


def test_sigterm_stops_every_process(tmp_path):
    service = RunningService(tmp_path)
    pids = [p["pid"] for p in service.processes() if p["pid"]]

    service.close()
    time.sleep(0.5)

    assert service.process.returncode == 0
    for pid in pids:
        assert not _alive(pid), f"process {pid} still running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited but not yet been reaped by its parent.
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"


def test_unreadable_files_reported_by_name(demo_service, tmp_path):
    import json
    import shutil

    folder = tmp_path / "twitter" / "broken_demo"
    folder.mkdir(parents=True)
    source = next((DEMO / "gallery-dl" / "twitter" / "mizuiro_brush").glob("*.jpg"))
    sidecar = json.loads(source.with_name(source.name + ".json").read_text())
    sidecar["user"] = sidecar["author"] = {**sidecar["author"], "id": 77001,
                                           "name": "broken_demo"}
    for tweet_id, content in ((9100000000000000001, source.read_bytes()),
                              (9100000000000000002, b"<html>not an image</html>"),
                              (9100000000000000003, source.read_bytes()[:2000])):
        image = folder / f"{tweet_id}_1.jpg"
        image.write_bytes(content)
        image.with_name(image.name + ".json").write_text(
            json.dumps({**sidecar, "tweet_id": tweet_id}))
    shutil.copy(source, folder / "9100000000000000004_1.jpg")
    (folder / "9100000000000000005_1.jpg").write_bytes(source.read_bytes())
    (folder / "9100000000000000005_1.jpg.json").write_text("{ not json")

    job = demo_service.ingest(str(tmp_path))
    reported = "\n".join(f"{path}: {reason}" for path, reason in job["problems"])

    assert job["status"] == "done"
    assert job["added"] == 1
    assert job["failed"] == 2
    assert "9100000000000000002_1.jpg" in reported
    assert "9100000000000000003_1.jpg" in reported
    assert "9100000000000000004_1.jpg" in reported
    assert "9100000000000000005_1.jpg.json" in reported


def test_broker_killed_mid_ingest_recovers(tmp_path):
    service = RunningService(tmp_path)
    try:
        job = service.call("pipeline", {"kind": "ingest.submit",
                                        "path": str(DEMO)})["job"]
        service.wait_job(job["id"], 120, until=lambda j: j["done"] >= 50)
        broker = next(p for p in service.processes() if p["name"] == "broker")
        os.kill(broker["pid"], signal.SIGKILL)
        time.sleep(1.0)

        finished = _wait_job_through_restart(service, job["id"])
        rows = database_rows(service)
        row = next(r for r in manifest_rows(("original",)) if r["tweet_id"])
        status, reply = service.http("POST", "/search",
                                     (DEMO / row["query"]).read_bytes())
    finally:
        service.close()

    assert finished["status"] == "done"
    assert len(rows) == demo_image_count()
    assert len(set(rows)) == len(rows)
    assert status == 200
    assert reply["results"][0]["tweet_id"] == row["tweet_id"]


def _wait_job_through_restart(service, job_id: int) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            return service.wait_job(job_id, 300)
        except BrokerError:
            time.sleep(0.5)
    raise TimeoutError(f"ingest job {job_id} not finished after a broker restart")

"""Time image searches end to end through the HTTP API of the running group.

The demo queries are resized to a long side of ``QUERY_LONG_SIDE`` px
(Lanczos, saved as PNG so the query's own transformation stays intact)
and sent as raw ``POST /search`` bodies by ``CLIENTS`` concurrent
clients. A request's latency runs from sending the POST until its
result: the POST returns the finished search, and a request not yet
``END`` is polled with ``GET /search?identifier=``. The reference
beside it is the searcher's first step alone, decoding and describing
the same bytes in this process. Targets: p50 at most 300 ms and p99 at
most 800 ms.

This module needs a running, indexed group; ``run_all`` provides one.
"""

from __future__ import annotations

import csv
import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from benchmarks.common import DEMO_CORPUS, QUERY_MANIFEST, Figure, percentile_ms

BENCHMARK = "end to end search"
QUERY_LONG_SIDE = 1024
CLIENTS = 4
FULL_ROUNDS = 2
QUICK_QUERIES = 16
TARGET_P50_MS = 300.0
TARGET_P99_MS = 800.0
POLL_INTERVAL_SECS = 0.05
MAX_SECS = 300.0


@dataclass(frozen=True)
class Query:
    name: str
    tweet_id: str
    image: bytes


def load_queries() -> list[Query]:
    """Return the demo queries resized to ``QUERY_LONG_SIDE`` px, as PNG bytes."""
    queries = []
    with QUERY_MANIFEST.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            with Image.open(DEMO_CORPUS / row["query"]) as image:
                image.load()
                scale = QUERY_LONG_SIDE / max(image.size)
                size = (max(1, round(image.width * scale)),
                        max(1, round(image.height * scale)))
                resized = image.resize(size, Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            resized.save(buffer, format="PNG")
            queries.append(Query(row["query"], row["tweet_id"], buffer.getvalue()))
    return queries


def search_until_result(service, query: Query) -> dict:
    """Send one search and poll it until it ends; return its timing and result."""
    started = time.perf_counter()
    status, document = service.http("POST", "/search", body=query.image)
    while (status == 200 and isinstance(document, dict)
           and document.get("status") != "END"):
        time.sleep(POLL_INTERVAL_SECS)
        status, document = service.http(
            "GET", f"/search?identifier={document['identifier']}")
    secs = time.perf_counter() - started
    ok = status == 200 and isinstance(document, dict) and not document.get("error")
    results = document.get("results", []) if isinstance(document, dict) else []
    found = any(result["tweet_id"] == query.tweet_id for result in results)
    error = None if ok else f"{query.name}: HTTP {status} {str(document)[:200]}"
    return {"secs": secs, "ok": ok, "found": found, "error": error}


def describe_floor(queries: list[Query]) -> list[float]:
    """Return the seconds of decoding and describing each query in this process."""
    from broker.config import ImagesConfig
    from index.decoding import decode_image
    from index.descriptors import describe_image
    from stages.indexer import DESCRIBE_SIDE_PX

    max_pixels = ImagesConfig().max_pixels
    latencies = []
    for query in queries:
        started = time.perf_counter()
        describe_image(decode_image(query.image, max_pixels, reduce_to=DESCRIBE_SIDE_PX))
        latencies.append(time.perf_counter() - started)
    return latencies


def run(service, queries: list[Query], quick: bool = False) -> list[Figure]:
    chosen = queries[:QUICK_QUERIES] if quick else queries * FULL_ROUNDS
    # One search first, so the searcher has synced its index before timing.
    search_until_result(service, chosen[0])
    deadline = time.monotonic() + MAX_SECS

    def timed(query: Query) -> dict | None:
        if time.monotonic() >= deadline:
            return None
        return search_until_result(service, query)

    with ThreadPoolExecutor(CLIENTS) as executor:
        outcomes = [outcome for outcome in executor.map(timed, chosen) if outcome]
    floor = describe_floor(chosen[:len(queries)])
    latencies = [outcome["secs"] for outcome in outcomes]
    errors = [outcome["error"] for outcome in outcomes if outcome["error"]]
    found = sum(outcome["found"] for outcome in outcomes)
    details = {"requests": len(outcomes), "clients": CLIENTS, "errors": len(errors),
               "error_samples": errors[:5], "expected_tweet_found": found,
               "query_long_side_px": QUERY_LONG_SIDE}
    note = (f"{len(outcomes)} searches, {len(errors)} errors, expected tweet "
            f"found in {found}")
    return [
        Figure(BENCHMARK, f"p50, {CLIENTS} clients", percentile_ms(latencies, 50),
               "ms", reference=percentile_ms(floor, 50),
               reference_name="decode + describe in process",
               max_value=TARGET_P50_MS, note=note, details=details),
        Figure(BENCHMARK, f"p99, {CLIENTS} clients", percentile_ms(latencies, 99),
               "ms", reference=percentile_ms(floor, 99),
               reference_name="decode + describe in process",
               max_value=TARGET_P99_MS),
        Figure(BENCHMARK, "errors", float(len(errors)), "", max_value=0),
    ]

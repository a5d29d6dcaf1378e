"""Measure BinaryIndex against an exhaustive FAISS IndexBinaryFlat.

For each size, the script fills both indexes with random 256-bit codes and
plants near-duplicates: query i is a stored code with ``i % 32`` bits
flipped, so the flips cover 0 to 31 bits. It reports build time, RAM per
image, single-query latency (p50, p99), how many planted codes each index
returns in its top k, and the recall of BinaryIndex relative to the
exhaustive search for every neighbour within 31 bits. It then measures a
search limited to one account of 10,000 images (a tenth of the index at
smaller sizes), with the same account searched through a FAISS ID selector
on the flat index for comparison.

Run from the repository root:

    .venv/bin/python -m benchmarks.search_scale            # 1e5, 1e6, 1e7
    .venv/bin/python -m benchmarks.search_scale --quick    # 1e4, 1e5

The table goes to stdout and every number to
benchmarks/results/search_scale.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np
import psutil

from index import vector_index
from index.vector_index import BinaryIndex

RESULTS_PATH = Path(__file__).parent / "results" / "search_scale.json"
DEFAULT_SIZES = (100_000, 1_000_000, 10_000_000)
QUICK_SIZES = (10_000, 100_000)
ACCOUNT_SIZE = 10_000
PLANTED_RADIUS = 31
NEIGHBOURS = 10
SELECTOR_QUERIES = 20
SEED = 7


@dataclass
class Measurement:
    size: int
    method: str
    build_secs: float | None
    rss_bytes_per_image: float | None
    array_bytes_per_image: float | None
    p50_ms: float
    p99_ms: float
    planted_found: float
    recall_vs_flat: float | None


def main() -> None:
    arguments = parse_arguments()
    sizes = QUICK_SIZES if arguments.quick else arguments.sizes
    queries = 50 if arguments.quick else arguments.queries
    faiss.omp_set_num_threads(vector_index.SEARCH_THREADS)
    measurements: list[Measurement] = []
    started = time.perf_counter()
    for size in sizes:
        measurements.extend(measure_size(size, queries, arguments.busy_core))
        gc.collect()
    print_table(measurements)
    # Other processes on the machine inflate p99, as the load average shows.
    load = os.getloadavg()
    print("load average over 1, 5, 15 minutes: %.2f %.2f %.2f" % load)
    write_results(measurements, arguments, time.perf_counter() - started)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=DEFAULT_SIZES,
        help="comma-separated index sizes in codes, such as 1e5,1e6 "
        "(default: 1e5,1e6,1e7)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="measure 1e4 and 1e5 codes with 50 queries, ignoring --sizes",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=200,
        help="planted queries per size and per search kind (default: 200)",
    )
    parser.add_argument(
        "--busy-core",
        action="store_true",
        help="keep one other core busy with a spinning process while timing",
    )
    return parser.parse_args()


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(float(part)) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"invalid size list {text!r}") from error
    if any(size < 1000 for size in sizes):
        raise argparse.ArgumentTypeError("every size must be at least 1000 codes")
    return sizes


# Data


def make_codes(count: int, generator: np.random.Generator) -> np.ndarray:
    return generator.integers(0, 256, size=(count, 32), dtype=np.uint8)


def flip_bits(
    codes: np.ndarray, flips: np.ndarray, generator: np.random.Generator
) -> np.ndarray:
    """Return copies of codes with flips[i] distinct bits of row i inverted."""
    bits = np.unpackbits(codes, axis=1)
    for row, flip_count in enumerate(flips):
        positions = generator.choice(bits.shape[1], int(flip_count), replace=False)
        bits[row, positions] ^= 1
    return np.packbits(bits, axis=1)


def make_accounts(
    size: int, account_rows: np.ndarray, generator: np.random.Generator
) -> np.ndarray:
    """Spread rows over 1000 accounts and give ``account_rows`` account 1."""
    accounts = generator.integers(2, 1002, size=size, dtype=np.int64)
    accounts[account_rows] = 1
    return accounts


# Measuring


def rss_bytes() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def time_queries(
    search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run each query alone; return the latencies in ms and the results."""
    for query in queries[:5]:
        search(query[None, :])
    latencies = np.empty(len(queries))
    all_ids = np.empty((len(queries), NEIGHBOURS), dtype=np.int64)
    all_distances = np.empty((len(queries), NEIGHBOURS), dtype=np.int32)
    for row, query in enumerate(queries):
        started = time.perf_counter()
        distances, ids = search(query[None, :])
        latencies[row] = (time.perf_counter() - started) * 1000
        all_ids[row] = ids[0]
        all_distances[row] = distances[0]
    return latencies, all_distances, all_ids


def planted_found(ids: np.ndarray, planted: np.ndarray) -> float:
    return float(np.mean([planted[row] in ids[row] for row in range(len(ids))]))


def recall_within_radius(
    ids: np.ndarray, flat_ids: np.ndarray, flat_distances: np.ndarray
) -> float:
    """Return the share of flat neighbours within 31 bits found in ``ids``."""
    expected_count = found = 0
    for row in range(len(ids)):
        close = flat_ids[row][flat_distances[row] <= PLANTED_RADIUS]
        expected_count += close.size
        found += np.isin(close, ids[row]).sum()
    return float(found / expected_count) if expected_count else 1.0


@contextmanager
def busy_core(enabled: bool) -> Iterator[None]:
    """Keep a spinning process running while the block runs, if enabled."""
    if not enabled:
        yield
        return
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=spin, args=(stop,), daemon=True)
    spinner.start()
    try:
        yield
    finally:
        stop.set()
        spinner.join(timeout=5)


def spin(stop) -> None:
    while not stop.is_set():
        pass


def measure_size(size: int, query_count: int, busy: bool) -> list[Measurement]:
    generator = np.random.default_rng(SEED)
    codes = make_codes(size, generator)
    ids = np.arange(1, size + 1, dtype=np.int64)
    account_size = min(ACCOUNT_SIZE, size // 10)
    account_rows = np.sort(generator.choice(size, account_size, replace=False))
    accounts = make_accounts(size, account_rows, generator)
    query_rows = generator.choice(size, query_count, replace=False)
    flips = np.arange(query_count) % (PLANTED_RADIUS + 1)
    queries = flip_bits(codes[query_rows], flips, generator)
    account_query_rows = generator.choice(account_rows, query_count, replace=False)
    account_queries = flip_bits(codes[account_query_rows], flips, generator)

    flat, flat_result = measure_flat(size, codes, queries, query_rows, busy)
    index, index_result = measure_index(
        size, codes, ids, accounts, queries, query_rows, busy, flat_result
    )
    with busy_core(busy):
        account_result = measure_account(
            size, index, account_queries, account_query_rows, account_rows
        )
        selector_result = measure_selector(
            size, flat, account_queries, account_query_rows, account_rows
        )
    return [flat_result[0], index_result, account_result, selector_result]


def measure_flat(size, codes, queries, query_rows, busy):
    before = rss_bytes()
    started = time.perf_counter()
    flat = faiss.IndexBinaryFlat(256)
    flat.add(codes)
    build_secs = time.perf_counter() - started
    ram = (rss_bytes() - before) / size

    def search(query):
        distances, rows = flat.search(query, NEIGHBOURS)
        return distances, rows + 1

    with busy_core(busy):
        latencies, distances, ids = time_queries(search, queries)
    result = Measurement(
        size=size,
        method="IndexBinaryFlat",
        build_secs=build_secs,
        rss_bytes_per_image=ram,
        array_bytes_per_image=flat.ntotal * flat.code_size / size,
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        planted_found=planted_found(ids, query_rows + 1),
        recall_vs_flat=1.0,
    )
    return flat, (result, distances, ids)


def measure_index(size, codes, ids, accounts, queries, query_rows, busy, flat):
    _, flat_distances, flat_ids = flat
    before = rss_bytes()
    started = time.perf_counter()
    index = BinaryIndex()
    index.add(ids, codes, accounts)
    index.compact()
    build_secs = time.perf_counter() - started
    ram = (rss_bytes() - before) / size

    with busy_core(busy):
        latencies, _, found_ids = time_queries(
            lambda query: index.search(query, NEIGHBOURS), queries
        )
    return index, Measurement(
        size=size,
        method=f"BinaryIndex (exact within {index.guaranteed_radius} bits)",
        build_secs=build_secs,
        rss_bytes_per_image=ram,
        array_bytes_per_image=index.nbytes / size,
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        planted_found=planted_found(found_ids, query_rows + 1),
        recall_vs_flat=recall_within_radius(found_ids, flat_ids, flat_distances),
    )


def measure_account(size, index, queries, query_rows, account_rows):
    account_ids = set(int(row) + 1 for row in account_rows)
    latencies, _, found_ids = time_queries(
        lambda query: index.search(query, NEIGHBOURS, account_ids=[1]), queries
    )
    outside = set(found_ids[found_ids >= 0].tolist()) - account_ids
    if outside:
        raise RuntimeError(f"account search returned ids of other accounts: {outside}")
    return Measurement(
        size=size,
        method=f"BinaryIndex, 1 account of {len(account_rows)}",
        build_secs=None,
        rss_bytes_per_image=None,
        array_bytes_per_image=None,
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        planted_found=planted_found(found_ids, query_rows + 1),
        recall_vs_flat=None,
    )


def measure_selector(size, flat, queries, query_rows, account_rows):
    """Time the flat index limited by an ID selector, on a few queries."""
    selector = faiss.IDSelectorBatch(account_rows.astype(np.int64))
    parameters = faiss.SearchParameters(sel=selector)

    def search(query):
        distances, rows = flat.search(query, NEIGHBOURS, params=parameters)
        return distances, np.where(rows >= 0, rows + 1, -1)

    count = min(SELECTOR_QUERIES, len(queries))
    latencies, _, found_ids = time_queries(search, queries[:count])
    return Measurement(
        size=size,
        method=f"IndexBinaryFlat + IDSelector, 1 account of {len(account_rows)}",
        build_secs=None,
        rss_bytes_per_image=None,
        array_bytes_per_image=None,
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        planted_found=planted_found(found_ids, query_rows[:count] + 1),
        recall_vs_flat=None,
    )


# Output


def print_table(measurements: list[Measurement]) -> None:
    header = (
        f"{'size':>10}  {'method':<52} {'build s':>8} {'RSS B/img':>9} "
        f"{'arr B/img':>9} {'p50 ms':>8} {'p99 ms':>8} {'planted':>7} "
        f"{'recall':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in measurements:
        build = format_optional(row.build_secs, ".2f")
        rss_bytes = format_optional(row.rss_bytes_per_image, ".1f")
        array_bytes = format_optional(row.array_bytes_per_image, ".1f")
        recall = format_optional(row.recall_vs_flat, ".4f")
        print(
            f"{row.size:>10}  {row.method:<52} {build:>8} "
            f"{rss_bytes:>9} {array_bytes:>9} "
            f"{row.p50_ms:>8.3f} {row.p99_ms:>8.3f} {row.planted_found:>7.3f} "
            f"{recall:>7}"
        )


def format_optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def write_results(
    measurements: list[Measurement], arguments: argparse.Namespace, secs: float
) -> None:
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {
            "cpu_count": psutil.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "search_threads": vector_index.SEARCH_THREADS,
        },
        "settings": {
            "queries": 50 if arguments.quick else arguments.queries,
            "quick": arguments.quick,
            "busy_core": arguments.busy_core,
            "neighbours": NEIGHBOURS,
            "planted_flips": f"0 to {PLANTED_RADIUS}",
        },
        "total_secs": secs,
        "load_average_at_end": os.getloadavg(),
        "measurements": [asdict(row) for row in measurements],
    }
    RESULTS_PATH.write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS_PATH} ({secs:.0f} s in all)")


if __name__ == "__main__":
    main()

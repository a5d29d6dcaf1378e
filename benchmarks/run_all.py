"""Run every speed and scale benchmark and print one table.

    .venv/bin/python -m benchmarks.run_all [--quick]

In order: describe throughput, broker hop, search at scale (the
``benchmarks.search_scale`` script in a subprocess), pipeline scaling,
and then, on one process group that ingests the demo corpus, memory
(idle and after the ingest), end-to-end search and HTTP load. A
benchmark that raises is listed as failed and the others still run.
The table goes to stdout and every figure to
``benchmarks/results/all.json``; the exit status is 1 when a benchmark
failed, whether or not the targets hold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from benchmarks import (
    broker_hop,
    end_to_end,
    http_load,
    memory,
    pipeline_scaling,
    throughput,
)
from benchmarks.common import (
    DEMO_CORPUS,
    PROJECT_ROOT,
    RESULTS_FOLDER,
    Figure,
    failed_figure,
    format_table,
    machine,
    write_json,
)

SEARCH_SCALE_RESULTS = RESULTS_FOLDER / "search_scale.json"
SEARCH_SCALE_TIMEOUT_SECS = 900
INGEST_TIMEOUT_SECS = 600.0


def main() -> int:
    arguments = parse_arguments()
    started = time.monotonic()
    figures: list[Figure] = []
    steps: list[tuple[str, Callable[[], list[Figure]]]] = [
        (throughput.BENCHMARK, lambda: throughput.run(arguments.quick)),
        (broker_hop.BENCHMARK, lambda: broker_hop.run(arguments.quick)),
        ("search at scale", lambda: search_scale(arguments.quick,
                                                 arguments.search_sizes)),
        (pipeline_scaling.BENCHMARK, lambda: pipeline_scaling.run(arguments.quick)),
        ("running group", lambda: group_benchmarks(arguments.quick)),
    ]
    for name, step in steps:
        figures.extend(run_step(name, step))
    secs = time.monotonic() - started
    print(format_table(figures))
    print(f"\n{len(figures)} figures in {secs:.0f} s")
    write_json(RESULTS_FOLDER / "all.json", {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "quick": arguments.quick,
        "total_secs": secs,
        "machine": machine(),
        "figures": [figure.as_dict() for figure in figures],
    })
    print(f"wrote {RESULTS_FOLDER / 'all.json'}")
    return 1 if any(figure.metric == "failed" for figure in figures) else 0


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="run every benchmark on a small share of its load "
                        "(about 3 minutes on 2 cores)")
    parser.add_argument("--search-sizes",
                        help="index sizes for search_scale, such as 1e5,1e6 "
                        "(default: its own, 1e5 to 1e7, or 1e4 and 1e5 with --quick)")
    return parser.parse_args()


def run_step(name: str, step: Callable[[], list[Figure]]) -> list[Figure]:
    print(f"== {name}", flush=True)
    started = time.monotonic()
    try:
        figures = step()
    except Exception as error:  # noqa: BLE001 - one failure must not stop the rest
        traceback.print_exc()
        return [failed_figure(name, error)]
    print(f"   {len(figures)} figures in {time.monotonic() - started:.0f} s",
          flush=True)
    return figures


# Search at scale


def search_scale(quick: bool, sizes: str | None) -> list[Figure]:
    """Run benchmarks.search_scale and turn its measurements into figures."""
    command = [sys.executable, "-m", "benchmarks.search_scale"]
    if quick:
        command.append("--quick")
    elif sizes:
        command += ["--sizes", sizes]
    SEARCH_SCALE_RESULTS.unlink(missing_ok=True)
    subprocess.run(command, cwd=PROJECT_ROOT, check=True,
                   timeout=SEARCH_SCALE_TIMEOUT_SECS)
    results = json.loads(SEARCH_SCALE_RESULTS.read_text(encoding="utf-8"))
    return search_scale_figures(results)


def search_scale_figures(results: dict) -> list[Figure]:
    rows = results["measurements"]
    figures = []
    for size in sorted({row["size"] for row in rows}):
        at_size = {row["method"]: row for row in rows if row["size"] == size}
        flat = at_size.get("IndexBinaryFlat")
        selector = next((row for method, row in at_size.items()
                         if method.startswith("IndexBinaryFlat + IDSelector")), None)
        for method, row in at_size.items():
            if not method.startswith("BinaryIndex"):
                continue
            reference = selector if "account" in method else flat
            name = f"{size:.0e} images, {method}"
            for percent in ("p50", "p99"):
                figures.append(Figure(
                    "search at scale", f"{name}, {percent}", row[f"{percent}_ms"], "ms",
                    reference=reference[f"{percent}_ms"] if reference else None,
                    reference_name=reference["method"] if reference else ""))
            if row.get("recall_vs_flat") is not None:
                figures.append(Figure(
                    "search at scale", f"{name}, recall within 31 bits",
                    row["recall_vs_flat"], "", reference=1.0,
                    reference_name="IndexBinaryFlat"))
    return figures


# Benchmarks on one running group


def group_benchmarks(quick: bool) -> list[Figure]:
    """Start one group, then measure memory, end-to-end search and HTTP load."""
    from tests.service import RunningService

    queries = end_to_end.load_queries()
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="a2t-bench-") as folder:
        service = RunningService(Path(folder))
        try:
            idle = memory.snapshot(service)
            job = service.ingest(str(DEMO_CORPUS), timeout_secs=INGEST_TIMEOUT_SECS)
            if job["status"] != "done":
                raise RuntimeError(f"ingest of the demo corpus ended {job['status']}: "
                                   f"{job.get('error')}")
            ingested = memory.snapshot(service)
            figures += memory.group_figures(idle, ingested, job["added"])
            if SEARCH_SCALE_RESULTS.exists():
                figures += memory.index_figures(
                    json.loads(SEARCH_SCALE_RESULTS.read_text(encoding="utf-8")))
            figures += run_step(end_to_end.BENCHMARK,
                                lambda: end_to_end.run(service, queries, quick))
            images = [query.image for query in queries]
            figures += run_step(http_load.BENCHMARK,
                                lambda: http_load.run(service, images, quick))
        finally:
            service.close()
    return figures


if __name__ == "__main__":
    sys.exit(main())

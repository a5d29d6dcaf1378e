"""Measure how the ingest of the whole process group scales with indexers.

For each indexer count n, the real group (``tests.service.RunningService``
on a fresh data folder) ingests the demo corpus, and the rate is the
images added divided by the job's time from submission to done, as the
pipeline records it. Beside it, n independent processes decode and
describe the same files, each its share, with the indexer's own calls
but no broker, lister or store. Efficiency is the group's rate over
theirs.
Target: efficiency of at least 0.8 for every n.

    .venv/bin/python -m benchmarks.pipeline_scaling [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

from benchmarks.common import (
    DEMO_CORPUS,
    RESULTS_FOLDER,
    Figure,
    demo_image_paths,
    format_table,
    machine,
    write_json,
)

BENCHMARK = "pipeline scaling"
FULL_INDEXER_COUNTS = (1, 2, 4)
QUICK_INDEXER_COUNTS = (1, 2)
TARGET_EFFICIENCY = 0.8
INGEST_TIMEOUT_SECS = 600.0


def describe_share(paths: list[str], barrier, results) -> None:
    """Describe ``paths`` like an indexer and report (start, end, count)."""
    from broker.config import ImagesConfig
    from index.decoding import decode_file
    from index.descriptors import describe_image
    from stages.indexer import DESCRIBE_SIDE_PX

    images = ImagesConfig()

    def describe(path: str) -> None:
        describe_image(decode_file(path, images.max_pixels, max_bytes=images.max_bytes,
                                   reduce_to=DESCRIBE_SIDE_PX))

    # The group's indexers have loaded their libraries before the ingest too.
    describe(paths[0])
    barrier.wait()
    started = time.monotonic()
    for path in paths:
        describe(path)
    results.put((started, time.monotonic(), len(paths)))


def independent_rate(paths: list[str], processes: int) -> float:
    """Return images per second of ``processes`` independent describe processes."""
    context = get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=describe_share,
                        args=(paths[number::processes], barrier, results), daemon=True)
        for number in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        spans = [results.get(timeout=INGEST_TIMEOUT_SECS) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    started = min(span[0] for span in spans)
    finished = max(span[1] for span in spans)
    return sum(span[2] for span in spans) / (finished - started)


def pipeline_rate(indexers: int) -> dict:
    """Ingest the demo corpus with a fresh group; return the job and its rate."""
    from tests.service import RunningService

    with tempfile.TemporaryDirectory(prefix="a2t-scaling-") as folder:
        service = RunningService(Path(folder), indexers=indexers)
        try:
            before = cpu_seconds_by_process(service)
            job = service.ingest(str(DEMO_CORPUS), timeout_secs=INGEST_TIMEOUT_SECS)
            after = cpu_seconds_by_process(service)
        finally:
            service.close()
    if job["status"] != "done":
        raise RuntimeError(f"ingest with {indexers} indexers ended {job['status']}: "
                           f"{job.get('error')}")
    secs = job["finished_at"] - job["started_at"]
    cpu = {name: round(after[name] - before.get(name, 0.0), 2) for name in after}
    return {"job": {key: job[key] for key in ("total", "added", "failed")},
            "secs": secs, "rate": job["added"] / secs, "cpu_secs_by_process": cpu}


def cpu_seconds_by_process(service) -> dict[str, float]:
    """Return the user and system CPU seconds used so far by each process."""
    import psutil

    used = {}
    for entry in service.processes():
        if entry["pid"] is None:
            continue
        try:
            times = psutil.Process(entry["pid"]).cpu_times()
        except psutil.Error:
            continue
        used[entry["name"]] = times.user + times.system
    return used


def run(quick: bool = False) -> list[Figure]:
    paths = demo_image_paths()
    figures = []
    for indexers in QUICK_INDEXER_COUNTS if quick else FULL_INDEXER_COUNTS:
        pipeline = pipeline_rate(indexers)
        independent = independent_rate(paths, indexers)
        busiest = sorted(pipeline["cpu_secs_by_process"].items(),
                         key=lambda item: -item[1])[:4]
        note = f"{pipeline['secs']:.1f} s; CPU s: " + ", ".join(
            f"{name} {secs:.1f}" for name, secs in busiest)
        if pipeline["job"]["failed"]:
            note += f"; {pipeline['job']['failed']} images failed to index"
        figures.append(Figure(
            BENCHMARK, f"ingest with {indexers} indexer(s), images/s",
            pipeline["rate"], "img/s", reference=independent,
            reference_name=f"{indexers} independent describe process(es)",
            min_ratio=TARGET_EFFICIENCY, note=note,
            details={"images": len(paths), **pipeline}))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="measure 1 and 2 indexers only")
    arguments = parser.parse_args()
    figures = run(arguments.quick)
    print(format_table(figures))
    write_json(RESULTS_FOLDER / "pipeline_scaling.json",
               {"machine": machine(), "figures": [f.as_dict() for f in figures]})


if __name__ == "__main__":
    main()

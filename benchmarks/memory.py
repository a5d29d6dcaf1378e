"""Measure the resident memory of each process of the running group.

The pids come from the supervisor service (``supervisor.processes``
through the broker), and psutil reads each process's RSS. ``run_all``
takes one snapshot while the group is idle and one after it ingested
the demo corpus. The footprint of a 1e7-image index comes from the
figures of ``benchmarks.search_scale``.
"""

from __future__ import annotations

import psutil

from benchmarks.common import Figure

BENCHMARK = "memory"
MIB = 2**20


def snapshot(service) -> dict[str, int]:
    """Return the RSS in bytes of each running process of the group, by name."""
    rss = {}
    for entry in service.processes():
        if entry["pid"] is None:
            continue
        try:
            rss[entry["name"]] = psutil.Process(entry["pid"]).memory_info().rss
        except psutil.Error:
            continue
    try:
        rss["supervisor"] = psutil.Process(service.process.pid).memory_info().rss
    except psutil.Error:
        pass
    return rss


def group_figures(idle: dict[str, int], ingested: dict[str, int],
                  images: int) -> list[Figure]:
    """Return one figure per process, RSS after the ingest beside the idle RSS."""
    figures = []
    for name in sorted(ingested):
        figures.append(Figure(
            BENCHMARK, f"{name} RSS after ingest", ingested[name] / MIB, "MiB",
            reference=idle[name] / MIB if name in idle else None,
            reference_name="idle"))
    figures.append(Figure(
        BENCHMARK, "whole group RSS after ingest", sum(ingested.values()) / MIB,
        "MiB", reference=sum(idle.values()) / MIB, reference_name="idle",
        note=f"{images} images ingested; shared library pages count in every "
        "process, so the sum is an upper bound"))
    return figures


def index_figures(search_scale: dict) -> list[Figure]:
    """Return the RAM of the largest index measured by benchmarks.search_scale."""
    rows = search_scale.get("measurements", [])
    sized = [row for row in rows if row.get("rss_bytes_per_image") is not None]
    if not sized:
        return []
    size = max(row["size"] for row in sized)
    by_method = {row["method"]: row for row in sized if row["size"] == size}
    flat = by_method.get("IndexBinaryFlat")
    figures = []
    for method, row in by_method.items():
        if not method.startswith("BinaryIndex"):
            continue
        figures.append(Figure(
            BENCHMARK, f"index of {size:.0e} images, RSS", row["rss_bytes_per_image"]
            * size / MIB, "MiB",
            reference=flat["rss_bytes_per_image"] * size / MIB if flat else None,
            reference_name="IndexBinaryFlat",
            note=f"{row['rss_bytes_per_image']:.0f} B per image, from search_scale"))
    return figures

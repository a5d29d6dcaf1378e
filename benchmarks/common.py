"""Shared parts of the benchmarks: inputs, figures, the table and the machine.

Every benchmark returns a list of ``Figure``. A figure carries the value
measured and, when it has one, the reference measured beside it in the
same run. Targets are checked on the ratio of the two, because absolute
times drift from run to run.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import psutil

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_CORPUS = PROJECT_ROOT.parent / "shared" / "corpus" / "demo"
QUERY_MANIFEST = DEMO_CORPUS / "queries" / "manifest.csv"
RESULTS_FOLDER = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    """One measured value, its reference from the same run and its target.

    ``min_ratio`` is a target on ``value / reference``; ``max_value`` a
    target on the value itself, in ``unit``. A figure has at most one.
    """

    benchmark: str
    metric: str
    value: float
    unit: str
    reference: float | None = None
    reference_name: str = ""
    min_ratio: float | None = None
    max_value: float | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference == 0:
            return None
        return self.value / self.reference

    @property
    def target(self) -> str:
        if self.min_ratio is not None:
            return f"ratio >= {self.min_ratio:g}"
        if self.max_value is not None:
            return f"<= {self.max_value:g} {self.unit}".strip()
        return ""

    @property
    def holds(self) -> bool | None:
        """Return whether the target holds, or None for a figure without one."""
        if self.min_ratio is not None:
            ratio = self.ratio
            return ratio is not None and ratio >= self.min_ratio
        if self.max_value is not None:
            return self.value <= self.max_value
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "reference": self.reference,
            "reference_name": self.reference_name,
            "ratio": self.ratio,
            "target": self.target,
            "holds": self.holds,
            "note": self.note,
            "details": self.details,
        }


def failed_figure(benchmark: str, error: BaseException) -> Figure:
    """Return the row that stands for a benchmark that raised ``error``."""
    return Figure(benchmark, "failed", float("nan"), "",
                  note=f"{type(error).__name__}: {error}")


# Inputs


def demo_image_paths(limit: int | None = None) -> list[str]:
    """Return the demo corpus images in the order the archive lister finds them.

    The listing comes from ``stages.sources.archive.list_archive``, so the
    benchmarks describe exactly the files an ingest of the corpus indexes.
    ``limit`` keeps an evenly spread subset.
    """
    from stages.sources.archive import list_archive

    if not DEMO_CORPUS.is_dir():
        raise FileNotFoundError(f"demo corpus not found at {DEMO_CORPUS}")
    listing = list_archive(DEMO_CORPUS)
    paths = [image.location for tweet in listing.tweets for image in tweet.images]
    if limit is not None and limit < len(paths):
        step = len(paths) / limit
        paths = [paths[int(index * step)] for index in range(limit)]
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pin_to_core(core: int) -> None:
    """Run this process and the threads it starts on one core only."""
    os.sched_setaffinity(0, {core % os.cpu_count()})


# Statistics


def percentile_ms(latencies_secs: Iterable[float], percent: float) -> float:
    """Return a percentile of latencies given in seconds, in milliseconds."""
    values = np.fromiter(latencies_secs, dtype=np.float64)
    if values.size == 0:
        return float("nan")
    return float(np.percentile(values, percent)) * 1000


# Output


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_table(figures: list[Figure]) -> str:
    """Format figures as a Markdown table, one row each."""
    lines = [
        "| benchmark | metric | value | reference | ratio | target | holds |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for figure in figures:
        reference = ""
        if figure.reference is not None:
            reference = f"{figure.reference_name}: {_number(figure.reference)}"
        ratio = "" if figure.ratio is None else f"{figure.ratio:.2f}"
        holds = {True: "yes", False: "**no**", None: ""}[figure.holds]
        value = f"{_number(figure.value)} {figure.unit}".strip()
        if figure.metric == "failed":
            value = figure.note
        lines.append(f"| {figure.benchmark} | {figure.metric} | {value} | "
                     f"{reference} | {ratio} | {figure.target} | {holds} |")
    return "\n".join(lines)


def _number(value: float) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")

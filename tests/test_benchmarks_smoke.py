"""Smoke runs of the describe throughput and broker hop benchmarks.

They use a few images and requests, so the suite stays runnable; the
full benchmarks run with ``python -m benchmarks.run_all``.
"""

from __future__ import annotations

import math

import pytest

from benchmarks import broker_hop, throughput
from benchmarks.common import DEMO_CORPUS, Figure, demo_image_paths

needs_corpus = pytest.mark.skipif(not DEMO_CORPUS.is_dir(),
                                  reason="the shared demo corpus is missing")


def test_figure_ratio_target():
    figure = Figure("b", "m", 3.0, "img/s", reference=4.0, min_ratio=0.5)
    assert figure.ratio == 0.75
    assert figure.holds is True
    assert Figure("b", "m", 1.0, "img/s", reference=4.0, min_ratio=0.5).holds is False


def test_figure_max_value_target():
    assert Figure("b", "m", 0.9, "ms", max_value=1.0).holds is True
    assert Figure("b", "m", 1.1, "ms", max_value=1.0).holds is False
    assert Figure("b", "m", 1.1, "ms").holds is None


@needs_corpus
def test_throughput_measures_each_path():
    paths = demo_image_paths(limit=6)
    measured = throughput.measure_on_one_core(paths, rounds=1)

    for name in throughput.PATHS:
        assert measured["rates"][name][0] > 0, name
    assert set(measured["steps_ms"]) == {
        "decode", "normalise", "pdq", "orb and thumbnail", "phash"}
    figures = throughput.figures_from(measured, len(paths), rounds=1)
    describe = figures[0]
    assert describe.reference == measured["rates"]["decode floor"][0]
    assert describe.holds is not None


def test_broker_hop_smoke_run():
    figures = broker_hop.run(loads=broker_hop.SMOKE_LOAD)

    metrics = {figure.metric: figure for figure in figures}
    for label in broker_hop.SIZES:
        windowed = metrics[f"{label} messages/s, {broker_hop.WINDOW} in flight"]
        assert windowed.value > 0
        assert windowed.reference > 0
        p99 = metrics[f"{label} p99 round trip"]
        assert not math.isnan(p99.value)
    small_p99 = metrics["200 B p99 round trip"]
    assert small_p99.max_value == broker_hop.TARGET_SMALL_P99_MS

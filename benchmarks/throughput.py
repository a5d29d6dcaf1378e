"""Measure the describe throughput of the indexer's path on one core.

Three paths run over the same demo corpus files, interleaved round by
round in one process pinned to one core:

- ``describe``: the indexer's path, ``decode_file`` with
  ``reduce_to=DESCRIBE_SIDE_PX`` then ``describe_image``;
- ``decode floor``: the same reduced ``decode_file`` alone, the fastest
  decode the indexer may use (Pillow draft mode for JPEG);
- ``earlier system``: full-size ``decode_file`` then the 64-bit ``phash``.

The target is a describe rate of at least half the decode floor. A
breakdown of ``describe_image`` into its steps (normalise, PDQ, ORB and
thumbnail, pHash) goes into the figure details to show where time goes.

    .venv/bin/python -m benchmarks.throughput [--quick]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable

from benchmarks.common import (
    RESULTS_FOLDER,
    Figure,
    demo_image_paths,
    format_table,
    machine,
    pin_to_core,
    write_json,
)

BENCHMARK = "describe throughput"
TARGET_RATIO = 0.5
FULL_ROUNDS = 3
QUICK_ROUNDS = 1
QUICK_IMAGES = 120


def decode_floor(path: str) -> None:
    from index.decoding import decode_file
    from stages.indexer import DESCRIBE_SIDE_PX

    decode_file(path, _max_pixels(), max_bytes=_max_bytes(), reduce_to=DESCRIBE_SIDE_PX)


def indexer_describe(path: str) -> None:
    from index.decoding import decode_file
    from index.descriptors import describe_image
    from stages.indexer import DESCRIBE_SIDE_PX

    image = decode_file(path, _max_pixels(), max_bytes=_max_bytes(),
                        reduce_to=DESCRIBE_SIDE_PX)
    describe_image(image)


def earlier_phash(path: str) -> None:
    from index.decoding import decode_file
    from index.descriptors import phash

    phash(decode_file(path, _max_pixels(), max_bytes=_max_bytes()))


PATHS: dict[str, Callable[[str], None]] = {
    "describe": indexer_describe,
    "decode floor": decode_floor,
    "earlier system": earlier_phash,
}


def _max_pixels() -> int:
    from broker.config import ImagesConfig

    return ImagesConfig().max_pixels


def _max_bytes() -> int:
    from broker.config import ImagesConfig

    return ImagesConfig().max_bytes


def measure_rates(paths: list[str], rounds: int) -> dict[str, list[float]]:
    """Return images per second of each path, one value per round.

    The first pass over the files is a warm-up that fills the page cache
    and loads the libraries; it is not timed.
    """
    for path in paths[:20]:
        for function in PATHS.values():
            function(path)
    rates: dict[str, list[float]] = {name: [] for name in PATHS}
    names = list(PATHS)
    for round_number in range(rounds):
        # Rotate the order so no path always runs right after another.
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            function = PATHS[name]
            started = time.perf_counter()
            for path in paths:
                function(path)
            rates[name].append(len(paths) / (time.perf_counter() - started))
    return rates


def measure_steps(paths: list[str]) -> dict[str, float]:
    """Return the mean milliseconds per image of each step of describe_image."""
    from index import local_features
    from index.decoding import decode_file
    from index.descriptors import MIN_PDQ_QUALITY, normalise, pdq_hash, phash
    from stages.indexer import DESCRIBE_SIDE_PX

    totals = {"decode": 0.0, "normalise": 0.0, "pdq": 0.0, "orb and thumbnail": 0.0,
              "phash": 0.0}
    for path in paths:
        started = time.perf_counter()
        image = decode_file(path, _max_pixels(), max_bytes=_max_bytes(),
                            reduce_to=DESCRIBE_SIDE_PX)
        decoded = time.perf_counter()
        normalised = normalise(image)
        normalised_at = time.perf_counter()
        _, quality = pdq_hash(normalised.rgb)
        hashed = time.perf_counter()
        if quality >= MIN_PDQ_QUALITY:
            local_features.serialise(local_features.extract(
                normalised.grey, normalised.source_long_side))
        featured = time.perf_counter()
        phash(image)
        finished = time.perf_counter()
        totals["decode"] += decoded - started
        totals["normalise"] += normalised_at - decoded
        totals["pdq"] += hashed - normalised_at
        totals["orb and thumbnail"] += featured - hashed
        totals["phash"] += finished - featured
    return {step: secs * 1000 / len(paths) for step, secs in totals.items()}


def measure_on_one_core(paths: list[str], rounds: int) -> dict:
    rates = measure_rates(paths, rounds)
    steps = measure_steps(paths)
    return {"rates": rates, "steps_ms": steps}


def run(quick: bool = False) -> list[Figure]:
    paths = demo_image_paths(QUICK_IMAGES if quick else None)
    rounds = QUICK_ROUNDS if quick else FULL_ROUNDS
    context = get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=pin_to_core,
                             initargs=(0,)) as executor:
        measured = executor.submit(measure_on_one_core, paths, rounds).result()
    return figures_from(measured, len(paths), rounds)


def figures_from(measured: dict, image_count: int, rounds: int) -> list[Figure]:
    rates = {name: max(values) for name, values in measured["rates"].items()}
    details = {"images": image_count, "rounds": rounds, "rates": measured["rates"],
               "describe_steps_ms": measured["steps_ms"]}
    steps = ", ".join(f"{step} {ms:.2f}" for step, ms in measured["steps_ms"].items())
    return [
        Figure(BENCHMARK, "indexer path, images/s per core", rates["describe"],
               "img/s", reference=rates["decode floor"],
               reference_name="reduced decode only", min_ratio=TARGET_RATIO,
               note=f"ms per image: {steps}", details=details),
        Figure(BENCHMARK, "earlier system (full decode + pHash), images/s per core",
               rates["earlier system"], "img/s", reference=rates["describe"],
               reference_name="indexer path"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"describe {QUICK_IMAGES} images once instead of "
                        f"every image {FULL_ROUNDS} times")
    arguments = parser.parse_args()
    figures = run(arguments.quick)
    print(format_table(figures))
    print(figures[0].note)
    write_json(RESULTS_FOLDER / "throughput.json",
               {"machine": machine(), "figures": [f.as_dict() for f in figures]})


if __name__ == "__main__":
    main()

"""Accuracy and cost of three matching rules on transformed artwork copies.

Usage: ``python benchmarks/accuracy.py [--quick] [--corpus PATH] [--workers N]``

The gallery stands for indexed tweet images: the museum paintings under
one account and the apple watercolours under another, each re-encoded
as JPEG the way the network serves images, plus the three accounts of the
demo archive. A share of the museum and apple images is held out of the
gallery. Queries are seeded transforms of the corpus originals: copies of
gallery images are positives, copies of held-out images are negatives
(never posted for the museum, look-alikes for the apples, which share
subject, layout and hand). The demo archive's own query manifest is run
as the ``demo`` row.

Three rules run side by side on every query, each limited to the
query's account:

- ``phash``: the earlier system, 64-bit pHash, match at distance <= 6;
- ``pdq``: plain PDQ of the whole image, match at distance <= 31;
- ``matcher``: ``index.matcher.Matcher`` over a real ``BinaryIndex`` and
  ``Store`` on a temporary SQLite file.

The table and ``benchmarks/results/accuracy.json`` give recall@1 and
recall@10 per transform, the false match rates, the share of positives
whose first match is a wrong image, and the time to describe an image and
to verify a query.
Times are per process, each pinned to one thread.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import multiprocessing
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pdqhash
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index import descriptors  # noqa: E402
from index.decoding import decode_file, decode_image  # noqa: E402
from index.matcher import Matcher, MatcherSettings, describe_query  # noqa: E402
from index.store import ImageRecord, Store  # noqa: E402
from index.vector_index import build_from_store  # noqa: E402

logger = logging.getLogger("benchmarks.accuracy")

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "accuracy.json"
MAX_PIXELS = 64_000_000
SEED = 20240611

MUSEUM_ACCOUNT = 1
APPLES_ACCOUNT = 2
MUSEUM_HELD_OUT = 16
APPLES_HELD_OUT = 104
PHASH_MAX_DISTANCE = 6
PDQ_MAX_DISTANCE = 31
METHODS = ("phash", "pdq", "matcher")

# Transforms with the recall@1 each must reach (None: measured, no target).
TARGETS = {
    "resize": 0.99,
    "jpeg": 0.99,
    "format": 0.99,
    "colour": 0.99,
    "greyscale": 0.99,
    "crop": 0.97,
    "border": 0.97,
    "letterbox": 0.97,
    "signature": 0.97,
    "mirror": 0.97,
    "crop_heavy": None,
    "rotate": None,
    "tiny": None,
}


# Transforms. Each takes an RGB image and a seeded random generator and
# returns encoded bytes, because a real query arrives as a file.


def _encode(image: Image.Image, kind: str = "PNG", quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    if kind == "JPEG":
        image.save(buffer, "JPEG", quality=quality)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _scaled(image: Image.Image, scale: float) -> Image.Image:
    width = max(1, round(image.width * scale))
    height = max(1, round(image.height * scale))
    return image.resize((width, height), Image.Resampling.LANCZOS)


def transform_resize(image, rng):
    return _encode(_scaled(image, rng.uniform(0.3, 0.6)))


def transform_jpeg(image, rng):
    return _encode(image, "JPEG", rng.randint(40, 95))


def transform_format(image, rng):
    once = decode_image(_encode(image, "JPEG", rng.randint(70, 95)), MAX_PIXELS)
    twice = decode_image(_encode(once), MAX_PIXELS)
    return _encode(twice, "JPEG", rng.randint(70, 95))


def transform_colour(image, rng):
    gamma = rng.uniform(0.7, 1.4)
    table = [round(255 * (value / 255) ** gamma) for value in range(256)] * 3
    image = image.point(table)
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.75, 1.3))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.5, 1.5))
    return _encode(image, "JPEG", 90)


def transform_greyscale(image, rng):
    return _encode(ImageOps.grayscale(image), "JPEG", rng.randint(80, 95))


def _crop(image, rng, low, high):
    width, height = image.size
    total_x = rng.uniform(low, high)
    total_y = rng.uniform(low, high)
    if rng.random() < 0.3:
        # Lopsided: everything cut from one side on each axis.
        left_share, top_share = rng.choice((0.0, 1.0)), rng.choice((0.0, 1.0))
    else:
        left_share, top_share = rng.random(), rng.random()
    left = round(width * total_x * left_share)
    top = round(height * total_y * top_share)
    right = width - round(width * total_x * (1 - left_share))
    bottom = height - round(height * total_y * (1 - top_share))
    return image.crop((left, top, right, bottom))


def transform_crop(image, rng):
    return _encode(_crop(image, rng, 0.05, 0.15), "JPEG", 90)


def transform_crop_heavy(image, rng):
    return _encode(_crop(image, rng, 0.15, 0.2), "JPEG", 90)


def _bar_colour(rng):
    return rng.choice(
        ((0, 0, 0), (255, 255, 255), tuple(rng.randint(0, 255) for _ in range(3)))
    )


def transform_border(image, rng):
    width, height = image.size
    share = rng.uniform(0.05, 0.25)
    pad = round(share * min(width, height) / 2)
    framed = ImageOps.expand(image, border=pad, fill=_bar_colour(rng))
    return _encode(framed)


def transform_letterbox(image, rng):
    width, height = image.size
    share = rng.uniform(0.05, 0.25)
    if rng.random() < 0.5:
        size = (width, round(height * (1 + 2 * share)))
    else:
        size = (round(width * (1 + 2 * share)), height)
    canvas = Image.new("RGB", size, _bar_colour(rng))
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return _encode(canvas, "JPEG", 90)


def transform_signature(image, rng):
    width, height = image.size
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    size = max(8, round(height * rng.uniform(0.04, 0.08)))
    font = ImageFont.load_default(size=size)
    text = rng.choice(("@artist_name", "(c) studio 2021", "sample", "signed"))
    colour = _bar_colour(rng) + (rng.randint(120, 255),)
    if rng.random() < 0.5:
        position = (round(width * rng.uniform(0.02, 0.5)), height - 2 * size)
    else:
        position = (round(width * 0.25), round(height * rng.uniform(0.3, 0.6)))
    draw.text(position, text, font=font, fill=colour)
    signed = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
    return _encode(signed, "JPEG", 90)


def transform_mirror(image, rng):
    return _encode(ImageOps.mirror(image), "JPEG", rng.randint(80, 95))


def transform_rotate(image, rng):
    angle = rng.uniform(2, 5) * rng.choice((-1, 1))
    fill = _bar_colour(rng)
    rotated = image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    return _encode(rotated, "JPEG", 90)


def transform_tiny(image, rng):
    width = rng.randint(30, 49)
    return _encode(_scaled(image, width / image.width))


TRANSFORMS = {
    name: globals()[f"transform_{name}"] for name in TARGETS
}


# Gallery and query plan


@dataclass
class Source:
    path: str
    account_id: int
    group: str  # museum, apples or demo


@dataclass
class Query:
    source: str
    transform: str
    seed: int
    account_id: int
    expected_id: int | None
    kind: str  # positive, never_posted or look_alike
    encoded_path: str | None = None  # for demo queries read from a file


@dataclass
class Outcome:
    transform: str
    kind: str
    source: str
    seed: int
    expected_id: int | None
    rank: dict = field(default_factory=dict)  # method -> 1-based rank or None
    matched: dict = field(default_factory=dict)  # method -> any match
    wrong_first: dict = field(default_factory=dict)
    describe_ms: float = 0.0
    verify_ms: float = 0.0


def plan_gallery(corpus: Path, rng: random.Random):
    museum = sorted((corpus / "museum" / "images").glob("*.png"))
    apples = sorted((corpus / "apples" / "images").glob("*.jpg"))
    rng.shuffle(museum)
    rng.shuffle(apples)
    gallery = _sources(museum[MUSEUM_HELD_OUT:], MUSEUM_ACCOUNT, "museum")
    gallery += _sources(apples[APPLES_HELD_OUT:], APPLES_ACCOUNT, "apples")
    held_out = _sources(museum[:MUSEUM_HELD_OUT], MUSEUM_ACCOUNT, "museum")
    held_out += _sources(apples[:APPLES_HELD_OUT], APPLES_ACCOUNT, "apples")
    return gallery, held_out


def _sources(paths, account_id: int, group: str) -> list[Source]:
    return [Source(str(path), account_id, group) for path in paths]


def plan_queries(gallery_ids, held_out, per_transform, negatives, rng):
    """Return the seeded query list: positives per transform, then negatives."""
    by_account: dict[int, list[str]] = {}
    for path, (account, _) in gallery_ids.items():
        by_account.setdefault(account, []).append(path)
    museum = by_account[MUSEUM_ACCOUNT]
    apples = by_account[APPLES_ACCOUNT]
    queries = []
    for transform in TARGETS:
        museum_count = min(per_transform // 2, 3 * len(museum))
        picks = [rng.choice(museum) for _ in range(museum_count)]
        picks += rng.sample(apples, per_transform - museum_count)
        for path in picks:
            account, image_id = gallery_ids[path]
            seed = rng.randrange(1 << 30)
            queries.append(
                Query(path, transform, seed, account, image_id, "positive")
            )
    negative_plan = [(source, name) for name in TARGETS for source in held_out]
    rng.shuffle(negative_plan)
    for source, transform in negative_plan[:negatives]:
        kind = "never_posted" if source.group == "museum" else "look_alike"
        seed = rng.randrange(1 << 30)
        queries.append(
            Query(source.path, transform, seed, source.account_id, None, kind)
        )
    return queries


def demo_queries(corpus: Path, demo_keys: dict, demo_accounts: dict) -> list[Query]:
    manifest = corpus / "demo" / "queries" / "manifest.csv"
    queries = []
    with open(manifest, newline="") as handle:
        for row in csv.DictReader(handle):
            account = demo_accounts[row["handle"]]
            expected = None
            kind = "never_posted"
            if row["tweet_id"]:
                expected = demo_keys[(int(row["tweet_id"]), int(row["image_position"]))]
                kind = "positive"
            path = str(corpus / "demo" / row["query"])
            queries.append(Query(path, "demo", 0, account, expected, kind, path))
    return queries


def demo_images(corpus: Path):
    """Yield (account id, handle, tweet id, position, count, path) per demo image."""
    for meta in sorted((corpus / "demo" / "gallery-dl" / "twitter").glob("*/*.json")):
        info = json.loads(meta.read_text())
        image = meta.with_suffix("")
        yield (
            int(info["user"]["id"]), meta.parent.name, int(info["tweet_id"]),
            int(info["num"]), int(info["count"]), image,
        )
    for data in sorted((corpus / "demo" / "x-archive").glob("*/data")):
        account = _read_js(data / "account.js")[0]["account"]
        for item in _read_js(data / "tweets.js"):
            tweet = item["tweet"]
            media = tweet.get("extended_entities", {}).get("media", [])
            for position, medium in enumerate(media, start=1):
                name = medium["media_url_https"].rsplit("/", 1)[-1]
                path = data / "tweets_media" / f"{tweet['id_str']}-{name}"
                yield (
                    int(account["accountId"]), account["username"],
                    int(tweet["id_str"]), position, len(media), path,
                )


def _read_js(path: Path):
    text = path.read_text()
    return json.loads(text[text.index("=") + 1 :])


# Workers


_worker: dict = {}


def _single_thread() -> None:
    cv2.setNumThreads(1)
    import faiss

    faiss.omp_set_num_threads(1)


def describe_worker(job):
    """Re-encode one gallery image like a tweet image and describe it."""
    _single_thread()
    path, quality = job
    image = decode_file(path, MAX_PIXELS)
    data = _encode(image, "JPEG", quality)
    image = decode_image(data, MAX_PIXELS)
    started = time.perf_counter()
    description = descriptors.describe_image(image)
    elapsed = (time.perf_counter() - started) * 1000
    plain_bits, _ = pdqhash.compute(np.asarray(image))
    return path, description, np.packbits(plain_bits.astype(np.uint8)), elapsed


def init_query_worker(database: str, gallery_codes: dict) -> None:
    _single_thread()
    store = Store(database)
    _worker["store"] = store
    _worker["index"] = build_from_store(store)
    _worker["matcher"] = Matcher(MatcherSettings())
    _worker["codes"] = gallery_codes
    # Build the ORB vote indexes now, so query times exclude that one-off cost.
    warm_vote_indexes(_worker["matcher"], _worker["index"], store, gallery_codes)


def warm_vote_indexes(matcher, index, store, gallery_codes) -> dict:
    """Build the vote index of every account; return seconds per account."""
    seconds = {}
    for account in gallery_codes["pdq"]:
        started = time.perf_counter()
        matcher.vote_index.get(account, index, store, matcher.settings.max_vote_images)
        seconds[str(account)] = round(time.perf_counter() - started, 3)
    return seconds


def query_worker(query: Query) -> Outcome:
    if query.encoded_path is not None:
        data = Path(query.encoded_path).read_bytes()
    else:
        original = decode_file(query.source, MAX_PIXELS)
        data = TRANSFORMS[query.transform](original, random.Random(query.seed))
    image = decode_image(data, MAX_PIXELS)
    outcome = Outcome(
        query.transform, query.kind, query.source, query.seed, query.expected_id
    )
    for method in ("phash", "pdq"):
        ranked = _rank_by_hash(method, image, query.account_id)
        _score(outcome, method, ranked, query.expected_id)
    started = time.perf_counter()
    described = describe_query(image)
    outcome.describe_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    matches = _worker["matcher"].search_described(
        described, _worker["index"], _worker["store"], [query.account_id], limit=10
    )
    outcome.verify_ms = (time.perf_counter() - started) * 1000
    _score(outcome, "matcher", [match.image_id for match in matches], query.expected_id)
    return outcome


def _rank_by_hash(method: str, image: Image.Image, account_id: int) -> list[int]:
    ids, codes = _worker["codes"][method][account_id]
    if method == "phash":
        code = np.frombuffer(descriptors.phash(image), np.uint8)
        limit = PHASH_MAX_DISTANCE
    else:
        bits, _ = pdqhash.compute(np.asarray(image))
        code = np.packbits(bits.astype(np.uint8))
        limit = PDQ_MAX_DISTANCE
    distances = np.unpackbits(np.bitwise_xor(codes, code), axis=1).sum(axis=1)
    order = np.lexsort((ids, distances))
    kept = order[distances[order] <= limit][:10]
    return ids[kept].tolist()


def _score(outcome: Outcome, method: str, ranked: list[int], expected: int | None):
    outcome.matched[method] = bool(ranked)
    outcome.rank[method] = ranked.index(expected) + 1 if expected in ranked else None
    outcome.wrong_first[method] = bool(ranked) and ranked[0] != expected


# Report


def summarise(outcomes: list[Outcome], describe_ms: dict) -> dict:
    rows = {}
    transforms = list(TARGETS) + ["demo"]
    positives = [o for o in outcomes if o.kind == "positive"]
    for name in transforms + ["all"]:
        chosen = [o for o in positives if name in ("all", o.transform)]
        if not chosen:
            continue
        row = {"queries": len(chosen), "target": TARGETS.get(name)}
        for method in METHODS:
            row[method] = {
                "recall@1": _share(chosen, lambda o: o.rank[method] == 1),
                "recall@10": _share(chosen, lambda o: o.rank[method] is not None),
                "wrong_first": _share(chosen, lambda o: o.wrong_first[method]),
            }
        rows[name] = row
    false_matches = {}
    for kind in ("never_posted", "look_alike"):
        chosen = [o for o in outcomes if o.kind == kind]
        false_matches[kind] = {
            "queries": len(chosen),
            **{m: _share(chosen, lambda o: o.matched[m]) for m in METHODS},
        }
    verify = [o.verify_ms for o in outcomes]
    query_describe = [o.describe_ms for o in outcomes]
    costs = {
        "describe_image_ms": describe_ms,
        "describe_query_ms": _percentiles(query_describe),
        "verify_query_ms": _percentiles(verify),
    }
    errors = [
        {"transform": o.transform, "kind": o.kind, "source": o.source,
         "seed": o.seed, "expected_id": o.expected_id}
        for o in outcomes
        if (o.kind == "positive" and o.rank["matcher"] != 1)
        or (o.kind != "positive" and o.matched["matcher"])
    ]
    return {
        "transforms": rows,
        "false_match_rate": false_matches,
        "costs": costs,
        "matcher_errors": errors,
    }


def _share(items, predicate) -> float:
    return round(sum(1 for item in items if predicate(item)) / len(items), 4)


def _percentiles(values) -> dict:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "median": round(float(np.median(array)), 2),
        "p95": round(float(np.percentile(array, 95)), 2),
        "max": round(float(array.max()), 2),
        "count": int(array.size),
    }


def print_table(summary: dict) -> None:
    header = f"{'transform':<12}{'n':>5}{'target':>8}"
    for method in METHODS:
        header += f"{method + ' r@1':>14}{'r@10':>7}{'wrong':>7}"
    print(header)
    for name, row in summary["transforms"].items():
        target = "" if row["target"] is None else f"{row['target']:.2f}"
        line = f"{name:<12}{row['queries']:>5}{target:>8}"
        for method in METHODS:
            values = row[method]
            line += (
                f"{values['recall@1']:>14.3f}{values['recall@10']:>7.3f}"
                f"{values['wrong_first']:>7.3f}"
            )
        print(line)
    print()
    for kind, values in summary["false_match_rate"].items():
        rates = "  ".join(f"{m} {values[m]:.4f}" for m in METHODS)
        print(f"false match rate, {kind} ({values['queries']} queries): {rates}")
    costs = summary["costs"]
    for name, values in costs["describe_image_ms"].items():
        print(f"describe_image ms, {name}: {values}")
    print(f"describe_query ms (both orientations): {costs['describe_query_ms']}")
    print(f"verify ms per query (shortlist, verification): {costs['verify_query_ms']}")
    print(f"vote index build s per account: {costs['vote_index_build_secs']}")
    print(f"run took {summary['seconds']:.0f} s on {summary['workers']} workers")


# Main


def build_gallery(store, pool, gallery, corpus, rng):
    """Describe and store every gallery image; return ids, hash tables and costs."""
    jobs = [(source.path, rng.randint(82, 92)) for source in gallery]
    demo = list(demo_images(corpus))
    jobs += [(str(item[5]), 92) for item in demo]
    results = {path: rest for path, *rest in pool.imap(describe_worker, jobs, 8)}

    gallery_ids = {}
    codes = {"phash": {}, "pdq": {}}
    timing = {"museum": [], "apples": []}
    for source in gallery:
        store.upsert_account(source.account_id, source.group)
        description, plain, elapsed = results[source.path]
        timing[source.group].append(elapsed)
        image_id = _add(store, source.account_id, len(gallery_ids) + 1, 1, source.path,
                        description)
        gallery_ids[source.path] = (source.account_id, image_id)
        _add_codes(codes, source.account_id, image_id, description.phash, plain)

    demo_keys, demo_accounts = {}, {}
    for account, handle, tweet, position, count, path in demo:
        store.upsert_account(account, handle)
        demo_accounts[handle] = account
        description, plain, _ = results[str(path)]
        image_id = _add(store, account, tweet, position, str(path), description, count)
        demo_keys[(tweet, position)] = image_id
        _add_codes(codes, account, image_id, description.phash, plain)
    packed = {
        method: {
            account: (np.array(ids, np.int64), np.stack(rows))
            for account, (ids, rows) in tables.items()
        }
        for method, tables in codes.items()
    }
    describe_ms = {f"{k} gallery": _percentiles(v) for k, v in timing.items()}
    return gallery_ids, packed, describe_ms, demo_keys, demo_accounts


def _add(store, account, tweet, position, path, description, count=1) -> int:
    record = ImageRecord(
        tweet_id=tweet, position=position, image_count=count, account_id=account,
        location=path, width=description.width, height=description.height,
        phash=description.phash, pdq=description.pdq,
        pdq_quality=description.pdq_quality,
        local_features=description.local_features,
    )
    image_id, _ = store.add_image(record)
    return image_id


def _add_codes(codes, account, image_id, phash, plain) -> None:
    for method, code in (("phash", np.frombuffer(phash, np.uint8)), ("pdq", plain)):
        ids, rows = codes[method].setdefault(account, ([], []))
        ids.append(image_id)
        rows.append(code)


def measure_describe_1024(corpus: Path, count: int) -> dict:
    """Time describe_image on museum images scaled to a 1,024 px long side."""
    _single_thread()
    times = []
    for path in sorted((corpus / "museum" / "images").glob("*.png"))[:count]:
        image = decode_file(path, MAX_PIXELS)
        image = _scaled(image, 1024 / max(image.size))
        descriptors.describe_image(image)  # warm caches
        started = time.perf_counter()
        descriptors.describe_image(image)
        times.append((time.perf_counter() - started) * 1000)
    return _percentiles(times)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="30 queries per transform and 150 negatives")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help="folder with museum/, apples/ and demo/")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes that run queries, each on one thread")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH,
                        help="JSON file for the results")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s %(message)s"
    )
    arguments = parse_arguments(argv)
    per_transform, negatives = (30, 150) if arguments.quick else (300, 1500)
    started = time.perf_counter()
    rng = random.Random(SEED)
    gallery, held_out = plan_gallery(arguments.corpus, rng)

    with tempfile.TemporaryDirectory() as folder:
        database = str(Path(folder) / "benchmark.sqlite")
        store = Store(database)
        with multiprocessing.Pool(arguments.workers) as pool:
            gallery_ids, codes, describe_ms, demo_keys, demo_accounts = build_gallery(
                store, pool, gallery, arguments.corpus, rng
            )
        describe_ms["museum at 1024 px"] = measure_describe_1024(arguments.corpus, 20)
        vote_index_secs = warm_vote_indexes(
            Matcher(MatcherSettings()), build_from_store(store), store, codes
        )

        queries = plan_queries(gallery_ids, held_out, per_transform, negatives, rng)
        queries += demo_queries(arguments.corpus, demo_keys, demo_accounts)
        with multiprocessing.Pool(
            arguments.workers, init_query_worker, (database, codes)
        ) as pool:
            outcomes = list(pool.imap_unordered(query_worker, queries, 4))
        store.close()

    summary = summarise(outcomes, describe_ms)
    summary["costs"]["vote_index_build_secs"] = vote_index_secs
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["workers"] = arguments.workers
    summary["settings"] = asdict(MatcherSettings())
    summary["quick"] = arguments.quick
    print_table(summary)

    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tests of pHash, PDQ, border trimming and the flatness gate."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image

from index import descriptors, local_features
from index.decoding import decode_file
from tests.conftest import CASES, CORPUS

MAX_PIXELS = 64_000_000
PDQ_MATCH_BITS = 31


def load(path) -> Image.Image:
    return decode_file(path, MAX_PIXELS)


def reference_phash(image: Image.Image) -> bytes:
    """Compute pHash straight from its definition, with explicit sums."""
    small = image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)
    coefficients = []
    for row in range(8):
        for column in range(8):
            total = 0.0
            for y in range(32):
                row_weight = math.cos(math.pi * row * (2 * y + 1) / 64)
                for x in range(32):
                    column_weight = math.cos(math.pi * column * (2 * x + 1) / 64)
                    total += 4.0 * pixels[y, x] * row_weight * column_weight
            coefficients.append(total)
    median = float(np.median(coefficients))
    value = 0
    for index, coefficient in enumerate(coefficients):
        if coefficient > median:
            value += 2**index
    return value.to_bytes(8, "big")


def test_phash_follows_definition():
    image = load(CASES / "b00_reference_artwork.png")

    assert descriptors.phash(image) == reference_phash(image)


def test_phash_bit_order():
    # A 32x32 image skips the resize. All its pixels are positive, so the
    # DC term is the largest coefficient and bit 0, the lowest bit of the
    # last byte, is set.
    pixels = np.random.default_rng(7).integers(20, 236, (32, 32), dtype=np.uint8)
    image = Image.fromarray(pixels).convert("RGB")

    code = descriptors.phash(image)

    assert code[-1] & 1 == 1
    assert code == reference_phash(image)


def test_phash_is_eight_bytes():
    image = load(CASES / "b12_art.png")

    assert len(descriptors.describe_image(image).phash) == 8


def published_pdq_rows():
    """Return the rows of the published hashes whose image is present."""
    with open(CORPUS / "pdq" / "expected_hashes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if (CORPUS / "pdq" / row["file"]).is_file()]


def test_pdq_matches_published_hashes():
    # The Python reference tests allow 16 bits. The C++ rows list 0, which
    # only the C++ hasher itself meets (pdqhash differs by 2-8 bits there),
    # so every row is held to 16 bits.
    rows = published_pdq_rows()
    assert len(rows) >= 30
    for row in rows:
        image = load(CORPUS / "pdq" / row["file"])
        code, _ = descriptors.pdq_hash(np.asarray(image))
        expected = bytes.fromhex(row["expected_hash"])

        assert descriptors.hamming(code, expected) <= 16, row["file"]


def test_pdq_of_working_copy_stays_close():
    # describe_image hashes a 512 px copy, which must stay near the hash
    # of the full image. The bridge photos have no border to trim.
    for row in published_pdq_rows():
        if "bridge" not in row["file"]:
            continue
        image = load(CORPUS / "pdq" / row["file"])
        full, _ = descriptors.pdq_hash(np.asarray(image))
        described = descriptors.describe_image(image)

        assert descriptors.hamming(described.pdq, full) <= 16, row["file"]


@pytest.mark.parametrize(
    "name",
    [
        "b10_flat_black.png",
        "b10_flat_blue.png",
        "b10_flat_white.png",
        "b10_near_white_noise.png",
        "b10_white_with_tiny_signature.png",
    ],
)
def test_flat_image_fails_gate(name):
    description = descriptors.describe_image(load(CASES / name))

    assert description.pdq_quality < descriptors.MIN_PDQ_QUALITY
    assert description.local_features is None


def test_artwork_passes_gate():
    description = descriptors.describe_image(load(CASES / "b12_art.png"))

    assert description.pdq_quality >= descriptors.MIN_PDQ_QUALITY
    assert description.local_features is not None
    assert len(description.local_features) <= local_features.MAX_BYTES


@pytest.mark.parametrize(
    "name",
    [
        "b12_art_letterboxed_black.png",
        "b12_art_pillarboxed_black.png",
        "b12_art_white_matte_40px.png",
    ],
)
def test_trimmed_border_matches_art(name):
    art = descriptors.describe_image(load(CASES / "b12_art.png"))
    bordered_image = load(CASES / name)
    bordered = descriptors.describe_image(bordered_image)
    untrimmed, _ = descriptors.pdq_hash(np.asarray(bordered_image))

    assert descriptors.hamming(bordered.pdq, art.pdq) <= PDQ_MATCH_BITS
    # Without trimming the bars move the hash out of reach.
    assert descriptors.hamming(untrimmed, art.pdq) > PDQ_MATCH_BITS


def test_trim_box_removes_bars():
    image = np.asarray(load(CASES / "b12_art_pillarboxed_black.png"))
    art = load(CASES / "b12_art.png")

    left, top, right, bottom = descriptors.trim_box(image)

    assert abs((right - left) - art.width) <= 4
    assert abs((bottom - top) - art.height) <= 4


def test_other_pillarboxed_stays_apart():
    art = descriptors.describe_image(load(CASES / "b12_art_pillarboxed_black.png"))
    other = descriptors.describe_image(load(CASES / "b12_other_pillarboxed_black.png"))

    assert descriptors.hamming(art.pdq, other.pdq) > PDQ_MATCH_BITS


def test_trim_keeps_mark_on_blank_page():
    # Trimming a blank page down to a tiny mark would hash the mark alone.
    image = np.asarray(load(CASES / "b10_white_with_tiny_signature.png"))

    assert descriptors.trim_box(image) == (0, 0, image.shape[1], image.shape[0])


def test_local_features_round_trip():
    description = descriptors.describe_image(load(CASES / "b12_art.png"))

    features = local_features.deserialise(description.local_features)

    assert len(features.points) == len(features.descriptors)
    assert len(features.points) > 50
    assert max(features.thumbnail.shape) <= local_features.THUMBNAIL_LONG_SIDE


def test_local_features_reject_garbage():
    with pytest.raises(local_features.FeatureFormatError):
        local_features.deserialise(b"not local features at all")

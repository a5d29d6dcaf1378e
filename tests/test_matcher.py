"""Tests of the matcher on real images, a real store and a real index."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from index import descriptors
from index.decoding import decode_file, decode_image
from index.matcher import Matcher, MatcherSettings
from index.store import ImageRecord, Store
from index.vector_index import build_from_store
from tests.conftest import CASES, CORPUS

MAX_PIXELS = 64_000_000
ACCOUNT = 7
MUSEUM = [
    "artic_28560.png",
    "artic_187528.png",
    "artic_210511.png",
    "clevelandart_1988.70.png",
    "metmuseum_11114.png",
    "metmuseum_14931.png",
]


def load(path) -> Image.Image:
    return decode_file(path, MAX_PIXELS)


def reencode(image: Image.Image, quality: int = 88) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return decode_image(buffer.getvalue(), MAX_PIXELS)


class Gallery:
    """A temporary store and index filled with described images."""

    def __init__(self, folder):
        self.store = Store(folder / "gallery.sqlite")
        self.store.upsert_account(ACCOUNT, "painter")
        self.ids: dict[str, int] = {}
        self.index = None

    def add(self, name: str, image: Image.Image) -> int:
        description = descriptors.describe_image(image)
        record = ImageRecord(
            tweet_id=len(self.ids) + 1,
            position=1,
            image_count=1,
            account_id=ACCOUNT,
            location=name,
            width=description.width,
            height=description.height,
            phash=description.phash,
            pdq=description.pdq,
            pdq_quality=description.pdq_quality,
            local_features=description.local_features,
        )
        image_id, _ = self.store.add_image(record)
        self.ids[name] = image_id
        return image_id

    def search(self, image: Image.Image, **options):
        if self.index is None:
            self.index = build_from_store(self.store)
        return Matcher(MatcherSettings()).search(
            image, self.index, self.store, account_ids=[ACCOUNT], **options
        )


@pytest.fixture
def museum(tmp_path):
    gallery = Gallery(tmp_path)
    for name in MUSEUM:
        gallery.add(name, reencode(load(CORPUS / "museum" / "images" / name)))
    yield gallery
    gallery.store.close()


def test_mirrored_copy_found(museum):
    original = load(CORPUS / "museum" / "images" / "artic_28560.png")
    query = reencode(ImageOps.mirror(original), 80)

    matches = museum.search(query)

    assert matches
    assert matches[0].image_id == museum.ids["artic_28560.png"]
    assert matches[0].is_match
    assert matches[0].mirrored


def test_cropped_copy_found(museum):
    original = load(CORPUS / "museum" / "images" / "metmuseum_14931.png")
    width, height = original.size
    # 14 % off the left and 8 % off the top: the PDQ code moves far away.
    box = (int(width * 0.14), int(height * 0.08), width, height)
    query = reencode(original.crop(box))

    matches = museum.search(query)

    assert matches
    assert matches[0].image_id == museum.ids["metmuseum_14931.png"]
    assert matches[0].distance > 31


def test_downscaled_copy_found(museum):
    original = load(CORPUS / "museum" / "images" / "artic_210511.png")
    query = reencode(original.resize((original.width // 3, original.height // 3)), 60)

    matches = museum.search(query)

    assert [match.image_id for match in matches[:1]] == [museum.ids["artic_210511.png"]]


def test_never_posted_finds_nothing(museum):
    query = reencode(load(CORPUS / "museum" / "images" / "metmuseum_39735.png"))

    assert museum.search(query) == []


def stamp_logo(image: Image.Image) -> Image.Image:
    """Paste the same large badge with text into the lower right corner."""
    image = image.copy()
    width, height = image.size
    side = int(min(width, height) * 0.45)
    badge = Image.new("RGB", (side, side), (250, 250, 245))
    draw = ImageDraw.Draw(badge)
    draw.ellipse((side * 0.05, side * 0.05, side * 0.95, side * 0.95),
                 outline=(20, 20, 120), width=max(2, side // 30))
    font = ImageFont.load_default(size=max(10, side // 6))
    draw.text((side * 0.16, side * 0.3), "ATELIER", font=font, fill=(160, 20, 20))
    draw.text((side * 0.22, side * 0.55), "2021 (c)", font=font, fill=(20, 20, 20))
    for offset in range(0, side, max(4, side // 12)):
        draw.line((offset, side * 0.85, offset + side // 20, side * 0.95),
                  fill=(20, 120, 20), width=2)
    image.paste(badge, (width - side - 10, height - side - 10))
    return image


def test_shared_logo_rejected(tmp_path):
    gallery = Gallery(tmp_path)
    first = load(CORPUS / "museum" / "images" / "artic_28560.png")
    second = load(CORPUS / "museum" / "images" / "metmuseum_11114.png")
    second = second.resize(first.size)
    logo_id = gallery.add("first with logo", reencode(stamp_logo(first)))

    results = gallery.search(reencode(stamp_logo(second)), include_rejected=True)

    logo_result = [result for result in results if result.image_id == logo_id]
    assert logo_result
    # The logo alone gives geometric agreement, but the pixels differ.
    fewest_inliers = min(inliers for inliers, _ in MatcherSettings().acceptance)
    assert logo_result[0].inliers >= fewest_inliers
    assert not logo_result[0].is_match
    assert not any(result.is_match for result in results)
    gallery.store.close()


def test_logo_copy_still_matches(tmp_path):
    gallery = Gallery(tmp_path)
    first = load(CORPUS / "museum" / "images" / "artic_28560.png")
    logo_id = gallery.add("first", reencode(first))

    matches = gallery.search(reencode(stamp_logo(first)))

    assert [match.image_id for match in matches] == [logo_id]
    gallery.store.close()


FLAT = [
    "b10_flat_black.png",
    "b10_flat_blue.png",
    "b10_flat_white.png",
    "b10_near_white_noise.png",
    "b10_white_with_tiny_signature.png",
]


def test_flat_images_never_match(tmp_path):
    gallery = Gallery(tmp_path)
    for name in FLAT:
        gallery.add(name, load(CASES / name))

    for name in FLAT:
        results = gallery.search(load(CASES / name), include_rejected=True)
        assert results == [], name
    gallery.store.close()


VARIANTS = {
    "b01_upright.jpg": [
        "b01_exif2_pixels_stored_rotated.jpg",
        "b01_exif3_pixels_stored_rotated.jpg",
        "b01_exif6_pixels_stored_rotated.jpg",
        "b01_exif8_pixels_stored_rotated.jpg",
    ],
    "b00_reference_artwork.png": ["b01_exif6_pixels_stored_rotated.png"],
    "b02_rgb_twin.jpg": ["b02_cmyk.jpg"],
    "b03_gray8_twin.png": ["b03_gray16.png", "b03_rgb48.png", "b03_bilevel_1bit.png"],
    "b04_expected_on_white.png": [
        "b04_palette_trns.png",
        "b04_rgba_hidden_black.png",
        "b04_rgba_hidden_magenta.png",
    ],
}


def test_format_variants_match_reference(tmp_path):
    gallery = Gallery(tmp_path)
    for reference in VARIANTS:
        gallery.add(reference, load(CASES / reference))

    for reference, variants in VARIANTS.items():
        for variant in variants:
            matches = gallery.search(load(CASES / variant))
            found = [match.image_id for match in matches]
            assert gallery.ids[reference] in found, variant
    gallery.store.close()


def test_transparent_only_image_is_flat(tmp_path):
    # Fully transparent pixels become white, so nothing is left to match.
    gallery = Gallery(tmp_path)
    gallery.add("b04_expected_on_white.png", load(CASES / "b04_expected_on_white.png"))

    assert gallery.search(load(CASES / "b04_fully_transparent_hidden_red.png")) == []
    gallery.store.close()


def test_b12_pillarboxes_stay_apart(tmp_path):
    gallery = Gallery(tmp_path)
    art_id = gallery.add("art", load(CASES / "b12_art_pillarboxed_black.png"))

    matches = gallery.search(load(CASES / "b12_other_pillarboxed_black.png"))
    bordered = gallery.search(load(CASES / "b12_art_white_matte_40px.png"))

    assert matches == []
    assert [match.image_id for match in bordered] == [art_id]
    gallery.store.close()


def test_results_carry_readable_fields(museum):
    query = reencode(load(CORPUS / "museum" / "images" / "artic_187528.png"), 70)

    matches = museum.search(query, limit=3)

    assert len(matches) == 1
    assert isinstance(matches[0].distance, int)
    assert 0 <= matches[0].distance <= 256
    assert -1.0 <= matches[0].score <= 1.0
    assert matches[0].score >= min(
        similarity for _, similarity in MatcherSettings().acceptance
    )

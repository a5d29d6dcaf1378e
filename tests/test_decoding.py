"""Tests of index.decoding on real image files and real decoding.

Pixel comparisons shrink both images to 64x64 with a box filter and take
the mean absolute difference over all channels, on the 0..255 scale.
JPEG noise stays far below the tolerances, and a wrong rotation, a
colour swap or a grey fill lands far above them.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from index import errors
from index.decoding import decode_file, decode_image, read_dimensions, sniff_format
from tests.conftest import CORPUS

MAX_PIXELS = 64_000_000
REPO = Path(__file__).resolve().parents[1]
MODES = CORPUS / "pdq" / "misc-images" / "modes"
EXIF_ROTATIONS = CORPUS / "pdq" / "reg-test-input" / "exif-rotn"

# Transpose that shows the stored pixels upright, per EXIF Orientation value.
SHOW_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Transpose that stores upright pixels so that SHOW_UPRIGHT undoes it.
STORE_ROTATED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def mean_abs_diff(first: Image.Image, second: Image.Image) -> float:
    size = (64, 64)
    a = np.asarray(first.convert("RGB").resize(size, Image.Resampling.BOX), float)
    b = np.asarray(second.convert("RGB").resize(size, Image.Resampling.BOX), float)
    return float(np.abs(a - b).mean())


def decode_case(cases: Path, name: str, **options: int) -> Image.Image:
    return decode_file(cases / name, MAX_PIXELS, **options)


def reference(cases: Path) -> Image.Image:
    return Image.open(cases / "b00_reference_artwork.png").convert("RGB")


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


@pytest.fixture
def truncation_flag(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Run the test with Pillow's global truncated-image flag off, then on."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", request.param)
    return request.param


both_flag_values = pytest.mark.parametrize(
    "truncation_flag", [False, True], indirect=True, ids=["flag_off", "flag_on"]
)


# Result shape


def test_result_is_loaded_rgb(cases):
    image = decode_case(cases, "b03_gray16.png")

    assert image.mode == "RGB"
    assert image.size == (480, 320)
    assert image.getpixel((0, 0)) is not None


# EXIF orientation


@pytest.mark.parametrize(
    "name",
    [
        "b01_exif2_pixels_stored_rotated.jpg",
        "b01_exif3_pixels_stored_rotated.jpg",
        "b01_exif6_pixels_stored_rotated.jpg",
        "b01_exif6_pixels_stored_rotated.png",
        "b01_exif8_pixels_stored_rotated.jpg",
    ],
)
def test_orientation_matches_upright(cases, name):
    upright = decode_case(cases, "b01_upright.jpg")
    image = decode_case(cases, name)

    assert image.size == upright.size
    assert mean_abs_diff(image, upright) < 2.0


def test_stored_pixels_differ_from_upright(cases):
    # Guards the test above: without the orientation the pixels differ.
    stored = Image.open(cases / "b01_exif3_pixels_stored_rotated.jpg")
    upright = decode_case(cases, "b01_upright.jpg")

    assert mean_abs_diff(stored, upright) > 20.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_value(cases, orientation):
    upright = reference(cases)
    stored = upright
    if orientation > 1:
        stored = upright.transpose(STORE_ROTATED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=95, exif=exif)

    image = decode_image(data, MAX_PIXELS)

    assert image.size == upright.size
    assert mean_abs_diff(image, upright) < 2.0


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_camera_orientation_photos(orientation):
    path = EXIF_ROTATIONS / f"exif-rotn-{orientation}.jpg"
    stored = Image.open(path)
    stored.draft("RGB", (1008, 756))
    expected = stored.convert("RGB").transpose(SHOW_UPRIGHT[orientation])

    image = decode_file(path, MAX_PIXELS, reduce_to=1000)

    assert image.size == expected.size
    assert mean_abs_diff(image, expected) == 0.0


# Pixel modes


def test_cmyk_matches_rgb_twin(cases):
    image = decode_case(cases, "b02_cmyk.jpg")
    twin = decode_case(cases, "b02_rgb_twin.jpg")

    assert mean_abs_diff(image, twin) < 2.0


def test_gray16_matches_gray8_twin(cases):
    image = decode_case(cases, "b03_gray16.png")
    twin = decode_case(cases, "b03_gray8_twin.png")

    assert mean_abs_diff(image, twin) < 0.5


def test_gray16_not_clamped_to_white(cases):
    image = decode_case(cases, "b03_gray16.png")
    twin = decode_case(cases, "b03_gray8_twin.png")
    brightness = np.asarray(image, float).mean()

    assert abs(brightness - np.asarray(twin, float).mean()) < 1.0
    assert brightness < 200.0


def test_rgb48_matches_reference(cases):
    image = decode_case(cases, "b03_rgb48.png")

    assert mean_abs_diff(image, reference(cases)) < 0.5


def test_bilevel_matches_gray8_twin(cases):
    # The 1-bit image is dithered, so it matches only after averaging.
    image = decode_case(cases, "b03_bilevel_1bit.png")
    twin = decode_case(cases, "b03_gray8_twin.png")

    assert mean_abs_diff(image, twin) < 8.0


@pytest.mark.parametrize("name", sorted(p.name for p in MODES.glob("*")))
def test_mode_files_decode(name):
    image = decode_file(MODES / name, MAX_PIXELS)

    assert image.mode == "RGB"
    assert image.size == (1600, 1004)


@pytest.mark.parametrize(
    "name",
    ["CMYK.jpg", "LAB.webp", "HSV.webp", "P.png", "PA.webp", "RGB.jpg", "RGBA.png",
     "YCbCr.jpg"],
)
def test_colour_mode_files_match(name):
    original = decode_file(MODES / "original.jpg", MAX_PIXELS)
    image = decode_file(MODES / name, MAX_PIXELS)

    assert mean_abs_diff(image, original) < 2.0


@pytest.mark.parametrize("name", ["1.png", "F.webp", "I.webp", "L.png", "LA.png"])
def test_grey_mode_files_match(name):
    original = decode_file(MODES / "original.jpg", MAX_PIXELS).convert("L")
    image = decode_file(MODES / name, MAX_PIXELS)

    assert mean_abs_diff(image.convert("L"), original) < 2.0


def test_sixteen_bit_tiff_scaled():
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    data = encode(Image.fromarray(levels * 257), "TIFF")

    image = decode_image(data, MAX_PIXELS)

    assert np.array_equal(np.asarray(image)[..., 0], levels)


def test_int32_tiff_scaled_as_sixteen_bit():
    levels = np.arange(256, dtype=np.int32).reshape(16, 16)
    source = Image.fromarray(levels * 257)
    assert source.mode == "I"

    image = decode_image(encode(source, "TIFF"), MAX_PIXELS)

    assert np.array_equal(np.asarray(image)[..., 0], levels)


def test_float_tiff_scaled_from_unit_range():
    levels = np.arange(256, dtype=np.float32).reshape(16, 16)
    source = Image.fromarray(levels / 255.0)
    assert source.mode == "F"

    image = decode_image(encode(source, "TIFF"), MAX_PIXELS)

    assert np.array_equal(np.asarray(image)[..., 1], levels.astype(np.uint8))


# Transparency


@pytest.mark.parametrize(
    "name",
    [
        "b04_palette_trns.png",
        "b04_rgba_hidden_black.png",
        "b04_rgba_hidden_magenta.png",
    ],
)
def test_transparency_on_white(cases, name):
    expected = decode_case(cases, "b04_expected_on_white.png")
    image = decode_case(cases, name)

    assert mean_abs_diff(image, expected) < 1.0


def test_fully_transparent_is_white(cases):
    image = decode_case(cases, "b04_fully_transparent_hidden_red.png")
    pixels = np.asarray(image)

    assert pixels.min() == 255


def test_grey_alpha_on_white():
    source = Image.new("LA", (8, 8), (0, 0))
    source.putpixel((0, 0), (40, 255))
    image = decode_image(encode(source, "PNG"), MAX_PIXELS)

    assert image.getpixel((0, 0)) == (40, 40, 40)
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_gif_transparent_index_on_white():
    source = Image.new("P", (8, 8), 1)
    source.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    source.putpixel((0, 0), 0)
    image = decode_image(encode(source, "GIF", transparency=1), MAX_PIXELS)

    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((5, 5)) == (255, 255, 255)


# Animations


@pytest.mark.parametrize("image_format", ["GIF", "PNG", "WEBP"])
def test_animation_gives_first_frame(image_format):
    red = Image.new("RGB", (16, 16), (220, 0, 0))
    blue = Image.new("RGB", (16, 16), (0, 0, 220))
    data = encode(red, image_format, save_all=True, append_images=[blue], duration=100)

    image = decode_image(data, MAX_PIXELS)

    red_level, green_level, blue_level = image.getpixel((8, 8))
    assert red_level > 200
    assert blue_level < 20


# Truncation


@both_flag_values
@pytest.mark.parametrize(
    "name",
    ["b06_baseline.jpg", "b06_baseline_missing_eoi_only.jpg", "b06_progressive.jpg",
     "b06_full.png"],
)
def test_complete_files_decode(cases, truncation_flag, name):
    image = decode_case(cases, name)

    assert mean_abs_diff(image, reference(cases)) < 2.0


@both_flag_values
@pytest.mark.parametrize(
    "name",
    ["b06_baseline_truncated_60pct.jpg", "b06_png_truncated_70pct.png",
     "b06_progressive_truncated_40pct.jpg"],
)
def test_truncated_files_rejected(cases, truncation_flag, name):
    with pytest.raises(errors.TruncatedImageError):
        decode_case(cases, name)


@both_flag_values
def test_missing_eoi_equals_complete(cases, truncation_flag):
    image = decode_case(cases, "b06_baseline_missing_eoi_only.jpg")
    complete = decode_case(cases, "b06_baseline.jpg")

    assert image.tobytes() == complete.tobytes()


@both_flag_values
def test_progressive_missing_eoi_accepted(cases, truncation_flag):
    data = (cases / "b06_progressive.jpg").read_bytes()
    assert data.endswith(b"\xff\xd9")

    image = decode_image(data[:-2], MAX_PIXELS)

    assert image.tobytes() == decode_image(data, MAX_PIXELS).tobytes()


@both_flag_values
@pytest.mark.parametrize("name", ["b06_baseline.jpg", "b06_progressive.jpg"])
@pytest.mark.parametrize("kept", [0.1, 0.5, 0.9, 0.99])
def test_jpeg_cut_rejected(cases, truncation_flag, name, kept):
    data = (cases / name).read_bytes()

    with pytest.raises(errors.TruncatedImageError):
        decode_image(data[: int(len(data) * kept)], MAX_PIXELS)


@both_flag_values
def test_jpeg_missing_last_eoi_byte_accepted(cases, truncation_flag):
    data = (cases / "b06_baseline.jpg").read_bytes()

    image = decode_image(data[:-1], MAX_PIXELS)

    assert image.tobytes() == decode_image(data, MAX_PIXELS).tobytes()


@both_flag_values
def test_jpeg_cut_in_last_bytes_rejected(cases, truncation_flag):
    data = (cases / "b06_baseline.jpg").read_bytes()

    with pytest.raises(errors.TruncatedImageError):
        decode_image(data[:-10], MAX_PIXELS)


@both_flag_values
def test_jpeg_cut_with_reduce_to_rejected(cases, truncation_flag):
    with pytest.raises(errors.TruncatedImageError):
        decode_case(cases, "b06_baseline_truncated_60pct.jpg", reduce_to=100)


def test_jpeg_cut_in_header_rejected(cases):
    data = (cases / "b06_baseline.jpg").read_bytes()

    with pytest.raises(errors.TruncatedImageError):
        decode_image(data[:100], MAX_PIXELS)


def test_png_without_iend_accepted(cases):
    data = (cases / "b06_full.png").read_bytes()
    assert data[-8:-4] == b"IEND"

    image = decode_image(data[:-12], MAX_PIXELS)

    assert image.tobytes() == decode_image(data, MAX_PIXELS).tobytes()


@both_flag_values
def test_png_cut_between_idat_chunks_rejected(truncation_flag):
    noise = np.random.default_rng(7).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    (first_idat_length,) = struct.unpack_from(">I", data, 33)
    second_chunk_end = 33 + 12 + first_idat_length
    second_chunk_end += 12 + struct.unpack_from(">I", data, second_chunk_end)[0]

    with pytest.raises(errors.TruncatedImageError):
        decode_image(data[:second_chunk_end], MAX_PIXELS)


@both_flag_values
@pytest.mark.parametrize("image_format", ["BMP", "GIF", "JPEG2000", "TIFF", "WEBP"])
def test_other_formats_cut_rejected(cases, truncation_flag, image_format):
    data = encode(reference(cases), image_format)

    with pytest.raises(errors.TruncatedImageError):
        decode_image(data[: len(data) // 2], MAX_PIXELS)


def test_gif_without_trailer_accepted(cases):
    data = (cases / "b08_gif_content_named.png").read_bytes()
    assert data.endswith(b";")

    image = decode_image(data[:-1], MAX_PIXELS)

    assert image.tobytes() == decode_image(data, MAX_PIXELS).tobytes()


# Size limits


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("b07_gif_screen_claims_65535x65535.gif", "65535x65535"),
        ("b07_jpeg_sof_claims_65500x65500.jpg", "65500x65500"),
        ("b07_png_header_only_30000x30000.png", "30000x30000"),
        ("b07_png_valid_1bit_30000x30000.png", "30000x30000"),
        ("b07_png_valid_rgb_10000x10000_flat.png", "10000x10000"),
    ],
)
def test_huge_images_rejected_quickly(cases, name, size):
    started = time.perf_counter()
    with pytest.raises(errors.ImageTooLargeError) as caught:
        decode_case(cases, name)
    elapsed = time.perf_counter() - started

    assert size in str(caught.value)
    assert "64,000,000" in str(caught.value)
    assert elapsed < 0.5


def test_huge_images_bounded_memory(cases):
    # A fresh process, so the peak resident size reflects only these files.
    script = textwrap.dedent(
        f"""
        import resource, sys
        sys.path.insert(0, {str(REPO)!r})
        from index.decoding import decode_file
        from index.errors import ImageTooLargeError
        paths = sys.argv[1:]
        decode_file(paths[0], {MAX_PIXELS})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in paths[1:]:
            try:
                decode_file(path, {MAX_PIXELS})
            except ImageTooLargeError:
                pass
            else:
                sys.exit("accepted " + path)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(after - before)
        """
    )
    paths = [str(cases / "b06_full.png")] + sorted(str(p) for p in cases.glob("b07_*"))
    result = subprocess.run(
        [sys.executable, "-c", script, *paths],
        capture_output=True, text=True, timeout=60, check=False,
    )

    assert result.returncode == 0, result.stderr
    peak_growth_kib = int(result.stdout)
    assert peak_growth_kib < 32 * 1024


def test_pillow_limit_applies_when_lower(cases):
    with pytest.raises(errors.ImageTooLargeError) as caught:
        decode_file(cases / "b07_png_valid_rgb_10000x10000_flat.png", 10**9)

    assert "MAX_IMAGE_PIXELS" in str(caught.value)


def test_decompression_bomb_becomes_too_large(cases, monkeypatch):
    data = encode(reference(cases), "TIFF")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    with pytest.raises(errors.ImageTooLargeError):
        read_dimensions(data)


def test_max_bytes_rejects_large_file(cases):
    with pytest.raises(errors.ImageTooLargeError) as caught:
        decode_file(cases / "b00_reference_artwork.png", MAX_PIXELS, max_bytes=1000)

    assert "1,000 bytes" in str(caught.value)


def test_max_bytes_accepts_file_at_limit(cases):
    path = cases / "b00_reference_artwork.png"

    image = decode_file(path, MAX_PIXELS, max_bytes=path.stat().st_size)

    assert image.size == (480, 320)


# Sniffing and non-images


@pytest.mark.parametrize(
    ("name", "image_format"),
    [
        ("b08_gif_content_named.png", "gif"),
        ("b08_png_content_named.jpg", "png"),
        ("b08_webp_content_named.jpg", "webp"),
    ],
)
def test_lying_extension_decodes(cases, name, image_format):
    data = (cases / name).read_bytes()

    image = decode_case(cases, name)

    assert sniff_format(data) == image_format
    assert mean_abs_diff(image, reference(cases)) < 3.0


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("b08_empty_0_bytes.jpg", "empty"),
        ("b08_html_page_named.jpg", "HTML page"),
        ("b08_json_error_named.png", "JSON document"),
        ("b08_svg_named.png", "SVG document"),
        ("b08_xml_access_denied_named.jpg", "XML document"),
    ],
)
def test_non_image_rejected(cases, name, phrase):
    with pytest.raises(errors.NotAnImageError) as caught:
        decode_case(cases, name)

    assert phrase in str(caught.value)
    assert name in str(caught.value)
    assert caught.value.code == "NOT_AN_IMAGE"


def test_binary_garbage_rejected():
    with pytest.raises(errors.NotAnImageError) as caught:
        decode_image(bytes(range(200, 256)) * 4, MAX_PIXELS)

    assert "c8 c9 ca" in str(caught.value)


@pytest.mark.parametrize(
    ("image_format", "sniffed"),
    [("BMP", "bmp"), ("GIF", "gif"), ("JPEG", "jpeg"), ("PNG", "png"),
     ("TIFF", "tiff"), ("WEBP", "webp"), ("AVIF", "avif"), ("JPEG2000", "jp2")],
)
def test_sniff_and_decode_formats(cases, image_format, sniffed):
    data = encode(reference(cases), image_format)

    image = decode_image(data, MAX_PIXELS)

    assert sniff_format(data) == sniffed
    assert read_dimensions(data) == (480, 320)
    assert mean_abs_diff(image, reference(cases)) < 3.0


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"<html></html>",
        b"RIFF\x00\x00\x00\x00WAVE",
        b"BM" + b"\x00" * 30,
    ],
)
def test_sniff_rejects_non_images(data):
    assert sniff_format(data) is None


def test_heic_sniffed_but_unsupported():
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64

    with pytest.raises(errors.UnsupportedImageError) as caught:
        decode_image(data, MAX_PIXELS)

    assert sniff_format(data) == "heic"
    assert "HEIC" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("b07_gif_screen_claims_65535x65535.gif", (65535, 65535)),
        ("b07_jpeg_sof_claims_65500x65500.jpg", (65500, 65500)),
        ("b07_png_header_only_30000x30000.png", (30000, 30000)),
        ("b01_exif6_pixels_stored_rotated.jpg", (320, 480)),
    ],
)
def test_read_dimensions_from_header(cases, name, size):
    assert read_dimensions((cases / name).read_bytes()) == size


def test_png_with_bad_first_chunk_corrupt(cases):
    data = bytearray((cases / "b06_full.png").read_bytes())
    data[12:16] = b"tEXt"

    with pytest.raises(errors.CorruptImageError) as caught:
        decode_image(bytes(data), MAX_PIXELS)

    assert not isinstance(caught.value, errors.TruncatedImageError)


# reduce_to


@pytest.mark.parametrize("size", [(3000, 2000), (2049, 300), (777, 1999), (640, 480)])
@pytest.mark.parametrize("reduce_to", [256, 500, 1024])
def test_reduce_to_keeps_long_side(cases, size, reduce_to):
    data = encode(reference(cases).resize(size), "JPEG", quality=90)

    image = decode_image(data, MAX_PIXELS, reduce_to=reduce_to)

    long_side = max(image.size)
    assert long_side >= min(reduce_to, max(size))
    assert long_side < 2 * reduce_to or image.size == size


def test_reduce_to_reduces_large_jpeg(cases):
    data = encode(reference(cases).resize((3200, 2400)), "JPEG", quality=90)

    image = decode_image(data, MAX_PIXELS, reduce_to=700)

    assert image.size == (800, 600)


def test_reduce_to_ignored_for_png(cases):
    image = decode_case(cases, "b06_full.png", reduce_to=100)

    assert image.size == (480, 320)


# Errors and arguments


def test_error_tree_and_codes():
    expected_codes = {
        errors.NotAnImageError: "NOT_AN_IMAGE",
        errors.UnsupportedImageError: "UNSUPPORTED_IMAGE",
        errors.ImageTooLargeError: "IMAGE_TOO_LARGE",
        errors.CorruptImageError: "CORRUPT_IMAGE",
        errors.TruncatedImageError: "TRUNCATED_IMAGE",
    }
    for error_class, code in expected_codes.items():
        assert error_class.code == code
        assert issubclass(error_class, errors.ImageError)
    assert issubclass(errors.ImageError, errors.ImageLibraryError)
    assert issubclass(errors.TruncatedImageError, errors.CorruptImageError)


@pytest.mark.parametrize(
    ("max_pixels", "reduce_to"), [(0, None), (-5, None), (100, 0)]
)
def test_invalid_arguments_raise(cases, max_pixels, reduce_to):
    data = (cases / "b06_full.png").read_bytes()

    with pytest.raises(ValueError):
        decode_image(data, max_pixels, reduce_to=reduce_to)


def test_missing_file_raises_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode_file(tmp_path / "absent.jpg", MAX_PIXELS)

"""Image descriptors: pHash, PDQ of the border-trimmed image, local features.

``describe_image`` computes everything the store keeps for one image:

- the 64-bit pHash of the earlier system, bit for bit, so old hashes stay
  comparable;
- PDQ (256 bits, pdqhash) and its quality, computed on the normalised
  image: uniform borders, letterbox or pillarbox bars and white mattes
  are trimmed first, and the result is reduced to a working size;
- ORB keypoints and a small grey thumbnail (``index.local_features``),
  used by the matcher for geometric and pixel verification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import pdqhash
from PIL import Image

from index import local_features

logger = logging.getLogger(__name__)

PHASH_BYTES = 8
PDQ_BYTES = 32

# Long side of the working image that PDQ and ORB see. PDQ reduces its
# input to 64x64 itself, so a 512 px copy changes few bits (0-14 on the
# PDQ test photos) and hashes in about 4 ms instead of 40 ms for a
# 1,600 x 1,004 photo (pdqhash 0.2.8, one core).
WORKING_LONG_SIDE = 512

# PDQ quality (0-100, pdqhash's gradient measure) below which an image is
# treated as featureless. Flat and nearly flat images score 0-1, and the
# artworks of the test corpus 80-100.
MIN_PDQ_QUALITY = 50

# A border row or column must have this share of its pixels within
# BORDER_TOLERANCE grey levels (per channel) of the border colour.
BORDER_PIXEL_SHARE = 0.99
BORDER_TOLERANCE = 20
# Trimming is undone when it would keep less than this share of the
# width or height: what remains is a small mark on a blank page, not
# an artwork with bars around it.
MIN_KEPT_SHARE = 0.3


@dataclass(frozen=True)
class ImageDescription:
    """Descriptors of one image, as stored for it."""

    width: int
    height: int
    phash: bytes
    pdq: bytes
    pdq_quality: int
    local_features: bytes | None


@dataclass(frozen=True)
class NormalisedImage:
    """An image with its borders trimmed, reduced to the working size."""

    rgb: np.ndarray
    grey: np.ndarray
    # (left, top, right, bottom) kept from the original image, in pixels.
    box: tuple[int, int, int, int]

    @property
    def source_long_side(self) -> int:
        left, top, right, bottom = self.box
        return max(right - left, bottom - top)


def describe_image(image: Image.Image) -> ImageDescription:
    """Compute the stored descriptors of an 8-bit RGB image."""
    normalised = normalise(image)
    pdq, quality = pdq_hash(normalised.rgb)
    features = None
    if quality >= MIN_PDQ_QUALITY:
        features = local_features.serialise(
            local_features.extract(normalised.grey, normalised.source_long_side)
        )
    return ImageDescription(
        width=image.width,
        height=image.height,
        phash=phash(image),
        pdq=pdq,
        pdq_quality=quality,
        local_features=features,
    )


def phash(image: Image.Image) -> bytes:
    """Compute the earlier system's 64-bit pHash as 8 big-endian bytes.

    Grey (Pillow ``L``), 32x32 Lanczos, unnormalised 2-D DCT-II (the
    convention of ``scipy.fftpack.dct``), top-left 8x8 block with the DC
    term, threshold at its median. Bit i of the integer is coefficient i
    in row-major order.
    """
    small = image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)
    coefficients = _DCT_MATRIX @ pixels @ _DCT_MATRIX.T
    block = coefficients[:8, :8].ravel()
    bits = block > np.median(block)
    value = sum(1 << index for index in np.flatnonzero(bits).tolist())
    return value.to_bytes(PHASH_BYTES, "big")


def _dct_matrix(size: int) -> np.ndarray:
    # Row k is 2*cos(pi*k*(2n+1)/(2*size)), the DCT-II without scaling.
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * size))


_DCT_MATRIX = _dct_matrix(32)


def pdq_hash(rgb: np.ndarray) -> tuple[bytes, int]:
    """Return PDQ as 32 bytes (first bit is the high bit of byte 0) and quality."""
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


def hamming(first: bytes, second: bytes) -> int:
    """Return the number of differing bits between two equal-length codes."""
    return int.from_bytes(first, "big").__xor__(
        int.from_bytes(second, "big")
    ).bit_count()


def normalise(image: Image.Image) -> NormalisedImage:
    """Trim uniform borders and resize to the working size (up or down)."""
    # Pillow's box reduction by a whole factor is cheaper than copying the
    # full-size pixels into numpy, and the working copy needs no more.
    factor = max(1, max(image.size) // WORKING_LONG_SIDE)
    reduced = image.reduce(factor) if factor > 1 else image
    if reduced.mode != "RGB":
        reduced = reduced.convert("RGB")
    rgb = np.asarray(reduced)
    left, top, right, bottom = trim_box(rgb)
    working = _resize_long_side(rgb[top:bottom, left:right], WORKING_LONG_SIDE)
    grey = cv2.cvtColor(working, cv2.COLOR_RGB2GRAY)
    box = (
        left * factor,
        top * factor,
        min(image.width, right * factor),
        min(image.height, bottom * factor),
    )
    return NormalisedImage(rgb=working, grey=grey, box=box)


def mirror(normalised: NormalisedImage) -> NormalisedImage:
    """Return the left-right mirror of a normalised image."""
    return NormalisedImage(
        rgb=np.ascontiguousarray(normalised.rgb[:, ::-1]),
        grey=np.ascontiguousarray(normalised.grey[:, ::-1]),
        box=normalised.box,
    )


def _resize_long_side(rgb: np.ndarray, long_side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return np.ascontiguousarray(rgb)
    if scale > 1:
        return cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC)
    # OpenCV's area filter is fast only for whole factors, so the image is
    # first reduced by the largest whole factor, then linearly by less than 2.
    factor = int(1 / scale)
    if factor >= 2:
        rgb = rgb[: height - height % factor, : width - width % factor]
        whole = (rgb.shape[1] // factor, rgb.shape[0] // factor)
        rgb = cv2.resize(rgb, whole, interpolation=cv2.INTER_AREA)
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    return cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)


def trim_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """Return (left, top, right, bottom) of the image without uniform borders.

    Each side is trimmed on its own, so bars of different colours (or a
    matte on one side only) are handled. Rows and columns are measured on
    every ``step``-th pixel of an image subsampled to about 256 px.
    """
    height, width = rgb.shape[:2]
    step = max(1, max(height, width) // 256)
    small = rgb[::step, ::step]
    small_height, small_width = small.shape[:2]
    columns = small.transpose(1, 0, 2)

    top = _uniform_run(small)
    bottom = _uniform_run(small[::-1])
    left = _uniform_run(columns)
    right = _uniform_run(columns[::-1])

    kept_width = small_width - left - right
    kept_height = small_height - top - bottom
    if (
        kept_width < MIN_KEPT_SHARE * small_width
        or kept_height < MIN_KEPT_SHARE * small_height
    ):
        return (0, 0, width, height)
    return (
        min(width, left * step),
        min(height, top * step),
        max(0, width - right * step),
        max(0, height - bottom * step),
    )


def _uniform_run(rows: np.ndarray) -> int:
    """Count leading rows whose pixels nearly all match the first row's colour.

    Rows are checked in growing chunks, so an image without a border costs
    one small chunk.
    """
    colour = np.median(rows[0], axis=0).astype(np.int16)
    checked = 0
    chunk = 8
    while checked < len(rows):
        block = rows[checked : checked + chunk].astype(np.int16)
        close = np.all(np.abs(block - colour) <= BORDER_TOLERANCE, axis=2)
        uniform = close.mean(axis=1) >= BORDER_PIXEL_SHARE
        if not uniform.all():
            return checked + int(np.argmin(uniform))
        checked += len(block)
        chunk *= 2
    return len(rows)

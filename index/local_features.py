"""ORB keypoints plus a grey thumbnail, and the check that two images align.

Stored layout (little-endian), at most ``MAX_BYTES``:

- header ``<4sHHHH``: magic ``b"A2L1"``, working width and height, keypoint
  count n, length of the thumbnail JPEG;
- n keypoint positions as float16 (x, y) in working-image pixels;
- n ORB descriptors of 32 bytes;
- the thumbnail, a grey JPEG whose long side is ``THUMBNAIL_LONG_SIDE``.

``verify`` matches the descriptors of two images, fits a similarity
transform with RANSAC, then warps the candidate's thumbnail onto the
query's and correlates the overlapping pixels. The correlation is what
tells a copy from a look-alike: two paintings of the same subject share
many ORB matches, but their aligned pixels differ.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import cv2
import faiss
import numpy as np

logger = logging.getLogger(__name__)

MAGIC = b"A2L1"
HEADER = struct.Struct("<4sHHHH")
MAX_BYTES = 16 * 1024
DESCRIPTOR_BYTES = 32
MAX_STORED_KEYPOINTS = 320
MAX_QUERY_KEYPOINTS = 700
# FAST corner thresholds (grey levels). Queries use a lower one because
# copies that were shrunk, then scaled up to the working size, are soft;
# stored images keep the higher one, which is about 1 ms faster per image.
STORED_FAST_THRESHOLD = 16
QUERY_FAST_THRESHOLD = 12
THUMBNAIL_LONG_SIDE = 128
THUMBNAIL_JPEG_QUALITY = 90

# Lowe's ratio test on the two nearest descriptors of the candidate.
RATIO = 0.85
RANSAC_THRESHOLD_PX = 6.0
# Below this many descriptor matches no transform is fitted.
MIN_MATCHES_FOR_RANSAC = 6
# Fewer inliers than this give no pixel comparison and no match.
MIN_INLIERS_FOR_PIXELS = 8
ECC_ITERATIONS = 20
# Similarities in this range are recomputed after ECC refinement. Below
# it refinement cannot reach a match, and above it the candidate passes.
REFINE_RANGE = (0.45, 0.9)
# Side of the square blocks of the thumbnail compared one by one, and the
# high-pass standard deviation (grey levels) under which a block counts
# as flat in an image.
BLOCK_PX = 12
MIN_BLOCK_STD = 4.0
MIN_BLOCKS = 4
# Gaussian blur (sigma, thumbnail pixels) subtracted before correlating,
# so that the correlation follows strokes and edges rather than the
# overall light and dark layout, which look-alikes share.
HIGH_PASS_SIGMA = 2.0


class FeatureFormatError(ValueError):
    """Stored local features are truncated or not in this module's layout."""


@dataclass(frozen=True)
class Features:
    """ORB keypoints of a working-size grey image and its thumbnail."""

    width: int
    height: int
    points: np.ndarray  # float32 (n, 2), working-image pixels
    descriptors: np.ndarray  # uint8 (n, 32)
    thumbnail: np.ndarray  # uint8 grey, long side at most THUMBNAIL_LONG_SIDE


@dataclass(frozen=True)
class Verification:
    """Outcome of aligning a candidate image onto a query image."""

    matches: int
    inliers: int
    # Share of the query's area inside the convex hull of the inliers.
    query_coverage: float
    # Share of the smaller of the two frames that the other one covers.
    overlap: float
    # Median correlation of the aligned thumbnails over textured blocks,
    # -1 to 1, or -1 when no transform was found.
    similarity: float
    # 2x3 similarity from candidate working pixels to query working pixels.
    transform: np.ndarray | None


def extract(
    grey: np.ndarray,
    source_long_side: int,
    max_keypoints: int = MAX_STORED_KEYPOINTS,
    fast_threshold: int = STORED_FAST_THRESHOLD,
) -> Features:
    """Detect ORB keypoints on a working-size grey image and make its thumbnail.

    ``source_long_side`` is the long side of the image before it was
    scaled to the working size. The thumbnail is no larger than that, so
    an upscaled small image is not compared as if it held fine detail.
    """
    orb = cv2.ORB_create(nfeatures=max_keypoints, fastThreshold=fast_threshold)
    keypoints, descriptors = orb.detectAndCompute(grey, None)
    if descriptors is None:
        points = np.zeros((0, 2), np.float32)
        descriptors = np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    else:
        points = np.array([keypoint.pt for keypoint in keypoints], np.float32)
    height, width = grey.shape
    thumbnail = make_thumbnail(grey, min(THUMBNAIL_LONG_SIDE, source_long_side))
    return Features(width, height, points, descriptors, thumbnail)


def make_thumbnail(grey: np.ndarray, long_side: int) -> np.ndarray:
    height, width = grey.shape
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def serialise(features: Features) -> bytes:
    """Pack features into at most ``MAX_BYTES``, dropping the weakest keypoints."""
    ok, encoded = cv2.imencode(
        ".jpg",
        features.thumbnail,
        [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_JPEG_QUALITY],
    )
    if not ok:
        raise ValueError("OpenCV failed to encode the thumbnail as JPEG")
    thumbnail = encoded.tobytes()
    room = MAX_BYTES - HEADER.size - len(thumbnail)
    count = min(len(features.points), room // (4 + DESCRIPTOR_BYTES))
    # ORB returns keypoints strongest first, so the cut keeps the best.
    header = HEADER.pack(MAGIC, features.width, features.height, count, len(thumbnail))
    return b"".join(
        (
            header,
            features.points[:count].astype("<f2").tobytes(),
            features.descriptors[:count].tobytes(),
            thumbnail,
        )
    )


def deserialise(data: bytes) -> Features:
    """Unpack features written by ``serialise``."""
    if len(data) < HEADER.size:
        raise FeatureFormatError(f"local features are {len(data)} bytes, too short")
    magic, width, height, count, thumbnail_length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FeatureFormatError(f"local features start with {magic!r}, not {MAGIC!r}")
    points_end = HEADER.size + 4 * count
    descriptors_end = points_end + DESCRIPTOR_BYTES * count
    if len(data) != descriptors_end + thumbnail_length:
        raise FeatureFormatError(
            f"local features are {len(data)} bytes, the header announces "
            f"{descriptors_end + thumbnail_length}"
        )
    points = np.frombuffer(data, "<f2", 2 * count, HEADER.size).reshape(count, 2)
    descriptors = np.frombuffer(data, np.uint8, DESCRIPTOR_BYTES * count, points_end)
    encoded = np.frombuffer(data, np.uint8, thumbnail_length, descriptors_end)
    thumbnail = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    if thumbnail is None:
        raise FeatureFormatError(
            "the thumbnail in the local features is not valid JPEG"
        )
    return Features(
        width,
        height,
        points.astype(np.float32),
        descriptors.reshape(count, DESCRIPTOR_BYTES),
        thumbnail,
    )


def verify(query: Features, candidate: Features) -> Verification:
    """Align the candidate onto the query and measure how well they agree."""
    pairs = _match_descriptors(query.descriptors, candidate.descriptors)
    if len(pairs) < MIN_MATCHES_FOR_RANSAC:
        return Verification(len(pairs), 0, 0.0, 0.0, -1.0, None)
    query_points = query.points[pairs[:, 0]]
    candidate_points = candidate.points[pairs[:, 1]]
    transform, mask = cv2.estimateAffinePartial2D(
        candidate_points,
        query_points,
        method=cv2.RANSAC,
        ransacReprojThreshold=RANSAC_THRESHOLD_PX,
        maxIters=1000,
        confidence=0.99,
    )
    if transform is None:
        return Verification(len(pairs), 0, 0.0, 0.0, -1.0, None)
    inlier = mask.ravel().astype(bool)
    inliers = int(inlier.sum())
    coverage = _hull_share(query_points[inlier], query.width, query.height)
    if inliers < MIN_INLIERS_FOR_PIXELS:
        return Verification(len(pairs), inliers, coverage, 0.0, -1.0, transform)
    overlap, similarity = compare_aligned(query, candidate, transform)
    return Verification(len(pairs), inliers, coverage, overlap, similarity, transform)


def verify_whole_frame(query: Features, candidate: Features) -> Verification:
    """Compare the two images frame to frame, with no keypoint alignment.

    For images too small or too plain for ORB, the border-trimmed frames
    are taken to show the same picture, and ECC refines that guess.
    """
    transform = np.array(
        [[query.width / candidate.width, 0.0, 0.0],
         [0.0, query.height / candidate.height, 0.0]]
    )
    overlap, similarity = compare_aligned(query, candidate, transform)
    return Verification(0, 0, 1.0, overlap, similarity, transform)


def _match_descriptors(query: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Return (query index, candidate index) pairs that pass the ratio test."""
    if len(query) < 2 or len(candidate) < 2:
        return np.zeros((0, 2), np.int64)
    distances, nearest = faiss.knn_hamming(
        np.ascontiguousarray(query), np.ascontiguousarray(candidate), 2
    )
    passed = distances[:, 0] < RATIO * distances[:, 1]
    return np.stack([np.flatnonzero(passed), nearest[passed, 0]], axis=1)


def _hull_share(points: np.ndarray, width: int, height: int) -> float:
    if len(points) < 3:
        return 0.0
    hull = cv2.convexHull(points.astype(np.float32))
    return float(cv2.contourArea(hull)) / float(width * height)


def compare_aligned(
    query: Features, candidate: Features, transform: np.ndarray
) -> tuple[float, float]:
    """Align the two thumbnails; return (overlap, similarity).

    ``transform`` maps candidate working pixels to query working pixels.
    The thumbnail that appears larger is warped onto the smaller one, so
    neither is compared at a finer scale than it holds. ``overlap`` is the
    share of the smaller of the two frames that the other covers.
    """
    query_scale = query.thumbnail.shape[1] / query.width
    candidate_scale = candidate.thumbnail.shape[1] / candidate.width
    scaled = transform.astype(np.float64).copy()
    scaled[:, :2] *= query_scale / candidate_scale
    scaled[:, 2] *= query_scale
    source, target = candidate.thumbnail, query.thumbnail
    if abs(np.linalg.det(scaled[:, :2])) > 1.0:
        scaled = cv2.invertAffineTransform(scaled)
        source, target = target, source
    return _correlate_warped(source, target, scaled)


def _correlate_warped(
    source: np.ndarray, target: np.ndarray, transform: np.ndarray
) -> tuple[float, float]:
    height, width = target.shape
    warped = cv2.warpAffine(
        source, transform, (width, height),
        flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE,
    )
    inside = cv2.warpAffine(
        np.ones(source.shape, np.uint8), transform, (width, height),
        flags=cv2.INTER_NEAREST,
    )
    # Share of the smaller of the two frames that the other one covers.
    source_area = source.size * abs(np.linalg.det(transform[:, :2]))
    overlap = float(inside.sum()) / max(1.0, min(float(target.size), source_area))
    # Drop a margin where the high-pass filter saw the replicated edge.
    core = cv2.erode(inside, np.ones((7, 7), np.uint8)).astype(bool)
    target_detail = high_pass(target)
    similarity = block_similarity(target_detail, high_pass(warped), core)
    if not REFINE_RANGE[0] <= similarity < REFINE_RANGE[1]:
        return overlap, similarity
    # Keypoint positions are coarse, so ECC on the pixels themselves
    # finishes the alignment of the doubtful cases.
    refined = _refine_alignment(target, warped, inside)
    if refined is None:
        return overlap, similarity
    return overlap, block_similarity(target_detail, high_pass(refined), core)


def _refine_alignment(
    target: np.ndarray, warped: np.ndarray, inside: np.ndarray
) -> np.ndarray | None:
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, 1e-4)
    try:
        _, warp = cv2.findTransformECC(
            target.astype(np.float32),
            warped.astype(np.float32),
            warp,
            cv2.MOTION_AFFINE,
            criteria,
            inside,
            3,
        )
    except cv2.error:
        # ECC raises when it does not converge.
        return None
    height, width = target.shape
    return cv2.warpAffine(
        warped, warp, (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def block_similarity(
    first: np.ndarray, second: np.ndarray, inside: np.ndarray
) -> float:
    """Return the median correlation over blocks where either image has texture.

    A median over blocks weighs every textured part of the picture the
    same. A look-alike that agrees on one strong outline but not on the
    rest scores low, and a copy with a signature or logo added in one
    corner keeps a high median. With fewer than ``MIN_BLOCKS`` usable
    blocks the correlation of the whole overlap is returned.
    """
    size = BLOCK_PX
    rows, columns = first.shape[0] // size, first.shape[1] // size
    if rows and columns:
        scores = _block_correlations(first, second, inside, rows, columns)
        if len(scores) >= MIN_BLOCKS:
            return float(np.median(scores))
    if inside.sum() < MIN_BLOCKS * size * size:
        return -1.0
    return correlate(first[inside], second[inside])


def _block_correlations(
    first: np.ndarray, second: np.ndarray, inside: np.ndarray, rows: int, columns: int
) -> np.ndarray:
    size = BLOCK_PX
    shape = (rows, size, columns, size)
    cut = (slice(0, rows * size), slice(0, columns * size))
    a = first[cut].reshape(shape).transpose(0, 2, 1, 3).reshape(rows, columns, -1)
    b = second[cut].reshape(shape).transpose(0, 2, 1, 3).reshape(rows, columns, -1)
    full = inside[cut].reshape(shape).all(axis=(1, 3))
    a = a - a.mean(axis=2, keepdims=True)
    b = b - b.mean(axis=2, keepdims=True)
    a_energy = (a * a).sum(axis=2)
    b_energy = (b * b).sum(axis=2)
    pixels = size * size
    textured = np.maximum(a_energy, b_energy) >= MIN_BLOCK_STD**2 * pixels
    usable = full & textured
    norm = np.sqrt(a_energy * b_energy)
    products = (a * b).sum(axis=2)
    return np.where(norm > 0, products / np.maximum(norm, 1e-9), 0.0)[usable]


def high_pass(grey: np.ndarray) -> np.ndarray:
    image = grey.astype(np.float32)
    return image - cv2.GaussianBlur(image, (0, 0), HIGH_PASS_SIGMA)


def correlate(first: np.ndarray, second: np.ndarray) -> float:
    """Return the Pearson correlation of two equal-size arrays (0 if one is flat)."""
    first = first - first.mean()
    second = second - second.mean()
    norm = float(np.sqrt((first * first).sum() * (second * second).sum()))
    if norm == 0.0:
        return 0.0
    return float((first * second).sum() / norm)

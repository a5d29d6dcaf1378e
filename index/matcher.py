"""Search for the indexed images that a query image is a copy of.

A search runs in three steps:

1. Describe the query like an indexed image (borders trimmed, PDQ and ORB
   features), once as given and once mirrored. A query whose PDQ quality
   is under ``min_pdq_quality`` is featureless and matches nothing.
2. Build a shortlist from two sources: the nearest PDQ codes in the
   ``BinaryIndex`` (both orientations), and, for searches limited to
   accounts, votes of the query's ORB descriptors in an index of every
   ORB descriptor of those accounts (``LocalFeatureIndex``). The votes
   find cropped copies whose PDQ code has moved far away.
3. Verify each shortlisted image (``index.local_features.verify``): ORB
   matches, a RANSAC similarity transform, then correlation of the
   aligned pixels. An image is a match when the aligned images overlap
   enough and one of the ``acceptance`` pairs of inlier count and pixel
   similarity holds. A candidate close in PDQ that fails this (a copy too
   small for ORB) is compared whole frame to whole frame instead.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

import faiss
import numpy as np
from PIL import Image

from index import descriptors, local_features
from index.local_features import Features, FeatureFormatError, Verification

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class MatcherSettings:
    """Thresholds and sizes of the matcher; the defaults were tuned on the
    benchmark in ``benchmarks/accuracy.py``."""

    # Largest PDQ distance (bits) at which an image without stored local
    # features is accepted, on PDQ alone (the usual PDQ match threshold).
    max_pdq_distance: int = 31
    min_pdq_quality: int = descriptors.MIN_PDQ_QUALITY
    # Nearest PDQ codes taken per orientation.
    shortlist_size: int = 8
    # Images taken per orientation from the ORB descriptor votes.
    vote_shortlist_size: int = 10
    # An ORB descriptor votes for an image whose descriptor is this close.
    max_vote_distance: int = 48
    # Accounts with more images than this are not put in the vote index,
    # and their searches rely on PDQ alone for the shortlist.
    max_vote_images: int = 20000
    # Descriptors kept in the vote indexes of recently searched accounts.
    max_cached_descriptors: int = 4_000_000
    min_overlap: float = 0.5
    # (min RANSAC inliers, min pixel similarity) pairs, any one of which
    # accepts a candidate. Few inliers need near-identical pixels: on the
    # apple look-alikes, wrong candidates with 10-19 inliers reached a
    # similarity of 0.89, and those with 20 or more stayed under 0.78.
    acceptance: tuple[tuple[int, float], ...] = ((40, 0.82), (20, 0.86), (10, 0.93))
    # Candidates that fail keypoint verification but are this close in
    # PDQ bits are compared whole frame to whole frame, and then need
    # min_frame_similarity. This rescues copies too small for ORB.
    max_frame_pdq_distance: int = 48
    min_frame_similarity: float = 0.93


@dataclass(frozen=True)
class Match:
    """One indexed image compared with the query.

    ``distance`` is the PDQ Hamming distance between the border-trimmed
    query (or its mirror, whichever is closer) and the image, in bits.
    ``score`` is the pixel similarity after alignment (-1 to 1).
    """

    image_id: int
    distance: int
    score: float
    is_match: bool
    mirrored: bool = False
    inliers: int = 0


@dataclass(frozen=True)
class QueryDescription:
    """A query image described in both orientations."""

    pdq_codes: np.ndarray  # uint8 (2, 32): as given, mirrored
    pdq_quality: int
    features: tuple[Features, Features]


def describe_query(image: Image.Image) -> QueryDescription:
    """Describe a query image and its mirror for ``Matcher.search``."""
    normalised = descriptors.normalise(image)
    mirrored = descriptors.mirror(normalised)
    codes = []
    qualities = []
    features = []
    for version in (normalised, mirrored):
        code, quality = descriptors.pdq_hash(version.rgb)
        codes.append(np.frombuffer(code, np.uint8))
        qualities.append(quality)
        features.append(
            local_features.extract(
                version.grey,
                version.source_long_side,
                local_features.MAX_QUERY_KEYPOINTS,
                local_features.QUERY_FAST_THRESHOLD,
            )
        )
    return QueryDescription(np.stack(codes), min(qualities), tuple(features))


class Matcher:
    """Matcher of query images against the indexed images, one per searcher."""

    def __init__(self, settings: MatcherSettings | None = None):
        self.settings = settings or MatcherSettings()
        self.vote_index = LocalFeatureIndex(self.settings.max_cached_descriptors)

    def search(
        self,
        image: Image.Image,
        index,
        store,
        account_ids: Collection[int] | None = None,
        limit: int = 10,
        include_rejected: bool = False,
    ) -> list[Match]:
        """Return the indexed images the query matches, best first.

        ``index`` is an ``index.vector_index.BinaryIndex`` and ``store`` an
        ``index.store.Store``. With ``include_rejected`` the verified but
        rejected candidates follow the matches, so callers can show why.
        """
        return self.search_described(
            describe_query(image), index, store, account_ids, limit, include_rejected
        )

    def search_described(
        self,
        query: QueryDescription,
        index,
        store,
        account_ids: Collection[int] | None = None,
        limit: int = 10,
        include_rejected: bool = False,
    ) -> list[Match]:
        """Search like ``search`` with a query already described."""
        if query.pdq_quality < self.settings.min_pdq_quality:
            logger.debug("query has PDQ quality %d, too flat to match",
                         query.pdq_quality)
            return []
        orientations = self._shortlist(query, index, store, account_ids)
        if not orientations:
            return []
        results = self._verify_all(query, orientations, index, store)
        results.sort(key=lambda match: (not match.is_match, -match.score))
        if not include_rejected:
            results = [match for match in results if match.is_match]
        return results[:limit]

    def _shortlist(
        self, query: QueryDescription, index, store, account_ids
    ) -> dict[int, set[int]]:
        """Return, for every candidate id, the orientations (0, 1) to verify."""
        settings = self.settings
        candidates: dict[int, set[int]] = {}
        _, ids = index.search(query.pdq_codes, settings.shortlist_size, account_ids)
        for orientation in (0, 1):
            for image_id in ids[orientation][ids[orientation] >= 0].tolist():
                candidates.setdefault(image_id, set()).add(orientation)
        if account_ids is None:
            return candidates
        for account_id in account_ids:
            account_index = self.vote_index.get(
                account_id, index, store, settings.max_vote_images
            )
            if account_index is None:
                continue
            for orientation in (0, 1):
                voted = account_index.vote(
                    query.features[orientation].descriptors,
                    settings.max_vote_distance,
                    settings.vote_shortlist_size,
                )
                for image_id in voted:
                    candidates.setdefault(image_id, set()).add(orientation)
        return candidates

    def _verify_all(
        self, query: QueryDescription, orientations: dict[int, set[int]], index, store
    ) -> list[Match]:
        ids = sorted(orientations)
        codes = index.codes_for_ids(np.array(ids, dtype=np.int64))
        stored = store.load_local_features(ids)
        results = []
        for image_id, code in zip(ids, codes):
            distances = _hamming_rows(query.pdq_codes, code)
            data = stored.get(image_id)
            candidate = _load_features(image_id, data)
            if candidate is None:
                results.append(self._unverified_match(image_id, distances))
                continue
            results.append(
                self._verify_one(
                    query, image_id, candidate, distances, orientations[image_id]
                )
            )
        return results

    def _verify_one(
        self,
        query: QueryDescription,
        image_id: int,
        candidate: Features,
        distances: np.ndarray,
        orientations: set[int],
    ) -> Match:
        best = None
        for orientation in sorted(orientations):
            features = query.features[orientation]
            match = self._judge(
                image_id, distances, orientation,
                local_features.verify(features, candidate),
            )
            if (
                not match.is_match
                and distances[orientation] <= self.settings.max_frame_pdq_distance
            ):
                # Too few keypoints (tiny copies): compare whole frames.
                match = self._judge_whole_frame(
                    image_id, distances, orientation,
                    local_features.verify_whole_frame(features, candidate),
                )
            if best is None or (match.is_match, match.score) > (
                best.is_match, best.score
            ):
                best = match
        return best

    def _judge(
        self,
        image_id: int,
        distances: np.ndarray,
        orientation: int,
        verification: Verification,
    ) -> Match:
        settings = self.settings
        is_match = verification.overlap >= settings.min_overlap and any(
            verification.inliers >= inliers and verification.similarity >= similarity
            for inliers, similarity in settings.acceptance
        )
        return Match(
            image_id=image_id,
            distance=int(distances.min()),
            score=round(verification.similarity, 4),
            is_match=is_match,
            mirrored=orientation == 1,
            inliers=verification.inliers,
        )

    def _judge_whole_frame(
        self,
        image_id: int,
        distances: np.ndarray,
        orientation: int,
        verification: Verification,
    ) -> Match:
        return Match(
            image_id=image_id,
            distance=int(distances.min()),
            score=round(verification.similarity, 4),
            is_match=verification.similarity >= self.settings.min_frame_similarity,
            mirrored=orientation == 1,
        )

    def _unverified_match(self, image_id: int, distances: np.ndarray) -> Match:
        # NOTE: describe_image stores no local features for images under the
        # PDQ quality gate, so this path also judges flat stored images. It
        # stays safe only while the index leaves them out (build_from_store
        # with min_quality), because the matcher cannot see their quality.
        distance = int(distances.min())
        return Match(
            image_id=image_id,
            distance=distance,
            score=-1.0,
            is_match=distance <= self.settings.max_pdq_distance,
            mirrored=int(np.argmin(distances)) == 1,
        )


def _hamming_rows(codes: np.ndarray, code: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(codes, code), axis=1).sum(axis=1)


def _load_features(image_id: int, data: bytes | None) -> Features | None:
    if data is None:
        return None
    try:
        return local_features.deserialise(data)
    except FeatureFormatError as error:
        logger.warning("image %d has unreadable local features: %s", image_id, error)
        return None


class AccountVoteIndex:
    """Every stored ORB descriptor of one account, with the image it belongs to.

    Brute force is used up to ``IVF_MIN_DESCRIPTORS`` descriptors; larger
    accounts get an inverted-file index trained on their descriptors.
    """

    IVF_MIN_DESCRIPTORS = 40_000
    IVF_PROBES = 16

    def __init__(self):
        self.image_ids: set[int] = set()
        self._owners = np.zeros(0, np.int64)
        self._descriptors: list[np.ndarray] = []
        self._index: faiss.IndexBinary | None = None
        self._quantiser: faiss.IndexBinary | None = None
        self._indexed_count = 0

    @property
    def descriptor_count(self) -> int:
        return len(self._owners)

    def add(self, features_by_id: dict[int, Features]) -> None:
        owners = [self._owners]
        for image_id, features in features_by_id.items():
            self.image_ids.add(image_id)
            self._descriptors.append(features.descriptors)
            owners.append(np.full(len(features.descriptors), image_id, np.int64))
        self._owners = np.concatenate(owners)

    def prepare(self) -> None:
        """Build the searchable index now rather than at the next vote."""
        if self.descriptor_count:
            self._searchable()

    def vote(self, descriptors: np.ndarray, max_distance: int, limit: int) -> list[int]:
        """Return up to ``limit`` image ids, most voted first.

        Each query descriptor gives one vote to every image among its four
        nearest stored descriptors within ``max_distance`` bits.
        """
        if self.descriptor_count == 0 or len(descriptors) == 0:
            return []
        faiss.omp_set_num_threads(1)
        distances, rows = self._searchable().search(
            np.ascontiguousarray(descriptors), 4
        )
        close = (rows >= 0) & (distances <= max_distance)
        query_rows = np.nonzero(close)[0]
        owners = self._owners[rows[close]]
        pairs = np.unique(np.stack([query_rows, owners], axis=1), axis=0)
        voted, counts = np.unique(pairs[:, 1], return_counts=True)
        order = np.argsort(-counts, kind="stable")[:limit]
        return voted[order].tolist()

    def _searchable(self) -> faiss.IndexBinary:
        if self._index is not None and self._indexed_count == self.descriptor_count:
            return self._index
        everything = np.concatenate(self._descriptors)
        self._descriptors = [everything]
        if self.descriptor_count < self.IVF_MIN_DESCRIPTORS:
            index = faiss.IndexBinaryFlat(256)
        else:
            index = self._trained_ivf(everything)
        index.add(everything)
        self._index = index
        self._indexed_count = self.descriptor_count
        return index

    def _trained_ivf(self, everything: np.ndarray) -> faiss.IndexBinaryIVF:
        lists = int(min(1024, max(64, np.sqrt(len(everything)))))
        quantiser = faiss.IndexBinaryFlat(256)
        index = faiss.IndexBinaryIVF(quantiser, 256, lists)
        sample = everything
        if len(everything) > 40 * lists:
            rows = np.random.default_rng(0).choice(
                len(everything), 40 * lists, replace=False
            )
            sample = everything[rows]
        index.train(sample)
        index.nprobe = self.IVF_PROBES
        # The IVF index does not own its quantiser, so keep a reference.
        self._quantiser = quantiser
        return index


class LocalFeatureIndex:
    """Vote indexes of recently searched accounts, least recently used out."""

    def __init__(self, max_descriptors: int):
        self.max_descriptors = max_descriptors
        self._accounts: OrderedDict[int, AccountVoteIndex] = OrderedDict()

    def get(self, account_id: int, index, store, max_images: int):
        """Return the account's vote index, brought up to date, or None.

        None means the account has more than ``max_images`` images.
        """
        image_ids = index.ids_for_accounts([account_id])
        if len(image_ids) > max_images:
            logger.info(
                "account %d has %d images, more than %d: searching it by PDQ only",
                account_id, len(image_ids), max_images,
            )
            return None
        account_index = self._accounts.pop(account_id, None) or AccountVoteIndex()
        self._accounts[account_id] = account_index
        missing = [
            image_id for image_id in image_ids.tolist()
            if image_id not in account_index.image_ids
        ]
        if missing:
            loaded = store.load_local_features(missing)
            features = {}
            for image_id, data in loaded.items():
                parsed = _load_features(image_id, data)
                if parsed is not None:
                    features[image_id] = parsed
            account_index.add(features)
            # Images without features are recorded so they are not reloaded.
            account_index.image_ids.update(missing)
            account_index.prepare()
        self._evict()
        return account_index

    def _evict(self) -> None:
        total = sum(item.descriptor_count for item in self._accounts.values())
        while total > self.max_descriptors and len(self._accounts) > 1:
            _, evicted = self._accounts.popitem(last=False)
            total -= evicted.descriptor_count

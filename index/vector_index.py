"""Binary index of PDQ codes for nearest-neighbour search by Hamming distance.

The searcher keeps every stored image's 256-bit PDQ code here, packed as
32 bytes per row in ``numpy.packbits`` order. Hamming distance counts
differing bits, so the bit order inside a byte never changes a result.

Layout:

* Codes added since the last merge sit in a tail that every query scans
  exhaustively with FAISS (``faiss.knn_hamming``).
* Merged codes form the main part. Once it contains ``HASHED_MIN_COUNT``
  codes, it gets multi-index hashing tables: each code is cut into 16-bit
  substrings, and one table per substring lists the rows by substring
  value. A query probes, in every table, its own substring and the 16
  values one bit away. Two 256-bit codes at most 31 bits apart differ in
  at most one bit in at least one of their 16 substrings (pigeonhole), so
  every stored code within 31 bits of the query becomes a candidate.
  Candidates are then ranked by their full Hamming distance.
* Each part also groups its rows by account, so a search limited to some
  accounts scans only their codes, exhaustively.

The index is not thread-safe: one thread adds, merges and searches. It
never imports the store; ``build_from_store`` takes any object with the
store's ``iter_descriptors``, ``image_count`` and ``max_image_id``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)

PDQ_BITS = 256

# Each query runs on one FAISS thread. The searcher serves one request at
# a time, and FAISS's OpenMP pool turned ~1 ms queries into ~140 ms ones
# when the machine's other core was busy (faiss-cpu 1.15, 2 cores).
SEARCH_THREADS = 1

# Below this size the main part is scanned exhaustively, which is exact and
# took 0.6-0.7 ms per query at 2**18 codes on a 2-core machine.
HASHED_MIN_COUNT = 1 << 18

# A search merges the tail into the main part first when the tail contains
# more codes than this, because the tail is scanned exhaustively on every query.
TAIL_MAX_COUNT = 1 << 18

# Distance reported in result slots that hold no neighbour (their id is -1).
# It is larger than any real distance, so a filter such as
# ``distances <= 31`` never accepts a padding slot.
PAD_DISTANCE = np.iinfo(np.int32).max
PAD_ID = -1

INDEX_FILE_NAME = "binary_index.npz"
FORMAT_VERSION = 1

_SUBSTRING_BITS = 16
_SUBSTRING_VALUES = 1 << _SUBSTRING_BITS
# XOR masks that turn a substring into itself and its 16 one-bit neighbours.
_PROBE_MASKS = np.array(
    [0] + [1 << bit for bit in range(_SUBSTRING_BITS)], dtype=np.uint16
)
# Rows are stored as uint32 in the hashing and account tables.
_MAX_ROWS = np.iinfo(np.uint32).max


class DescriptorArrayError(ValueError):
    """A code, id or account id array has the wrong dtype, layout or values."""


class IndexFileError(RuntimeError):
    """The saved index is missing or unreadable, so it must be rebuilt."""


# Validation


def validate_codes(codes: object, bits: int) -> np.ndarray:
    """Check that ``codes`` are packed ``bits``-bit codes and return them.

    The expected form is a 2-D uint8 array of shape ``(n, bits // 8)``, one
    packed code per row as ``numpy.packbits`` makes it. An array of that
    form that is not C-contiguous is copied into a C-contiguous one, which
    changes no value. Every other form raises DescriptorArrayError,
    including int8 arrays of packed bytes and single 1-D codes, because
    guessing what they mean could index garbage.
    """
    width = _code_size(bits)
    expected = f"a 2-D uint8 array of shape (n, {width}) of packed {bits}-bit codes"
    if not isinstance(codes, np.ndarray):
        raise DescriptorArrayError(
            f"codes must be a numpy array, got {type(codes).__name__}; "
            f"expected {expected}"
        )
    _check_code_dtype(codes, expected)
    if codes.ndim != 2:
        raise DescriptorArrayError(
            f"codes have shape {codes.shape}, expected {expected}; "
            "wrap a single code with codes.reshape(1, -1)"
        )
    if codes.shape[1] != width:
        raise DescriptorArrayError(_width_message(codes, bits, expected))
    if not codes.flags.c_contiguous:
        codes = np.ascontiguousarray(codes)
    return codes


def _code_size(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"bits must be an int, got {bits!r}")
    if bits <= 0 or bits % 8 != 0:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
    return bits // 8


def _check_code_dtype(codes: np.ndarray, expected: str) -> None:
    if codes.dtype == np.uint8:
        return
    hint = ""
    if codes.dtype == np.int8:
        hint = "; if these are packed bytes, convert them with codes.view(np.uint8)"
    elif codes.dtype.kind in "fb":
        hint = "; pack 0/1 bits with np.packbits(bits.astype(np.uint8), axis=1)"
    raise DescriptorArrayError(
        f"codes have dtype {codes.dtype}, expected {expected}{hint}"
    )


def _width_message(codes: np.ndarray, bits: int, expected: str) -> str:
    columns = codes.shape[1]
    message = f"codes have {columns} bytes per row, expected {expected}"
    if codes.size and int(codes.max()) <= 1:
        # Only 0 and 1 values: most likely one bit per byte.
        if columns == bits:
            return message + "; pack the bits with np.packbits(codes, axis=1)"
        return message + f"; they look like unpacked {columns}-bit codes"
    return message


def validate_ids(ids: object, count: int | None, name: str = "ids") -> np.ndarray:
    """Check image ids for ``count`` rows (any number if None), return int64.

    Ids must be a 1-D integer array of distinct values >= 0. -1 is the id
    of empty result slots. Integer dtypes whose values all fit in int64
    are converted. Other dtypes, such as uint64 or floats, raise.
    """
    ids = _validate_integers(ids, count, name)
    if ids.size and int(ids.min()) < 0:
        negative = ids[ids < 0][:5].tolist()
        raise DescriptorArrayError(
            f"{name} contain negative values {negative}; image ids must be >= 0 "
            f"and {PAD_ID} is reserved for empty result slots"
        )
    unique, counts = np.unique(ids, return_counts=True)
    if unique.size != ids.size:
        repeated = unique[counts > 1][:5].tolist()
        raise DescriptorArrayError(
            f"{name} contain duplicated values {repeated}; each image id "
            "must appear once"
        )
    return ids


def _validate_integers(values: object, count: int | None, name: str) -> np.ndarray:
    """Check a 1-D integer array, of ``count`` values unless it is None."""
    length = "any length" if count is None else f"length {count}"
    expected = f"a 1-D int64 array of {length}"
    if not isinstance(values, np.ndarray):
        raise DescriptorArrayError(
            f"{name} must be a numpy array, got {type(values).__name__}; "
            f"expected {expected}"
        )
    if values.dtype.kind not in "iu" or not np.can_cast(values.dtype, np.int64):
        raise DescriptorArrayError(
            f"{name} have dtype {values.dtype}, expected {expected}"
        )
    if values.ndim != 1 or (count is not None and values.size != count):
        raise DescriptorArrayError(
            f"{name} have shape {values.shape}, expected {expected}"
        )
    return np.ascontiguousarray(values, dtype=np.int64)


def _account_array(account_ids: Collection[int] | np.ndarray) -> np.ndarray:
    if isinstance(account_ids, np.ndarray):
        values = account_ids.ravel()
    else:
        values = np.array(list(account_ids))
    if values.size == 0:
        return np.empty(0, dtype=np.int64)
    if values.dtype.kind not in "iu" or not np.can_cast(values.dtype, np.int64):
        raise DescriptorArrayError(
            f"account ids have dtype {values.dtype}, expected integers"
        )
    return np.unique(values.astype(np.int64))


# Storage parts


@dataclass(frozen=True)
class _Rows:
    """Codes with their image ids and account ids, row by row."""

    codes: np.ndarray
    ids: np.ndarray
    account_ids: np.ndarray

    @classmethod
    def empty(cls, code_size: int) -> "_Rows":
        return cls(
            np.empty((0, code_size), dtype=np.uint8),
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.int64),
        )

    @classmethod
    def concatenate(cls, parts: list["_Rows"]) -> "_Rows":
        return cls(
            np.concatenate([part.codes for part in parts]),
            np.concatenate([part.ids for part in parts]),
            np.concatenate([part.account_ids for part in parts]),
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.ids.nbytes + self.account_ids.nbytes


class _SubstringTables:
    """Multi-index hashing tables over the 16-bit substrings of codes."""

    def __init__(self, codes: np.ndarray):
        count, code_size = codes.shape
        table_count = code_size * 8 // _SUBSTRING_BITS
        substrings = codes.view(np.uint16)
        self.table_count = table_count
        self.rows = np.empty((table_count, count), dtype=np.uint32)
        self.offsets = np.zeros((table_count, _SUBSTRING_VALUES + 1), np.int64)
        for table in range(table_count):
            column = np.ascontiguousarray(substrings[:, table])
            # A stable sort of 16-bit keys is a radix sort in numpy.
            self.rows[table] = np.argsort(column, kind="stable")
            counts = np.bincount(column, minlength=_SUBSTRING_VALUES)
            np.cumsum(counts, out=self.offsets[table, 1:])
        # Offsets become positions in the flattened table of all rows.
        self.offsets += np.arange(table_count, dtype=np.int64)[:, None] * count
        self._flat_rows = self.rows.reshape(-1)
        self._table_numbers = np.arange(table_count)[:, None]

    @property
    def guaranteed_radius(self) -> int:
        return 2 * self.table_count - 1

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.offsets.nbytes

    def candidates(self, code: np.ndarray) -> np.ndarray:
        """Return the rows whose substrings are within one bit of ``code``'s.

        A row appears once per table that lists it, so at most
        ``table_count`` times.
        """
        probes = code.view(np.uint16)[:, None] ^ _PROBE_MASKS
        probes = probes.astype(np.intp)
        starts = self.offsets[self._table_numbers, probes].ravel()
        ends = self.offsets[self._table_numbers, probes + 1].ravel()
        lengths = ends - starts
        # Turn the bucket ranges into one array of flat positions without
        # a Python loop: each range's first element gets its start.
        range_firsts = np.cumsum(lengths) - lengths
        positions = np.repeat(starts - range_firsts, lengths)
        positions += np.arange(positions.size)
        return np.take(self._flat_rows, positions)


class _AccountTable:
    """Rows grouped by account id, for searches limited to accounts."""

    def __init__(self, account_ids: np.ndarray):
        self.rows = np.argsort(account_ids, kind="stable").astype(np.uint32)
        sorted_accounts = account_ids[self.rows]
        self.accounts, self.starts = np.unique(sorted_accounts, return_index=True)
        self.ends = np.append(self.starts[1:], len(account_ids))

    @property
    def nbytes(self) -> int:
        return (
            self.rows.nbytes
            + self.accounts.nbytes
            + self.starts.nbytes
            + self.ends.nbytes
        )

    def rows_for(self, account_ids: np.ndarray) -> np.ndarray:
        """Return the rows of these accounts in increasing order."""
        slots = np.searchsorted(self.accounts, account_ids)
        slots = slots[slots < len(self.accounts)]
        slots = slots[np.isin(self.accounts[slots], account_ids)]
        if slots.size == 0:
            return np.empty(0, dtype=np.intp)
        parts = [self.rows[self.starts[s] : self.ends[s]] for s in slots]
        return np.sort(np.concatenate(parts)).astype(np.intp)


@dataclass
class _Candidates:
    """Neighbour candidates of one query as (distance, row) pairs.

    Rows number the main part first and the tail after it, so a smaller
    row is a code added earlier. A row may occur up to ``max_copies``
    times, always with the same distance.
    """

    distances: list[np.ndarray] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    max_copies: int = 1

    def add(self, distances: np.ndarray, rows: np.ndarray) -> None:
        self.distances.append(distances)
        self.rows.append(rows)

    def best(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``k`` nearest distinct rows, nearest first.

        Among equal distances the earlier row comes first and is kept.
        """
        if not self.rows:
            return np.empty(0, np.int32), np.empty(0, np.int64)
        distances = np.concatenate(self.distances)
        rows = np.concatenate(self.rows)
        return _best_rows(distances, rows, k, self.max_copies)


def _best_rows(
    distances: np.ndarray, rows: np.ndarray, k: int, max_copies: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the k smallest (distance, row) pairs with distinct rows."""
    keys = (distances.astype(np.int64) << 32) | rows.astype(np.int64)
    # A row occurs at most max_copies times, so the `limit` smallest keys
    # hold at least k distinct rows, and with them the k best ones.
    limit = min(keys.size, k * max_copies)
    if limit < keys.size:
        keys = keys[np.argpartition(keys, limit - 1)[:limit]]
    keys = np.unique(keys)[:k]
    return (keys >> 32).astype(np.int32), keys & 0xFFFFFFFF


def _hamming_distances(code: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Return the Hamming distance from one code to each row of ``codes``."""
    distances = np.empty(len(codes), dtype=np.int32)
    if len(codes):
        faiss.hammings(
            faiss.swig_ptr(code),
            faiss.swig_ptr(codes),
            1,
            len(codes),
            codes.shape[1],
            faiss.swig_ptr(distances),
        )
    return distances


def _scan(
    queries: np.ndarray, codes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return each query's k nearest rows of ``codes`` by exhaustive search.

    Rows are -1 where ``codes`` has fewer than k rows.
    """
    if len(codes) == 0:
        shape = (len(queries), k)
        return np.full(shape, PAD_DISTANCE, np.int32), np.full(shape, -1, np.int64)
    return faiss.knn_hamming(queries, np.ascontiguousarray(codes), k)


# The index


class BinaryIndex:
    """In-memory index of packed binary codes keyed by image id.

    ``max_id`` is the highest image id added or marked skipped (0 while
    there is none), so the store's rows with larger ids are the ones still
    missing. ``skipped_count`` counts images deliberately left out (see
    ``mark_skipped``), and ``min_quality`` records the PDQ quality below
    which ``build_from_store`` left images out.
    """

    def __init__(self, bits: int = PDQ_BITS):
        self.code_size = _code_size(bits)
        self.bits = bits
        self.max_id = 0
        self.skipped_count = 0
        self.min_quality = 0
        self._main = _Rows.empty(self.code_size)
        self._main_accounts = _AccountTable(self._main.account_ids)
        self._tables: _SubstringTables | None = None
        # Whether the main part's ids increase row by row, so that
        # np.searchsorted finds them without a sorted copy.
        self._main_ids_increasing = True
        self._main_id_order: np.ndarray | None = None
        self._pending: list[_Rows] = []
        self._tail_cache: _Rows | None = None

    def __len__(self) -> int:
        return len(self._main) + sum(len(part) for part in self._pending)

    @property
    def guaranteed_radius(self) -> int:
        """Hamming distance within which whole-index search misses no code.

        Equal to ``bits`` (every neighbour is exact) until the main part is
        large enough to be hashed, then 31 for 256-bit codes.
        """
        if self._tables is None:
            return self.bits
        return self._tables.guaranteed_radius

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays, the tail included."""
        total = self._main.nbytes + self._main_accounts.nbytes
        total += sum(part.nbytes for part in self._pending)
        if self._tables is not None:
            total += self._tables.nbytes
        if self._main_id_order is not None:
            total += self._main_id_order.nbytes
        return total

    # Adding

    def add(self, ids: object, codes: object, account_ids: object) -> None:
        """Add one code per image id, with the account that posted it.

        Raises DescriptorArrayError, and adds nothing, when an array has
        the wrong form, an id is negative or repeated, or an id is already
        in the index.
        """
        codes = validate_codes(codes, self.bits)
        ids = validate_ids(ids, len(codes))
        account_ids = _validate_integers(account_ids, len(codes), "account ids")
        if ids.size == 0:
            return
        if int(ids.min()) <= self.max_id:
            self._reject_present(ids)
        # Copies keep later changes to the caller's arrays out of the index.
        self._pending.append(_Rows(codes.copy(), ids.copy(), account_ids.copy()))
        self._tail_cache = None
        self.max_id = max(self.max_id, int(ids.max()))

    def mark_skipped(self, ids: object) -> None:
        """Count images deliberately left out of the index.

        Their ids raise ``max_id`` and their count ``skipped_count``, so a
        catch-up from the store does not read them again and
        ``index_in_step`` still compares equal counts.
        """
        ids = validate_ids(ids, None)
        if ids.size == 0:
            return
        self.skipped_count += int(ids.size)
        self.max_id = max(self.max_id, int(ids.max()))

    def _reject_present(self, ids: np.ndarray) -> None:
        main_rows, tail_rows = self._find_rows(ids)
        present = ids[(main_rows >= 0) | (tail_rows >= 0)]
        if present.size:
            raise DescriptorArrayError(
                f"ids {present[:5].tolist()} are already in the index; "
                "each image id can be added once"
            )

    # Merging

    def compact(self) -> None:
        """Merge the tail into the main part and rebuild its tables.

        Took about 15 s for 10 million codes on a 2-core machine
        (benchmarks/search_scale.py), mostly sorting 16 hashing tables,
        so the searcher should call it between requests. A search merges
        on its own once the tail passes ``TAIL_MAX_COUNT`` codes.
        """
        if not self._pending:
            return
        started = time.perf_counter()
        rows = _Rows.concatenate([self._main, *self._pending])
        if len(rows) > _MAX_ROWS:
            raise DescriptorArrayError(
                f"the index cannot hold {len(rows)} codes, the maximum is {_MAX_ROWS}"
            )
        # Free the old tables before the new ones take their memory.
        self._tables = None
        self._main_accounts = None
        self._main = rows
        self._pending = []
        self._tail_cache = None
        self._index_main()
        logger.info(
            "merged index tail: %d codes, hashed=%s, %.2f s",
            len(rows),
            self._tables is not None,
            time.perf_counter() - started,
        )

    def _index_main(self) -> None:
        ids = self._main.ids
        self._main_ids_increasing = bool(np.all(ids[1:] > ids[:-1]))
        self._main_id_order = None
        if not self._main_ids_increasing:
            self._main_id_order = np.argsort(ids).astype(np.uint32)
        self._main_accounts = _AccountTable(self._main.account_ids)
        hashable = self.bits % _SUBSTRING_BITS == 0
        if hashable and len(self._main) >= HASHED_MIN_COUNT:
            self._tables = _SubstringTables(self._main.codes)

    def _tail(self) -> _Rows:
        if self._tail_cache is None:
            if not self._pending:
                self._tail_cache = _Rows.empty(self.code_size)
            elif len(self._pending) == 1:
                self._tail_cache = self._pending[0]
            else:
                self._tail_cache = _Rows.concatenate(self._pending)
                self._pending = [self._tail_cache]
        return self._tail_cache

    # Lookups

    def ids_for_accounts(self, account_ids: Collection[int]) -> np.ndarray:
        """Return the ids of every image of these accounts, sorted."""
        accounts = _account_array(account_ids)
        main_rows = self._main_accounts.rows_for(accounts)
        tail = self._tail()
        tail_rows = np.flatnonzero(np.isin(tail.account_ids, accounts))
        ids = np.concatenate([self._main.ids[main_rows], tail.ids[tail_rows]])
        return np.sort(ids)

    def codes_for_ids(self, ids: object) -> np.ndarray:
        """Return the codes of these image ids, one row per id.

        Raises KeyError naming the ids that are not in the index.
        """
        ids = _validate_integers(ids, None, "ids")
        main_rows, tail_rows = self._find_rows(ids)
        missing = ids[(main_rows < 0) & (tail_rows < 0)]
        if missing.size:
            raise KeyError(
                f"{missing.size} ids are not in the index, "
                f"such as {missing[:5].tolist()}"
            )
        codes = np.empty((ids.size, self.code_size), dtype=np.uint8)
        in_main = main_rows >= 0
        codes[in_main] = self._main.codes[main_rows[in_main]]
        codes[~in_main] = self._tail().codes[tail_rows[~in_main]]
        return codes

    def _find_rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return each id's row in the main part and in the tail, or -1."""
        return (
            self._find_in_main(ids),
            _find_unsorted(self._tail().ids, ids),
        )

    def _find_in_main(self, ids: np.ndarray) -> np.ndarray:
        main_ids = self._main.ids
        rows = np.full(ids.size, -1, dtype=np.int64)
        if main_ids.size == 0:
            return rows
        if self._main_ids_increasing:
            slots = np.searchsorted(main_ids, ids)
            order = None
        else:
            order = self._main_id_order
            slots = np.searchsorted(main_ids[order], ids)
        slots = np.minimum(slots, main_ids.size - 1)
        found_rows = slots if order is None else order[slots].astype(np.int64)
        hit = main_ids[found_rows] == ids
        rows[hit] = found_rows[hit]
        return rows

    # Searching

    def search(
        self,
        codes: object,
        k: int,
        account_ids: Collection[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the k nearest neighbours of each query code.

        Returns (distances, ids), int32 and int64 arrays of shape (m, k),
        nearest first. Slots without a neighbour contain ``PAD_DISTANCE`` and
        id -1. With ``account_ids`` the search covers only those accounts'
        images and is exact. Without it, every neighbour within
        ``guaranteed_radius`` bits is found, and farther ones only when
        they share a probed hashing bucket with the query.

        FAISS runs on ``SEARCH_THREADS`` threads, set on every call.
        """
        queries = validate_codes(codes, self.bits)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        k = int(k)
        faiss.omp_set_num_threads(SEARCH_THREADS)
        if len(self._tail()) > TAIL_MAX_COUNT:
            self.compact()
        if account_ids is None:
            candidates = self._whole_index_candidates(queries, k)
        else:
            candidates = self._account_candidates(queries, k, account_ids)
        distances, rows = _result_arrays(candidates, k)
        ids = np.full(rows.shape, PAD_ID, dtype=np.int64)
        found = rows >= 0
        ids[found] = self._ids_of_rows(rows[found])
        return distances, ids

    def _whole_index_candidates(
        self, queries: np.ndarray, k: int
    ) -> list[_Candidates]:
        if self._tables is None:
            per_query = [_Candidates() for _ in queries]
            _add_scan(per_query, queries, self._main, k, first_row=0)
        else:
            per_query = [self._hashed_candidates(query, k) for query in queries]
        _add_scan(per_query, queries, self._tail(), k, first_row=len(self._main))
        return per_query

    def _hashed_candidates(self, query: np.ndarray, k: int) -> _Candidates:
        tables = self._tables
        rows = tables.candidates(query)
        codes = np.take(self._main.codes, rows, axis=0)
        distances = _hamming_distances(query, codes)
        distances, rows = _best_rows(distances, rows, k, tables.table_count)
        return _Candidates([distances], [rows], max_copies=1)

    def _account_candidates(
        self, queries: np.ndarray, k: int, account_ids: Collection[int]
    ) -> list[_Candidates]:
        accounts = _account_array(account_ids)
        per_query = [_Candidates() for _ in queries]
        main_rows = self._main_accounts.rows_for(accounts)
        _add_scan(per_query, queries, self._main, k, 0, main_rows)
        tail = self._tail()
        tail_rows = np.flatnonzero(np.isin(tail.account_ids, accounts))
        _add_scan(per_query, queries, tail, k, len(self._main), tail_rows)
        return per_query

    def _ids_of_rows(self, rows: np.ndarray) -> np.ndarray:
        main_count = len(self._main)
        in_main = rows < main_count
        ids = np.empty(rows.size, dtype=np.int64)
        ids[in_main] = self._main.ids[rows[in_main]]
        ids[~in_main] = self._tail().ids[rows[~in_main] - main_count]
        return ids

    # Persistence

    def save(self, folder: Path) -> None:
        """Write the index to ``folder``, replacing any earlier copy atomically.

        Merges the tail first. The file contains codes, ids, account ids and
        counters, and is written to a temporary name, flushed to disk and
        then renamed, so a crash leaves either the old or the new file.
        """
        self.compact()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / INDEX_FILE_NAME
        temporary = folder / f".{INDEX_FILE_NAME}.{os.getpid()}.tmp"
        try:
            with open(temporary, "wb") as file:
                np.savez(file, meta=self._meta_array(), **self._data_arrays())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(folder)
        logger.info("saved index of %d codes to %s", len(self), path)

    def _data_arrays(self) -> dict[str, np.ndarray]:
        return {
            "codes": self._main.codes,
            "ids": self._main.ids,
            "account_ids": self._main.account_ids,
        }

    def _meta_array(self) -> np.ndarray:
        meta = {
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "count": len(self),
            "max_id": self.max_id,
            "skipped_count": self.skipped_count,
            "min_quality": self.min_quality,
        }
        return np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)

    @classmethod
    def load(cls, folder: Path) -> "BinaryIndex":
        """Read an index written by ``save`` and rebuild its tables.

        Raises IndexFileError when the file is missing, truncated, fails
        its zip CRC-32 checks or contains inconsistent arrays.
        """
        path = Path(folder) / INDEX_FILE_NAME
        started = time.perf_counter()
        meta, arrays = _read_index_file(path)
        index = _index_from_file(path, meta, arrays)
        logger.info(
            "loaded index of %d codes from %s in %.2f s",
            len(index),
            path,
            time.perf_counter() - started,
        )
        return index



def _find_unsorted(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Return each needle's position in ``haystack``, or -1."""
    rows = np.full(needles.size, -1, dtype=np.int64)
    if haystack.size == 0:
        return rows
    order = np.argsort(haystack)
    slots = np.minimum(np.searchsorted(haystack[order], needles), haystack.size - 1)
    hit = haystack[order[slots]] == needles
    rows[hit] = order[slots[hit]]
    return rows


def _add_scan(
    per_query: list[_Candidates],
    queries: np.ndarray,
    part: _Rows,
    k: int,
    first_row: int,
    subset: np.ndarray | None = None,
) -> None:
    """Scan a part, or only its ``subset`` rows, for each query.

    ``first_row`` is the row number of the part's first code.
    """
    codes = part.codes
    if subset is not None:
        codes = np.take(codes, subset, axis=0)
    if len(codes) == 0:
        return
    distances, found = _scan(queries, codes, k)
    for query, result in enumerate(per_query):
        valid = found[query] >= 0
        rows = found[query][valid]
        if subset is not None:
            rows = subset[rows]
        result.add(distances[query][valid], rows + first_row)


def _result_arrays(
    per_query: list[_Candidates], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (distances, rows) of shape (m, k), padded with PAD_DISTANCE, -1."""
    distances = np.full((len(per_query), k), PAD_DISTANCE, dtype=np.int32)
    rows = np.full((len(per_query), k), -1, dtype=np.int64)
    for query, candidates in enumerate(per_query):
        best_distances, best_rows = candidates.best(k)
        distances[query, : best_rows.size] = best_distances
        rows[query, : best_rows.size] = best_rows
    return distances, rows


def _fsync_directory(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_index_file(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
            arrays = {name: archive[name] for name in ("codes", "ids", "account_ids")}
    except FileNotFoundError as error:
        raise IndexFileError(
            f"index file {path} not found; rebuild the index from the store"
        ) from error
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise IndexFileError(
            f"index file {path} is corrupt ({error}); rebuild the index from the store"
        ) from error
    if not isinstance(meta, dict):
        raise IndexFileError(f"index file {path} has invalid metadata {meta!r}")
    return meta, arrays


def _index_from_file(
    path: Path, meta: dict, arrays: dict[str, np.ndarray]
) -> BinaryIndex:
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexFileError(
            f"index file {path} has format version {meta.get('format_version')!r}, "
            f"this program reads version {FORMAT_VERSION}; rebuild the index"
        )
    try:
        index = BinaryIndex(int(meta["bits"]))
        index.add(arrays["ids"], arrays["codes"], arrays["account_ids"])
        index.max_id = max(index.max_id, int(meta["max_id"]))
        index.skipped_count = int(meta["skipped_count"])
        index.min_quality = int(meta["min_quality"])
        count = int(meta["count"])
    except (KeyError, TypeError, ValueError) as error:
        raise IndexFileError(f"index file {path} is inconsistent: {error}") from error
    if count != len(index):
        raise IndexFileError(
            f"index file {path} records {count} codes but contains {len(index)}"
        )
    index.compact()
    return index


# Building from the store


def build_from_store(
    store,
    index: BinaryIndex | None = None,
    min_quality: int = 0,
    compact: bool = True,
) -> BinaryIndex:
    """Add every stored image with an id above ``index.max_id``, then merge.

    With no index, builds a new 256-bit one from the whole store. Images
    whose PDQ quality is below ``min_quality`` are left out: they are
    counted with ``mark_skipped`` and never searched. A stored PDQ that is
    not 32 bytes long is logged and skipped the same way. An existing index
    built with another ``min_quality`` raises ValueError, because mixing
    thresholds would leave it neither rebuilt nor consistent. With
    ``compact`` false the new codes stay in the scanned tail, so catching
    up before each search costs no table rebuild.
    """
    if index is None:
        index = BinaryIndex(PDQ_BITS)
        index.min_quality = min_quality
    elif index.min_quality != min_quality:
        raise ValueError(
            f"the index was built with min_quality={index.min_quality}, not "
            f"{min_quality}; build a new index with index=None"
        )
    started = time.perf_counter()
    added = skipped = 0
    for batch in store.iter_descriptors(index.max_id):
        batch_added, batch_skipped = _add_store_batch(index, batch, min_quality)
        added += batch_added
        skipped += batch_skipped
    if compact:
        index.compact()
    log_level = logging.INFO if added or skipped else logging.DEBUG
    logger.log(
        log_level,
        "index caught up with the store: %d added, %d skipped, %d in index, "
        "max id %d, %.2f s",
        added,
        skipped,
        len(index),
        index.max_id,
        time.perf_counter() - started,
    )
    return index


def _add_store_batch(
    index: BinaryIndex, batch: list[tuple[int, int, bytes, int]], min_quality: int
) -> tuple[int, int]:
    """Add one batch of (image id, account id, pdq, quality) rows."""
    keep = []
    skipped_ids = []
    for row in batch:
        image_id, _, pdq, quality = row
        if len(pdq) != index.code_size:
            logger.warning(
                "image %d has a %d-byte PDQ code, expected %d; left out of the index",
                image_id,
                len(pdq),
                index.code_size,
            )
            skipped_ids.append(image_id)
        elif quality < min_quality:
            skipped_ids.append(image_id)
        else:
            keep.append(row)
    if keep:
        ids = np.array([row[0] for row in keep], dtype=np.int64)
        account_ids = np.array([row[1] for row in keep], dtype=np.int64)
        codes = np.frombuffer(b"".join(row[2] for row in keep), dtype=np.uint8)
        index.add(ids, codes.reshape(len(keep), index.code_size), account_ids)
    index.mark_skipped(np.array(skipped_ids, dtype=np.int64))
    return len(keep), len(skipped_ids)


def index_in_step(index: BinaryIndex, store) -> bool:
    """Return whether the index reflects every image in the store.

    True when the store's image count equals the index's codes plus its
    skipped images, and both agree on the highest image id.
    """
    counted = len(index) + index.skipped_count
    return counted == store.image_count() and index.max_id == store.max_image_id()

import json

import faiss
import numpy as np
import pytest

from index import vector_index
from index.store import ImageRecord, Store
from index.vector_index import (
    INDEX_FILE_NAME,
    PAD_DISTANCE,
    BinaryIndex,
    DescriptorArrayError,
    IndexFileError,
    build_from_store,
    index_in_step,
    validate_codes,
)
from tests.conftest import CASES


def load_case(name: str) -> np.ndarray:
    return np.load(CASES / name)


@pytest.fixture
def case_codes() -> np.ndarray:
    return load_case("b14_hashes_packed_uint8_8x32.npy")


@pytest.fixture
def case_ids() -> np.ndarray:
    return load_case("b14_ids_int64.npy")


@pytest.fixture
def case_index(case_codes, case_ids) -> BinaryIndex:
    index = BinaryIndex()
    index.add(case_ids, case_codes, np.arange(8, dtype=np.int64) % 3)
    return index


def random_codes(count: int, seed: int = 0) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return generator.integers(0, 256, size=(count, 32), dtype=np.uint8)


def flip_bits(codes: np.ndarray, flips: np.ndarray, seed: int = 1) -> np.ndarray:
    """Return copies of codes with flips[i] distinct bits of row i inverted."""
    generator = np.random.default_rng(seed)
    bits = np.unpackbits(codes, axis=1)
    for row, flip_count in enumerate(flips):
        positions = generator.choice(bits.shape[1], int(flip_count), replace=False)
        bits[row, positions] ^= 1
    return np.packbits(bits, axis=1)


def make_record(tweet_id: int, account_id: int, pdq: bytes, quality: int = 90):
    return ImageRecord(
        tweet_id=tweet_id,
        position=1,
        image_count=1,
        account_id=account_id,
        location=f"/archive/{tweet_id}.jpg",
        width=100,
        height=100,
        phash=bytes(8),
        pdq=pdq,
        pdq_quality=quality,
    )


# Rejected arrays

BAD_CODE_CASES = [
    ("b14_hashes_float32_8x256.npy", "dtype float32"),
    ("b14_hashes_packed_int8_8x32.npy", "codes.view(np.uint8)"),
    ("b14_hashes_unpacked_bits_uint8_8x256.npy", "np.packbits(codes, axis=1)"),
    ("b14_hashes_bits_d60_8x60.npy", "60 bytes per row"),
    ("b14_single_hash_1d_32.npy", "reshape(1, -1)"),
]


@pytest.mark.parametrize("file_name, hint", BAD_CODE_CASES)
def test_add_rejects_bad_codes(file_name, hint, case_ids):
    codes = load_case(file_name)
    count = len(codes) if codes.ndim == 2 else 1
    index = BinaryIndex()

    with pytest.raises(DescriptorArrayError) as raised:
        index.add(case_ids[:count], codes, np.zeros(count, dtype=np.int64))

    assert hint in str(raised.value)
    assert "(n, 32)" in str(raised.value)
    assert len(index) == 0


@pytest.mark.parametrize("file_name, hint", BAD_CODE_CASES)
def test_search_rejects_bad_codes(file_name, hint, case_index):
    with pytest.raises(DescriptorArrayError) as raised:
        case_index.search(load_case(file_name), 3)

    assert hint in str(raised.value)


@pytest.mark.parametrize(
    "file_name, hint",
    [
        ("b14_ids_with_minus1.npy", "negative values [-1]"),
        ("b14_ids_duplicate.npy", "duplicated values [1]"),
    ],
)
def test_add_rejects_bad_ids(file_name, hint, case_codes):
    index = BinaryIndex()

    with pytest.raises(DescriptorArrayError) as raised:
        index.add(load_case(file_name), case_codes, np.zeros(8, dtype=np.int64))

    assert hint in str(raised.value)
    assert len(index) == 0
    assert index.max_id == 0


def test_add_rejects_present_ids(case_index, case_codes):
    with pytest.raises(DescriptorArrayError) as raised:
        case_index.add(np.array([42]), case_codes[:1], np.zeros(1, dtype=np.int64))

    assert "[42]" in str(raised.value)
    assert "already in the index" in str(raised.value)
    assert len(case_index) == 8


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.arange(8, dtype=np.float64), "dtype float64"),
        (np.arange(8, dtype=np.uint64), "dtype uint64"),
        (np.arange(7), "shape (7,)"),
        (list(range(8)), "numpy array"),
    ],
)
def test_add_rejects_bad_id_arrays(ids, message, case_codes):
    with pytest.raises(DescriptorArrayError) as raised:
        BinaryIndex().add(ids, case_codes, np.zeros(8, dtype=np.int64))

    assert message in str(raised.value)


def test_add_rejects_bad_account_ids(case_codes, case_ids):
    with pytest.raises(DescriptorArrayError) as raised:
        BinaryIndex().add(case_ids, case_codes, np.zeros(8, dtype=np.float32))

    assert "account ids have dtype float32" in str(raised.value)


def test_add_converts_narrow_ids(case_codes):
    index = BinaryIndex()

    index.add(np.arange(1, 9, dtype=np.int32), case_codes, np.zeros(8, np.uint32))

    assert index.max_id == 8
    assert index.ids_for_accounts([0]).dtype == np.int64


def test_noncontiguous_codes_are_copied(case_codes):
    codes = load_case("b14_hashes_packed_noncontiguous.npy")
    assert not codes.flags.c_contiguous

    validated = validate_codes(codes, 256)

    assert validated.flags.c_contiguous
    assert np.array_equal(validated, case_codes)


def test_noncontiguous_codes_same_neighbours(case_index, case_codes, case_ids):
    codes = load_case("b14_hashes_packed_noncontiguous.npy")
    index = BinaryIndex()
    index.add(case_ids, codes, np.arange(8, dtype=np.int64) % 3)

    distances, ids = index.search(codes, 3)
    expected_distances, expected_ids = case_index.search(case_codes, 3)

    assert np.array_equal(ids, expected_ids)
    assert np.array_equal(distances, expected_distances)


def test_validate_codes_rejects_bad_bits(case_codes):
    with pytest.raises(ValueError):
        validate_codes(case_codes, 12)


# Neighbours


def test_expected_neighbours(case_index, case_codes, case_ids):
    expected = json.loads((CASES / "b14_expected_neighbours.json").read_text())
    assert expected["d_bits"] == 256
    assert expected["query_row_i_is_stored_row_i"]

    distances, ids = case_index.search(case_codes, 3)

    assert distances.dtype == np.int32
    assert ids.dtype == np.int64
    neighbours = expected["top3_id_and_hamming_per_query_id"]
    for row, query_id in enumerate(case_ids.tolist()):
        found = [[int(i), int(d)] for i, d in zip(ids[row], distances[row])]
        assert found == neighbours[str(query_id)], f"query id {query_id}"


def test_search_pads_missing_slots(case_index, case_codes):
    distances, ids = case_index.search(case_codes[:2], 10)

    assert distances.shape == (2, 10)
    assert np.all(ids[:, 8:] == -1)
    assert np.all(distances[:, 8:] == PAD_DISTANCE)
    assert np.all(ids[:, :8] >= 0)


def test_search_empty_index(case_codes):
    distances, ids = BinaryIndex().search(case_codes[:1], 2)

    assert ids.tolist() == [[-1, -1]]
    assert distances.tolist() == [[PAD_DISTANCE, PAD_DISTANCE]]


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_search_rejects_bad_k(k, case_index, case_codes):
    with pytest.raises(ValueError):
        case_index.search(case_codes, k)


def test_search_accounts_only(case_index, case_codes, case_ids):
    accounts = np.arange(8) % 3
    allowed = set(case_ids[accounts == 1].tolist())

    distances, ids = case_index.search(case_codes, 8, account_ids=[1])

    found = ids[ids >= 0]
    assert set(found.tolist()) <= allowed
    assert np.all((ids >= 0).sum(axis=1) == len(allowed))
    assert np.all(np.diff(distances[:, : len(allowed)], axis=1) >= 0)


def test_search_accounts_matches_brute_force():
    codes = random_codes(3000)
    accounts = np.random.default_rng(2).integers(0, 20, size=3000)
    index = BinaryIndex()
    index.add(np.arange(1, 2001), codes[:2000], accounts[:2000])
    index.compact()
    index.add(np.arange(2001, 3001), codes[2000:], accounts[2000:])
    queries = random_codes(5, seed=9)

    distances, ids = index.search(queries, 10, account_ids={3, 7})

    rows = np.flatnonzero(np.isin(accounts, [3, 7]))
    expected_distances, positions = faiss.knn_hamming(queries, codes[rows], 10)
    assert np.array_equal(distances, expected_distances)
    assert np.array_equal(ids, rows[positions] + 1)


def test_search_unknown_account(case_index, case_codes):
    distances, ids = case_index.search(case_codes[:1], 3, account_ids=[99])

    assert ids.tolist() == [[-1, -1, -1]]


def test_ids_for_accounts(case_index, case_ids):
    accounts = np.arange(8) % 3

    found = case_index.ids_for_accounts([0, 2])

    assert found.tolist() == sorted(case_ids[accounts != 1].tolist())
    assert case_index.ids_for_accounts([]).size == 0


def test_codes_for_ids(case_index, case_codes, case_ids):
    codes = case_index.codes_for_ids(case_ids[[5, 0]])

    assert np.array_equal(codes, case_codes[[5, 0]])


def test_codes_for_unknown_id(case_index):
    with pytest.raises(KeyError) as raised:
        case_index.codes_for_ids(np.array([7, 8]))

    assert "[8]" in str(raised.value)


# Hashed main part and tail


@pytest.fixture
def hashed_index(monkeypatch):
    """Index of 6000 random codes whose main part is hashed."""
    monkeypatch.setattr(vector_index, "HASHED_MIN_COUNT", 4000)
    codes = random_codes(6000)
    accounts = np.arange(6000) % 7
    index = BinaryIndex()
    index.add(np.arange(1, 5001), codes[:5000], accounts[:5000])
    index.compact()
    index.add(np.arange(5001, 6001), codes[5000:], accounts[5000:])
    return index, codes


def test_hashed_finds_planted_duplicates(hashed_index):
    index, codes = hashed_index
    rows = np.arange(0, 6000, 25)
    queries = flip_bits(codes[rows], rows % 32)

    distances, ids = index.search(queries, 3)

    assert index.guaranteed_radius == 31
    assert np.array_equal(ids[:, 0], rows + 1)
    assert np.array_equal(distances[:, 0], rows % 32)


def test_hashed_agrees_with_flat(hashed_index):
    index, codes = hashed_index
    queries = flip_bits(codes[:200], np.full(200, 31), seed=4)
    flat = faiss.IndexBinaryFlat(256)
    flat.add(codes)

    distances, ids = index.search(queries, 1)
    expected_distances, expected_rows = flat.search(queries, 1)

    assert np.array_equal(distances, expected_distances)
    assert np.array_equal(ids, expected_rows + 1)


def test_tail_merged_when_large(monkeypatch, hashed_index):
    index, codes = hashed_index
    monkeypatch.setattr(vector_index, "TAIL_MAX_COUNT", 500)

    distances, ids = index.search(codes[5500:5501], 1)

    assert ids.tolist() == [[5501]]
    assert len(index._pending) == 0
    assert len(index) == 6000


def test_hashed_rejects_present_ids(hashed_index):
    index, codes = hashed_index

    for present_id in (17, 5500):
        with pytest.raises(DescriptorArrayError) as raised:
            index.add(np.array([present_id]), codes[:1], np.zeros(1, np.int64))
        assert f"[{present_id}]" in str(raised.value)

    assert len(index) == 6000


def test_add_keeps_own_copies(case_codes, case_ids):
    index = BinaryIndex()
    ids = case_ids.copy()
    codes = case_codes.copy()
    index.add(ids, codes, np.zeros(8, dtype=np.int64))

    ids[:] = 1000 + np.arange(8)
    codes[:] = 0

    assert np.array_equal(index.codes_for_ids(case_ids), case_codes)


def test_hashed_codes_for_ids(hashed_index):
    index, codes = hashed_index

    found = index.codes_for_ids(np.array([6000, 1, 4321]))

    assert np.array_equal(found, codes[[5999, 0, 4320]])


# Persistence


def test_save_load_round_trip(tmp_path, case_index, case_codes):
    case_index.mark_skipped(np.array([9000000000001]))
    case_index.min_quality = 50

    case_index.save(tmp_path)
    loaded = BinaryIndex.load(tmp_path)

    assert len(loaded) == 8
    assert loaded.max_id == 9000000000001
    assert loaded.skipped_count == 1
    assert loaded.min_quality == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE_NAME]
    for limit in (None, [1]):
        expected = case_index.search(case_codes, 4, account_ids=limit)
        found = loaded.search(case_codes, 4, account_ids=limit)
        assert np.array_equal(found[0], expected[0])
        assert np.array_equal(found[1], expected[1])


def test_save_replaces_old_file(tmp_path, case_index, case_codes):
    BinaryIndex().save(tmp_path)

    case_index.save(tmp_path)

    assert len(BinaryIndex.load(tmp_path)) == 8


def test_load_missing_file(tmp_path):
    with pytest.raises(IndexFileError) as raised:
        BinaryIndex.load(tmp_path)

    assert "not found" in str(raised.value)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "text"])
def test_load_corrupt_file(tmp_path, damage):
    index = BinaryIndex()
    index.add(np.arange(1, 1001), random_codes(1000), np.zeros(1000, np.int64))
    index.save(tmp_path)
    path = tmp_path / INDEX_FILE_NAME
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not an index")
    path.write_bytes(bytes(data))

    with pytest.raises(IndexFileError) as raised:
        BinaryIndex.load(tmp_path)

    assert "corrupt" in str(raised.value)


# Building from the store


def test_build_from_store_catches_up(tmp_path):
    store = Store(tmp_path / "art2tweet.sqlite3")
    codes = random_codes(30)
    image_ids = []
    for row in range(20):
        record = make_record(100 + row, row % 2, codes[row].tobytes())
        image_id, _ = store.add_image(record)
        image_ids.append(image_id)

    index = build_from_store(store)

    assert len(index) == 20
    assert index_in_step(index, store)
    for row in range(20, 30):
        store.add_image(make_record(100 + row, 5, codes[row].tobytes()))
    assert not index_in_step(index, store)

    caught_up = build_from_store(store, index)

    assert caught_up is index
    assert len(index) == 30
    assert index_in_step(index, store)
    assert index.max_id == store.max_image_id()
    assert np.array_equal(index.codes_for_ids(np.array(image_ids)), codes[:20])
    _, ids = index.search(codes[25:26], 1, account_ids=[5])
    assert ids[0, 0] == store.max_image_id() - 4
    store.close()


def test_build_from_store_skips_low_quality(tmp_path):
    store = Store(tmp_path / "art2tweet.sqlite3")
    codes = random_codes(6)
    for row in range(6):
        quality = 10 if row % 3 == 0 else 90
        store.add_image(make_record(200 + row, 1, codes[row].tobytes(), quality))

    index = build_from_store(store, min_quality=50)

    assert len(index) == 4
    assert index.skipped_count == 2
    assert index_in_step(index, store)
    _, ids = index.search(codes[:1], 1)
    assert ids[0, 0] != 1
    with pytest.raises(ValueError):
        build_from_store(store, index, min_quality=60)
    store.close()


def test_build_from_store_skips_bad_pdq(tmp_path, caplog):
    store = Store(tmp_path / "art2tweet.sqlite3")
    store.add_image(make_record(300, 1, bytes(31)))
    store.add_image(make_record(301, 1, bytes(32)))

    index = build_from_store(store)

    assert len(index) == 1
    assert index_in_step(index, store)
    assert "31-byte PDQ code" in caplog.text
    store.close()


def test_loaded_index_catches_up(tmp_path):
    store = Store(tmp_path / "art2tweet.sqlite3")
    codes = random_codes(4)
    store.add_image(make_record(400, 1, codes[0].tobytes()))
    build_from_store(store).save(tmp_path / "index")
    for row in range(1, 4):
        store.add_image(make_record(400 + row, 1, codes[row].tobytes()))

    index = build_from_store(store, BinaryIndex.load(tmp_path / "index"))

    assert len(index) == 4
    assert index_in_step(index, store)
    store.close()

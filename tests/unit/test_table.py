"""Unit tests for :mod:`psfm.ps.table` (``KeyTable``)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

from psfm.errors import CheckpointError, ConfigError, DataError
from psfm.ps.table import KeyTable

U64_MAX = int(np.iinfo(np.uint64).max)


def _random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, U64_MAX, size=n, dtype=np.uint64, endpoint=True)


def _u64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def _distinct(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct keys (sort based; numpy's hash-based ``np.unique`` is slow here)."""
    ordered = np.sort(keys)
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]


def _contains(sorted_set: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Membership of ``keys`` in the sorted distinct array ``sorted_set``."""
    if sorted_set.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, keys), sorted_set.size - 1)
    return sorted_set[at] == keys


def _roundtrip_npz(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def test_structured_keys_spread_over_the_index() -> None:
    # Runs first: a hash of the low bits would pile these keys up (and fail fast here).
    for shift in (0, 2, 8, 20, 32, 40, 48):
        keys = np.arange(1, 8_001, dtype=np.uint64) << np.uint64(shift)
        table = KeyTable(capacity=8_000)
        table.insert(keys)
        dist = table._displacements()
        assert dist.mean() < 4.0, shift
        assert dist.max() < 64, shift
        np.testing.assert_array_equal(table.lookup(keys), np.arange(keys.size))


def test_two_million_keys_found_at_their_slots() -> None:
    rng = np.random.default_rng(11)
    parts = [
        _u64([0, U64_MAX]),
        _random_keys(rng, 2_000_000),
        np.arange(1, 200_001, dtype=np.uint64) * np.uint64(4),  # share the low 2 bits
        np.arange(1, 50_001, dtype=np.uint64) << np.uint64(32),  # share the low 32 bits
        (_random_keys(rng, 50_000) << np.uint64(16)) | np.uint64(0xBEEF),  # low 16 bits
    ]
    distinct = _distinct(np.concatenate(parts))
    keys = rng.permutation(distinct)
    assert keys.size > 2_200_000
    table = KeyTable()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # uint64 wraparound of the hash must stay silent
        for start in range(0, keys.size, 300_000):
            batch = keys[start : start + 300_000]
            got = table.insert(batch)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, np.arange(start, start + batch.size))
        assert len(table) == keys.size
        np.testing.assert_array_equal(table.keys, keys)
        slots = table.lookup(keys)
    assert slots.dtype == np.int64
    np.testing.assert_array_equal(slots, np.arange(keys.size))
    extremes = table.lookup(_u64([0, U64_MAX]))
    np.testing.assert_array_equal(keys[extremes], _u64([0, U64_MAX]))

    candidates = np.concatenate(
        [_random_keys(rng, 300_000), np.arange(200_001, 300_001, dtype=np.uint64) * 4]
    )
    absent = candidates[~_contains(distinct, candidates)]
    assert absent.size > 390_000
    assert (table.lookup(absent) == -1).all()
    # Home positions spread even for keys sharing low bits: short probe sequences.
    dist = table._displacements()
    assert dist.mean() < 1.0
    assert dist.max() < 100
    assert table.index_capacity >= 2 * len(table)


def test_duplicates_and_first_occurrence_order() -> None:
    table = KeyTable(capacity=4)
    got = table.insert(_u64([5, 3, 5, 7, 3, 5]))
    np.testing.assert_array_equal(got, [0, 1, 0, 2, 1, 0])
    np.testing.assert_array_equal(table.keys, _u64([5, 3, 7]))
    assert len(table) == 3

    # Re-inserting existing keys returns their slots and creates nothing.
    np.testing.assert_array_equal(table.insert(_u64([7, 5, 3, 7])), [2, 0, 1, 2])
    assert len(table) == 3

    # Mixed existing and new keys: new ones numbered by first occurrence.
    got = table.insert(_u64([3, 9, 7, 11, 9, U64_MAX, 11, 0]))
    np.testing.assert_array_equal(got, [1, 3, 2, 4, 3, 5, 4, 6])
    np.testing.assert_array_equal(table.keys, _u64([5, 3, 7, 9, 11, U64_MAX, 0]))


def test_duplicate_heavy_batches_match_np_unique_order() -> None:
    rng = np.random.default_rng(3)
    table = KeyTable(capacity=16)
    known: list[int] = []
    for _ in range(30):
        pool = _random_keys(rng, 2_000)
        batch = pool[rng.integers(0, pool.size, size=20_000)]
        if known:
            batch[::7] = np.asarray(known, dtype=np.uint64)[rng.integers(0, len(known), 2_858)]
        got = table.insert(batch)
        fresh_mask = ~np.isin(batch, np.asarray(known, dtype=np.uint64))
        _, first = np.unique(batch[fresh_mask], return_index=True)
        expected_new = batch[fresh_mask][np.sort(first)]
        known.extend(int(k) for k in expected_new)
        np.testing.assert_array_equal(table.keys, np.asarray(known, dtype=np.uint64))
        np.testing.assert_array_equal(table.keys[got], batch)


def test_shapes_and_integer_dtypes() -> None:
    table = KeyTable()
    keys2d = _u64([[10, 20, 30], [20, 40, 10]])
    got = table.insert(keys2d)
    assert got.shape == (2, 3)
    np.testing.assert_array_equal(got, [[0, 1, 2], [1, 3, 0]])
    assert table.lookup(np.uint64(40)).shape == ()
    assert int(table.lookup(np.uint64(40))) == 3
    assert table.lookup(np.empty((0, 4), dtype=np.uint64)).shape == (0, 4)
    assert table.insert(np.empty(0, dtype=np.uint64)).shape == (0,)
    for dtype in (np.int64, np.int32, np.uint8, np.uint32):
        np.testing.assert_array_equal(table.lookup(np.array([30, 40, 7], dtype=dtype)), [2, 3, -1])
    np.testing.assert_array_equal(table.insert([40, 50]), [3, 4])


@pytest.mark.parametrize(
    ("bad", "dtype_name"),
    [
        (np.array([1.0, 2.0]), "float64"),
        (np.array([1, -2], dtype=np.int64), "int64"),
        (np.array([True, False]), "bool"),
        (np.array(["a"]), "<U1"),
    ],
)
def test_bad_key_dtypes_raise(bad: np.ndarray, dtype_name: str) -> None:
    table = KeyTable()
    table.insert(_u64([1, 2]))
    for method in (table.insert, table.lookup):
        with pytest.raises(DataError, match=dtype_name):
            method(bad)
    assert len(table) == 2


def test_bad_arguments_raise() -> None:
    with pytest.raises(ConfigError):
        KeyTable(capacity=-1)
    with pytest.raises(ConfigError):
        KeyTable(capacity=2.5)  # type: ignore[arg-type]
    table = KeyTable()
    table.insert(_u64([1, 2, 3]))
    with pytest.raises(DataError, match="bool"):
        table.retain(np.array([1, 0, 1]))
    with pytest.raises(DataError, match=r"\(3,\)"):
        table.retain(np.array([True, False]))


def test_growth_from_tiny_capacity_keeps_mappings() -> None:
    rng = np.random.default_rng(5)
    table = KeyTable(capacity=1)
    assert table.nbytes <= 64
    all_keys = np.empty(0, dtype=np.uint64)
    capacities = {table.index_capacity}
    for step in range(120):
        batch = _random_keys(rng, int(rng.integers(1, 50 + 25 * step)))
        if all_keys.size:
            batch = np.concatenate([batch, all_keys[rng.integers(0, all_keys.size, 50)]])
        rng.shuffle(batch)
        got = table.insert(batch)
        seen = np.isin(batch, all_keys)
        new_keys = batch[~seen]
        _, first = np.unique(new_keys, return_index=True)
        all_keys = np.concatenate([all_keys, new_keys[np.sort(first)]])
        np.testing.assert_array_equal(all_keys[got], batch)
        capacities.add(table.index_capacity)
        assert 2 * len(table) <= table.index_capacity
        if step % 10 == 0 or step == 119:
            np.testing.assert_array_equal(table.lookup(all_keys), np.arange(all_keys.size))
    np.testing.assert_array_equal(table.keys, all_keys)
    assert len(capacities) >= 10  # grew many times
    # Memory: 8 bytes per key slot (growth by half) + 4 bytes per index entry (load in
    # (1/3, 1/2] once past the growth step).
    n = len(table)
    assert 16 * n <= table.nbytes <= 24 * n
    table.trim(1.125)  # day end: at most 1.125 x (8 + 2 x 4) bytes per key
    assert 16 * n <= table.nbytes <= 18 * n + 64
    np.testing.assert_array_equal(table.lookup(all_keys), np.arange(all_keys.size))
    np.testing.assert_array_equal(table.insert(_random_keys(rng, 1000)) >= n, True)


def test_snapshot_restore_roundtrip() -> None:
    rng = np.random.default_rng(7)
    table = KeyTable(capacity=50_000)  # more than needed: capacities must survive
    for _ in range(5):
        table.insert(_random_keys(rng, 5_000))
    table.retain(rng.random(len(table)) < 0.8)
    table.insert(_random_keys(rng, 1_000))
    state = table.snapshot()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    restored = KeyTable.restore(_roundtrip_npz(state))

    again = restored.snapshot()
    assert sorted(again) == sorted(state)
    for name, value in state.items():
        assert again[name].dtype == value.dtype, name
        np.testing.assert_array_equal(again[name], value)
    assert len(restored) == len(table)
    assert restored.nbytes == table.nbytes
    assert restored.index_capacity == table.index_capacity
    np.testing.assert_array_equal(restored.keys, table.keys)
    probe = np.concatenate([table.keys, _random_keys(rng, 1_000)])
    np.testing.assert_array_equal(restored.lookup(probe), table.lookup(probe))

    # The snapshot is a copy: later inserts do not change it.
    frozen = state["keys"].copy()
    for _ in range(3):
        batch = np.concatenate([_random_keys(rng, 3_000), table.keys[:100]])
        np.testing.assert_array_equal(restored.insert(batch), table.insert(batch))
    np.testing.assert_array_equal(state["keys"], frozen)
    np.testing.assert_array_equal(restored.keys, table.keys)
    assert restored.nbytes == table.nbytes

    empty = KeyTable.restore(_roundtrip_npz(KeyTable(capacity=0).snapshot()))
    assert len(empty) == 0
    np.testing.assert_array_equal(empty.insert(_u64([4, 4, 2])), [0, 0, 1])


def test_restore_rejects_bad_snapshots() -> None:
    good = KeyTable(capacity=8)
    good.insert(_u64([1, 2, 3]))
    state = good.snapshot()
    with pytest.raises(CheckpointError, match="distinct"):
        KeyTable.restore({**state, "keys": _u64([1, 2, 1])})
    with pytest.raises(CheckpointError, match="uint64"):
        KeyTable.restore({**state, "keys": np.array([1, 2, 3], dtype=np.int64)})
    with pytest.raises(CheckpointError, match="index_capacity"):
        KeyTable.restore({**state, "index_capacity": np.array(4, dtype=np.int64)})
    with pytest.raises(CheckpointError, match="index_capacity"):
        KeyTable.restore({**state, "index_capacity": np.array(2**32, dtype=np.int64)})
    odd = KeyTable.restore({**state, "index_capacity": np.array(11, dtype=np.int64)})
    np.testing.assert_array_equal(odd.lookup(_u64([3, 2, 1, 9])), [2, 1, 0, -1])
    with pytest.raises(CheckpointError, match="key_capacity"):
        KeyTable.restore({**state, "key_capacity": np.array(2, dtype=np.int64)})
    with pytest.raises(CheckpointError, match="'keys'"):
        KeyTable.restore({})


def test_retain_compacts_and_forgets() -> None:
    rng = np.random.default_rng(9)
    table = KeyTable(capacity=100)
    keys = np.unique(_random_keys(rng, 20_000))
    keys = rng.permutation(keys)
    table.insert(keys)
    keep = rng.random(keys.size) < 0.3
    old = table.retain(keep)
    assert old.dtype == np.int64
    np.testing.assert_array_equal(old, np.flatnonzero(keep))
    survivors = keys[keep]
    dropped = keys[~keep]
    assert len(table) == survivors.size
    np.testing.assert_array_equal(table.keys, survivors)
    np.testing.assert_array_equal(table.lookup(survivors), np.arange(survivors.size))
    assert (table.lookup(dropped) == -1).all()

    # Per-slot arrays compact with arr[old].
    weights = np.arange(keys.size, dtype=np.float32) * 0.5
    compact = weights[old]
    np.testing.assert_array_equal(compact[table.lookup(survivors)], weights[keep])

    # Re-inserting dropped keys gives new slots after the survivors.
    again = dropped[:10]
    np.testing.assert_array_equal(table.insert(again), np.arange(10) + survivors.size)
    np.testing.assert_array_equal(table.lookup(survivors), np.arange(survivors.size))

    # Dropping almost everything shrinks the arrays; dropping everything empties the table.
    big = table.nbytes
    table.retain(np.arange(len(table)) < 5)
    assert len(table) == 5
    assert table.nbytes * 8 < big
    np.testing.assert_array_equal(table.keys, survivors[:5])
    np.testing.assert_array_equal(table.lookup(survivors[:5]), np.arange(5))
    table.retain(np.zeros(5, dtype=bool))
    assert len(table) == 0
    assert (table.lookup(keys) == -1).all()
    np.testing.assert_array_equal(table.insert(keys[:3]), [0, 1, 2])


def test_keys_view_is_read_only() -> None:
    table = KeyTable()
    table.insert(_u64([3, 4]))
    view = table.keys
    with pytest.raises(ValueError):
        view[0] = 9
    np.testing.assert_array_equal(table.lookup(_u64([3])), [0])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_dict_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Small universe (so hits, duplicates and re-inserts are common), sharing low bits.
    universe = np.unique(
        np.concatenate(
            [
                _random_keys(rng, 150) << np.uint64(8),
                np.arange(0, 600, 4, dtype=np.uint64),
                _u64([0, U64_MAX, U64_MAX - 1]),
            ]
        )
    )
    table = KeyTable(capacity=int(rng.integers(0, 8)))
    oracle: dict[int, int] = {}
    order: list[int] = []
    for _ in range(300):
        op = rng.random()
        batch = universe[rng.integers(0, universe.size, size=int(rng.integers(0, 60)))]
        if op < 0.5:
            got = table.insert(batch)
            expected = []
            for key in batch.tolist():
                if key not in oracle:
                    oracle[key] = len(order)
                    order.append(key)
                expected.append(oracle[key])
            np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.int64))
        elif op < 0.85:
            got = table.lookup(batch)
            expected = [oracle.get(key, -1) for key in batch.tolist()]
            np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.int64))
        else:
            keep = rng.random(len(order)) < rng.random()
            old = table.retain(keep)
            np.testing.assert_array_equal(old, np.flatnonzero(keep))
            order = [key for key, k in zip(order, keep.tolist(), strict=True) if k]
            oracle = {key: slot for slot, key in enumerate(order)}
        assert len(table) == len(order)
        np.testing.assert_array_equal(table.keys, np.asarray(order, dtype=np.uint64))
    if order:
        state = _roundtrip_npz(table.snapshot())
        restored = KeyTable.restore(state)
        np.testing.assert_array_equal(restored.lookup(universe), table.lookup(universe))

"""Parquet days, the batch builder, hashing and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psfm.config import DataConfig
from psfm.data.batch import batch_of, build_batch, decode_rows, log_bucket, resolve_schema
from psfm.data.parquet import (
    Cursor,
    day_files,
    list_days,
    open_parquet,
    read_unit,
    select_days,
    split_days,
    split_tail,
    work_units,
)
from psfm.errors import DataError
from psfm.hashing import BIAS_KEY, field_keys, hash_strings


def _table(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "label": pa.array(rng.integers(0, 2, n), pa.int8()),
            "I1": pa.array(
                np.where(rng.random(n) < 0.2, None, rng.integers(0, 100, n)).tolist(), pa.float32()
            ),
            "C1": pa.array(
                np.where(rng.random(n) < 0.2, None, rng.integers(0, 5, n)).tolist(), pa.int64()
            ),
            "C2": pa.array([None if i % 4 == 0 else f"s{i % 3}" for i in range(n)], pa.string()),
        }
    )


def _write_days(root: Path, days=(1, 2, 3), n=100, row_group=16):
    for d in days:
        (root / f"day={d}").mkdir(parents=True)
        pq.write_table(_table(n, d), root / f"day={d}" / "part-0.parquet", row_group_size=row_group)


def _schema(table, **kw):
    return resolve_schema(DataConfig(**kw), table.schema, "f.parquet")


# ------------------------------------------------------------------------------ hashing


def test_keys_are_stable_across_processes():
    code = (
        "import numpy as np, pyarrow as pa; from psfm.hashing import field_keys;"
        "print(field_keys('C1', np.arange(5)).tolist(),"
        "field_keys('C2', pa.array(['a', 'bb', '', 'é'])).tolist())"
    )
    outs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout
        for seed in (1, 2)
    ]
    assert outs[0] == outs[1]
    here = (
        f"{field_keys('C1', np.arange(5)).tolist()} "
        f"{field_keys('C2', pa.array(['a', 'bb', '', 'é'])).tolist()}\n"
    )
    assert outs[0] == here


def test_pinned_key_values_do_not_change_between_versions():
    # Checkpoints and exported models depend on these exact keys.
    assert field_keys("C1", np.array([0, 7])).tolist() == PINNED_INT
    assert field_keys("C2", pa.array(["abc"])).tolist() == PINNED_STR


def test_string_hash_is_per_string_and_fields_are_salted():
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), size=rng.integers(0, 12))) for _ in range(5000)]
    h = hash_strings(pa.array(words))
    distinct = len(set(words))
    assert len(set(h.tolist())) == distinct
    single = [int(hash_strings(pa.array([w]))[0]) for w in words[:50]]
    assert single == h[:50].tolist()
    assert set(field_keys("A", pa.array(words[:100])).tolist()).isdisjoint(
        field_keys("B", pa.array(words[:100])).tolist()
    )
    assert not np.any(field_keys("A", np.arange(100000)) == BIAS_KEY)


# ------------------------------------------------------------------------------ days


def test_days_sort_numerically_and_specs_select(tmp_path):
    _write_days(tmp_path, days=(1, 2, 10, 9))
    days = list_days(str(tmp_path))
    assert days == ["1", "2", "9", "10"]
    assert select_days(days, "2..10") == ["2", "9", "10"]
    assert select_days(days, "1,10") == ["1", "10"]
    assert split_days(days, "", "") == (["1", "2", "9"], ["10"])
    with pytest.raises(DataError, match="day '3'"):
        select_days(days, "1..3")


def test_reader_batches_span_row_groups_and_resume_from_a_cursor(tmp_path):
    _write_days(tmp_path, days=(1,), n=100, row_group=16)
    (unit,) = work_units(str(tmp_path), "1")
    assert unit.rows == 100 and unit.rg_end == 7
    batches = list(read_unit(unit, 24))
    assert [t.num_rows for t, _, _ in batches] == [24, 24, 24, 24, 4]
    full = pa.concat_tables([t for t, _, _ in batches])
    assert full.equals(pq.read_table(unit.file))
    cursor = batches[1][1]
    assert cursor == Cursor(unit.file, 2, 16)
    rest = pa.concat_tables([t for t, _, _ in read_unit(unit, 24, start=cursor)])
    assert rest.equals(full.slice(48))


# ------------------------------------------------------------------------------ batches


def test_batch_layout_matches_the_columns():
    t = _table(50)
    schema = _schema(t)
    assert schema.categorical == ("C1", "C2") and schema.numeric == ("I1",)
    b = build_batch(t, schema, "logistic", "fail", "f")
    assert b.keys.shape == (50, 4)
    rows = decode_rows(t, schema, "logistic", "fail", "f")  # decoded row-major
    assert rows.keys.shape == (50, 4) and rows.keys.flags.c_contiguous and rows.values is None
    assert np.all(b.keys[:, 0] == BIAS_KEY) and b.mask[:, 0].all()
    assert np.array_equal(b.mask[:, 1], t["C1"].is_valid().to_numpy(zero_copy_only=False))
    assert np.array_equal(b.mask[:, 3], t["I1"].is_valid().to_numpy(zero_copy_only=False))
    assert np.array_equal(b.uniq[b.occ_uniq], b.keys[b.mask])
    assert b.counts.sum() == b.mask.sum() and b.counts[b.uniq == BIAS_KEY][0] == 50
    assert np.all(np.diff(b.occ_sample) >= 0)


def test_batches_cut_from_decoded_rows_equal_batches_built_alone():
    t = _table(100)
    schema = _schema(t)
    rows = decode_rows(t, schema, "logistic", "skip", "f")
    for lo, hi in ((0, 32), (32, 64), (64, 100), (10, 11)):
        got = batch_of(rows, lo, hi)
        want = build_batch(t.slice(lo, hi - lo), schema, "logistic", "skip", "f")
        for name in (
            "keys",
            "mask",
            "labels",
            "occ_sample",
            "occ_value",
            "uniq",
            "occ_uniq",
            "counts",
            "sample_offsets",
            "occ_order",
            "uniq_offsets",
        ):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name
        assert got.skipped == want.skipped and got.unit_values and want.unit_values
        assert np.array_equal(
            got.uniq[got.occ_uniq[got.occ_order]], np.sort(got.uniq[got.occ_uniq])
        )  # grouped by key


def test_worker_cursors_equal_the_readers(tmp_path):
    """The worker decodes chunks of several batches; every batch's cursor must still be the
    one the batch-by-batch reader gives (resume depends on it)."""
    from psfm.config import load_config
    from psfm.worker import Worker

    t = _table(300)
    day = tmp_path / "day=1"
    day.mkdir()
    pq.write_table(t, day / "part-0.parquet", row_group_size=70)
    cfg = load_config(None, [f"data.root={json.dumps(str(tmp_path))}", "data.batch_size=32"])
    unit = work_units(str(tmp_path), "1", rows_per_unit=1000)[0]
    worker = Worker(cfg)
    got = [(c.row_group, c.offset, b.size) for b, c in worker.batches(unit)]
    want = [(c.row_group, c.offset, tb.num_rows) for tb, c, _ in read_unit(unit, 32)]
    assert got == want and sum(g[2] for g in got) == 300
    mid = [c for _, c in worker.batches(unit)][3]
    resumed = [b.uniq for b, _ in worker.batches(unit, start=mid)]
    whole = [b.uniq for b, _ in worker.batches(unit)][4:]
    assert len(resumed) == len(whole) and all(np.array_equal(a, b) for a, b in zip(resumed, whole))


def test_split_tail_cuts_the_last_round_into_row_groups(tmp_path):
    day = tmp_path / "day=1"
    day.mkdir()
    pq.write_table(_table(1000), day / "part-0.parquet", row_group_size=70)  # 15 row groups
    units = work_units(str(tmp_path), "1", rows_per_unit=280)  # 4 row groups each
    assert [u.rg_end - u.rg_start for u in units] == [4, 4, 4, 3]
    out = split_tail(units, 2)
    assert out[:2] == units[:2] and [u.rg_end - u.rg_start for u in out[2:]] == [1] * 7
    assert [(u.rg_start, u.rows) for u in out[2:]] == [(8 + i, 70) for i in range(6)] + [
        (14, 20)
    ]  # every row once, same rows in all
    assert sum(u.rows for u in out) == 1000 and split_tail(units, 1) == units
    # a day of one unit (a small day) is cut whole: every worker gets some of it
    lone = split_tail(units[:1], 2)
    assert [(u.rg_start, u.rg_end, u.rows) for u in lone] == [(i, i + 1, 70) for i in range(4)]
    t = [tb.num_rows for u in out for tb, _, _ in read_unit(u, 1000)]
    assert t == [u.rows for u in out]


def test_log_bucket():
    x = np.array([-3.0, 0.0, 1.0, 2.0, 3.0, 100.0])
    got = log_bucket(x)
    assert got[:4].tolist() == [-3, 0, 1, 2]
    assert got[4] == (1 << 32) + 1 and got[5] == (1 << 32) + int(np.log(100) ** 2)


def test_raw_numeric_and_hashed_layout():
    t = _table(20)
    b = build_batch(t, _schema(t, numeric_transform="raw"), "logistic", "fail", "f")
    present = t["I1"].is_valid().to_numpy(zero_copy_only=False)
    vals = b.occ_value.reshape(-1)
    assert len(np.unique(b.keys[:, 3][present])) == 1
    assert set(vals[vals != 1.0].tolist()) <= set(t["I1"].to_numpy(zero_copy_only=False).tolist())
    h = pa.table(
        {
            "label": pa.array([1, 0], pa.int8()),
            "keys": pa.array([[5, 6, 7], [6]], pa.list_(pa.uint64())),
            "values": pa.array([[1.0, 0.5, 2.0], [3.0]], pa.list_(pa.float32())),
        }
    )
    b = build_batch(h, _schema(h, layout="hashed"), "logistic", "fail", "f")
    assert b.mask.sum(1).tolist() == [4, 2]
    assert b.uniq.tolist() == [0, 5, 6, 7]
    assert b.occ_value.tolist() == [1.0, 1.0, 0.5, 2.0, 1.0, 3.0]


def test_a_hashed_log_of_a_columns_logs_keys_gives_the_same_batch():
    """The hashed layout holding the keys the columns layout computes (rows of different
    lengths: missing cells; an empty row) decodes to the same occurrences, unique keys,
    inverse and counts."""
    t = _table(200, seed=4)
    c = build_batch(t, _schema(t), "logistic", "fail", "f")
    rows = [c.keys[i, 1:][c.mask[i, 1:]].tolist() for i in range(t.num_rows)]
    rows[7] = []  # a row with no feature but the bias
    keep = np.ones_like(c.mask)
    keep[7, 1:] = False
    h = pa.table({"label": t["label"], "keys": pa.array(rows, pa.list_(pa.uint64()))})
    b = build_batch(h, _schema(h, layout="hashed"), "logistic", "fail", "f")
    assert b.mask.sum(1).tolist() == (c.mask & keep).sum(1).tolist()
    assert np.array_equal(b.keys[b.mask], c.keys[c.mask & keep])
    flat = c.keys[c.mask & keep]
    uniq, counts = np.unique(flat, return_counts=True)
    assert np.array_equal(b.uniq, uniq) and np.array_equal(b.counts, counts)
    assert np.array_equal(b.uniq[b.occ_uniq], flat)
    assert np.array_equal(b.labels, c.labels)


# ------------------------------------------------------------------------------ bad input


def test_a_hashed_row_longer_than_max_row_keys_is_bad_input_and_never_widens_the_matrix():
    long_row = list(range(1, 3001))
    h = pa.table(
        {
            "label": pa.array([1, 0, 1], pa.int8()),
            "keys": pa.array([[5, 6], long_row, [7]], pa.list_(pa.uint64())),
            "values": pa.array([[1.0, 0.5], [1.0] * 3000, [2.0]], pa.list_(pa.float32())),
        }
    )
    schema = _schema(h, layout="hashed", max_row_keys=1000)
    with pytest.raises(DataError) as e:
        build_batch(h, schema, "logistic", "fail", "File 'f.parquet'")
    msg = str(e.value)
    assert "File 'f.parquet', row 1, column 'keys': value 3000" in msg
    assert "data.max_row_keys = 1000" in msg
    b = build_batch(h, schema, "logistic", "skip", "File 'f.parquet'")
    assert b.size == 2 and b.skipped == 1 and b.keys.shape[1] == 3  # bias + the longest kept
    assert b.occ_value.tolist() == [1.0, 1.0, 0.5, 1.0, 2.0]
    # at a higher bound the row is read
    assert build_batch(h, _schema(h, layout="hashed", max_row_keys=3000), "logistic", "fail",
                       "f").size == 3  # fmt: skip


def test_a_non_finite_hashed_value_is_named_as_it_is():
    h = pa.table(
        {
            "label": pa.array([1, 0], pa.int8()),
            "keys": pa.array([[5, 6], [7, 8]], pa.list_(pa.uint64())),
            "values": pa.array([[1.0, 0.5], [2.0, float("inf")]], pa.list_(pa.float32())),
        }
    )
    with pytest.raises(DataError, match=r"row 1, column 'values': value inf breaks the rule"):
        build_batch(h, _schema(h, layout="hashed"), "logistic", "fail", "f")


def test_missing_label_column_names_file_and_column():
    t = _table().drop(["label"])
    with pytest.raises(DataError, match=r"File 'f.parquet': column 'label' is missing"):
        _schema(t)


def test_label_two_fails_with_row_and_value_or_is_skipped():
    t = _table(10).set_column(0, "label", pa.array([0, 1, 2, 0, 1, 0, 0, 1, 7, 0], pa.int8()))
    schema = _schema(t)
    with pytest.raises(
        DataError,
        match=r"File 'f.parquet', row 102 \(row group 3\), column "
        r"'label': value 2.0 breaks the rule: labels must be 0 "
        r"or 1",
    ):
        build_batch(
            t,
            schema,
            "logistic",
            "fail",
            "File 'f.parquet'",
            first_row=100,
            rg_starts=np.array([0, 32, 64, 96, 128]),
        )
    b = build_batch(t, schema, "logistic", "skip", "f")
    assert b.skipped == 2 and b.size == 8 and set(b.labels.tolist()) <= {0.0, 1.0}


def test_nan_and_null_numerics_are_missing_but_infinity_is_an_error():
    t = _table(6).set_column(
        1, "I1", pa.array([1.0, None, float("nan"), 4.0, float("inf"), None], pa.float32())
    )
    with pytest.raises(DataError, match=r"row 4, column 'I1': value inf .* finite or missing"):
        build_batch(t, _schema(t), "logistic", "fail", "f")
    b = build_batch(t, _schema(t), "logistic", "skip", "f")
    # the infinite row dropped; null (row 1) and NaN (row 2) are missing, like a pandas NaN
    assert b.skipped == 1 and b.mask[:, 3].tolist() == [True, False, False, True, False]


def test_mistyped_column_is_named():
    t = _table().set_column(2, "C1", pa.array([0.5] * 10, pa.float64()))
    with pytest.raises(DataError, match="column 'C1' has type double"):
        _schema(t, categorical=("C1",), numeric=("I1",))


def test_non_parquet_file_and_empty_day(tmp_path):
    _write_days(tmp_path, days=(1, 2))
    (tmp_path / "day=2" / "notes.txt").write_text("not parquet")
    bad = [f for f in day_files(str(tmp_path), "2") if f.endswith(".txt")][0]
    with pytest.raises(DataError, match=r"notes.txt' is not a readable Parquet file"):
        open_parquet(bad)
    with pytest.raises(DataError, match="notes.txt"):
        work_units(str(tmp_path), "2")
    (tmp_path / "day=3").mkdir()
    with pytest.raises(DataError, match=r"Day '3' .* is empty"):
        work_units(str(tmp_path), "3")


PINNED_INT = [11953643596330563512, 6669410801953548370]
PINNED_STR = [17172007377220283911]


def test_unique_inverse_counts_equals_numpy():
    """Equal to np.unique plus a stable argsort: on small values (every key shares its top 32
    bits: the full-sort fallback), well-mixed keys over the whole uint64 range (the top-bits
    sort), and mixed keys where a few distinct ones share their top bits."""
    from psfm.data.batch import unique_inverse_counts

    rng = np.random.default_rng(4)
    mixed = rng.integers(0, 2**64, 5000, dtype=np.uint64)
    twins = mixed.copy()
    twins[:40] = (twins[:40] & np.uint64(0xFFFFFFFF00000000)) | np.uint64(3)  # top-bit twins
    twins[40:80] = twins[:40] ^ np.uint64(1)
    # few values in the top 16 bits: the radix sort's second digit decides most pairs
    digits = (rng.integers(0, 3, 5000, dtype=np.uint64) << np.uint64(48)) | (
        rng.integers(0, 2**48, 5000, dtype=np.uint64)
    )
    for x in (
        rng.integers(0, 50, 1000).astype(np.uint64),
        mixed,
        np.repeat(mixed[:300], 7),
        twins,
        digits,
        np.repeat(digits[::-1], 3),
        np.zeros(0, np.uint64),
        np.array([7], np.uint64),
    ):
        want = np.unique(x, return_inverse=True, return_counts=True)
        got = unique_inverse_counts(x)
        for a, b in zip(got[:3], want):
            assert np.array_equal(a, b.reshape(-1)) and a.dtype.kind == b.dtype.kind
        assert np.array_equal(got[3], np.argsort(x, kind="stable"))  # grouped, stable

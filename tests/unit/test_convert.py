"""Converters (psfm.datasets.convert) on small files written here in the exact public layouts:
row counts, day assignment, nulls, dtypes, bad lines with exact line numbers, and training end to
end on the output."""

from __future__ import annotations

import argparse
import gzip
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psfm.config import DataConfig, load_config
from psfm.data.batch import decode_rows, resolve_schema
from psfm.data.parquet import list_days
from psfm.datasets.convert import (
    CRITEO_COLUMNS,
    LIBFM_FIELD,
    add_cli,
    convert_avazu,
    convert_criteo,
    convert_libfm,
    convert_libfm_files,
    count_lines,
)
from psfm.errors import ConfigError, DataError
from psfm.hashing import field_keys

# ------------------------------------------------------------------------------ writers

_VOCAB = [f"{(i * 2654435761) % (1 << 32):08x}" for i in range(40)]


def _criteo_rows(n: int, seed: int, first_line: int = 1) -> list[str]:
    """Criteo TSV lines; C1 drives the label (AUC > 0.5 is learnable), C26 is the hex of the
    line number (to trace every row), I2 is often negative, many fields empty."""
    rng = np.random.default_rng(seed)
    c1 = rng.integers(0, 20, n)
    label = (rng.random(n) < np.where(c1 < 10, 0.85, 0.15)).astype(int)
    out = []
    for r in range(n):
        ints = [str(int(v)) if rng.random() > 0.2 else "" for v in rng.integers(-3, 500, 13)]
        cats = [_VOCAB[c1[r]]] + [
            _VOCAB[v] if rng.random() > 0.1 else "" for v in rng.integers(0, 40, 24)
        ]
        cats.append(f"{first_line + r:08x}")
        out.append("\t".join([str(label[r]), *ints, *cats]))
    return out


def _write(path, lines, newline="\n", gz=False):
    data = (newline.join(lines) + newline).encode()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return str(path)


def _read_day(root, day):
    return pq.read_table(root / f"day={day}")


def _train(root, *sets):
    from psfm.trainer import train_local

    cfg = load_config(
        None,
        [f"data.root={json.dumps(str(root))}", 'model.kind="fm"', "data.batch_size=128", *sets],
    )  # small data: many small steps
    return train_local(cfg)


# ------------------------------------------------------------------------------ criteo


def test_criteo_1tb_day_files_plain_and_gzip_and_training(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    per_day = {0: 1500, 1: 1200, 2: 1000}
    lines = {d: _criteo_rows(n, seed=d) for d, n in per_day.items()}
    files = [
        _write(src / "day_0", lines[0]),
        _write(src / "day_1.gz", lines[1], gz=True),
        _write(src / "day_2", lines[2]),
    ]
    out = tmp_path / "out"
    s = convert_criteo(files, str(out), row_group_rows=512, rows_per_file=1000)
    assert s["rows"] == 3700 and s["skipped"] == 0
    assert s["days"] == {"0": 1500, "1": 1200, "2": 1000}
    assert list_days(str(out)) == ["0", "1", "2"]
    t = _read_day(out, 1)
    assert t.num_rows == 1200
    assert t.schema.names == list(CRITEO_COLUMNS)
    assert t.schema.field("label").type == pa.int8()
    assert all(t.schema.field(f"I{i}").type == pa.float32() for i in range(1, 14))
    assert all(t.schema.field(f"C{i}").type == pa.string() for i in range(1, 27))
    # values, nulls and negative integers exactly as in the text
    fields = [ln.split("\t") for ln in lines[1]]
    assert t.column("label").to_pylist() == [int(f[0]) for f in fields]
    assert t.column("I3").to_pylist() == [float(f[3]) if f[3] else None for f in fields]
    assert t.column("C5").to_pylist() == [f[18] or None for f in fields]
    assert min(x for x in t.column("I2").to_pylist() if x is not None) < 0
    assert t.column("I1").null_count == sum(f[1] == "" for f in fields) > 0
    # files of at most rows_per_file rows (rounded up to row groups), row groups of 512
    md = [pq.ParquetFile(f).metadata for f in s["files"] if "day=0" in f]
    assert [m.num_rows for m in md] == [1024, 476]
    assert [md[0].row_group(i).num_rows for i in range(md[0].num_row_groups)] == [512, 512]
    assert not list(out.rglob("*.inprogress"))
    assert json.loads((out / "_convert.json").read_text())["rows"] == 3700
    # train on days 0-1, test on day 2 with the default split
    report = _train(out)
    assert report["train"]["days"] == ["0", "1"] and report["test"]["rows"] == 1000
    assert report["test"]["auc"] > 0.65


def test_criteo_kaggle_split_into_days_crlf(tmp_path):
    n = 1003
    src = _write(tmp_path / "train.txt", _criteo_rows(n, seed=5), newline="\r\n")
    assert count_lines(src) == n
    out = tmp_path / "out"
    s = convert_criteo([src], str(out), days=7, block_size=8192)
    bounds = [d * n // 7 for d in range(8)]
    assert s["days"] == {str(d): bounds[d + 1] - bounds[d] for d in range(7)}
    assert list_days(str(out)) == [str(d) for d in range(7)]
    for d in (0, 3, 6):
        t = _read_day(out, d)
        got = [int(x, 16) for x in t.column("C26").to_pylist()]  # no '\r' left on the last field
        assert got == list(range(bounds[d] + 1, bounds[d + 1] + 1))
    # the row count given instead of counted: same split
    s2 = convert_criteo([src], str(tmp_path / "out2"), days=7, rows=n)
    assert s2["days"] == s["days"]
    with pytest.raises(ConfigError, match="day_N"):
        convert_criteo([src], str(tmp_path / "out3"))


def _bad_criteo(tmp_path, n=3000):
    lines = _criteo_rows(n, seed=9)
    lines[99] = "1\t2\t3"  # line 100: wrong column count
    f = lines[1999].split("\t")
    f[3] = "abc"  # line 2000: I3 not an integer
    lines[1999] = "\t".join(f)
    f = lines[2499].split("\t")
    f[0] = "7"  # line 2500: label 7
    lines[2499] = "\t".join(f)
    lines[2799] = ""  # line 2800: empty line
    return _write(tmp_path / "day_4", lines), lines


@pytest.mark.parametrize("threads", [False, True])
def test_criteo_bad_lines_name_file_line_column_value_or_are_skipped(tmp_path, threads, caplog):
    src, lines = _bad_criteo(tmp_path)
    kw = {"block_size": 16384, "use_threads": threads}
    with pytest.raises(DataError, match=r"day_4', line 100: 3 fields .*40 tab-separated"):
        convert_criteo([src], str(tmp_path / "a"), **kw)
    assert not list((tmp_path / "a").rglob("*.parquet"))  # nothing half-written is left
    # the same file without the first bad line: the next one (a later block) is found
    fixed = lines.copy()
    fixed[99] = _criteo_rows(1, seed=1, first_line=100)[0]
    src2 = _write(tmp_path / "day_5", fixed)
    with pytest.raises(DataError, match=r"line 2000, column 'I3': value 'abc' breaks the rule"):
        convert_criteo([src2], str(tmp_path / "b"), **kw)
    fixed[1999] = _criteo_rows(1, seed=1, first_line=2000)[0]
    _write(tmp_path / "day_5", fixed)
    with pytest.raises(
        DataError,
        match=r"line 2500, column 'label': value '7' breaks the rule: "
        r"labels must be 0 or 1",
    ):
        convert_criteo([src2], str(tmp_path / "c"), **kw)
    # skip: counted per rule, every other row kept with its own line
    caplog.set_level("INFO", logger="psfm.datasets.convert")
    s = convert_criteo([src], str(tmp_path / "d"), bad_rows="skip", **kw)
    # the threaded parser does not number malformed lines: the input is redone serially
    assert ("again with the serial parser" in caplog.text) == threads
    assert s["skipped"] == 4 and s["rows"] == 2996
    assert s["skipped_by_rule"] == {
        "wrong number of fields": 1,
        "labels must be 0 or 1": 1,
        "lines must not be empty (empty line)": 1,
        "integer fields must be integers (optionally negative) or empty": 1,
    }
    got = [int(x, 16) for x in _read_day(tmp_path / "d", 4).column("C26").to_pylist()]
    assert got == [i for i in range(1, 3001) if i not in (100, 2000, 2500, 2800)]


def test_criteo_split_by_physical_line_with_skipped_lines_across_blocks(tmp_path):
    lines = _criteo_rows(2100, seed=3)
    bad = [7, 300, 301, 1400, 2099]  # 1-based physical lines, several blocks
    for b in bad:
        lines[b - 1] = "0\t1"
    src = _write(tmp_path / "train.txt", lines)
    out = tmp_path / "out"
    s = convert_criteo([src], str(out), days=3, bad_rows="skip", block_size=8192)
    assert s["skipped"] == len(bad) and s["lines"] == 2100
    for d in range(3):
        got = [int(x, 16) for x in _read_day(out, d).column("C26").to_pylist()]
        want = [i for i in range(d * 700 + 1, (d + 1) * 700 + 1) if i not in bad]
        assert got == want


def test_an_earlier_type_error_is_reported_before_a_later_malformed_line(tmp_path):
    lines = _criteo_rows(400, seed=2)
    lines[299] = "1\t2"
    f = lines[149].split("\t")
    f[13] = "1.5"
    lines[149] = "\t".join(f)
    src = _write(tmp_path / "day_1", lines)
    with pytest.raises(DataError, match=r"line 150, column 'I13': value '1.5'"):
        convert_criteo([src], str(tmp_path / "o"))


def test_output_directory_with_days_needs_overwrite(tmp_path):
    src = _write(tmp_path / "day_1", _criteo_rows(10, seed=0))
    out = tmp_path / "o"
    convert_criteo([src], str(out))
    with pytest.raises(DataError, match="overwrite"):
        convert_criteo([src], str(out))
    assert convert_criteo([src], str(out), overwrite=True)["rows"] == 10
    with pytest.raises(ConfigError, match="bad_rows"):
        convert_criteo([src], str(out), bad_rows="ignore", overwrite=True)


# ------------------------------------------------------------------------------ avazu

AVAZU_HEADER = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,"
    "app_domain,app_category,device_id,device_ip,device_model,device_type,"
    "device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
)


def _avazu_rows(n: int, seed: int, hours: list[str], with_click: bool = True) -> list[str]:
    rng = np.random.default_rng(seed)
    site = rng.integers(0, 12, n)
    click = (rng.random(n) < np.where(site < 6, 0.8, 0.1)).astype(int)
    out = []
    for r in range(n):
        vals = [
            str(10000000000000000000 + r),
            *([str(click[r])] if with_click else []),
            hours[r % len(hours)],
            "1005",
            str(rng.integers(0, 3)),
            _VOCAB[site[r]],
            _VOCAB[site[r] + 1],
            "28905ebd",
            "ecad2386",
            "7801e8d9",
            "07d7df22",
            "a99f214a",
            _VOCAB[rng.integers(0, 40)],
            "711ee120",
            "1",
            "0",
            str(15000 + rng.integers(0, 30)),
            "320",
            "50",
            str(1722 + rng.integers(0, 5)),
            "0",
            "35",
            "" if r % 7 == 0 else "-1",
            "79",
        ]
        out.append(",".join(vals))
    return out


def test_avazu_days_from_hour_and_training(tmp_path):
    hours = ["14102100", "14102213", "14102223"]  # Tue 21, Wed 22, Wed 22
    rows = _avazu_rows(3000, 0, hours)
    rows += [r.replace("14102213", "14102305") for r in _avazu_rows(900, 1, ["14102213"])]
    src = _write(tmp_path / "train.csv", [AVAZU_HEADER, *rows], newline="\r\n")
    out = tmp_path / "out"
    s = convert_avazu([src], str(out), block_size=16384)
    assert s["days"] == {"141021": 1000, "141022": 2000, "141023": 900}
    assert list_days(str(out)) == ["141021", "141022", "141023"]
    t = _read_day(out, 141022)
    assert "id" not in t.schema.names and "hour" not in t.schema.names
    assert t.schema.names[:3] == ["label", "hour_of_day", "weekday"]
    assert t.schema.field("label").type == pa.int8()
    assert t.schema.field("C14").type == pa.int64() and t.schema.field("C1").type == pa.int64()
    assert t.schema.field("site_id").type == pa.string()
    assert sorted(set(t.column("hour_of_day").to_pylist())) == [13, 23]
    assert set(t.column("weekday").to_pylist()) == {2}  # 2014-10-22 was a Wednesday
    assert set(_read_day(out, 141021).column("weekday").to_pylist()) == {1}
    assert t.column("C20").null_count > 0 and set(t.column("C20").drop_null().to_pylist()) == {-1}
    report = _train(out)
    assert report["test"]["days"] == ["141023"] and report["test"]["auc"] > 0.65


def test_avazu_test_file_without_click_and_bad_lines(tmp_path):
    src = _write(
        tmp_path / "test.csv",
        [AVAZU_HEADER.replace("click,", ""), *_avazu_rows(5, 0, ["14103100"], False)],
    )
    with pytest.raises(DataError, match=r"test.csv', line 1 \(header\), column 'click': missing"):
        convert_avazu([src], str(tmp_path / "o"))
    rows = _avazu_rows(800, 0, ["14102100"])
    rows[599] = rows[599].replace(",1005,", ",x1005,")  # data row 600 = line 601
    rows[99] = rows[99] + ",extra"  # data row 100 = line 101
    rows[300] = rows[300].replace("14102100", "14102199")  # hour 99
    src = _write(tmp_path / "train.csv", [AVAZU_HEADER, *rows])
    with pytest.raises(DataError, match=r"line 101: 25 fields"):
        convert_avazu([src], str(tmp_path / "o"), block_size=8192)
    rows[99] = rows[98]
    src = _write(tmp_path / "train.csv", [AVAZU_HEADER, *rows])
    with pytest.raises(DataError, match=r"line 302, column 'hour': value '14102199'"):
        convert_avazu([src], str(tmp_path / "o"), block_size=8192)
    s = convert_avazu([src], str(tmp_path / "o"), block_size=8192, bad_rows="skip")
    assert s["skipped"] == 2 and s["rows"] == 798
    assert "integer fields must be integers" in s["skipped_by_rule"]


# ------------------------------------------------------------------------------ libfm


def _libfm_lines(
    n: int, seed: int, neg: str = "-1"
) -> tuple[list[str], list[int], list[list[int]]]:
    rng = np.random.default_rng(seed)
    labels, idxs, out = [], [], []
    for _ in range(n):
        k = int(rng.integers(0, 6))
        idx = sorted(rng.choice(200, size=k, replace=False).tolist())
        y = int(rng.random() < (0.85 if idx and idx[0] < 40 else 0.15))
        vals = [f"{i}:{(1.0 if i % 2 else 0.5):g}" for i in idx]
        sep = "  " if rng.random() < 0.2 else " "
        out.append(sep.join([("1" if y else neg), *vals]))
        labels.append(y)
        idxs.append(idx)
    return out, labels, idxs


def test_libfm_train_valid_test_days_hashed_keys_and_training(tmp_path):
    tr, tr_y, tr_idx = _libfm_lines(4000, 0)
    va, _, _ = _libfm_lines(800, 1, neg="0")
    te, te_y, _ = _libfm_lines(1500, 2)
    files = [
        _write(tmp_path / "a.libfm", tr, newline="\r\n"),
        _write(tmp_path / "b.libfm", va),
        _write(tmp_path / "c.libfm.gz", te, gz=True),
    ]
    out = tmp_path / "out"
    s = convert_libfm(files[0], files[2], str(out), valid=files[1], block_size=8192)
    assert s["days"] == {"1": 4000, "2": 800, "3": 1500}
    t = _read_day(out, 1)
    assert t.schema.field("keys").type == pa.list_(pa.uint64())
    assert t.schema.field("values").type == pa.list_(pa.float32())
    assert t.column("label").to_pylist() == tr_y
    for r in (0, 17, 3999):
        assert (
            t.column("keys")[r].as_py()
            == field_keys(LIBFM_FIELD, np.array(tr_idx[r], dtype=np.int64)).tolist()
        )
        assert t.column("values")[r].as_py() == [1.0 if i % 2 else 0.5 for i in tr_idx[r]]
    assert _read_day(out, 3).column("label").to_pylist() == te_y
    report = _train(out, 'data.layout="hashed"')
    assert report["test"]["days"] == ["3"] and report["test"]["auc"] > 0.65
    s2 = convert_libfm(files[0], files[2], str(tmp_path / "o2"))
    assert s2["days"] == {"1": 4000, "2": 1500}


def test_libfm_bad_lines(tmp_path):
    lines, _, _ = _libfm_lines(500, 3)
    lines[199] = "1 3:0.5 7:abc"
    lines[299] = "2 4:1"
    src = _write(tmp_path / "tr", lines)
    te = _write(tmp_path / "te", lines[:5])
    with pytest.raises(DataError, match=r"tr', line 200, column 'feature 2': value '7:abc'"):
        convert_libfm(src, te, str(tmp_path / "o"), block_size=4096)
    s = convert_libfm(src, te, str(tmp_path / "o"), block_size=4096, bad_rows="skip")
    assert s["skipped"] == 2 and s["days"] == {"1": 498, "2": 5}
    lines[199] = "1 3:0.5"
    src = _write(tmp_path / "tr", lines)
    with pytest.raises(DataError, match=r"line 300, column 'label': value '2'.*-1, 0 or 1"):
        convert_libfm(src, te, str(tmp_path / "o"), overwrite=True)


# ------------------------------------------------------------------------------ command line


def test_add_cli_registers_the_convert_commands(tmp_path, capsys):
    ap = argparse.ArgumentParser(prog="psfm")
    add_cli(ap.add_subparsers(dest="cmd", required=True))
    src = _write(tmp_path / "train.txt", _criteo_rows(70, seed=1))
    args = ap.parse_args(
        [
            "convert",
            "criteo",
            src,
            "--out",
            str(tmp_path / "o"),
            "--days",
            "7",
            "--bad-rows",
            "skip",
        ]
    )
    assert args.func(args) == 0
    assert "converted 70 rows of criteo into 7 day(s)" in capsys.readouterr().out
    lf = _write(tmp_path / "x.libfm", ["1 1:1", "-1 2:1"])
    args = ap.parse_args(
        ["convert", "libfm", "--train", lf, "--test", lf, "--out", str(tmp_path / "l")]
    )
    assert args.func(args) == 0


def _libfm_reference(line: str):
    """A slow, obviously correct parse of one libFM line: (label, [(idx, value)]) or None;
    a feature is ``idx:value`` or a bare ``idx``."""
    import re

    toks = line.split()
    if not toks or not re.fullmatch(r"[^:]+", toks[0]):
        return None
    try:
        y = float(toks[0])
        pairs = []
        for t in toks[1:]:  # idx:value or a bare idx (value 1)
            m = re.fullmatch(r"([^:]+)(?::([^:]+))?", t)
            if m is None:
                return None
            i, v = float(m.group(1)), float(m.group(2) or 1)
            if not (
                abs(v) <= float(np.finfo(np.float32).max)
                and np.isfinite(i)
                and 0 <= i < 2**53
                and i == int(i)
            ):
                return None
            pairs.append((int(i), v))
    except ValueError:
        return None
    return (int(y == 1), pairs) if y in (-1.0, 0.0, 1.0) else None


def test_libfm_parser_agrees_with_a_line_by_line_reference(tmp_path):
    rng = np.random.default_rng(7)
    pieces = ["1", "0", "-1", "3", "12", "0.5", "-2", "1e2", ".", "x", ":", " ", "  ", "\t"]
    lines = []
    for _ in range(3000):
        if rng.random() < 0.7:  # mostly near-valid lines with a random defect now and then
            toks = [str(rng.choice(["1", "-1", "0", "1.0", "2"]))]
            for _ in range(int(rng.integers(0, 5))):
                toks.append(f"{rng.integers(0, 50)}:{rng.choice(['1', '0.25', '-3', 'x', ''])}")
            line = " ".join(toks)
            if rng.random() < 0.2:
                k = int(rng.integers(0, len(line) + 1))
                line = line[:k] + str(rng.choice(pieces)) + line[k:]
        else:
            line = "".join(rng.choice(pieces, size=int(rng.integers(1, 9))))
        lines.append(line)
    src = _write(tmp_path / "r.libfm", lines)
    s = convert_libfm(src, src, str(tmp_path / "o"), bad_rows="skip", block_size=2048)
    want = [r for r in map(_libfm_reference, lines) if r is not None]
    t = _read_day(tmp_path / "o", 1)
    assert s["days"]["1"] == len(want) and 0 < len(want) < len(lines)
    assert t.column("label").to_pylist() == [y for y, _ in want]
    assert t.column("keys").to_pylist() == [
        field_keys(LIBFM_FIELD, np.array([i for i, _ in p], np.int64)).tolist() for _, p in want
    ]
    assert t.column("values").to_pylist() == [[np.float32(v) for _, v in p] for _, p in want]


# ------------------------------------------------------------------------------ libfm: issue 16


def _hashed_rows(root, day):
    t = _read_day(root, day)
    return list(
        zip(
            t.column("label").to_pylist(),
            t.column("keys").to_pylist(),
            t.column("values").to_pylist(),
        )
    )


def test_libfm_bare_indices_have_value_one_and_mix_with_idx_value(tmp_path):
    rng = np.random.default_rng(11)
    idx = [
        sorted(rng.choice(5000, size=int(rng.integers(1, 6)), replace=False).tolist())
        for _ in range(600)
    ]
    ys = rng.choice(["1", "-1"], size=600).tolist()
    bare = [" ".join([y, *map(str, i)]) for y, i in zip(ys, idx)]  # the RaFM authors' files
    ones = [" ".join([y, *(f"{k}:1" for k in i)]) for y, i in zip(ys, idx)]
    src = [_write(tmp_path / "bare", bare, newline="\r\n"), _write(tmp_path / "ones", ones)]
    s = convert_libfm_files(src, str(tmp_path / "o"), block_size=4096)
    assert s["days"] == {"1": 600, "2": 600} and s["skipped"] == 0
    got = _hashed_rows(tmp_path / "o", 1)
    assert got == _hashed_rows(tmp_path / "o", 2)  # 'idx' == 'idx:1'
    assert [k for _, k, _ in got] == [field_keys(LIBFM_FIELD, np.array(i)).tolist() for i in idx]
    assert all(v == [1.0] * len(i) for (_, _, v), i in zip(got, idx))
    # both forms in one line and one file
    mixed = _write(tmp_path / "mixed", ["1 3:0.5 17 204:2", "-1\t9", "0 5 6:0.25\t 7", "1"])
    s = convert_libfm_files([mixed], str(tmp_path / "m"))
    assert _hashed_rows(tmp_path / "m", 1) == [
        (1, field_keys(LIBFM_FIELD, np.array([3, 17, 204])).tolist(), [0.5, 1.0, 2.0]),
        (0, field_keys(LIBFM_FIELD, np.array([9])).tolist(), [1.0]),
        (0, field_keys(LIBFM_FIELD, np.array([5, 6, 7])).tolist(), [1.0, 0.25, 1.0]),
        (1, [], []),
    ]


@pytest.mark.parametrize(
    "line, token",
    [
        ("1 3:4:5", "features"),  # field-aware libFFM: refused
        ("1 :3:4", "features"),  # a colon in a blank run (read as '3:4' before issue 16)
        ("1 3: 4", "features"),
        ("1:1 3", "features"),  # a label with a value
        ("1 3:x", "feature 1"),
        ("1 2 -4", "feature 2"),
        ("1 2.5", "feature 1"),
        ("1 3:1e39", "feature 1"),  # not a float32
    ],
)
def test_libfm_malformed_tokens_name_file_line_and_token(tmp_path, line, token):
    src = _write(tmp_path / "tr", ["1 1 2", "0 3:1", line, "1 4"])
    with pytest.raises(DataError, match=rf"tr', line 3, column '{token}'"):
        convert_libfm_files([src], str(tmp_path / "o"))
    s = convert_libfm_files([src], str(tmp_path / "o"), bad_rows="skip")
    assert s["rows"] == 3 and s["skipped"] == 1


def test_libfm_any_number_of_files_become_days(tmp_path, capsys):
    sizes = [300, 200, 150, 100]
    files = [
        _write(tmp_path / f"f{i}.libfm", _libfm_lines(n, seed=i)[0]) for i, n in enumerate(sizes)
    ]
    s = convert_libfm_files(files, str(tmp_path / "a"), block_size=4096)
    assert s["days"] == {"1": 300, "2": 200, "3": 150, "4": 100}
    assert s["input_days"] == ["1", "2", "3", "4"]
    s = convert_libfm_files(files, str(tmp_path / "b"), days=[1, 1, 2, 3])
    assert s["days"] == {"1": 500, "2": 150, "3": 100}
    assert list_days(str(tmp_path / "b")) == ["1", "2", "3"]
    labels = _read_day(tmp_path / "b", 1).column("label").to_pylist()
    assert labels == _libfm_lines(300, 0)[1] + _libfm_lines(200, 1)[1]  # each file's own part
    for bad in ([1, 2], [1, 1, -2, 3], ["1", "1", "2", "3"]):
        with pytest.raises(ConfigError, match="'days' parameter of convert_libfm"):
            convert_libfm_files(files, str(tmp_path / "c"), days=bad)
    # the command line: INPUT... with and without --days; --train/--test still work
    ap = argparse.ArgumentParser(prog="psfm")
    add_cli(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(["convert", "libfm", *files, "--out", str(tmp_path / "d")])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "d" / "_convert.json").read_text())["days"] == {
        "1": 300,
        "2": 200,
        "3": 150,
        "4": 100,
    }
    args = ap.parse_args(
        ["convert", "libfm", *files, "--days", "1,1,2,3", "--out", str(tmp_path / "e")]
    )
    assert args.func(args) == 0
    assert "day=3" in capsys.readouterr().out and list_days(str(tmp_path / "e")) == ["1", "2", "3"]
    args = ap.parse_args(
        [
            "convert",
            "libfm",
            "--train",
            files[0],
            "--valid",
            files[1],
            "--test",
            files[2],
            "--out",
            str(tmp_path / "f"),
        ]
    )
    assert args.func(args) == 0
    assert list_days(str(tmp_path / "f")) == ["1", "2", "3"]
    args = ap.parse_args(
        [
            "convert",
            "libfm",
            files[3],
            "--train",
            files[0],
            "--test",
            files[2],
            "--out",
            str(tmp_path / "g"),
        ]
    )
    with pytest.raises(ConfigError, match="either INPUT files or --train and --test"):
        args.func(args)
    with pytest.raises(SystemExit):
        ap.parse_args(["convert", "libfm", *files, "--days", "1,x", "--out", "h"])


_FIELDS = {"user": (0, 500), "item": (500, 540), "tag": (1500, 1600)}


def _field_lines(n: int, seed: int) -> tuple[list[str], list[dict]]:
    """libFM lines with one user, one item (driving the label) and an optional tag, in random
    order, bare indices or ':1'; and the expected row of every line."""
    rng = np.random.default_rng(seed)
    lines, rows = [], []
    for _ in range(n):
        row = {f: int(rng.integers(lo, hi)) for f, (lo, hi) in _FIELDS.items()}
        if rng.random() < 0.4:
            row["tag"] = None
        y = int(rng.random() < (0.85 if row["item"] < 520 else 0.15))
        feats = [str(v) if rng.random() < 0.5 else f"{v}:1" for v in row.values() if v is not None]
        rng.shuffle(feats)
        lines.append(" ".join([str(2 * y - 1), *feats]))
        rows.append({"label": y, **row})
    return lines, rows


def _field_map_file(path):
    lines = ["# idx field: first the users (blank-separated), then items and tags (TSV)", ""]
    lines += [f"{i} user" for i in range(*_FIELDS["user"])]
    lines += [f"{i}\t{f}" for f in ("item", "tag") for i in range(*_FIELDS[f])]
    lines += ["7 user"]  # the same pair twice is fine
    return _write(path, lines)


def test_libfm_field_map_writes_per_field_columns_psfm_reads_as_categorical(tmp_path):
    tr, tr_rows = _field_lines(3000, 0)
    te, te_rows = _field_lines(1000, 1)
    files = [_write(tmp_path / "train", tr), _write(tmp_path / "test", te)]
    fmap = _field_map_file(tmp_path / "fields.txt")
    s = convert_libfm_files(files, str(tmp_path / "o"), field_map=fmap, block_size=8192)
    assert s["layout"] == "columns" and s["fields"] == ["user", "item", "tag"]
    t = _read_day(tmp_path / "o", 1)
    assert t.schema.names == ["label", "user", "item", "tag"]
    assert [t.schema.field(c).type for c in t.schema.names] == [pa.int8()] + [pa.int64()] * 3
    assert t.to_pylist() == tr_rows  # null where a line has no tag
    # psfm's own reader: categorical columns, keys field_keys(field, idx), masked when null
    schema = resolve_schema(DataConfig(), t.schema, "day=1")
    assert schema.layout == "columns" and schema.categorical == ("user", "item", "tag")
    rows = decode_rows(t, schema, "logistic", "fail", "day=1")
    for j, f in enumerate(schema.categorical, start=1):
        v = np.array([r[f] if r[f] is not None else -1 for r in tr_rows])
        assert np.array_equal(rows.mask[:, j], v >= 0)
        assert np.array_equal(rows.keys[v >= 0, j], field_keys(f, v[v >= 0]))
    # the same with --field-ranges
    spec = ",".join(f"{f}:{lo}-{hi - 1}" for f, (lo, hi) in _FIELDS.items())
    convert_libfm_files(files, str(tmp_path / "r"), field_ranges=spec)
    assert _read_day(tmp_path / "r", 2).equals(_read_day(tmp_path / "o", 2))
    report = _train(tmp_path / "o")
    assert report["test"]["days"] == ["2"] and report["test"]["auc"] > 0.65


def test_libfm_field_map_rules_unknown_index_two_per_field_non_one_value(tmp_path):
    fmap = _field_map_file(tmp_path / "fields.txt")
    good = ["1 3 510", "0 4 520 1501"]
    cases = [  # (line 3, error match, rule)
        (
            "1 3 9999",
            r"line 3, column 'feature 2': value '9999'",
            "with a field map every index must be in the map",
        ),
        (
            "1 510 3 12 1501",
            r"line 3, column 'user': value '3 and 12'",
            "with a field map a line has at most one index per field",
        ),
        (
            "1 3:1 530:0.5",
            r"line 3, column 'feature 2': value '530:0.5'",
            "with a field map every value must be 1 (per-field columns are categorical)",
        ),
    ]
    for k, (line, match, rule) in enumerate(cases):
        src = _write(tmp_path / f"in{k}", [*good, line, "0 5 530"])
        with pytest.raises(DataError, match=rf"in{k}', {match} breaks the rule: {re.escape(rule)}"):
            convert_libfm_files([src], str(tmp_path / f"o{k}"), field_map=fmap)
        s = convert_libfm_files([src], str(tmp_path / f"o{k}"), field_map=fmap, bad_rows="skip")
        assert s["rows"] == 3 and s["skipped_by_rule"] == {rule: 1}
        assert _read_day(tmp_path / f"o{k}", 1).column("user").to_pylist() == [3, 4, 5]


@pytest.mark.parametrize(
    "lines, match",
    [
        (["1 user", "2 label"], r"'label' breaks the rule: a field name is a column name"),
        (["1 user", "2 item-id"], r"'item-id' breaks the rule"),
        (["1 user", "2 9lives"], r"'9lives' breaks the rule"),
        (
            ["1 user", "x item"],
            r"line 2: 'x item' breaks the rule: a field-map line is 'idx field'",
        ),
        (["1 user", "", "2 item extra"], r"line 3: '2 item extra'"),
        (
            ["1 user", "2 item", "1 item"],
            r"lines 1 and 3: index 1 is given to fields 'user' and "
            r"'item'",
        ),
        (["# nothing"], r"has no 'idx field' lines"),
    ],
)
def test_libfm_field_map_file_errors(tmp_path, lines, match):
    src = _write(tmp_path / "in", ["1 1 2"])
    fmap = _write(tmp_path / "map", lines)
    with pytest.raises(DataError, match=match):
        convert_libfm_files([src], str(tmp_path / "o"), field_map=fmap)
    assert not (tmp_path / "o").exists()  # checked before anything is written


@pytest.mark.parametrize(
    "spec, match",
    [
        ("user:0-9,item:5-20", r"disjoint ranges \(user:0-9 and item:5-20 overlap\)"),
        ("user:0-9,label:10-20", "valid field names"),
        ("user:9-0", "lo <= hi"),
        ("user=0-9", "'field:lo-hi'"),
        ("", "at least one"),
    ],
)
def test_libfm_field_ranges_errors(tmp_path, spec, match):
    src = _write(tmp_path / "in", ["1 1 2"])
    with pytest.raises(ConfigError, match=match):
        convert_libfm_files([src], str(tmp_path / "o"), field_ranges=spec)
    with pytest.raises(ConfigError, match="'field_ranges' parameter .* None when 'field_map'"):
        convert_libfm_files([src], str(tmp_path / "o"), field_map=src, field_ranges="a:1")


def test_skipping_every_line_of_an_input_is_an_error_not_an_empty_success(tmp_path):
    good = _write(tmp_path / "good", ["1 1 2", "0 3"])
    awful = _write(tmp_path / "awful", ["1 3:4:5", "7 1", "", "1 x"])
    with pytest.raises(
        DataError,
        match=r"awful': all 4 data lines were skipped as bad "
        r"\(bad_rows='skip'; by rule: ",
    ) as e:
        convert_libfm_files([awful], str(tmp_path / "a"), bad_rows="skip")
    for rule in (
        "empty line): 1",
        "labels must be -1, 0 or 1: 1",
        "one ':' per feature): 1",
        "finite (float32) number: 1",
    ):
        assert rule in str(e.value)
    assert not list((tmp_path / "a").rglob("*.parquet"))
    with pytest.raises(DataError, match=r"awful': all 4 data lines"):  # one file of several
        convert_libfm_files([good, awful, good], str(tmp_path / "b"), bad_rows="skip")
    with pytest.raises(DataError, match=r"'(.*)field_ok': all 2 data lines.*index must be in"):
        convert_libfm_files(
            [_write(tmp_path / "field_ok", ["1 1 2", "0 3"])],
            str(tmp_path / "c"),
            field_ranges="user:100-200",
            bad_rows="skip",
        )
    empty = _write(tmp_path / "empty", [])
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty' has no data lines"):
        convert_libfm(good, empty, str(tmp_path / "d"))
    # the same rule for criteo and avazu
    crit = _write(tmp_path / "day_3", ["1\t2", "x"])
    with pytest.raises(DataError, match=r"day_3': all 2 data lines .*wrong number of fields: 2"):
        convert_criteo([crit], str(tmp_path / "e"), bad_rows="skip")
    av = _write(tmp_path / "av.csv", [AVAZU_HEADER, "1,2,3"])
    with pytest.raises(DataError, match=r"av.csv': all 1 data lines"):
        convert_avazu([av], str(tmp_path / "f"), bad_rows="skip")

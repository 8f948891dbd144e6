"""Feature statistics (psfm.datasets.stats): counts against a brute-force count, levels against
levels_from_counts, parameter counts by hand, the text table, the plot and the command."""

from __future__ import annotations

import argparse
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psfm.data.batch import log_bucket
from psfm.datasets.stats import add_cli, count_features, feature_stats, format_stats, plot_stats
from psfm.errors import ConfigError
from psfm.hashing import field_keys
from psfm.ps.levels import level_thresholds, levels_from_counts


def _day_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    c1 = rng.zipf(1.6, n) % 50
    return pa.table(
        {
            "label": pa.array(rng.integers(0, 2, n), pa.int8()),
            "C1": pa.array(np.where(rng.random(n) < 0.1, None, c1).tolist(), pa.int64()),
            "C2": pa.array([None if v == 0 else f"s{v}" for v in rng.integers(0, 9, n)]),
            "I1": pa.array(
                np.where(rng.random(n) < 0.2, None, rng.exponential(30, n)).tolist(), pa.float32()
            ),
        }
    )


@pytest.fixture()
def tiny(tmp_path):
    tables = {}
    for d in (1, 2, 3):
        t = _day_table(300 + 50 * d, d)
        (tmp_path / f"day={d}").mkdir()
        pq.write_table(t, tmp_path / f"day={d}" / "part-0.parquet", row_group_size=64)
        tables[str(d)] = t
    return tmp_path, tables


def _brute_force(tables) -> Counter:
    """Occurrences per key, one row and one column at a time."""
    c: Counter = Counter()
    for t in tables:
        for row in t.to_pylist():
            if row["C1"] is not None:
                c[int(field_keys("C1", np.array([row["C1"]]))[0])] += 1
            if row["C2"] is not None:
                c[int(field_keys("C2", pa.array([row["C2"]]))[0])] += 1
            if row["I1"] is not None:
                b = log_bucket(np.array([np.float32(row["I1"])]))
                c[int(field_keys("I1", b)[0])] += 1
    return c


def test_counts_histogram_and_levels_equal_a_brute_force_count(tiny):
    root, tables = tiny
    want = _brute_force([tables["1"], tables["2"]])  # default: the training days 1, 2
    keys, counts, info = count_features(str(root))
    assert info["days"] == ["1", "2"] and info["rows"] == 350 + 400
    assert dict(zip(keys.tolist(), counts.tolist())) == want
    s = feature_stats(str(root), ranks=(1, 2, 4, 8), count_per_dim=2.0)
    assert s["features"] == len(want) and s["occurrences"] == sum(want.values())
    bins: Counter = Counter()
    occ: Counter = Counter()
    for n in want.values():
        bins[int(math.log2(n))] += 1
        occ[int(math.log2(n))] += n
    assert [(h["lo"], h["features"], h["occurrences"]) for h in s["histogram"]] == [
        (2**b, bins[b], occ[b]) for b in range(max(bins) + 1)
    ]
    lev = levels_from_counts(
        np.array(list(want.values()), np.float64), level_thresholds((1, 2, 4, 8), 2.0)
    )
    assert [p["features"] for p in s["levels"]["per_level"]] == np.bincount(
        lev, minlength=5
    ).tolist()
    assert s["levels"]["thresholds"] == level_thresholds((1, 2, 4, 8), 2.0).tolist()
    every = feature_stats(str(root), days="1..3")
    assert every["features"] == len(_brute_force(tables.values()))


def _hand_example(tmp_path):
    """Feature counts 1, 2, 3, 5, 9 in one column over two days (day 2 is the test day)."""
    vals = ["a"] + ["b"] * 2 + ["c"] * 3 + ["d"] * 5 + ["e"] * 9
    for d, v in ((1, vals), (2, ["a"])):
        (tmp_path / f"day={d}").mkdir()
        pq.write_table(
            pa.table({"label": pa.array([0] * len(v), pa.int8()), "C1": v}),
            tmp_path / f"day={d}" / "p.parquet",
        )
    return str(tmp_path)


def test_parameter_counts_by_hand(tmp_path):
    root = _hand_example(tmp_path)
    s = feature_stats(root, ranks=(1, 2, 4, 8))
    # thresholds 1, sqrt(2), sqrt(8), sqrt(32): counts 1, 2, 3, 5, 9 -> levels 1, 2, 3, 3, 4
    assert [p["features"] for p in s["levels"]["per_level"]] == [0, 1, 1, 2, 1]
    assert [p["occurrences"] for p in s["levels"]["per_level"]] == [0, 1, 2, 8, 9]
    assert [(h["lo"], h["hi"], h["features"], h["occurrences"]) for h in s["histogram"]] == [
        (1, 1, 1, 1),
        (2, 3, 2, 5),
        (4, 7, 1, 5),
        (8, 15, 1, 9),
    ]
    p = s["params"]
    assert p["lr"] == 5
    assert [f["params"] for f in p["fm"]] == [10, 15, 25, 45]  # 5 (1 + D)
    assert p["difacto"] == 2 + 3 + 5 + 5 + 9  # sum (1 + D_k)
    assert p["rafm_rows_per_level"] == [5, 4, 3, 1]  # |F_p| = #{k >= p}
    assert p["rafm"] == 5 + 1 * 5 + 2 * 4 + 4 * 3 + 8 * 1
    # explicit thresholds and admission: count 1 gets no parameters
    s = feature_stats(root, ranks=(1, 2, 4, 8), level_min_count=(2, 3, 5, 9), admit_min_count=2)
    assert s["admitted_features"] == 4
    assert [p["features"] for p in s["levels"]["per_level"]] == [0, 1, 1, 1, 1]
    assert s["params"]["difacto"] == 4 + 1 + 2 + 4 + 8
    assert s["params"]["rafm"] == 4 + 1 * 4 + 2 * 3 + 4 * 2 + 8 * 1
    with pytest.raises(ConfigError, match="level_min_count"):
        feature_stats(root, ranks=(1, 2), level_min_count=(1,))
    text = format_stats(s)
    assert "RaFM{1,2,4,8}" in text and "FM(8)" in text and "5-7" not in text
    assert "4-7" in text and "level_min_count [2.0, 3.0, 5.0, 9.0]" in text


def test_hashed_layout_is_detected(tmp_path):
    keys = [[1, 2], [2], [2, 3, 3]]
    for d in (1, 2):
        (tmp_path / f"day={d}").mkdir()
        pq.write_table(
            pa.table(
                {
                    "label": pa.array([0, 1, 0], pa.int8()),
                    "keys": pa.array(keys, pa.list_(pa.uint64())),
                }
            ),
            tmp_path / f"day={d}" / "p.parquet",
        )
    s = feature_stats(str(tmp_path))
    assert s["layout"] == "hashed" and s["features"] == 3 and s["occurrences"] == 6


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    s = feature_stats(_hand_example(tmp_path))
    out = tmp_path / "hist.png"
    plot_stats(s, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_command(tiny, capsys):
    root, _ = tiny
    ap = argparse.ArgumentParser(prog="psfm")
    add_cli(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(
        [
            "stats",
            "--data",
            str(root),
            "--days",
            "1..3",
            "--ranks",
            "2,8",
            "--json",
            str(root / "s.json"),
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "days 1, 2, 3: 1,200 rows" in out and "FM(8)" in out and "RaFM{2,8}" in out
    assert (root / "s.json").exists()

"""Tests of the synthetic CTR log generator (psfm.datasets.gen)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psfm.datasets.gen import (
    BLOCK_ROWS,
    GEN_JSON,
    GenSpec,
    criteo_bucket,
    gen_schema,
    generate,
    generate_day,
    logit_terms,
    rank_auc,
    true_model,
)
from psfm.errors import ConfigError

SMALL = GenSpec.small()


@pytest.fixture(scope="module")
def default_day() -> pa.Table:
    return generate_day(GenSpec(), day=1, rows=40_000, seed=0)


def _read_day(root: Path, day: int) -> pa.Table:
    files = sorted((root / f"day={day}").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


# ------------------------------------------------------------------------------ determinism


def test_same_inputs_same_table_and_seed_changes_it() -> None:
    a = generate_day(SMALL, day=2, rows=5_000, seed=7)
    b = generate_day(SMALL, day=2, rows=5_000, seed=7)
    assert a.equals(b)
    assert not a.equals(generate_day(SMALL, day=2, rows=5_000, seed=8))
    assert not a.equals(generate_day(SMALL, day=3, rows=5_000, seed=7))
    # each day draws its own rows (not just new drift ids)
    c = generate_day(SMALL, day=3, rows=5_000, seed=7)
    assert not np.array_equal(a.column("p_true").to_numpy(), c.column("p_true").to_numpy())


def test_day_alone_equals_day_of_multi_day_run(tmp_path: Path) -> None:
    rows = BLOCK_ROWS + 9_464  # two RNG blocks
    paths = generate(
        tmp_path,
        days=3,
        rows_per_day=rows,
        seed=5,
        spec=SMALL,
        rows_per_file=30_000,
        row_group_rows=10_000,
    )
    assert [Path(p).relative_to(tmp_path).as_posix() for p in paths] == [
        f"day={d}/part-{i:05d}.parquet" for d in (1, 2, 3) for i in range(3)
    ]
    for d in (1, 3):
        alone = generate_day(SMALL, day=d, rows=rows, seed=5)
        assert _read_day(tmp_path, d).equals(alone)
    md = pq.ParquetFile(tmp_path / "day=2" / "part-00002.parquet").metadata
    assert md.num_rows == rows - 60_000
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [10_000, 5_000]
    md0 = pq.ParquetFile(paths[0]).metadata
    assert [md0.row_group(i).num_rows for i in range(md0.num_row_groups)] == [10_000] * 3


def _ranks(fp, t: pa.Table, vocab: tuple[int, ...]) -> np.ndarray:
    """The popularity ranks of field ``fp``'s written values (-1: missing): ids map back to
    ranks (id mod vocab), numeric counts through the Criteo bucket."""
    col = t.column(fp.name)
    miss = col.is_null().to_numpy(zero_copy_only=False)
    vals = col.fill_null(0).to_numpy()
    if fp.numeric:
        rank = fp.rank_of_bucket[criteo_bucket(vals)]
    else:
        rank = vals % vocab[int(fp.name[1:]) - 1]
    return np.where(miss, -1, rank)


def test_true_model_is_shared_by_all_days_and_matches_p_true() -> None:
    """Recompute p_true from the written columns with the explicit prefix-interaction formula
    (a loop over field pairs): ids map back to ranks (id mod vocab), numeric counts through the
    Criteo bucket; nulls contribute nothing."""
    model = true_model(SMALL, seed=3)
    vocab = SMALL.vocab()
    for day in (1, 4):
        t = generate_day(SMALL, day=day, rows=3_000, seed=3)
        n = t.num_rows
        lin = np.zeros(n)
        vecs, dims = [], []
        for fp in model.fields:
            rank = _ranks(fp, t, vocab)
            miss = rank < 0
            lin += np.where(miss, 0.0, fp.linear[rank])
            has = (rank >= 0) & (rank < fp.head)
            r = np.where(has, rank, 0)
            vecs.append(np.where(has[:, None], fp.factors[r], 0.0))
            dims.append(np.where(has, fp.dims[np.minimum(r, max(fp.head - 1, 0))], 0))
        pair = np.zeros(n)
        for i in range(len(vecs)):
            for j in range(i + 1, len(vecs)):
                d = np.minimum(dims[i], dims[j])
                prefix = np.arange(vecs[i].shape[1])[None, :] < d[:, None]
                pair += (vecs[i] * vecs[j] * prefix).sum(axis=1)
        p = 1.0 / (1.0 + np.exp(-(model.bias + lin + pair)))
        np.testing.assert_allclose(t.column("p_true").to_numpy(), p, rtol=2e-4, atol=1e-6)
        lin2, pair2, bias2 = logit_terms(SMALL, day, 3_000, 3)
        assert bias2 == model.bias
        np.testing.assert_allclose(lin2, lin, atol=1e-4)
        np.testing.assert_allclose(pair2, pair, atol=1e-4)


def test_rank_aware_truth_uses_the_vector_of_the_pairs_smaller_dim() -> None:
    """interaction = "rank_aware": recompute the pairwise term with an explicit loop over field
    pairs, each pair through its values' own vectors of dimension min(dim_f, dim_g)."""
    spec = dataclasses.replace(SMALL, interaction="rank_aware")
    model = true_model(spec, seed=3)
    _, pair, _ = logit_terms(spec, 2, 2_000, 3)
    t = generate_day(spec, day=2, rows=2_000, seed=3)
    vocab = spec.vocab()
    ranks = [_ranks(fp, t, vocab) for fp in model.fields]
    want = np.zeros(t.num_rows)
    for i, fi in enumerate(model.fields):
        for j in range(i + 1, len(model.fields)):
            fj = model.fields[j]
            for r in range(t.num_rows):
                a, b = ranks[i][r], ranks[j][r]
                if not (0 <= a < fi.head and 0 <= b < fj.head):
                    continue
                d = min(fi.dims[a], fj.dims[b])
                p = spec.rank_dims.index(d)
                want[r] += float(fi.levels[p][a].astype(np.float64) @ fj.levels[p][b])
    np.testing.assert_allclose(pair, want, atol=2e-4)
    assert 0.3 < pair.var() / (pair.var() + logit_terms(spec, 2, 2_000, 3)[0].var()) < 0.8
    assert all(not f.levels for f in true_model(SMALL, seed=3).fields)  # prefix: none drawn


# ------------------------------------------------------------------------------ schema, stats


def test_schema_and_column_order(default_day: pa.Table) -> None:
    spec = GenSpec()
    names = ["label", "p_true"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    assert default_day.column_names == names
    assert default_day.schema.equals(gen_schema(spec))
    types = [f.type for f in default_day.schema]
    assert types[:2] == [pa.int8(), pa.float32()]
    assert types[2:15] == [pa.float32()] * 13 and types[15:] == [pa.int64()] * 26
    assert default_day.column("label").null_count == 0
    assert default_day.column("p_true").null_count == 0
    assert generate_day(spec, day=1, rows=0, seed=0).schema.equals(gen_schema(spec))


def test_missing_rate_labels_and_ctr(default_day: pa.Table) -> None:
    n = default_day.num_rows
    feats = default_day.column_names[2:]
    rates = np.array([default_day.column(c).null_count / n for c in feats])
    sd = math.sqrt(0.05 * 0.95 / n)
    assert np.all(np.abs(rates - 0.05) < 5 * sd)
    assert abs(rates.mean() - 0.05) < 5 * sd / math.sqrt(len(feats))
    y = default_day.column("label").to_numpy()
    p = default_day.column("p_true").to_numpy()
    assert set(np.unique(y)) == {0, 1}
    assert np.all((p >= 0) & (p <= 1))
    assert abs(y.mean() - 0.2) < 5 * math.sqrt(0.2 * 0.8 / n)
    assert abs(p.mean() - 0.2) < 0.01
    # labels are Bernoulli(p_true): calibration within bins of p_true
    for lo, hi in ((0.0, 0.1), (0.1, 0.3), (0.3, 1.0)):
        sel = (p >= lo) & (p < hi)
        assert abs(y[sel].mean() - p[sel].mean()) < 5 * math.sqrt(0.25 / sel.sum())


def test_spec_knobs_change_rates() -> None:
    spec = dataclasses.replace(SMALL, missing_rate=0.3, base_ctr=0.05)
    t = generate_day(spec, day=1, rows=20_000, seed=1)
    feats = t.column_names[2:]
    rate = sum(t.column(c).null_count for c in feats) / (t.num_rows * len(feats))
    assert abs(rate - 0.3) < 0.01
    assert abs(t.column("label").to_numpy().mean() - 0.05) < 0.01
    assert abs(t.column("p_true").to_numpy().mean() - 0.05) < 0.005
    t0 = generate_day(dataclasses.replace(SMALL, missing_rate=0.0), day=1, rows=5_000, seed=1)
    assert all(t0.column(c).null_count == 0 for c in t0.column_names)


def test_numeric_columns_are_heavy_tailed_counts(default_day: pa.Table) -> None:
    x = np.concatenate([default_day.column(f"I{i}").drop_null().to_numpy() for i in range(1, 14)])
    assert np.all(x >= 0) and np.all(x == np.floor(x))
    assert np.mean(x == 0) > 0.05
    assert np.quantile(x, 0.999) > 50 * max(np.median(x), 1.0)
    assert criteo_bucket(np.array([0.0, 1.0, 2.0, 3.0, 5.0, 100.0])).tolist() == [
        0,
        1,
        2,
        1,
        2,
        21,
    ]


# ------------------------------------------------------------------------------ zipf, drift


def test_zipf_popularity_decays_with_rank() -> None:
    spec = dataclasses.replace(SMALL, drift=0.0)
    i = int(np.argmax(spec.vocab()))
    ids = generate_day(spec, day=1, rows=100_000, seed=2).column(f"C{i + 1}").drop_null()
    counts = np.bincount(ids.to_numpy(), minlength=spec.vocab()[i])
    assert counts[0] > 30 * counts[99] > 0
    blocks = [counts[a:b].mean() for a, b in ((0, 10), (10, 100), (100, 1000), (1000, 2000))]
    assert all(x > 2 * y for x, y in zip(blocks, blocks[1:], strict=False))
    probs = true_model(spec, seed=2).fields[spec.n_numeric + i].probs
    np.testing.assert_allclose(counts[:5] / counts.sum(), probs[:5], rtol=0.1)


def test_drift_brings_a_few_new_ids_each_day() -> None:
    n = 50_000
    d1 = generate_day(SMALL, day=1, rows=n, seed=4)
    d3 = generate_day(SMALL, day=3, rows=n, seed=4)
    head = SMALL.tier_counts[0]
    new_cells = total = 0
    for i, v in enumerate(SMALL.vocab()):
        c1 = d1.column(f"C{i + 1}").drop_null().to_numpy()
        c3 = d3.column(f"C{i + 1}").drop_null().to_numpy()
        moved = c3 >= v
        if v <= head:
            assert not moved.any()
        else:  # day-specific ids r + v * day, only for tail ranks
            r = c3[moved] - 3 * v
            assert np.all((r >= head) & (r < v))
            assert moved.any()
        new_cells += int(np.count_nonzero(~np.isin(c3, c1)))
        total += c3.size
    assert 0 < new_cells < 0.05 * total
    still = generate_day(dataclasses.replace(SMALL, drift=0.0), day=3, rows=n, seed=4)
    for i, v in enumerate(SMALL.vocab()):
        assert pa.compute.max(still.column(f"C{i + 1}")).as_py() < v


# ------------------------------------------------------------------------------ AUC, signal


def test_rank_auc_matches_brute_force_with_ties() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(0, 15, 700).astype(np.float32)
    y = rng.random(700) < 0.3
    pos, neg = s[y][:, None], s[~y][None, :]
    brute = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
    assert rank_auc(s, y) == pytest.approx(brute, abs=1e-12)
    assert rank_auc([1.0, 2.0, 3.0], [0, 1, 1]) == 1.0
    assert rank_auc([1.0, 1.0], [0, 1]) == 0.5
    assert math.isnan(rank_auc([1.0, 2.0], [1, 1]))


def test_gen_json_reports_bayes_auc(tmp_path: Path) -> None:
    generate(tmp_path, days=2, rows_per_day=20_000, seed=1, spec=SMALL)
    meta = json.loads((tmp_path / GEN_JSON).read_text())
    assert GenSpec.from_dict(meta["spec"]) == SMALL
    assert meta["seed"] == 1 and [d["rows"] for d in meta["per_day"]] == [20_000, 20_000]
    for rec in meta["per_day"]:
        t = _read_day(tmp_path, rec["day"])
        y, p = t.column("label").to_numpy(), t.column("p_true").to_numpy()
        assert rec["bayes_auc"] == pytest.approx(rank_auc(p, y), abs=1e-12)
        assert rec["mean_label"] == pytest.approx(y.mean())
        assert 0.75 < rec["bayes_auc"] < 0.95
        assert rec["linear_auc"] < rec["bayes_auc"] - 0.03


def test_interactions_carry_a_clear_share_of_the_signal(default_day: pa.Table) -> None:
    lin, pair, _ = logit_terms(GenSpec(), 1, default_day.num_rows, 0)
    share = pair.var() / (lin + pair).var()
    assert 0.3 < share < 0.8
    assert abs(np.corrcoef(lin, pair)[0, 1]) < 0.05
    y = default_day.column("label").to_numpy()
    bayes = rank_auc(default_day.column("p_true").to_numpy(), y)
    assert 0.75 < bayes < 0.85
    assert rank_auc(lin, y) < bayes - 0.05
    flat = dataclasses.replace(SMALL, interaction_scale=0.0)
    _, pair0, _ = logit_terms(flat, 1, 20_000, 0)
    assert np.all(pair0 == 0)
    t0 = generate_day(flat, day=1, rows=20_000, seed=0)
    t1 = generate_day(SMALL, day=1, rows=20_000, seed=0)
    auc0 = rank_auc(t0.column("p_true").to_numpy(), t0.column("label").to_numpy())
    auc1 = rank_auc(t1.column("p_true").to_numpy(), t1.column("label").to_numpy())
    assert auc1 > auc0 + 0.05


def test_frequent_values_get_higher_rank_factors() -> None:
    model = true_model(SMALL, seed=0)
    fp = model.fields[-1]
    assert fp.dims[:5].tolist() == [8] * 5
    assert np.all(np.diff(fp.dims) <= 0)
    nz = (fp.factors[:-1] != 0).sum(axis=1)
    assert np.all(nz <= fp.dims) and np.all(fp.factors[-1] == 0)
    for fp in model.fields:  # E[v_f] = 0: no single field predicts the pairwise term
        mean = fp.probs[: fp.head] @ fp.factors[: fp.head].astype(np.float64)
        assert np.abs(mean).max() < 1e-4 * np.abs(fp.factors).max()


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("zipf_s", 0.5),
        ("zipf_s", 1.0),
        ("base_ctr", 0.0),
        ("base_ctr", 1.5),
        ("missing_rate", 1.0),
        ("drift", -0.1),
        ("n_numeric", -1),
        ("n_categorical", 2.5),
        ("vocab_sizes", (10, 20)),
        ("vocab_sizes", (0,) * 26),
        ("rank_dims", (2, 1)),
        ("rank_dims", ()),
        ("tier_counts", (1, 2, 3, 4)),
        ("tier_counts", (10, 5)),
        ("interaction_scale", -1.0),
        ("linear_scale", float("nan")),
        ("interaction", "rafm"),
    ],
)
def test_spec_validation(param: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"'{param}' parameter of GenSpec"):
        GenSpec(**{param: value})


def test_spec_validation_message_and_other_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        GenSpec(zipf_s=0.5)
    assert str(e.value) == "The 'zipf_s' parameter of GenSpec must be a float > 1. Got 0.5 instead."
    assert isinstance(e.value, ValueError)
    with pytest.raises(ConfigError, match="n_categorical"):
        GenSpec(n_numeric=0, n_categorical=0)
    with pytest.raises(ConfigError, match="'day' parameter"):
        generate_day(SMALL, day=0, rows=10, seed=0)
    with pytest.raises(ConfigError, match="'seed' parameter"):
        generate_day(SMALL, day=1, rows=10, seed=-1)
    with pytest.raises(ConfigError, match="'rows_per_file' parameter"):
        generate(tmp_path, days=1, rows_per_day=10, spec=SMALL, rows_per_file=0)
    with pytest.raises(ConfigError, match="'compression' parameter"):
        generate(tmp_path, days=1, rows_per_day=10, spec=SMALL, compression="rar")
    spec = GenSpec(vocab_sizes=[5] * 26, rank_dims=[1, 4], tier_counts=[3, 1])
    assert spec.vocab_sizes == (5,) * 26 and hash(spec) == hash(GenSpec.from_dict(spec.to_dict()))
    assert len(GenSpec().vocab()) == 26 and min(GenSpec().vocab()) == 10


def test_generate_replaces_stale_parts(tmp_path: Path) -> None:
    stale = tmp_path / "day=1" / "part-00009.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    paths = generate(tmp_path, days=1, rows_per_day=1_000, spec=SMALL)
    assert not stale.exists() and [Path(p).name for p in paths] == ["part-00000.parquet"]

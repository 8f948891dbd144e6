"""Warm start (``train.init_from``): a run continues another run's model checkpoint (full FTRL
state, re-split by key over another shard count) or an exported model (weights only), after
checks that refuse a source of another model or schema. In process, synchronous steps, so the
models compare bit for bit; the Ray backend goes through the same run loop."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from psfm.checkpoint import MANIFEST, load_checkpoint
from psfm.config import load_config
from psfm.datasets.gen import GenSpec, generate
from psfm.errors import CheckpointError, ConfigError
from psfm.export import export_model, model_states, restore_model
from psfm.local_backend import make_shards
from psfm.ps.client import LocalClient
from psfm.ps.shard import ParameterShard
from psfm.ps.snapshot import resplit
from psfm.trainer import train_local

# fixed batch size and rates: the automatic ones follow the size of a pass, which differs
# between a run on days 1..3 and one on day 3 alone
BASE = (
    'ps.mode="sync"',
    "data.batch_size=64",
    "ftrl.linear.alpha=0.1",
    "ftrl.factor.alpha=0.1",
    'data.test_days="4"',
    "train.keep_checkpoints=0",
)
KINDS = {
    "lr": ('model.kind="lr"',),
    "fm": ('model.kind="fm"', "model.ranks=[4]"),
    # eviction of keys unseen for a day: the warm run continues the source's day count
    "fm-ttl": ('model.kind="fm"', "model.ranks=[4]", "levels.ttl_days=1"),
    # online levels keep their counts in the state: a warm start continues them exactly
    "rafm-online": ('model.kind="rafm"', "model.ranks=[1,2,4]", 'levels.policy="online"'),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    generate(root, days=4, rows_per_day=3000, spec=GenSpec.small(), seed=5, row_group_rows=1000)
    return root


def _train(root, run_dir, days, *sets):
    cfg = load_config(
        None,
        [
            f"data.root={json.dumps(str(root))}",
            f"train.run_dir={json.dumps(str(run_dir))}",
            f'data.train_days="{days}"',
            *BASE,
            *sets,
        ],
    )
    return train_local(cfg)


def _same_model(a, b):
    ma, mb = restore_model(str(a))[1], restore_model(str(b))[1]
    assert ma.keys() == mb.keys()
    for k in ma:
        assert np.array_equal(ma[k], mb[k]), k


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_days_1_to_3_equal_days_1_2_then_a_warm_start_on_day_3(data, tmp_path, kind):
    sets = KINDS[kind]
    _train(data, tmp_path / "all", "1..3", *sets)
    _train(data, tmp_path / "first", "1..2", *sets)
    rep = _train(
        data,
        tmp_path / "next",
        "3",
        *sets,
        f"train.init_from={json.dumps(str(tmp_path / 'first'))}",
    )
    _same_model(tmp_path / "all", tmp_path / "next")
    assert rep["train"]["days"] == ["3"]
    # the source state is the warm run's own first checkpoint; shards continue its day count
    manifest = json.loads((tmp_path / "next" / "checkpoints" / "day=3" / MANIFEST).read_text())
    assert manifest["day_base"] == 2 and manifest["init_from"] == str(tmp_path / "first")
    assert (tmp_path / "next" / "checkpoints" / "day=init" / MANIFEST).exists()


def test_a_warm_start_re_splits_the_state_over_another_shard_count(data, tmp_path):
    fm = KINDS["fm"]
    _train(data, tmp_path / "all3", "1..3", *fm, "ps.shards=3")
    _train(data, tmp_path / "first2", "1..2", *fm, "ps.shards=2")
    init = f"train.init_from={json.dumps(str(tmp_path / 'first2'))}"
    _train(data, tmp_path / "next3", "3", *fm, "ps.shards=3", init)
    _same_model(tmp_path / "all3", tmp_path / "next3")
    states, _ = load_checkpoint(str(tmp_path / "next3" / "checkpoints" / "day=init"))
    assert len(states) == 3


def _shard(kind, ranks, sid=0, n=1):
    sets = [f'model.kind="{kind}"', f"model.ranks={ranks}", "ftrl.linear.alpha=0.1"]
    cfg = load_config(None, [*sets, "ftrl.factor.alpha=0.1"])
    return cfg, ParameterShard(cfg.model, cfg.ftrl, cfg.levels, 0, sid, n)


def _weights(shards):
    """Every key's weight and factor rows, by key, over shards."""
    out = {}
    for s in shards:
        wt = s.weights()
        for i, k in enumerate(wt["keys"]):
            rows = []
            p = 1
            while f"rows{p}" in wt:
                at = np.flatnonzero(wt[f"rows{p}"] == i)
                rows.append(wt[f"v{p}"][at[0]].tolist() if at.size else None)
                p += 1
            out[int(k)] = (float(wt["w"][i]), int(wt["level"][i]), rows)
    return out


@pytest.mark.parametrize("kind", ["rafm", "difacto"])
def test_resplit_moves_every_key_with_its_state_and_folds_in_new_counts(kind):
    rng = np.random.default_rng(0)
    keys = rng.integers(1, 2**63, 400, dtype=np.uint64)
    counts = rng.integers(1, 40, 400).astype(np.float32)
    cfg, _ = _shard(kind, "[1,2,4]")
    old = []
    for sid in range(2):
        _, s = _shard(kind, "[1,2,4]", sid, 2)
        mine = (keys >> np.uint64(32)) % np.uint64(2) == sid
        s.add_counts(keys[mine], counts[mine])
        s.finish_counts()
        n = len(s)  # a trained state: z and n other than the initial ones
        s.store.z_w[:n] = rng.normal(size=n)
        s.store.n_w[:n] = rng.random(n)
        for f in s.fac:
            f.s[: f.n] = np.abs(rng.normal(size=f.s[: f.n].shape))
        old.append(s)
    before = _weights(old)
    new = []
    for sid, st in enumerate(resplit([s.snapshot() for s in old], 3, tied=kind == "difacto")):
        _, s = _shard(kind, "[1,2,4]", sid, 3)
        s.restore(st)
        new.append(s)
    assert _weights(new) == before
    # a statistics pass of the new run: known keys rise to their new count's level, never fall
    _, counted = _shard(kind, "[1,2,4]", 0, 1)
    more = np.concatenate([keys[:50], rng.integers(1, 2**63, 20, dtype=np.uint64)])
    counted.add_counts(more, np.full(70, 100, np.float32))
    counted.finish_counts()
    merged = resplit([s.snapshot() for s in old] + [counted.snapshot()], 1, tied=kind == "difacto")
    _, s = _shard(kind, "[1,2,4]", 0, 1)
    s.restore(merged[0])
    after = _weights([s])
    fresh = _weights([counted])
    assert set(after) == set(before) | set(fresh)
    assert any(after[k][1] > before[k][1] for k in before)  # some were promoted
    for k, (w, lev, rows) in after.items():
        if k not in before:
            assert (w, lev, rows) == fresh[k]
            continue
        w0, lev0, rows0 = before[k]
        assert w == w0 and lev == max(lev0, fresh.get(k, (0, 0, None))[1])
        if kind == "rafm":  # the trained rows stay, the rows above are the new run's
            assert rows[:lev0] == rows0[:lev0]
            assert lev == lev0 or rows[lev0:lev] == fresh[k][2][lev0:lev]
        if kind == "difacto" and lev > lev0 >= 1:
            d = cfg.model.ranks[lev0 - 1]
            assert rows[lev - 1][:d] == rows0[lev0 - 1]


def test_a_source_of_another_model_is_refused_in_one_line(data, tmp_path):
    _train(data, tmp_path / "fm", "1", *KINDS["fm"])
    init = f"train.init_from={json.dumps(str(tmp_path / 'fm'))}"
    with pytest.raises(CheckpointError, match=r"model\.kind = 'fm' but this run 'lr'") as e:
        _train(data, tmp_path / "lr", "2", *KINDS["lr"], init)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "lr" / "checkpoints").exists()  # refused before anything ran
    with pytest.raises(CheckpointError, match=r"model\.ranks = \[4\] but this run \[8\]"):
        _train(data, tmp_path / "fm8", "2", 'model.kind="fm"', init)
    with pytest.raises(
        CheckpointError, match=r"data\.categorical .*only there \['C8'\], only here \[\]"
    ):
        _train(data, tmp_path / "cols", "2", *KINDS["fm"], init, 'data.ignore=["p_true","C8"]')
    with pytest.raises(ConfigError, match="own directory"):
        _train(data, tmp_path / "fm", "2", *KINDS["fm"], init, "train.overwrite=true")
    with pytest.raises(ConfigError, match="no such run directory or model file"):
        _train(data, tmp_path / "x", "2", *KINDS["fm"], "train.init_from='nowhere/at/all'")


def test_a_warm_start_from_an_exported_model_pulls_its_weights(data, tmp_path):
    fm = KINDS["fm"]
    _train(data, tmp_path / "src", "1..2", *fm)
    model = tmp_path / "fm.parquet"
    export_model(str(tmp_path / "src"), str(model))
    table = pq.read_table(model)
    keys = table["key"].to_numpy()
    w = table["w"].to_numpy()
    has = table["v1"].is_valid().to_numpy(zero_copy_only=False)  # every key but the bias
    v = np.stack(table["v1"].to_numpy(zero_copy_only=False)[has])
    # other rates than the source's: z is set for this run's FTRL parameters
    cfg = load_config(
        None,
        [
            'model.kind="fm"',
            "model.ranks=[4]",
            "ps.shards=3",
            "ftrl.linear.alpha=0.05",
            "ftrl.factor.alpha=0.02",
            "ftrl.factor.l1=0.5",
        ],
    )
    client = LocalClient(make_shards(cfg))
    client.restore(model_states(str(model), cfg))
    got = client.pull(keys)
    np.testing.assert_allclose(got.w, w, rtol=1e-5, atol=1e-7)
    assert np.array_equal(got.level >= 1, has)
    np.testing.assert_allclose(got.tables[0], v, rtol=1e-5, atol=1e-7)
    assert np.count_nonzero(got.w) == np.count_nonzero(w)
    # and a run warm-started from it trains on, from exactly that state
    init = f"train.init_from={json.dumps(str(model))}"
    rep = _train(data, tmp_path / "next", "3", *fm, init)
    assert rep["test"]["auc"] > 0.6
    states, manifest = load_checkpoint(str(tmp_path / "next" / "checkpoints" / "day=init"))
    assert manifest["day_base"] == 0 and manifest["init_from"] == str(model)
    assert all(np.all(st["n_w"] == 0) for st in states)


@pytest.mark.parametrize("kind", ["rafm", "difacto"])
def test_static_levels_count_the_new_days_and_never_fall(data, tmp_path, kind):
    """Static levels come from a statistics pass over a run's own training days, so days
    1..3 and 1..2 + 3 level keys differently (no bitwise equality); the warm run counts day 3
    and folds its counts in: known keys keep their level or rise, new keys come in."""
    sets = (f'model.kind="{kind}"', "model.ranks=[1,2,4]", "levels.count_per_dim=4")
    _train(data, tmp_path / "first", "1..2", *sets)
    init = f"train.init_from={json.dumps(str(tmp_path / 'first'))}"
    _train(data, tmp_path / "next", "3", *sets, init)
    src = restore_model(str(tmp_path / "first"))[1]
    states, _ = load_checkpoint(str(tmp_path / "next" / "checkpoints" / "day=init"))
    keys = np.concatenate([st["table.keys"] for st in states])
    level = np.concatenate([st["level"] for st in states])
    order = np.argsort(keys)
    at = np.searchsorted(keys[order], src["keys"])
    assert np.array_equal(keys[order][at], src["keys"])  # every source key is still there
    assert np.all(level[order][at] >= src["level"])
    assert np.any(level[order][at] > src["level"])  # day 3's counts promoted some
    assert keys.size > src["keys"].size  # and brought new keys

"""Worker-local FTRL steps (``ps.local_steps``, :mod:`psfm.ps.local`): the state pull, the
delta push, their wire form, and training that equals one pull and push per batch."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from psfm.config import FtrlConfig, LevelConfig, ModelConfig, load_config
from psfm.data.batch import unique_inverse_counts
from psfm.datasets.gen import GenSpec, generate
from psfm.export import restore_model
from psfm.hashing import BIAS_KEY
from psfm.optim.ftrl import FtrlParams, ftrl_update, ftrl_weight
from psfm.ps.client import LocalClient
from psfm.ps.local import LocalSteps
from psfm.ps.messages import PullResult, PushRequest
from psfm.ps.shard import ParameterShard
from psfm.ps.store import set_rows
from psfm.ps.update import FtrlRule
from psfm.ps.wire import pack, unpack
from psfm.steps import auto_local_steps, local_steps, resolve_steps
from psfm.worker import Worker

FTRL = FtrlConfig(linear=FtrlParams(0.1, 1.0, 0.2, 1.0), factor=FtrlParams(0.05, 1.0, 0.1, 2.0))


def _shard(kind="fm", ranks=(4,), admit=1, shard_id=0, n_shards=1):
    model = ModelConfig(kind=kind, ranks=ranks, init_std=0.1)
    levels = LevelConfig(admit_min_count=admit, policy="online" if admit > 1 else "static")
    return ParameterShard(model, FTRL, levels, 0, shard_id, n_shards)


def _keys(n, seed=0):
    rng = np.random.default_rng(seed)
    k = np.unique(rng.integers(1, 2**63, n, dtype=np.uint64))
    return np.sort(np.concatenate([k, [BIAS_KEY]]).astype(np.uint64))


def _grads(pulled: PullResult, keys, seed):
    rng = np.random.default_rng(seed)
    return PushRequest(
        keys,
        np.ones(keys.size, np.float32),
        pulled.level,
        rng.normal(size=keys.size).astype(np.float32),
        [rng.normal(size=t.shape).astype(np.float32) for t in pulled.tables],
    )


def test_a_state_pull_returns_the_stored_z_and_n_and_its_weights_are_the_pull():
    shard = _shard()
    keys = _keys(50)
    for seed in range(3):  # some history, so n > 0
        shard.push(_grads(shard.pull(keys, create=True), keys, seed))
    st = shard.pull(keys, create=True, state=True)
    plain = shard.pull(keys)
    assert st.state and not plain.state
    assert st.w.shape == (keys.size, 2) and st.tables[0].shape == (keys.size - 1, 8)
    rule = FtrlRule(FTRL, shard.layout)
    local = LocalSteps(keys, st, rule)
    weights = local.weights(np.arange(keys.size))
    assert np.array_equal(weights.w, plain.w)  # the bias too (unregularised)
    assert np.array_equal(weights.level, plain.level)
    assert np.array_equal(weights.tables[0], plain.tables[0])


@pytest.mark.parametrize(
    "kind,ranks", [("lr", ()), ("fm", (4,)), ("difacto", (2, 4)), ("rafm", (2, 4))]
)
def test_local_steps_then_a_delta_push_equal_pushing_every_step(kind, ranks):
    """Three batches of overlapping keys: stepped on a worker copy and pushed as one delta, or
    pulled and pushed one by one; the shards end the same up to float rounding."""
    a, b = _shard(kind, ranks), _shard(kind, ranks)
    batches = [_keys(40, s)[::2] for s in range(3)]
    batches = [np.unique(np.concatenate([k, _keys(40, 9)[:10]])) for k in batches]
    for i, k in enumerate(batches):  # the per-batch reference
        a.push(_grads(a.pull(k, create=True), k, i))
    keys, inv, _, _ = unique_inverse_counts(np.concatenate(batches))
    bounds = np.cumsum([0] + [k.size for k in batches])
    local = LocalSteps(keys, b.pull(keys, create=True, state=True), FtrlRule(FTRL, b.layout))
    counts = np.zeros(keys.size, np.float32)
    for i, k in enumerate(batches):
        idx = inv[bounds[i] : bounds[i + 1]]
        assert np.array_equal(keys[idx], k)
        local.update(_grads(local.weights(idx), k, i))
        counts[idx] += 1
    b.push(local.delta(counts))
    wa, wb = _by_key(a.weights(), len(ranks)), _by_key(b.weights(), len(ranks))
    assert np.array_equal(wa["keys"], wb["keys"]) and np.array_equal(wa["level"], wb["level"])
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.any(wa["w"] != 0)


def _by_key(weights: dict, m: int) -> dict:
    """A shard's weights in key order (shards store keys in the order they came)."""
    order = np.argsort(weights["keys"])
    out = {k: weights[k][order] for k in ("keys", "w", "level")}
    for p in range(1, m + 1):
        rows = weights[f"rows{p}"]
        out[f"v{p}"] = weights[f"v{p}"][np.argsort(weights["keys"][rows])]
    return out


def test_the_local_copy_reproduces_ftrl_per_step():
    """One key, two steps on the copy: exactly ftrl_update twice (the shard's arithmetic)."""
    shard = _shard("lr", ())
    k = np.array([7], np.uint64)
    local = LocalSteps(k, shard.pull(k, create=True, state=True), FtrlRule(FTRL, shard.layout))
    z, n = np.zeros(1, np.float32), np.zeros(1, np.float32)
    idx = np.array([0])
    for g in (0.5, -1.25):
        w = local.weights(idx)
        assert np.array_equal(w.w, ftrl_weight(z, n, FTRL.linear))
        grad = np.array([g], np.float32)
        local.update(PushRequest(k, np.ones(1, np.float32), w.level, grad, []))
        z, n = ftrl_update(z, n, grad, FTRL.linear)
    assert np.array_equal(local.z_w, z) and np.array_equal(local.n_w, n)


def test_a_key_the_shard_does_not_store_stays_at_zero_on_the_copy():
    """Admission (admit_min_count > 1): the state pull marks unstored keys level -1; local
    steps leave them at weight 0 and push nothing for them but their counts."""
    shard = _shard(admit=3)
    k = _keys(10)
    st = shard.pull(k, create=True, state=True)
    assert np.all(st.level == -1) and not st.tables[0].size
    local = LocalSteps(k, st, FtrlRule(FTRL, shard.layout))
    idx = np.arange(k.size)
    for i in range(3):
        w = local.weights(idx)
        assert not w.w.any() and not w.level.any()
        local.update(_grads(w, k, i))
    delta = local.delta(np.full(k.size, 3, np.float32))
    assert not delta.grad_w.any() and not delta.sq_w.any()
    shard.push(delta)  # the counts reach the admission sketch: every key is stored now
    assert len(shard) == k.size


def test_delta_push_and_state_pull_cross_the_wire_and_split_by_shard():
    shard = _shard("rafm", (2, 4))
    k = _keys(30)
    st = shard.pull(k, create=True, state=True)
    back = PullResult.unpack(st.pack())
    assert back.state and all(np.array_equal(x, y) for x, y in zip(back.arrays, st.arrays))
    local = LocalSteps(k, st, FtrlRule(FTRL, shard.layout))
    w = local.weights(np.arange(k.size))
    local.update(_grads(w, k, 1))
    d = local.delta(np.ones(k.size, np.float32))
    got = PushRequest.from_arrays(unpack(pack(d.arrays)), 2)
    assert got.delta and got.has_sq
    assert all(np.array_equal(x, y) for x, y in zip(got.arrays, d.arrays))
    plain = PushRequest.from_arrays(unpack(pack(_grads(w, k, 2).arrays)), 2)
    assert not plain.delta
    # two shards: the routed state pull and delta push equal the one-shard ones
    two = [_shard("rafm", (2, 4), shard_id=i, n_shards=2) for i in range(2)]
    one = LocalClient([_shard("rafm", (2, 4))])
    pair = LocalClient(two)
    s1, s2 = one.pull(k, True, True), pair.pull(k, True, True)
    assert all(np.array_equal(x, y) for x, y in zip(s1.arrays, s2.arrays))
    loc1 = LocalSteps(k, s1, FtrlRule(FTRL, one.layout))
    loc1.update(_grads(loc1.weights(np.arange(k.size)), k, 3))
    one.push(loc1.delta(np.ones(k.size, np.float32)))
    pair.push(loc1.delta(np.ones(k.size, np.float32)))
    a, b = one.pull(k), pair.pull(k)
    assert all(np.array_equal(x, y) for x, y in zip(a.arrays, b.arrays))


def test_a_message_holds_its_batches_keys_positions_and_summed_counts():
    """``Worker._messages``: k batches to a message, the union of their keys, each batch's
    keys as positions in it, the keys' occurrences summed; the last message takes the rest."""
    rng = np.random.default_rng(3)
    parts = [np.unique(rng.integers(0, 50, 30).astype(np.uint64)) for _ in range(5)]
    batches = [
        (SimpleNamespace(uniq=u, counts=rng.integers(1, 4, u.size).astype(np.float32)), i)
        for i, u in enumerate(parts)
    ]
    msgs = list(Worker(load_config(None, []))._messages(iter(batches), 3))
    assert [len(m.batches) for m in msgs] == [3, 2]
    for m, group in zip(msgs, (batches[:3], batches[3:])):
        assert np.array_equal(m.keys, np.unique(np.concatenate([b.uniq for b, _ in group])))
        want = np.zeros(m.keys.size, np.float32)
        for idx, (b, _) in zip(m.idx, group):
            assert np.array_equal(m.keys[idx], b.uniq)
            want[idx] += b.counts
        assert m.counts.dtype == np.float32 and np.array_equal(m.counts, want)


def test_auto_local_steps_fill_a_message_yet_leave_a_pass_many_messages():
    cfg = load_config(None, [])
    assert [local_steps(cfg, b) for b in (64, 1024, 4096, 32768)] == [256, 16, 4, 1]
    assert [auto_local_steps(r, 1024) for r in (10_000, 500_000, 2_000_000, 10**8)] == [
        1,
        3,
        15,
        16,
    ]
    assert local_steps(load_config(None, ["ps.local_steps=3"]), 64) == 3
    assert local_steps(load_config(None, ['ps.mode="sync"', "ps.local_steps=3"]), 64) == 1
    got = resolve_steps(load_config(None, []), 2_000_000)
    assert (got.data.batch_size, got.ps.local_steps) == (1024, 15)
    assert resolve_steps(load_config(None, ['ps.mode="sync"']), 2_000_000).ps.local_steps == 0


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("local_steps")
    generate(root, days=3, rows_per_day=20_000, spec=GenSpec.small(), seed=2, row_group_rows=4096)
    return root


@pytest.mark.parametrize("kind", ["lr", "fm", "difacto", "rafm"])
def test_training_with_local_steps_equals_a_pull_and_push_per_batch(small_data, tmp_path, kind):
    """In-process (one worker), ``ps.local_steps`` 8 and 1 train the same model up to the
    float rounding of the deltas: same test AUC to 1e-4, weights to 1e-3."""
    from psfm.trainer import train_local

    reports, models = [], []
    for k in (1, 8):
        run = tmp_path / f"k{k}"
        cfg = load_config(
            None,
            [
                f"data.root={json.dumps(str(small_data))}",
                f'model.kind="{kind}"',
                'data.train_days="1..2"',
                'data.test_days="3"',
                "data.batch_size=256",
                f"ps.local_steps={k}",
                f"train.run_dir={json.dumps(str(run))}",
            ],
        )
        reports.append(train_local(cfg))
        models.append(restore_model(str(run))[1])
    (a, b), (ma, mb) = reports, models
    assert abs(a["test"]["auc"] - b["test"]["auc"]) < 1e-4, (a["test"]["auc"], b["test"]["auc"])
    assert a["train"]["rows"] == b["train"]["rows"]
    assert np.array_equal(ma["keys"], mb["keys"])
    np.testing.assert_allclose(mb["w"], ma["w"], atol=1e-3)
    # the messages: 8 batches to a pull and a push, so far fewer bytes per sample
    assert b["train"]["bytes_per_sample"] < a["train"]["bytes_per_sample"]


@pytest.mark.parametrize("shape", [(50, 8), (50, 2, 4), (50, 1)])
def test_set_rows_writes_what_fancy_assignment_writes(shape):
    rng = np.random.default_rng(1)
    table = rng.random(shape, dtype=np.float32)
    rows = np.array([3, 0, 49, 17])
    values = rng.random((4, *shape[1:]), dtype=np.float32)
    want = table.copy()
    want[rows] = values
    set_rows(table, rows, values)
    assert np.array_equal(table, want)
    strided = np.zeros((50, 2 * shape[1]), np.float32)[:, : shape[1]]  # not contiguous
    if len(shape) == 2:
        set_rows(strided, rows, values)
        assert np.array_equal(strided[rows], values)

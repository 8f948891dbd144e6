"""ParameterShard and the in-process client: pull/push semantics, levels, state round trips."""

from __future__ import annotations

import numpy as np
import pytest

from psfm.config import FtrlConfig, LevelConfig, ModelConfig
from psfm.errors import PsfmError
from psfm.hashing import BIAS_KEY
from psfm.optim.ftrl import FtrlParams, ftrl_init_z, ftrl_update, ftrl_weight
from psfm.ps.client import LocalClient
from psfm.ps.levels import init_factors, level_thresholds, levels_from_counts
from psfm.ps.messages import PushRequest
from psfm.ps.routing import route, shard_of
from psfm.ps.shard import ParameterShard

# A batch as one FTRL step (n += g^2 of the summed gradient): the tests below check the shard's
# bookkeeping against ftrl_update(g); the other accumulation rules have tests of their own.
FTRL = FtrlConfig(
    linear=FtrlParams(0.1, 1.0, 0.2, 1.0),
    factor=FtrlParams(0.05, 1.0, 0.01, 1.0),
    accumulate="square_of_sum",
)


def _shards(kind="rafm", n=1, policy="online", ranks=(), **lv):
    model = ModelConfig(kind=kind, ranks=ranks)
    levels = LevelConfig(policy=policy, **lv)
    return [ParameterShard(model, FTRL, levels, seed=3, shard_id=i, n_shards=n) for i in range(n)]


def _server(kind="rafm", policy="online", ranks=(), **lv):
    """A shard behind its Ray-side server (packed and shared-memory calls), made in-process."""
    from psfm.ray_backend.server import ShardServer

    model = ModelConfig(kind=kind, ranks=ranks)
    return ShardServer(
        model, FTRL, LevelConfig(policy=policy, **lv), seed=3, shard_id=0, n_shards=1
    )


def _keys(rng, n):
    return np.unique(rng.integers(1, 2**63, size=n, dtype=np.int64).astype(np.uint64))


def _random_push(rng, client, keys, pulled):
    grads = [rng.normal(size=t.shape).astype(np.float32) for t in pulled.tables]
    gw = rng.normal(size=keys.size).astype(np.float32)
    counts = rng.integers(1, 4, size=keys.size).astype(np.float32)
    client.push(PushRequest(keys, counts, pulled.level, gw, grads))


def test_pull_without_create_leaves_unknown_keys_unknown():
    (s,) = _shards("fm")
    keys = np.array([5, 9, 11], dtype=np.uint64)
    r = s.pull(keys, create=False)
    assert np.all(r.w == 0) and np.all(r.level == 0) and r.tables[0].shape == (0, 8)
    assert len(s) == 0


def test_created_fm_keys_get_deterministic_factors_and_bias_has_none():
    (s,) = _shards("fm")
    keys = np.array([BIAS_KEY, 17, 23], dtype=np.uint64)
    r = s.pull(keys, create=True)
    assert r.level.tolist() == [0, 1, 1]
    std = s.model.init_std
    v0 = init_factors(keys[1:], 8, 8, std, seed=3)
    np.testing.assert_allclose(
        r.tables[0], ftrl_weight(ftrl_init_z(v0, FTRL.factor), np.zeros_like(v0), FTRL.factor)
    )
    big = init_factors(np.arange(1, 20001, dtype=np.uint64), 8, 8, std, seed=3)
    assert abs(big.std() - std) < 0.002 and abs(big.mean()) < 0.002


def test_push_applies_ftrl_and_the_bias_is_not_regularised():
    (s,) = _shards("fm")
    keys = np.array([BIAS_KEY, 17], dtype=np.uint64)
    r = s.pull(keys, create=True)
    g = np.array([0.05, 0.05], dtype=np.float32)  # small: inside l1 for the feature
    gf = np.full((1, 8), 0.5, dtype=np.float32)
    s.push(PushRequest(keys, np.ones(2, np.float32), r.level, g, [gf]))
    r2 = s.pull(keys)
    z, n = ftrl_update(
        np.zeros(1, np.float32), np.zeros(1, np.float32), g[:1], FtrlParams(0.1, 1.0, 0.0, 0.0)
    )
    assert r2.w[0] == ftrl_weight(z, n, FtrlParams(0.1, 1.0, 0.0, 0.0))[0] != 0
    assert r2.w[1] == 0  # |z| = 0.05 <= l1 = 0.2
    v0 = init_factors(keys[1:], 8, 8, s.model.init_std, seed=3)
    zf, nf = ftrl_update(ftrl_init_z(v0, FTRL.factor), np.zeros_like(v0), gf, FTRL.factor)
    np.testing.assert_array_equal(r2.tables[0], ftrl_weight(zf, nf, FTRL.factor))


def test_eq17_thresholds_equal_the_argmin_rule():
    ranks = (1, 2, 4, 8, 16)
    for c in (1.0, 3.0, 50.0):
        t = level_thresholds(ranks, c)
        counts = np.unique(np.geomspace(1, 1e5, 3000).round())
        argmin = 1 + np.argmin(
            np.abs(np.log(counts)[:, None] - np.log(c * np.array(ranks))), axis=1
        )
        np.testing.assert_array_equal(levels_from_counts(counts, t), argmin)
    assert levels_from_counts(np.array([0.0]), level_thresholds(ranks))[0] == 0


def test_online_promotion_untied_keeps_lower_rows_and_adds_the_next():
    (s,) = _shards("rafm", ranks=(1, 2, 4), level_min_count=(1, 3, 6))
    k = np.array([42], dtype=np.uint64)
    r = s.pull(k, create=True)
    assert r.level[0] == 1
    for _ in range(2):
        s.push(
            PushRequest(
                k,
                np.ones(1, np.float32),
                r.level,
                np.zeros(1, np.float32),
                [
                    np.full((1, 1), 0.3, np.float32),
                    np.zeros((0, 2), np.float32),
                    np.zeros((0, 4), np.float32),
                ],
            )
        )
    before = s.pull(k).tables[0].copy()
    s.push(
        PushRequest(
            k,
            np.ones(1, np.float32),
            r.level,
            np.zeros(1, np.float32),
            [
                np.zeros((1, 1), np.float32),
                np.zeros((0, 2), np.float32),
                np.zeros((0, 4), np.float32),
            ],
        )
    )
    r3 = s.pull(k)
    assert r3.level[0] == 2 and [t.shape[0] for t in r3.tables] == [1, 1, 0]
    np.testing.assert_array_equal(r3.tables[0], before)  # the level-1 factor is kept


def test_tied_promotion_moves_the_trained_prefix():
    (s,) = _shards("difacto", ranks=(2, 4), level_min_count=(1, 5))
    k = np.array([7], dtype=np.uint64)
    r = s.pull(k, create=True)
    s.push(
        PushRequest(
            k,
            np.full(1, 2, np.float32),
            r.level,
            np.zeros(1, np.float32),
            [np.full((1, 2), 0.7, np.float32), np.zeros((0, 4), np.float32)],
        )
    )
    trained = s.pull(k).tables[0].copy()
    s.push(
        PushRequest(
            k,
            np.full(1, 3, np.float32),
            r.level,
            np.zeros(1, np.float32),
            [np.zeros((1, 2), np.float32), np.zeros((0, 4), np.float32)],
        )
    )
    r2 = s.pull(k)
    assert r2.level[0] == 2 and r2.tables[0].shape == (0, 2) and r2.tables[1].shape == (1, 4)
    np.testing.assert_array_equal(r2.tables[1][:, :2], trained)
    s.end_day(1)  # compaction drops the hole the move left
    assert s.fac[0].n == 0 and s.stats().factor_rows_per_level == [0, 1]


def test_static_levels_from_a_statistics_pass_and_admission():
    (s,) = _shards("rafm", policy="static", ranks=(1, 2, 4), admit_min_count=2, count_per_dim=1.0)
    keys = np.array([BIAS_KEY, 1, 2, 3, 4], dtype=np.uint64)
    s.add_counts(keys, np.array([100, 1, 2, 5, 2], np.float32))
    s.add_counts(keys[3:], np.array([5, 30], np.float32))
    info = s.finish_counts()
    assert info == {"keys": 4, "not_admitted": 1}
    r = s.pull(keys)
    # counts 100 (bias: level 0), -, 2, 10, 32; at c = 1 thresholds 1, sqrt(2), sqrt(8)
    assert r.level.tolist() == [0, 0, 2, 3, 3]
    assert s.pull(keys, create=True).level.tolist() == [0, 0, 2, 3, 3]  # no re-admission
    assert len(s) == 4


def test_online_admission_by_count_sketch():
    (s,) = _shards("fm", admit_min_count=3)
    k = np.array([99], dtype=np.uint64)
    for i in range(3):
        r = s.pull(k, create=True)
        assert len(s) == (1 if i == 3 else 0) or i == 3
        s.push(
            PushRequest(
                k,
                np.ones(1, np.float32),
                r.level,
                np.ones(1, np.float32),
                [np.zeros((r.tables[0].shape[0], 8), np.float32)],
            )
        )
    assert len(s) == 1 and s.pull(k).level[0] == 1


def test_ttl_eviction_drops_unseen_keys_and_their_rows():
    (s,) = _shards("rafm", ranks=(2, 4), ttl_days=2)
    a, b = np.array([1], np.uint64), np.array([2], np.uint64)
    s.pull(a, create=True)
    s.end_day(1)
    s.pull(b, create=True)
    s.push(
        PushRequest(
            b,
            np.ones(1, np.float32),
            np.ones(1, np.int8),
            np.zeros(1, np.float32),
            [np.zeros((1, 2), np.float32), np.zeros((0, 4), np.float32)],
        )
    )
    assert s.end_day(2) == {"evicted": 0, "keys": 2}
    assert s.end_day(3) == {"evicted": 1, "keys": 1}  # key 1 unseen on days 1 and 2
    assert s.pull(a).level[0] == 0 and s.pull(b).level[0] == 1
    assert s.stats().factor_rows_per_level == [1, 0]


@pytest.mark.parametrize(
    "kind,ranks,thresholds",
    [
        ("fm", (), ()),
        ("rafm", (1, 2, 4), (1, 3, 8)),  # level-1 rows at the key's slot, higher ones linked
        ("rafm", (1, 2, 4), (2, 3, 8)),  # some keys at level 0: level-1 rows by index
        ("difacto", (2, 4), (1, 5)),  # tied: one row per key in its level's table
    ],
)
def test_eviction_compaction_and_restore_keep_the_survivors_bitwise(kind, ranks, thresholds):
    def make():
        return LocalClient(_shards(kind, n=2, ranks=ranks, level_min_count=thresholds, ttl_days=1))

    rng = np.random.default_rng(21)
    client = make()
    old, keep = _keys(rng, 3000), _keys(rng, 1500)
    for universe in (np.concatenate([old, keep]), keep):  # day 0, then day 1
        for _ in range(12):
            keys = np.unique(rng.choice(universe, size=600))
            _random_push(rng, client, keys, client.pull(keys, create=True))
        _random_push(rng, client, keep, client.pull(keep, create=True))
        client.end_day(1 if universe.size > keep.size else 2)
    before = client.pull(keep)
    stats = client.stats()
    assert stats.keys == keep.size  # the day-0-only keys are gone, their rows compacted
    want = [
        int(np.count_nonzero(before.level >= p if kind != "difacto" else before.level == p))
        for p in range(1, len(ranks or (8,)) + 1)
    ]
    assert stats.factor_rows_per_level == want and sum(want) > 0
    if len(ranks) > 1:
        assert len(set(before.level.tolist())) > 1  # several levels are really in play
    gone = client.pull(np.setdiff1d(old, keep))
    assert not gone.w.any() and not gone.level.any()
    fresh = make()
    fresh.restore(client.snapshots())
    for c in (client, fresh):
        r = np.random.default_rng(3)
        keys = np.unique(r.choice(np.concatenate([keep, _keys(r, 200)]), size=500))
        _random_push(r, c, keys, c.pull(keys, create=True))
        c.end_day(3)
    x, y = client.pull(keep), fresh.pull(keep)
    assert np.array_equal(x.w, y.w) and np.array_equal(x.level, y.level)
    assert all(np.array_equal(a, b) for a, b in zip(x.tables, y.tables))
    assert not np.array_equal(x.w, before.w)  # the pushes after the restore did something


def test_static_levels_keep_no_counts_and_lr_memory_stays_near_the_raw_state():
    rng = np.random.default_rng(2)
    for kind in ("lr", "rafm"):
        (s,) = _shards(kind, policy="static", ranks=(1, 2, 4, 8) if kind == "rafm" else ())
        keys = _keys(rng, 200_000)
        s.add_counts(keys, rng.zipf(1.5, keys.size).astype(np.float32))
        s.finish_counts()
        assert "count" not in s._per_key and "last_day" not in s._per_key
        for lo in range(0, keys.size, 20_000):
            part = keys[lo : lo + 20_000]
            _random_push(rng, s, part, s.pull(part, create=True))
        s.end_day(1)
        st = s.stats()
        coords = sum(r * d for r, d in zip(st.factor_rows_per_level, s.ranks))
        full_raw = st.raw_bytes + 4 * (st.keys + coords)  # + a weight per parameter
        assert st.ps_bytes <= 1.5 * full_raw, (kind, st.ps_bytes / full_raw)


def test_a_counted_shard_keeps_no_growth_room_while_no_key_comes_in():
    """After a statistics pass every key of the training days is stored: the arrays hold
    what is stored and no more (they grew by halves during the pass), at the pass's end and
    at a day end; the key index keeps the load of a growing shard (<= 1/2). A day that brings
    keys in (evicted and seen again, a day added to the run) grows them and ends with room
    again, and the keys keep their weights. A shard whose keys arrive while it trains keeps
    room."""
    from psfm.ps.store import GROWTH_SLACK

    def chunks(keys):
        return [keys[lo : lo + 20_000] for lo in range(0, keys.size, 20_000)]

    def room(s):
        n = len(s)
        assert 2 * n <= s.table.index_capacity <= 1.05 * 2 * int(n * GROWTH_SLACK)
        return s.store.cap / n

    rng = np.random.default_rng(4)
    keys, more = _keys(rng, 150_000), _keys(rng, 30_000)
    (s,) = _shards("rafm", policy="static", ranks=(1, 2, 4, 8), count_per_dim=1.0)
    for part in chunks(keys):  # as a statistics pass counts them: batch by batch
        s.add_counts(part, rng.zipf(1.5, part.size).astype(np.float32))
    s.finish_counts()
    assert room(s) <= 1.05 and s.table._keys.size <= 1.05 * len(s)
    assert all(f.s.shape[0] <= 1.05 * max(f.n, 16) for f in s.fac[1:])
    _random_push(rng, s, keys[:5000], s.pull(keys[:5000], create=True))
    s.end_day(1)
    assert room(s) <= 1.05
    before = s.pull(keys[:5000]).w.copy()
    for part in chunks(more):  # keys the statistics pass did not see
        _random_push(rng, s, part, s.pull(part, create=True))
    s.end_day(2)
    assert len(s) == keys.size + more.size and room(s) == pytest.approx(GROWTH_SLACK, 0.01)
    np.testing.assert_array_equal(s.pull(keys[:5000]).w, before)
    s.end_day(3)  # settled again
    assert room(s) <= 1.05
    (g,) = _shards("fm", policy="static", ranks=(8,))
    for part in chunks(keys):
        _random_push(rng, g, part, g.pull(part, create=True))
    g.end_day(1)
    assert room(g) == pytest.approx(GROWTH_SLACK, 0.01)


@pytest.mark.parametrize("kind,ranks", [("fm", ()), ("rafm", (1, 2, 4)), ("difacto", (2, 4))])
def test_one_shard_and_four_shards_give_bitwise_identical_models(kind, ranks):
    results = []
    for n in (1, 4):
        client = LocalClient(
            _shards(
                kind,
                n=n,
                ranks=ranks,
                level_min_count=() if kind == "fm" else (1, 3, 8)[: len(ranks)],
            )
        )
        rng = np.random.default_rng(11)
        universe = _keys(rng, 3000)
        for _ in range(20):
            keys = np.unique(rng.choice(universe, size=400))
            pulled = client.pull(keys, create=True)
            _random_push(rng, client, keys, pulled)
        results.append(client.pull(universe))
    one, four = results
    assert np.array_equal(one.w, four.w) and np.array_equal(one.level, four.level)
    for a, b in zip(one.tables, four.tables):
        assert np.array_equal(a, b)
    assert sum(t.size for t in one.tables) > 0


def test_snapshot_restore_round_trip_is_bitwise():
    rng = np.random.default_rng(5)
    shards = _shards("rafm", n=2, ranks=(1, 2, 4), level_min_count=(1, 3, 8))
    client = LocalClient(shards)
    universe = _keys(rng, 2000)
    for _ in range(10):
        keys = np.unique(rng.choice(universe, size=300))
        _random_push(rng, client, keys, client.pull(keys, create=True))
    states = client.snapshots()
    fresh = LocalClient(_shards("rafm", n=2, ranks=(1, 2, 4), level_min_count=(1, 3, 8)))
    fresh.restore(states)
    for a, b in zip(states, fresh.snapshots()):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]), k
    # Both continue identically.
    for c in (client, fresh):
        r = np.random.default_rng(9)
        keys = np.unique(r.choice(universe, size=300))
        _random_push(r, c, keys, c.pull(keys, create=True))
    x, y = client.pull(universe), fresh.pull(universe)
    assert np.array_equal(x.w, y.w) and all(
        np.array_equal(a, b) for a, b in zip(x.tables, y.tables)
    )


def test_restore_refuses_a_different_layout():
    (s,) = _shards("fm")
    other = _shards("fm", n=2)[1]
    with pytest.raises(Exception, match="cannot restore shard"):
        other.restore(s.snapshot())


def test_stats_count_nonzeros_and_bytes():
    (s,) = _shards("fm")
    keys = np.arange(1, 1001, dtype=np.uint64)
    s.pull(keys, create=True)
    st = s.stats()
    assert st.keys == 1000 and st.nonzero_w == 0 and st.factor_rows_per_level == [1000]
    assert st.nonzero_factors == 8000 and st.nonzero_params == 8000
    assert st.raw_bytes == 1000 * (8 + 8 + 8 * 8)  # keys + (z, n) of 1 + 8 coordinates
    assert st.ps_bytes >= st.raw_bytes


def test_buffered_step_sums_workers_in_order_and_matches_one_push():
    rng = np.random.default_rng(21)
    one, two = (_shards("rafm", ranks=(1, 2), level_min_count=(1, 3))[0] for _ in range(2))
    keys = np.unique(rng.integers(1, 2**62, size=300, dtype=np.int64).astype(np.uint64))
    for s in (one, two):
        s.pull(keys, create=True)
    lev = one.pull(keys).level
    gw = rng.normal(size=keys.size).astype(np.float32)
    g = [
        rng.normal(size=(int((lev >= p).sum()), d)).astype(np.float32) for p, d in ((1, 1), (2, 2))
    ]
    counts = np.ones(keys.size, np.float32)
    one.push(PushRequest(keys, counts, lev, gw, g))
    # Two workers whose key sets overlap: worker 0 has the first 200 keys, worker 1 the rest
    # plus 50 of worker 0's, with the gradient of the shared keys split between them.
    a, b = np.arange(200), np.arange(150, keys.size)
    share = np.zeros(keys.size, np.float32)
    share[150:200] = 0.25

    def part(idx, frac):
        rows = [np.cumsum(lev >= p) - 1 for p in (1, 2)]
        sub = [
            g[p - 1][rows[p - 1][idx][lev[idx] >= p]] * frac[idx][lev[idx] >= p][:, None]
            for p in (1, 2)
        ]
        return keys[idx], counts[idx] * frac[idx], lev[idx], gw[idx] * frac[idx], sub

    f0 = np.where(share > 0, share, 1.0).astype(np.float32)
    f1 = np.where(share > 0, 1 - share, 1.0).astype(np.float32)
    two.push_buffered(1, PushRequest(*part(b, f1)))
    two.push_buffered(0, PushRequest(*part(a, f0)))
    two.apply_buffered()
    x, y = one.pull(keys), two.pull(keys)
    np.testing.assert_allclose(x.w, y.w, rtol=1e-5, atol=1e-6)
    for t, u in zip(x.tables, y.tables):
        np.testing.assert_allclose(t, u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one.count[: len(one)], two.count[: len(two)])


def test_push_pull_equals_push_then_pull():
    rng = np.random.default_rng(11)
    a, b = _shards("rafm", ranks=(2, 4)), _shards("rafm", ranks=(2, 4))
    k1, k2 = _keys(rng, 300), _keys(rng, 300)
    k2[:100] = k1[:100]  # the next batch shares keys with the pushed one
    p1 = a[0].pull(k1, create=True)
    assert b[0].pull(k1, create=True).w.tolist() == p1.w.tolist()
    grads = [rng.normal(size=t.shape).astype(np.float32) for t in p1.tables]
    gw = rng.normal(size=k1.size).astype(np.float32)
    counts = np.ones(k1.size, np.float32)
    a[0].push(PushRequest(k1, counts, p1.level, gw, grads))
    want = a[0].pull(k2, create=True)
    got = b[0].push_pull(PushRequest(k1, counts, p1.level, gw, grads), k2, True)
    assert np.array_equal(got.w, want.w) and np.array_equal(got.level, want.level)
    assert all(np.array_equal(x, y) for x, y in zip(got.tables, want.tables))
    assert np.array_equal(got.w[:100], a[0].pull(k1[:100]).w)  # the pull saw the push


def test_push_after_slots_move_updates_the_right_keys():
    """A push reuses the slots of its batch's pull unless slots moved in between."""
    rng = np.random.default_rng(5)
    (s,), (ref,) = _shards("fm", ranks=(4,)), _shards("fm", ranks=(4,))
    x, y = _keys(rng, 500), _keys(rng, 200)
    s.pull(x, create=True)
    py = s.pull(y, create=True)
    assert np.array_equal(ref.pull(y, create=True).tables[0], py.tables[0])
    keep = np.zeros(len(s), bool)
    keep[-y.size :] = True  # drop x: every key of y gets a new slot
    assert s._retain(keep) == x.size
    grads = [rng.normal(size=py.tables[0].shape).astype(np.float32)]
    gw = rng.normal(size=y.size).astype(np.float32)
    for shard in (s, ref):
        shard.push(PushRequest(y, np.ones(y.size, np.float32), py.level, gw, grads))
    got, want = s.pull(y), ref.pull(y)
    assert np.array_equal(got.w, want.w) and np.array_equal(got.tables[0], want.tables[0])
    again = s.pull(y, create=True)  # cached slots are used when nothing moved
    s.push(PushRequest(y, np.ones(y.size, np.float32), again.level, gw, grads))
    ref.push(PushRequest(y, np.ones(y.size, np.float32), again.level, gw, grads))
    assert np.array_equal(s.pull(y).tables[0], ref.pull(y).tables[0])


def test_wire_buffers_round_trip_and_packed_calls_match():
    from psfm.ps.messages import PullResult
    from psfm.ps.wire import pack, unpack

    rng = np.random.default_rng(2)
    arrays = [
        np.arange(5, dtype=np.uint64),
        np.zeros((0, 8), np.float32),
        np.array([1, -2, 3], np.int8),
        rng.normal(size=(3, 4)).astype(np.float32),
    ]
    got = unpack(pack(arrays))
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(arrays, got))
    with pytest.raises(TypeError, match="complex64"):
        pack([np.zeros(2, np.complex64)])
    a, b = _shards("rafm", ranks=(2, 4)), [_server("rafm", ranks=(2, 4))]
    k1, k2 = _keys(rng, 200), _keys(rng, 200)
    p1 = a[0].pull(k1, create=True)
    assert PullResult.unpack(b[0].pull_packed(k1, True)).w.tolist() == p1.w.tolist()
    grads = [rng.normal(size=t.shape).astype(np.float32) for t in p1.tables]
    gw = rng.normal(size=k1.size).astype(np.float32)
    counts = np.ones(k1.size, np.float32)
    want = a[0].push_pull(PushRequest(k1, counts, p1.level, gw, grads), k2, True)
    buf = pack([k1, counts, p1.level, gw, *grads, k2, np.array([1], np.int8)])
    got = PullResult.unpack(b[0].push_pull_packed(buf))
    assert np.array_equal(got.w, want.w) and np.array_equal(got.level, want.level)
    assert all(np.array_equal(x, y) for x, y in zip(got.tables, want.tables))


def test_shared_memory_messages_answer_like_direct_calls(tmp_path):
    """shm_call on a worker's message file (pull, push, push_pull) gives the direct calls'
    results; the pull keys a shard keeps are its own copy, not the reused slot."""
    from psfm.errors import PsfmError
    from psfm.ps.messages import PullResult
    from psfm.ps.shm import MessageFile
    from psfm.ps.wire import pack_into, pad

    rng = np.random.default_rng(4)
    a, b = _shards("rafm", ranks=(2, 4)), [_server("rafm", ranks=(2, 4))]
    f = MessageFile.create(str(tmp_path), "psfm", 2, 1 << 16)
    assert f.slot_bytes % 4096 == 0 and f.slot_bytes >= 1 << 16
    assert b[0].shm_attach("w0", f.path, f.token, f.slots, f.slot_bytes)
    assert not b[0].shm_attach("x", f.path, b"\0" * 16, f.slots, f.slot_bytes)  # not its token
    assert not b[0].shm_attach("x", str(tmp_path / "gone"), f.token, f.slots, f.slot_bytes)
    f.unlink()  # the shard's mapping outlives the name
    assert list(tmp_path.iterdir()) == []

    def call(op, arrays, slot=0):
        n = pack_into(arrays, f.slot(slot))
        out = b[0].shm_call("w0", op, slot, n)
        return PullResult.unpack(f.slot(slot)[pad(n) : pad(n) + out].copy()) if out else None

    one = np.array([1], np.int8)
    k1, k2 = _keys(rng, 300), _keys(rng, 300)
    want, got = a[0].pull(k1, create=True), call("pull", [k1, one])
    f.slot(0)[:] = 0  # the next message overwrites the slot: the shard kept its own keys
    assert all(np.array_equal(x, y) for x, y in zip(got.arrays, want.arrays))
    gw = rng.normal(size=k1.size).astype(np.float32)
    grads = [rng.normal(size=t.shape).astype(np.float32) for t in want.tables]
    counts = np.ones(k1.size, np.float32)
    want2 = a[0].push_pull(PushRequest(k1, counts, want.level, gw, grads), k2, True)
    got2 = call("push_pull", [k1, counts, want.level, gw, *grads, k2, one], slot=1)
    assert all(np.array_equal(x, y) for x, y in zip(got2.arrays, want2.arrays))
    a[0].push(PushRequest(k2, counts, want2.level, gw, [g * 0 + 0.5 for g in want2.tables]))
    assert call("push", [k2, counts, want2.level, gw, *[g * 0 + 0.5 for g in want2.tables]]) is None
    assert all(
        np.array_equal(x, y) for x, y in zip(a[0].snapshot().values(), b[0].snapshot().values())
    )
    with pytest.raises(PsfmError, match="no message file 'w9'"):
        b[0].shm_call("w9", "pull", 0, 8)
    with pytest.raises(PsfmError, match="unknown message op"):
        b[0].shm_call("w0", "nope", 0, pack_into([k1], f.slot(0)))
    with pytest.raises(ValueError, match="pack_into needs"):
        pack_into([np.zeros(1 << 15, np.uint64)], f.slot(0))
    b[0].shm_detach("w0")
    with pytest.raises(PsfmError, match="no message file"):
        b[0].shm_call("w0", "pull", 0, 8)


@pytest.mark.parametrize("rule", ["sum_of_squares", "count_scaled"])
@pytest.mark.parametrize("kind", ["fm", "difacto"])
def test_accumulation_rules_grow_n_by_their_increment(rule, kind):
    """``n`` grows by the pushed sums of squares (sum_of_squares) or by g^2 / count
    (count_scaled); ``z`` takes the summed gradient either way."""
    import dataclasses

    rng = np.random.default_rng(8)
    ftrl = dataclasses.replace(FTRL, accumulate=rule)
    model = ModelConfig(kind=kind, ranks=(2, 4) if kind == "difacto" else (4,))
    levels = LevelConfig(policy="online", level_min_count=(1, 3) if kind == "difacto" else ())
    s = ParameterShard(model, ftrl, levels, seed=3)
    keys = np.concatenate([[BIAS_KEY], _keys(rng, 60)]).astype(np.uint64)
    r = s.pull(keys, create=True)
    # half the keys to level 2 (DiFacto) first, so that the push below promotes none
    warm = np.where(np.arange(keys.size) % 2 == 0, 3, 0).astype(np.float32)
    z = [np.zeros(t.shape, np.float32) for t in r.tables]
    zw = np.zeros(keys.size, np.float32)
    s.push(PushRequest(keys, warm, r.level, zw, z, zw, z))
    r = s.pull(keys, create=True)
    before = s.snapshot()
    gw = rng.normal(size=keys.size).astype(np.float32)
    gt = [rng.normal(size=t.shape).astype(np.float32) for t in r.tables]
    counts = rng.integers(1, 3, keys.size).astype(np.float32)
    sq_w = (gw * gw * rng.uniform(0.2, 1.0, keys.size)).astype(np.float32)
    sq_t = [(g * g * rng.uniform(0.2, 1.0, g.shape)).astype(np.float32) for g in gt]
    if rule == "sum_of_squares":
        with pytest.raises(PsfmError, match="no sums of squared gradients"):
            s.push(PushRequest(keys, counts, r.level, gw, gt))
        s.push(PushRequest(keys, counts, r.level, gw, gt, sq_w, sq_t))
        inc_w, inc_t = sq_w, sq_t
    else:
        s.push(PushRequest(keys, counts, r.level, gw, gt))
        inc_w = gw * gw / counts
        inc_t = [
            g * g / counts[(r.level == p) if s.tied else (r.level >= p)][:, None]
            for p, g in enumerate(gt, start=1)
        ]
    after = s.snapshot()
    slots = s.table.lookup(keys)
    bias = keys == BIAS_KEY
    for sel, params in ((bias, s._bias_params), (~bias, ftrl.linear)):
        z, n = ftrl_update(
            before["z_w"][slots[sel]], before["n_w"][slots[sel]], gw[sel], params, inc_w[sel]
        )
        np.testing.assert_allclose(after["n_w"][slots[sel]], n, rtol=1e-6)
        np.testing.assert_allclose(after["z_w"][slots[sel]], z, rtol=1e-5, atol=1e-6)
    for p, (g, inc) in enumerate(zip(gt, inc_t), start=1):
        rows = before[f"row{p}"][slots[(r.level == p) if s.tied else (r.level >= p)]]
        z, n = ftrl_update(before[f"z{p}"][rows], before[f"n{p}"][rows], g, ftrl.factor, inc)
        np.testing.assert_allclose(after[f"n{p}"][rows], n, rtol=1e-6)
        np.testing.assert_allclose(after[f"z{p}"][rows], z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_shards", [2, 3, 7, 70_000])
def test_route_gives_every_key_to_its_shard_in_key_order(n_shards):
    """Each shard's index lists exactly the positions of its keys (high 32 bits modulo the
    shard count), ascending; 16-bit shard ids take numpy's radix argsort, more shards the
    general one."""
    rng = np.random.default_rng(n_shards)
    keys = np.unique(rng.integers(0, 2**64, 20_000, dtype=np.uint64))
    r = route(keys, n_shards)
    want = (keys >> np.uint64(32)) % np.uint64(n_shards)
    assert np.array_equal(shard_of(keys, n_shards), want.astype(np.int64))
    assert r.n_keys == keys.size and len(r.index) == n_shards
    assert np.array_equal(np.sort(np.concatenate(r.index)), np.arange(keys.size))
    for s, idx in enumerate(r.index):
        assert np.all(np.diff(idx) > 0)
        assert np.array_equal(idx, np.flatnonzero(want == s))

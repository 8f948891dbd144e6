"""Row links between factor levels: the rank layout answers exactly as the dense one."""

from __future__ import annotations

import numpy as np
import pytest

from psfm.ps.links import DenseLinks, RankLinks


def _same(d: DenseLinks, r: RankLinks, k: int, rng: np.random.Generator) -> None:
    np.testing.assert_array_equal(r.dense(k), d.dense(k))
    linked = np.flatnonzero(d.dense(k) >= 0)
    q = rng.choice(linked, 300) if linked.size else np.zeros(0, np.int64)
    np.testing.assert_array_equal(r.get(q), d.get(q))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_links_follow_dense_links_through_every_operation(seed):
    rng = np.random.default_rng(seed)
    d, r = DenseLinks(), RankLinks()
    k, nxt = 0, 0
    for step in range(60):
        op = rng.integers(0, 5)
        if op == 0 or k == 0:  # rows appended (fresh, unlinked)
            grow = int(rng.integers(1, 500))
            for x in (d, r):
                x.reserve(k + grow)
                x.reset(np.arange(k, k + grow))
            k += grow
        elif op == 1:  # link some unlinked rows, in any order
            free = np.flatnonzero(d.dense(k) < 0)
            rows = rng.permutation(free)[: int(rng.integers(0, 50))]
            to = np.arange(nxt, nxt + rows.size)
            nxt += rows.size
            d.add(rows, to)
            r.add(rows, to)
        elif op == 2:  # keep a subset, renumbered
            keep = np.flatnonzero(rng.random(k) < 0.8)
            d.keep(keep)
            r.keep(keep)
            d.reset(np.arange(keep.size, k))  # what the store's rows past n look like
            k = keep.size
        elif op == 3:  # rows reused: unlinked
            rows = rng.integers(0, k, 20)
            d.reset(rows)
            r.reset(rows)
        else:  # rewritten as a whole (day-end compaction)
            links = d.dense(k)
            links[links >= 0] = rng.permutation(int((links >= 0).sum()))
            d.set_dense(links)
            r.set_dense(links)
        _same(d, r, k, rng)
        if step % 10 == 9:
            r.trim(k)
            _same(d, r, k, rng)


def test_rank_links_cost_a_bit_a_row_and_a_link_a_linked_row():
    r = RankLinks()
    n = 1 << 20
    r.reserve(n)
    r.add(np.arange(0, n, 16), np.arange(n // 16))
    # a bit and a 32-bit running count per 64 rows, and 4 B per linked row
    assert r.nbytes == n // 8 + 4 * (n // 64) + 4 * (n // 16)
    assert r.nbytes < 4 * n / 4  # under a quarter of the dense layout's 4 B a row


def test_rank_links_across_word_boundaries():
    r = RankLinks()
    r.reserve(200)
    rows = np.array([0, 63, 64, 127, 128, 199])
    r.add(rows[::-1], np.arange(6)[::-1] + 10)
    np.testing.assert_array_equal(r.get(rows), np.arange(6) + 10)
    np.testing.assert_array_equal(r.dense(200)[[1, 62, 65, 198]], [-1, -1, -1, -1])

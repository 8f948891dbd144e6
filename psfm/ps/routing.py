"""Split a batch's keys by shard and merge the shards' answers back (pure numpy, no Ray).

The batch's unique keys are sorted; ``route`` gives, per shard, the indices of its keys (still
sorted). A shard's pull answer lists table-p rows for *its* member keys in its key order; the
merged table lists rows for every member key in batch order. Both directions are one fancy-index
per level::

    rows_p = cumsum(member_p(level)) - 1        # batch-wide row of each key at level p
    merged_p[rows_p[idx_s][member_s]] = part_s  # pull
    part_s = grad_p[rows_p[idx_s][member_s]]    # push

``member_p`` is the model's :class:`~psfm.models.layout.FactorLayout` (``layout.members``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from psfm.models.layout import FactorLayout
from psfm.ps.messages import PullResult, PushRequest

__all__ = ["Route", "route", "merge_pulls", "split_push", "shard_of"]


def shard_ids(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard of each key as ``uint32``: its high 32 bits modulo ``n_shards`` (keys are
    well mixed), in 32-bit arithmetic (4x faster than the same modulo on uint64)."""
    hi = (np.asarray(keys, dtype=np.uint64) >> np.uint64(32)).astype(np.uint32)
    return hi % np.uint32(n_shards)


def shard_of(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard of each key (int64): a fixed function of the key's high bits."""
    return shard_ids(keys, n_shards).astype(np.int64)


@dataclass
class Route:
    """Per shard: indices into the batch's unique keys."""

    n_keys: int
    index: list[np.ndarray]


def route(keys: np.ndarray, n_shards: int) -> Route:
    if n_shards == 1:
        return Route(keys.size, [np.arange(keys.size)])
    sid = shard_ids(keys, n_shards)
    if n_shards <= 1 << 16:  # 16-bit ids: numpy's stable argsort is then a radix sort
        sid = sid.astype(np.uint16)
    order = np.argsort(sid, kind="stable")
    bounds = np.zeros(n_shards + 1, np.int64)
    np.cumsum(np.bincount(sid, minlength=n_shards), out=bounds[1:])
    return Route(keys.size, [order[bounds[s] : bounds[s + 1]] for s in range(n_shards)])


def merge_pulls(r: Route, parts: Sequence[PullResult], layout: FactorLayout) -> PullResult:
    """Shard answers -> one answer in batch key order."""
    if len(parts) == 1:
        return parts[0]
    w = np.empty((r.n_keys, *parts[0].w.shape[1:]), dtype=np.float32)  # (n,) or (n, 2)
    level = np.empty(r.n_keys, dtype=np.int8)
    for idx, part in zip(r.index, parts):
        w[idx] = part.w
        level[idx] = part.level
    tables = []
    for p in range(1, len(parts[0].tables) + 1):
        member = layout.members(level, p)
        rows = np.cumsum(member) - 1
        dim = parts[0].tables[p - 1].shape[1]
        out = np.empty((int(member.sum()), dim), dtype=np.float32)
        for idx, part in zip(r.index, parts):
            out[rows[idx[layout.members(part.level, p)]]] = part.tables[p - 1]
        tables.append(out)
    return PullResult(w, level, tables)


def split_push(r: Route, req: PushRequest, layout: FactorLayout) -> list[PushRequest]:
    """One request per shard."""
    if len(r.index) == 1:
        return [req]
    m = len(req.grad_tables)
    rows = [np.cumsum(layout.members(req.level, p)) - 1 for p in range(1, m + 1)]
    out = []
    for idx in r.index:
        lev = req.level[idx]
        out.append(
            req.take(idx, [rows[p - 1][idx[layout.members(lev, p)]] for p in range(1, m + 1)])
        )
    return out

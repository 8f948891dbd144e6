"""Clients that talk to a set of shards for a worker: split by shard, call, merge.

:class:`LocalClient` calls in-process :class:`ParameterShard` objects directly (the in-process
trainer and unit tests); the Ray client issues the same calls to actors, all shards at once,
gathered with one ``ray.get``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psfm.ps.routing import merge_pulls, route, split_push
from psfm.ps.shard import ParameterShard, PullResult, ShardStats

__all__ = ["LocalClient", "merge_stats"]


def merge_stats(parts: Sequence[ShardStats]) -> ShardStats:
    """Model size over all shards."""
    m = len(parts[0].factor_rows_per_level)
    return ShardStats(
        keys=sum(p.keys for p in parts),
        nonzero_w=sum(p.nonzero_w for p in parts),
        factor_rows_per_level=[sum(p.factor_rows_per_level[i] for p in parts) for i in range(m)],
        nonzero_factors=sum(p.nonzero_factors for p in parts),
        ps_bytes=sum(p.ps_bytes for p in parts),
        raw_bytes=sum(p.raw_bytes for p in parts),
    )


class LocalClient:
    """In-process shards behind the pull/push interface."""

    def __init__(self, shards: Sequence[ParameterShard]) -> None:
        self.shards = list(shards)
        self.tied = self.shards[0].tied
        self.bytes_pulled = 0
        self.bytes_pushed = 0

    def pull(self, keys: np.ndarray, create: bool = False) -> PullResult:
        r = route(keys, len(self.shards))
        parts = [s.pull(keys[idx], create) for s, idx in zip(self.shards, r.index)]
        self.bytes_pulled += keys.nbytes + sum(p.nbytes for p in parts)
        return merge_pulls(r, parts, self.tied)

    def push(self, keys, counts, level, grad_w, grad_tables) -> None:
        r = route(keys, len(self.shards))
        for shard, args in zip(self.shards, split_push(r, keys, counts, level, grad_w,
                                                         grad_tables, self.tied)):
            self.bytes_pushed += sum(a.nbytes for a in args[:4]) + sum(g.nbytes for g in args[4])
            shard.push(*args)

    def add_counts(self, keys: np.ndarray, counts: np.ndarray) -> None:
        r = route(keys, len(self.shards))
        for shard, idx in zip(self.shards, r.index):
            shard.add_counts(keys[idx], counts[idx])

    def finish_counts(self) -> dict[str, int]:
        outs = [s.finish_counts() for s in self.shards]
        return {k: sum(o[k] for o in outs) for k in outs[0]}

    def end_day(self, day: int) -> dict[str, int]:
        outs = [s.end_day(day) for s in self.shards]
        return {k: sum(o[k] for o in outs) for k in outs[0]}

    def stats(self) -> ShardStats:
        return merge_stats([s.stats() for s in self.shards])

    def snapshots(self) -> list[dict[str, np.ndarray]]:
        return [s.snapshot() for s in self.shards]

    def restore(self, states: Sequence[dict[str, np.ndarray]]) -> None:
        for s, st in zip(self.shards, states):
            s.restore(st)

    def weights(self) -> list[dict[str, np.ndarray]]:
        return [s.weights() for s in self.shards]

"""The Ray client of a worker: all shards at once, gathered with one ``ray.get``.

``pull`` splits the batch's unique keys by shard, submits every shard's pull, and gathers them
with a single ``ray.get`` (never get-in-a-loop); ``pull_async`` returns the refs so the next
batch's pull is in flight while the current one computes. ``push`` submits every shard's push
and keeps at most ``max_in_flight`` pushes outstanding (async mode), or hands them to the shards'
step buffers (sync mode with several workers); ``push_pull`` pushes one batch and pulls the
next in one call per shard. Pull answers and fused push + pull arguments travel as one buffer
each (:mod:`psfm.ps.wire`: one object per message, not one per array).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import ray

from psfm.ps.routing import Route, merge_pulls, route, split_push
from psfm.ps.shard import PullResult
from psfm.ps.wire import pack

__all__ = ["RayClient", "PendingPull"]


@dataclass
class PendingPull:
    route: Route
    refs: list
    key_bytes: int


class RayClient:
    """Pull/push against shard actor handles."""

    def __init__(
        self,
        shards: Sequence,
        tied: bool,
        max_in_flight: int = 2,
        buffered_worker: int | None = None,
    ) -> None:
        self.shards = list(shards)
        self.tied = tied
        self.max_in_flight = max_in_flight
        self.buffered_worker = buffered_worker  # sync mode, several workers: this worker's id
        self._pushes: deque = deque()
        self.bytes_pulled = 0
        self.bytes_pushed = 0

    def pull_async(self, keys: np.ndarray, create: bool = False) -> PendingPull:
        r = route(keys, len(self.shards))
        refs = [s.pull_packed.remote(keys[idx], create) for s, idx in zip(self.shards, r.index)]
        return PendingPull(r, refs, keys.nbytes)

    def wait_pull(self, pending: PendingPull) -> PullResult:
        parts = [PullResult.unpack(b) for b in ray.get(pending.refs)]
        self.bytes_pulled += pending.key_bytes + sum(p.nbytes for p in parts)
        return merge_pulls(pending.route, parts, self.tied)

    def pull(self, keys: np.ndarray, create: bool = False) -> PullResult:
        return self.wait_pull(self.pull_async(keys, create))

    def _split_push(self, keys, counts, level, grad_w, grad_tables) -> list[tuple]:
        """A push's arguments per shard (counted in ``bytes_pushed``)."""
        args = split_push(route(keys, len(self.shards)), keys, counts, level, grad_w,
                          grad_tables, self.tied)
        for a in args:
            self.bytes_pushed += sum(x.nbytes for x in a[:4]) + sum(g.nbytes for g in a[4])
        return args

    def push(self, keys, counts, level, grad_w, grad_tables) -> None:
        refs = []
        for shard, a in zip(self.shards,
                            self._split_push(keys, counts, level, grad_w, grad_tables)):
            if self.buffered_worker is None:
                refs.append(shard.push.remote(*a))
            else:
                refs.append(shard.push_buffered.remote(self.buffered_worker, *a))
        if self.buffered_worker is not None:
            ray.get(refs)  # the step's gradients are stored before the step ends
            return
        self._pushes.append(refs)
        while len(self._pushes) > self.max_in_flight:
            ray.get(self._pushes.popleft())

    def push_pull(self, push_args: tuple, keys: np.ndarray, create: bool = False) -> PendingPull:
        """Push one batch's gradients and pull the next batch's keys: one call per shard
        (the shard applies the push first, so the pull sees it)."""
        if self.buffered_worker is not None:  # sync steps: pushes go to the step buffers
            self.push(*push_args)
            return self.pull_async(keys, create)
        args = self._split_push(*push_args)
        r = route(keys, len(self.shards))
        refs = []
        for shard, a, idx in zip(self.shards, args, r.index):
            buf = pack([*a[:4], *a[4], keys[idx], np.array([create], np.int8)])
            refs.append(shard.push_pull_packed.remote(buf))
        return PendingPull(r, refs, keys.nbytes)

    def flush(self) -> None:
        """Wait for every outstanding push (end of a unit)."""
        while self._pushes:
            ray.get(self._pushes.popleft())

    def add_counts(self, keys: np.ndarray, counts: np.ndarray) -> None:
        r = route(keys, len(self.shards))
        self._pushes.append([s.add_counts.remote(keys[idx], counts[idx])
                             for s, idx in zip(self.shards, r.index)])
        while len(self._pushes) > self.max_in_flight:
            ray.get(self._pushes.popleft())

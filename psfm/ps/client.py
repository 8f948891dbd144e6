"""Clients that talk to a set of shards for a worker: split by shard, call, merge.

:class:`PsClient` is the protocol a worker programs against. :class:`LocalClient` calls
in-process :class:`ParameterShard` objects directly (the in-process trainer and unit tests);
the Ray client (``psfm.ray_backend.client.RayClient``) issues the same calls to actors, all
shards at once, gathered with one ``ray.get``, and pipelines them (``pull_async`` returns
before the answer is there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from psfm.ps.messages import PullResult, PushRequest, ShardStats
from psfm.ps.routing import merge_pulls, route, split_push
from psfm.ps.shard import ParameterShard

__all__ = ["LocalClient", "PsClient"]


class PsClient(Protocol):
    """What a worker needs from the parameter servers.

    ``pull_async`` starts a pull and ``wait_pull`` returns its answer (a client may answer at
    once); ``push_pull`` pushes one batch and starts the pull of the next in one call per
    shard, the push applied first; ``flush`` waits for every push in flight. ``state`` asks
    for the FTRL state instead of the weights (:class:`PullResult`, worker-local steps).
    ``bytes_pulled`` and ``bytes_pushed`` count the message payloads."""

    bytes_pulled: int
    bytes_pushed: int

    def pull(self, keys: np.ndarray, create: bool = False, state: bool = False) -> PullResult: ...

    def pull_async(self, keys: np.ndarray, create: bool = False, state: bool = False) -> Any: ...

    def wait_pull(self, pending: Any) -> PullResult: ...

    def push(self, req: PushRequest) -> None: ...

    def push_pull(
        self, req: PushRequest, keys: np.ndarray, create: bool = False, state: bool = False
    ) -> Any: ...

    def flush(self) -> None: ...

    def add_counts(self, keys: np.ndarray, counts: np.ndarray) -> None: ...


class LocalClient:
    """In-process shards behind the :class:`PsClient` protocol (every call completes at once)."""

    def __init__(self, shards: Sequence[ParameterShard]) -> None:
        self.shards = list(shards)
        self.layout = self.shards[0].layout
        self.bytes_pulled = 0
        self.bytes_pushed = 0

    def pull(self, keys: np.ndarray, create: bool = False, state: bool = False) -> PullResult:
        r = route(keys, len(self.shards))
        parts = [s.pull(keys[idx], create, state) for s, idx in zip(self.shards, r.index)]
        self.bytes_pulled += keys.nbytes + sum(p.nbytes for p in parts)
        return merge_pulls(r, parts, self.layout)

    def pull_async(self, keys: np.ndarray, create: bool = False, state: bool = False) -> PullResult:
        return self.pull(keys, create, state)

    def wait_pull(self, pending: PullResult) -> PullResult:
        return pending

    def push(self, req: PushRequest) -> None:
        r = route(req.keys, len(self.shards))
        for shard, part in zip(self.shards, split_push(r, req, self.layout)):
            self.bytes_pushed += part.nbytes
            shard.push(part)

    def push_pull(
        self, req: PushRequest, keys: np.ndarray, create: bool = False, state: bool = False
    ) -> PullResult:
        self.push(req)
        return self.pull(keys, create, state)

    def flush(self) -> None:
        """Nothing is ever in flight."""

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
        return ShardStats.merge([s.stats() for s in self.shards])

    def snapshots(self) -> list[dict[str, np.ndarray]]:
        return [s.snapshot() for s in self.shards]

    def restore(self, states: Sequence[dict[str, np.ndarray]]) -> None:
        for s, st in zip(self.shards, states):
            s.restore(st)

    def weights(self) -> list[dict[str, np.ndarray]]:
        return [s.weights() for s in self.shards]

"""The Ray client of a worker: all shards at once, gathered with one ``ray.get``.

``pull`` splits the batch's unique keys by shard, submits every shard's pull, and gathers them
with a single ``ray.get`` (never get-in-a-loop); ``pull_async`` returns the refs so the next
batch's pull is in flight while the current one computes. ``push`` submits every shard's push
and keeps at most ``max_in_flight`` pushes outstanding (async mode), or hands them to the shards'
step buffers (sync mode with several workers); ``push_pull`` pushes one batch and pulls the
next in one call per shard.

Messages travel as one buffer each (:mod:`psfm.ps.wire`). With ``ps.transport = "auto"`` a
shard on the worker's node reads and answers them in a shared-memory file (:mod:`psfm.ps.shm`,
through :class:`ShmLink`) and the actor call carries only where they are; a shard on another
node gets them as Ray task arguments and results.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import ray

from psfm.models.layout import FactorLayout
from psfm.ps.messages import PullResult, PushRequest
from psfm.ps.routing import Route, merge_pulls, route, split_push
from psfm.ps.shm import MessageFile, default_dir
from psfm.ps.wire import pack, pack_into, packed_size, pad

__all__ = ["RayClient", "PendingPull", "ShmLink"]

log = logging.getLogger(__name__)

_GROWTH = 1.5  # a message file grows to this times the message that did not fit


def _answer_bound(n_keys: int, ranks: Sequence[int], state: bool = False) -> int:
    """Most bytes a pull answer for ``n_keys`` keys can take (every key at every level; a
    state pull carries two floats per coordinate)."""
    f = 8 if state else 4
    return (
        packed_size([])
        + 24 * (2 + len(ranks))
        + pad(f * n_keys)
        + pad(n_keys)
        + sum(pad(f * d * n_keys) for d in ranks)
    )


class ShmLink:
    """One worker's shared-memory channel to one shard on its node.

    The worker owns a :class:`~psfm.ps.shm.MessageFile` of ``slots`` slots; a call writes its
    message into a free slot and passes (file, slot, length) to ``shard.shm_call``. A pull's
    slot stays taken until :meth:`answer` copies the answer out; a push's until the call
    returns (:meth:`reap`). A message larger than a slot moves the link to a bigger file; the
    shard drops the old one once nothing in it is in flight. ``open`` returns False when the
    shard cannot map the file (it runs on another node)."""

    def __init__(self, shard, name: str, slots: int, directory: str | None = None) -> None:
        self.shard, self.name, self.slots = shard, name, slots
        self.dir = directory or default_dir()
        self.file: MessageFile | None = None
        self.gen = 0
        self.free: list[int] = []
        self.busy: dict[tuple[int, int], MessageFile] = {}  # (gen, slot) -> its file
        self.retired: dict[int, MessageFile] = {}  # older files with calls in flight
        self.pushes: deque = deque()  # (gen, slot, ref) of pushes in flight

    def _fname(self, gen: int) -> str:
        return f"{self.name}.{gen}"

    def open(self, slot_bytes: int) -> bool:
        """A new file of at least ``slot_bytes`` per slot, mapped by the shard; False (and no
        file) when the shard cannot see it."""
        try:
            f = MessageFile.create(self.dir, "psfm", self.slots, slot_bytes)
        except OSError as e:
            log.warning(
                "no shared-memory message file in %s (%s): Ray messages instead", self.dir, e
            )
            return False
        try:
            ok = ray.get(
                self.shard.shm_attach.remote(
                    self._fname(self.gen + 1), f.path, f.token, f.slots, f.slot_bytes
                )
            )
        finally:
            f.unlink()  # both sides hold a mapping now (or the shard never will)
        if not ok:
            return False
        if self.file is not None:
            self.retired[self.gen] = self.file
        self.gen += 1
        self.file, self.free = f, list(range(f.slots))
        self._drop_retired()
        return True

    def _drop_retired(self) -> None:
        busy_gens = {g for g, _ in self.busy}
        for g in [g for g in self.retired if g not in busy_gens]:
            del self.retired[g]
            self.shard.shm_detach.remote(self._fname(g))

    def _take(self, need: int) -> tuple[int, int, np.ndarray] | None:
        """A free slot of at least ``need`` bytes: (gen, slot, its buffer); None when the
        file would have to grow and a bigger one cannot be made (no room in its directory)."""
        if self.file is None or need > self.file.slot_bytes:
            if not self.open(int(need * _GROWTH)):
                return None
        while not self.free:
            if not self.pushes:
                raise RuntimeError(f"message link '{self.name}': every slot is taken")
            self.reap(len(self.pushes) - 1)
        i = self.free.pop()
        self.busy[(self.gen, i)] = self.file
        return self.gen, i, self.file.slot(i)

    def _release(self, gen: int, slot: int) -> None:
        self.busy.pop((gen, slot))
        if gen == self.gen:
            self.free.append(slot)
        elif self.retired:
            self._drop_retired()

    def call(self, op: str, arrays: Sequence[np.ndarray], answer_bytes: int = 0):
        """Submit ``op`` on ``arrays``; returns ``(ref, (gen, slot, request bytes))``, or
        None when the message does not fit (the caller sends it through Ray instead)."""
        req = packed_size(arrays)
        taken = self._take(pad(req) + answer_bytes)
        if taken is None:
            return None
        gen, i, buf = taken
        pack_into(arrays, buf)
        ref = self.shard.shm_call.remote(self._fname(gen), op, i, req)
        return ref, (gen, i, req)

    def push(self, arrays: Sequence[np.ndarray]) -> bool:
        """Submit a push; False when it does not fit (send it through Ray)."""
        sent = self.call("push", arrays)
        if sent is None:
            return False
        ref, (gen, i, _) = sent
        self.pushes.append((gen, i, ref))
        return True

    def answer(self, where: tuple[int, int, int], length: int) -> np.ndarray:
        """Copy a pull's answer (``length`` bytes, as ``shm_call`` returned) out of its slot
        and free the slot."""
        gen, i, req = where
        f = self.busy[(gen, i)]
        out = f.slot(i)[pad(req) : pad(req) + length].copy()
        self._release(gen, i)
        return out

    def reap(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` pushes are in flight."""
        while len(self.pushes) > keep:
            gen, i, ref = self.pushes.popleft()
            ray.get(ref)
            self._release(gen, i)


@dataclass
class PendingPull:
    route: Route
    refs: list
    key_bytes: int
    where: list  # per shard: (ShmLink, slot) of the answer, or None (a Ray result)


class RayClient:
    """Pull/push against shard actor handles."""

    def __init__(
        self,
        shards: Sequence,
        tied: bool,
        max_in_flight: int = 2,
        buffered_worker: int | None = None,
        ranks: Sequence[int] = (),
        transport: str = "ray",
    ) -> None:
        self.shards = list(shards)
        self.ranks = tuple(ranks)
        self.layout = FactorLayout(self.ranks, tied)
        self.max_in_flight = max_in_flight
        self.buffered_worker = buffered_worker  # sync mode, several workers: this worker's id
        self._pushes: deque = deque()
        self.bytes_pulled = 0
        self.bytes_pushed = 0
        self.links: list[ShmLink | None] = [None] * len(self.shards)
        if transport == "auto":
            tag = uuid.uuid4().hex[:12]
            for s, shard in enumerate(self.shards):
                link = ShmLink(shard, f"{tag}-s{s}", max_in_flight + 3)
                self.links[s] = link if link.open(1 << 20) else None
            log.info(
                "shared-memory messages with %d of %d shards",
                sum(x is not None for x in self.links),
                len(self.shards),
            )

    def _pull_call(
        self, s: int, keys: np.ndarray, create: bool, push: PushRequest | None, state: bool
    ):
        """One shard's pull (after ``push``, that shard's push arguments): (ref, where)."""
        shard, link = self.shards[s], self.links[s]
        flags = np.array([create, state] if state else [create], np.int8)
        arrays = [keys, flags] if push is None else [*push.arrays, keys, flags]
        if link is not None:
            sent = link.call(
                "pull" if push is None else "push_pull",
                arrays,
                _answer_bound(keys.size, self.ranks, state),
            )
            if sent is not None:
                return sent[0], (link, sent[1])
        if push is None:
            return shard.pull_packed.remote(keys, create, state), None
        return shard.push_pull_packed.remote(pack(arrays)), None

    def pull_async(
        self, keys: np.ndarray, create: bool = False, state: bool = False
    ) -> PendingPull:
        r = route(keys, len(self.shards))
        calls = [
            self._pull_call(s, keys[idx], create, None, state) for s, idx in enumerate(r.index)
        ]
        return PendingPull(r, [c[0] for c in calls], keys.nbytes, [c[1] for c in calls])

    def wait_pull(self, pending: PendingPull) -> PullResult:
        outs = ray.get(pending.refs)
        parts = [
            PullResult.unpack(out if where is None else where[0].answer(where[1], out))
            for out, where in zip(outs, pending.where)
        ]
        self.bytes_pulled += pending.key_bytes + sum(p.nbytes for p in parts)
        return merge_pulls(pending.route, parts, self.layout)

    def pull(self, keys: np.ndarray, create: bool = False, state: bool = False) -> PullResult:
        return self.wait_pull(self.pull_async(keys, create, state))

    def _split_push(self, req: PushRequest) -> list[PushRequest]:
        """A push per shard (counted in ``bytes_pushed``)."""
        parts = split_push(route(req.keys, len(self.shards)), req, self.layout)
        self.bytes_pushed += sum(p.nbytes for p in parts)
        return parts

    def push(self, req: PushRequest) -> None:
        refs = []
        for s, part in enumerate(self._split_push(req)):
            shard, link = self.shards[s], self.links[s]
            if self.buffered_worker is not None:
                refs.append(shard.push_buffered.remote(self.buffered_worker, part))
            elif link is not None and link.push(part.arrays):
                link.reap(self.max_in_flight)
            else:
                refs.append(shard.push.remote(part))
        if self.buffered_worker is not None:
            ray.get(refs)  # the step's gradients are stored before the step ends
            return
        if refs:
            self._pushes.append(refs)
        while len(self._pushes) > self.max_in_flight:
            ray.get(self._pushes.popleft())

    def push_pull(
        self, req: PushRequest, keys: np.ndarray, create: bool = False, state: bool = False
    ) -> PendingPull:
        """Push one batch's gradients and pull the next batch's keys: one call per shard
        (the shard applies the push first, so the pull sees it)."""
        if self.buffered_worker is not None:  # sync steps: pushes go to the step buffers
            self.push(req)
            return self.pull_async(keys, create, state)
        parts = self._split_push(req)
        r = route(keys, len(self.shards))
        calls = [
            self._pull_call(s, keys[idx], create, part, state)
            for s, (part, idx) in enumerate(zip(parts, r.index))
        ]
        return PendingPull(r, [c[0] for c in calls], keys.nbytes, [c[1] for c in calls])

    def flush(self) -> None:
        """Wait for every outstanding push (end of a unit)."""
        while self._pushes:
            ray.get(self._pushes.popleft())
        for link in self.links:
            if link is not None:
                link.reap()

    def add_counts(self, keys: np.ndarray, counts: np.ndarray) -> None:
        r = route(keys, len(self.shards))
        self._pushes.append(
            [s.add_counts.remote(keys[idx], counts[idx]) for s, idx in zip(self.shards, r.index)]
        )
        while len(self._pushes) > self.max_in_flight:
            ray.get(self._pushes.popleft())

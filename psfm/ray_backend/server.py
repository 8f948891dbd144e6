"""The shard's server side: what a shard actor (``ShardActor = ray.remote(ShardServer)``) offers
beyond the in-process :class:`~psfm.ps.shard.ParameterShard` it owns.

- packed calls: a pull answered as one buffer, a fused push + pull given as one
  (:mod:`psfm.ps.wire`);
- same-node messages: a worker's shared-memory message file (:mod:`psfm.ps.shm`) mapped here,
  each call naming a slot of it;
- checkpoint files: the shard's state written from its own process
  (:func:`psfm.checkpoint.write_shard_state`);
- everything else forwarded to the shard as it is.

A plain class: it imports no Ray (the unit tests call it in-process).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import numpy as np

from psfm.checkpoint import read_bytes, write_bytes, write_shard_state
from psfm.config import FtrlConfig, LevelConfig, ModelConfig
from psfm.errors import PsfmError
from psfm.memory import keep_freed_memory, process_memory
from psfm.ps.messages import PullResult, PushRequest, ShardStats
from psfm.ps.shard import ParameterShard
from psfm.ps.shm import MessageFile
from psfm.ps.wire import pack_into, pad, unpack

__all__ = ["ShardServer"]


def _flags(a: np.ndarray) -> tuple[bool, bool]:
    """A pull's ``[create]`` or ``[create, state]`` flags."""
    return bool(a[0]), bool(a.size > 1 and a[1])


class ShardServer:
    """One :class:`ParameterShard` behind the calls the Ray actors make."""

    def __init__(
        self,
        model: ModelConfig,
        ftrl: FtrlConfig,
        levels: LevelConfig,
        seed: int = 0,
        shard_id: int = 0,
        n_shards: int = 1,
    ) -> None:
        keep_freed_memory()
        self.shard = ParameterShard(model, ftrl, levels, seed, shard_id, n_shards)
        self._files: dict[str, MessageFile] = {}  # workers' message files on this node

    # ------------------------------------------------------------------ packed buffers
    def pull_packed(
        self, keys: np.ndarray, create: bool = False, state: bool = False
    ) -> np.ndarray:
        """:meth:`pull` answered as one buffer (:meth:`PullResult.unpack` reads it)."""
        return self.shard.pull(keys, create, state).pack()

    def push_pull_packed(self, buf: np.ndarray) -> np.ndarray:
        """:meth:`push_pull` with its arguments in one buffer: ``pack([*req.arrays,
        pull_keys, flags])`` (flags ``[create]`` or ``[create, state]``); answers
        :meth:`pull_packed`'s buffer."""
        return self._push_pull_message(unpack(buf)).pack()

    def _push_pull_message(self, a: list[np.ndarray]) -> PullResult:
        req = PushRequest.from_arrays(a[:-2], self.shard.m)
        return self.shard.push_pull(req, a[-2], *_flags(a[-1]))

    # ------------------------------------------------------------------ same-node messages
    def shm_attach(self, name: str, path: str, token: bytes, slots: int, slot_bytes: int) -> bool:
        """Map a worker's message file (:mod:`psfm.ps.shm`) as ``name``; False when the file
        cannot be opened here (another node) or is not the worker's."""
        f = MessageFile.attach(path, token, slots, slot_bytes)
        if f is not None:
            self._files[name] = f
        return f is not None

    def shm_detach(self, name: str) -> None:
        """Drop a message file the worker has replaced."""
        self._files.pop(name, None)

    def shm_call(self, name: str, op: str, slot: int, length: int) -> int:
        """Run the message of ``length`` bytes in ``slot`` of file ``name``: ``op`` is
        ``"pull"`` (``pack([keys, [create]])``), ``"push"`` (``pack(req.arrays)`` of a
        :class:`PushRequest`) or ``"push_pull"`` (:meth:`push_pull_packed`'s layout). A
        pull's answer (:meth:`pull_packed`'s layout) is written into the slot after the
        request; returns its length (0 for a push)."""
        shard = self.shard
        if name not in self._files:
            raise PsfmError(f"Shard {shard.shard_id}: no message file '{name}' is attached.")
        buf = self._files[name].slot(slot)
        a = unpack(buf[:length])
        if op == "pull":
            out = shard.pull(a[0].copy(), *_flags(a[1]))  # keys outlive the call in _recent
        elif op == "push":
            shard.push(PushRequest.from_arrays(a, shard.m))
            return 0
        elif op == "push_pull":
            a[-2] = a[-2].copy()  # the pull keys outlive the call in _recent
            out = self._push_pull_message(a)
        else:
            raise PsfmError(f"Shard {shard.shard_id}: unknown message op {op!r}.")
        return pack_into(out.arrays, buf[pad(length) :])

    # ------------------------------------------------------------------ checkpoint files
    def reach(self, probe: str, token: bytes) -> str:
        """Whether this process sees the run directory the driver does: read the driver's
        ``probe`` file (it must hold ``token``) and write ``probe.shard-N`` back. Returns ""
        or why not, naming this host (the driver turns it into an error)."""
        where = f"shard {self.shard.shard_id} on {socket.gethostname()}"
        try:
            got = read_bytes(probe)
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            return f"{where} cannot read the driver's file {probe!r} ({e})"
        if got != token:
            return f"{where} reads another file at {probe!r} (a folder of its own node)"
        try:
            write_bytes(f"{probe}.shard-{self.shard.shard_id}", token)
        except Exception as e:  # noqa: BLE001
            return f"{where} cannot write next to {probe!r} ({e})"
        return ""

    def save_state(self, path: str) -> dict[str, Any]:
        """Write this shard's checkpoint file; returns its size and SHA-256."""
        return write_shard_state(path, self.shard.snapshot())

    # ------------------------------------------------------------------ the shard's own calls
    def pull(self, keys: np.ndarray, create: bool = False, state: bool = False) -> PullResult:
        return self.shard.pull(keys, create, state)

    def push(self, req: PushRequest) -> None:
        self.shard.push(req)

    def push_pull(
        self, req: PushRequest, pull_keys: np.ndarray, create: bool = False
    ) -> PullResult:
        return self.shard.push_pull(req, pull_keys, create)

    def push_buffered(self, worker: int, req: PushRequest) -> None:
        self.shard.push_buffered(worker, req)

    def apply_buffered(self) -> None:
        self.shard.apply_buffered()

    def add_counts(self, keys: np.ndarray, counts: np.ndarray) -> None:
        self.shard.add_counts(keys, counts)

    def finish_counts(self) -> dict[str, int]:
        return self.shard.finish_counts()

    def end_day(self, day: int) -> dict[str, int]:
        return self.shard.end_day(day)

    def memory(self) -> dict[str, int | None]:
        """This process's :func:`psfm.memory.process_memory`."""
        return process_memory()

    def cpu_seconds(self) -> float:
        """This process's CPU time so far, all threads."""
        return time.process_time()

    def snapshot(self) -> dict[str, np.ndarray]:
        return self.shard.snapshot()

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.shard.restore(state)

    def stats(self) -> ShardStats:
        return self.shard.stats()

    def weights(self) -> dict[str, np.ndarray]:
        return self.shard.weights()

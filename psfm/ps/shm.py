"""Shared-memory message files between a worker and a shard on the same node (no Ray here).

A Ray actor call copies its arguments and its result through the task RPC or the object store.
A worker's push + pull of a batch against one shard is about a megabyte each way, and the copy
costs the caller more CPU than the shard's own work (``psfm bench``, BENCHMARKS.md: "Worker-shard
message cost"). So when a worker and a shard share a node, the worker writes each message into a
file that both processes have mapped, and the actor call carries only its place::

    worker: pack(request) -> slot i              shard.shm_call(name, op, i, length)
    shard:  unpack(slot i) (views), apply it, pack(answer) -> slot i after the request,
            return the answer's length
    worker: copy the answer out of slot i; slot i is free again

The file is created in ``/dev/shm`` (memory) where there is one, else in the temporary
directory, with its space reserved up front (a full ``/dev/shm`` fails at creation, never with a
bus error later). The worker unlinks it as soon as the shard has mapped it, so nothing is left
behind when either process dies. A shard that cannot open the file (another node or another
container) refuses the attach and that pair keeps Ray's messages.

Layout: a 64-byte header (16 random token bytes that prove the shard mapped the worker's file,
then zeros), then ``slots`` slots of ``slot_bytes`` each.
"""

from __future__ import annotations

import mmap
import os
import secrets
import tempfile

import numpy as np

__all__ = ["MessageFile", "default_dir"]

_HEADER = 64
_TOKEN = 16


def default_dir() -> str:
    """``/dev/shm`` where it exists and is writable, else the temporary directory."""
    d = "/dev/shm"
    return d if os.path.isdir(d) and os.access(d, os.W_OK) else tempfile.gettempdir()


class MessageFile:
    """A mapped file of ``slots`` equal slots. :meth:`create` (worker side) makes a new one;
    :meth:`attach` (shard side) maps an existing one after checking its token."""

    def __init__(self, path: str, mm: mmap.mmap, slots: int, slot_bytes: int) -> None:
        self.path = path
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._mm = mm
        self.buf = np.frombuffer(mm, np.uint8)

    @classmethod
    def create(cls, directory: str, prefix: str, slots: int, slot_bytes: int) -> MessageFile:
        """A new file with a fresh random token (``OSError`` when the space is not there)."""
        slot_bytes = -(-slot_bytes // 4096) * 4096
        size = _HEADER + slots * slot_bytes
        path = os.path.join(directory, f"{prefix}-{secrets.token_hex(8)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except AttributeError:  # no posix_fallocate (macOS): a sparse file in temp space
                os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        f = cls(path, mm, slots, slot_bytes)
        f.buf[:_TOKEN] = np.frombuffer(secrets.token_bytes(_TOKEN), np.uint8)
        return f

    @classmethod
    def attach(cls, path: str, token: bytes, slots: int, slot_bytes: int) -> MessageFile | None:
        """Map the worker's file; None when it cannot be opened here or holds another token."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size != _HEADER + slots * slot_bytes:
                return None
            mm = mmap.mmap(fd, _HEADER + slots * slot_bytes)
        finally:
            os.close(fd)
        f = cls(path, mm, slots, slot_bytes)
        return f if f.token == token else None

    @property
    def token(self) -> bytes:
        return self.buf[:_TOKEN].tobytes()

    def slot(self, i: int) -> np.ndarray:
        """Slot ``i`` as a uint8 view."""
        if not 0 <= i < self.slots:
            raise IndexError(f"slot {i} of a {self.slots}-slot message file")
        lo = _HEADER + i * self.slot_bytes
        return self.buf[lo : lo + self.slot_bytes]

    def unlink(self) -> None:
        """Remove the name; both mappings stay valid until dropped."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

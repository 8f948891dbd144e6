"""The pass cache: a work unit's decoded batches, kept after one read and replayed by the next.

Reading a unit is a third of a training step's cost (Parquet decode, hashing every feature,
the unique sort: BENCHMARKS.md section 1), and it gives the same batches every time. When the
run loop knows a unit will be read again (the statistics pass before pass 1, pass ``k`` before
pass ``k + 1``, the validation days before the next pass's validation), the worker keeps the
unit's batches here and the next read replays them: identical batches, so a replayed pass
trains bit for bit as a re-read one.

A batch is kept compact: the per-occurrence indices as int32 (int64 again on replay), the
per-row occurrence counts instead of the row offsets, no occurrence values when they are all 1,
and not the (rows x fields) key matrix, which training does not use (about 9 B per occurrence
and 12 B per unique key). Units are kept in memory up to ``data.cache_mb`` per worker; a unit
that does not fit goes to a file on local disk (``data.cache_dir``, up to
``data.cache_disk_mb`` per worker) that is unlinked as soon as it is opened, so the space comes
back when the worker ends, however it ends. A folder that lives in memory (``tmpfs``, as
``/tmp`` is on many systems) is not used as disk, and a write that would leave the file system
less than 1 GiB free is not made. A unit that fits neither is read again next time.
An entry is dropped after the read that the run loop says is its last.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from psfm.data.batch import Batch

__all__ = ["PassCache", "compact", "expand"]

log = logging.getLogger(__name__)

_I32_MAX = np.iinfo(np.int32).max
_KEEP_FREE = 1 << 30  # bytes a disk entry leaves free on its file system
_NO_KEYS = np.empty((0, 0), np.uint64)
_NO_MASK = np.empty((0, 0), bool)

Compact = dict[str, Any]  # array fields plus "skipped" and "unit_values"


def compact(b: Batch) -> Compact:
    """The arrays of ``b`` that training reads, in their smallest exact form (copies)."""
    small = b.occ_uniq.size <= _I32_MAX
    idx = np.int32 if small else np.int64
    per_row = np.diff(np.append(b.sample_offsets, b.occ_sample.size))
    out: Compact = {
        "labels": b.labels.copy(),
        "row_len": per_row.astype(np.int32 if small else np.int64),
        "uniq": b.uniq.copy(),
        "occ_uniq": b.occ_uniq.astype(idx),
        "counts": b.counts.copy(),
        "occ_order": b.occ_order.astype(idx),
        "skipped": b.skipped,
        "unit_values": b.unit_values,
    }
    if b.weights is not None:
        out["weights"] = b.weights.copy()
    if not b.unit_values:
        out["occ_value"] = b.occ_value.copy()
    for v in out.values():  # replayed batches share these: a write would change later passes
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return out


def expand(c: Compact) -> Batch:
    """The :class:`Batch` that :func:`compact` was given (its key matrix and mask left
    empty): every array training reads equal in value and dtype."""
    row_len = c["row_len"].astype(np.int64)
    n = int(row_len.sum())
    counts = c["counts"]
    ends = np.cumsum(counts.astype(np.int64))
    return Batch(
        keys=_NO_KEYS,
        mask=_NO_MASK,
        labels=c["labels"],
        weights=c.get("weights"),
        occ_sample=np.repeat(np.arange(row_len.size, dtype=np.int64), row_len),
        occ_value=c["occ_value"] if "occ_value" in c else np.ones(n, np.float32),
        uniq=c["uniq"],
        occ_uniq=c["occ_uniq"].astype(np.int64),
        counts=counts,
        sample_offsets=np.cumsum(row_len) - row_len,
        occ_order=c["occ_order"].astype(np.int64),
        uniq_offsets=ends - counts.astype(np.int64),
        unit_values=bool(c["unit_values"]),
        skipped=int(c["skipped"]),
    )


def in_memory(directory: str) -> bool:
    """Whether ``directory`` is on a file system held in memory (tmpfs, ramfs): Linux's
    ``/proc/mounts``, the longest mount point above it; False where that cannot be read."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return False
    path = os.path.realpath(directory)
    best, kind = "", ""
    for point, fstype in mounts:
        point = point.replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fstype
    return kind in ("tmpfs", "ramfs")


def _nbytes(c: Compact) -> int:
    return sum(v.nbytes for v in c.values() if isinstance(v, np.ndarray))


@dataclass
class _Entry:
    """One unit's batches: compact dicts in memory, or (offset, spec) records of a file."""

    cursors: list[Any] = field(default_factory=list)
    memory: list[Compact] = field(default_factory=list)
    disk: list[tuple[int, int, list[tuple[str, str, tuple[int, ...], int]], int, bool]] = field(
        default_factory=list
    )
    file: BinaryIO | None = None
    nbytes: int = 0


class PassCache:
    """Per-worker store of units' compact batches (module docstring).

    Args:
        memory_bytes: what the entries may hold in memory in all.
        disk_bytes: what they may hold on local disk in all (0: no disk).
        directory: where disk entries go ("": the system's temporary folder).
    """

    def __init__(self, memory_bytes: int, disk_bytes: int, directory: str = "") -> None:
        self.memory_bytes, self.disk_bytes = int(memory_bytes), int(disk_bytes)
        self.directory = directory
        self._entries: dict[tuple, _Entry] = {}
        self.memory_used = self.disk_used = 0
        self.hits = self.stored = self.refused = 0
        self._disk_in_memory: bool | None = None  # found out at the first disk entry

    @property
    def enabled(self) -> bool:
        return self.memory_bytes > 0 or self.disk_bytes > 0

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    # ------------------------------------------------------------------ replay
    def replay(self, key: tuple, last: bool) -> Iterator[tuple[Batch, Any]]:
        """The batches and cursors of the unit stored under ``key`` (which must be there);
        ``last``: the entry is dropped once they have all been read."""
        e = self._entries[key]
        self.hits += 1
        if e.file is None:
            for held, cur in zip(e.memory, e.cursors):
                yield expand(held), cur
        else:
            fd = e.file.fileno()
            for (offset, size, specs, skipped, unit), cur in zip(e.disk, e.cursors):
                buf = bytearray(size)
                got = os.preadv(fd, [buf], offset)
                if got != size:
                    raise OSError(f"pass cache: short read ({got} of {size} bytes)")
                c: Compact = {"skipped": skipped, "unit_values": unit}
                for name, dtype, shape, at in specs:
                    count = int(np.prod(shape))
                    c[name] = np.frombuffer(buf, dtype, count, at).reshape(shape)
                yield expand(c), cur
        if last:
            self.drop(key)

    def drop(self, key: tuple) -> None:
        e = self._entries.pop(key, None)
        if e is None:
            return
        self._release(e)

    def close(self) -> None:
        for key in list(self._entries):
            self.drop(key)

    # ------------------------------------------------------------------ record
    def record(
        self, key: tuple, batches: Iterator[tuple[Batch, Any]]
    ) -> Iterator[tuple[Batch, Any]]:
        """Pass ``batches`` through, storing them under ``key`` when the unit has been read
        to its end and fits (memory first, else disk)."""
        e: _Entry | None = _Entry() if self.enabled and key not in self._entries else None
        done = False
        try:
            for batch, cur in batches:
                if e is not None:
                    e = self._add(e, compact(batch), cur)
                yield batch, cur
            done = True
        finally:
            if e is not None and done:
                if e.file is not None:
                    e.file.flush()
                self._entries[key] = e
                self.stored += 1
            elif e is not None:  # the read stopped early: nothing kept
                self._release(e)

    def _add(self, e: _Entry, c: Compact, cur: Any) -> _Entry | None:
        size = _nbytes(c)
        if e.file is None and self.memory_used + size <= self.memory_bytes:
            e.memory.append(c)
            e.cursors.append(cur)
            e.nbytes += size
            self.memory_used += size
            return e
        if e.file is None:  # to disk: what is held so far goes first
            if self.disk_used + e.nbytes + size > self.disk_bytes or not self._open(e):
                return self._refuse(e)
            held, e.memory = e.memory, []
            self.memory_used -= e.nbytes
            e.nbytes = 0
            for h in held:
                if not self._write(e, h):
                    return self._refuse(e)
        if self.disk_used + size > self.disk_bytes or not self._write(e, c):
            return self._refuse(e)
        e.cursors.append(cur)
        return e

    def _open(self, e: _Entry) -> bool:
        if self._disk_in_memory is None:
            self._disk_in_memory = in_memory(self.directory or tempfile.gettempdir())
            if self._disk_in_memory:
                log.warning(
                    "pass cache: '%s' is in memory (tmpfs), not on disk: units that do not "
                    "fit data.cache_mb are read again; set data.cache_dir to a disk folder to "
                    "keep them there",
                    self.directory or tempfile.gettempdir(),
                )
        if self._disk_in_memory:
            return False
        try:
            fd, path = tempfile.mkstemp(prefix="psfm-pass-", dir=self.directory or None)
            os.unlink(path)  # the space returns when the worker ends, however it ends
            e.file = os.fdopen(fd, "w+b")
        except OSError as err:
            log.warning("pass cache: cannot open a file in '%s' (%s)", self.directory, err)
            return False
        return True

    def _write(self, e: _Entry, c: Compact) -> bool:
        assert e.file is not None
        specs, parts, at = [], [], 0
        for name, v in c.items():
            if isinstance(v, np.ndarray):
                a = np.ascontiguousarray(v)
                specs.append((name, a.dtype.str, a.shape, at))
                parts.append(a)
                at += a.nbytes
        try:
            fs = os.fstatvfs(e.file.fileno())
            if fs.f_bavail * fs.f_frsize < at + _KEEP_FREE:
                return False  # the disk is nearly full: leave it to the rest of the system
            offset = e.file.seek(0, os.SEEK_END)
            for a in parts:
                e.file.write(a.reshape(-1).view(np.uint8).data)
        except OSError as err:
            log.warning("pass cache: cannot write to local disk (%s); units are read again", err)
            return False
        e.disk.append((offset, at, specs, int(c["skipped"]), bool(c["unit_values"])))
        e.nbytes += at
        self.disk_used += at
        return True

    def _release(self, e: _Entry) -> None:
        if e.file is None:
            self.memory_used -= e.nbytes
        else:
            self.disk_used -= e.nbytes
            e.file.close()

    def _refuse(self, e: _Entry) -> _Entry | None:
        """Give up keeping ``e``: what it holds is released; None, the entry that goes on."""
        self._release(e)
        self.refused += 1
        return None

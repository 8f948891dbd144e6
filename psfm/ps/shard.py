"""A parameter-server shard: keyed FTRL state for the keys it owns (DESIGN §5).

Per key (slot ``s`` from a :class:`KeyTable`): linear FTRL state ``z_w[s], n_w[s]``, occurrence
``count[s]``, ``level[s]`` and ``last_day[s]``; per level p a row index ``row_p[s]`` (``-1`` = no
row) into that level's factor state ``zf_p, nf_p``: ``(rows, D_p)`` float32. Untied models (FM,
RaFM) keep a row in every level ``p <= k_s``; tied ones (DiFacto) one row of size ``D_{k_s}`` in
level ``k_s`` only. Weights are never stored: they are the FTRL closed form of ``(z, n)``, so the
state arrays *are* the checkpoint.

This is a plain class (the Ray actor is ``ray.remote(ParameterShard)``); it imports no Ray.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from psfm.checkpoint import write_shard_state
from psfm.config import FtrlConfig, LevelConfig, ModelConfig
from psfm.data.hashing import BIAS_KEY
from psfm.errors import CheckpointError
from psfm.optim.ftrl import FtrlParams, ftrl_init_z, ftrl_update, ftrl_weight
from psfm.ps.admission import CountMinSketch
from psfm.ps.levels import init_factors, level_thresholds, levels_from_counts
from psfm.ps.table import KeyTable
from psfm.ps.wire import pack, unpack

__all__ = ["ParameterShard", "PullResult", "ShardStats", "shard_of"]

log = logging.getLogger(__name__)


def shard_of(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard of each key: a fixed function of the key's high bits (keys are well mixed)."""
    return ((np.asarray(keys, dtype=np.uint64) >> np.uint64(32)) % np.uint64(n_shards)).astype(
        np.int64
    )


@dataclass
class PullResult:
    """Weights of ``keys`` in key order: ``w`` (n,) float32, ``level`` (n,) int8 and
    ``tables[p-1]``: (rows, D_p) float32 for the keys with a stored row at level p
    (level >= p untied, level == p tied), in key order."""

    w: np.ndarray
    level: np.ndarray
    tables: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + self.level.nbytes + sum(t.nbytes for t in self.tables)

    def pack(self) -> np.ndarray:
        """One buffer (:mod:`psfm.ps.wire`) for crossing actors."""
        return pack([self.w, self.level, *self.tables])

    @classmethod
    def unpack(cls, buf: np.ndarray) -> PullResult:
        a = unpack(buf)
        return cls(a[0], a[1], a[2:])


@dataclass
class ShardStats:
    keys: int
    nonzero_w: int
    factor_rows_per_level: list[int]
    nonzero_factors: int
    ps_bytes: int
    raw_bytes: int

    @property
    def nonzero_params(self) -> int:
        return self.nonzero_w + self.nonzero_factors


class _Rows:
    """A growable FTRL state table of one factor level: ``s[row] = (z, n)``, shape
    (capacity, 2, D) float32. z and n of a row sit side by side, so a pull is one random
    gather and a push one gather and one scatter per row (the shard's cost is memory latency)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.s = np.zeros((16, 2, dim), dtype=np.float32)

    @property
    def z(self) -> np.ndarray:
        return self.s[:, 0]

    @property
    def nn(self) -> np.ndarray:
        return self.s[:, 1]

    def add(self, z0: np.ndarray) -> np.ndarray:
        """Append rows with initial ``z`` (``n = 0``); returns their row indices."""
        k = z0.shape[0]
        if self.n + k > self.s.shape[0]:
            self.s = _grow(self.s, max(self.n + k, 2 * self.s.shape[0]))
        rows = np.arange(self.n, self.n + k, dtype=np.int64)
        self.s[rows, 0] = z0
        self.s[rows, 1] = 0
        self.n += k
        return rows


def _grow(a: np.ndarray, cap: int) -> np.ndarray:
    out = np.zeros((cap,) + a.shape[1:], dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


class ParameterShard:
    """Owns the keys with ``shard_of(key) == shard_id``; pull/push/snapshot/restore/stats."""

    _PER_KEY = ("z_w", "n_w", "count", "level", "last_day")

    def __init__(
        self,
        model: ModelConfig,
        ftrl: FtrlConfig,
        levels: LevelConfig,
        seed: int = 0,
        shard_id: int = 0,
        n_shards: int = 1,
    ) -> None:
        self.model, self.ftrl, self.levels = model, ftrl, levels
        self.seed, self.shard_id, self.n_shards = seed, shard_id, n_shards
        self.ranks = tuple(model.ranks)
        self.m = len(self.ranks)
        self.tied = model.tied
        self.thresholds = level_thresholds(
            self.ranks, levels.count_per_dim, levels.level_min_count
        )
        self._bias_params = FtrlParams(ftrl.linear.alpha, ftrl.linear.beta, 0.0, 0.0)
        self.table = KeyTable()
        self._cap = 0
        self.z_w = np.zeros(0, np.float32)
        self.n_w = np.zeros(0, np.float32)
        self.count = np.zeros(0, np.float32)
        self.level = np.zeros(0, np.int8)
        self.last_day = np.zeros(0, np.int32)
        self.row = [np.zeros(0, np.int32) for _ in range(self.m)]
        self.fac = [_Rows(d) for d in self.ranks]
        self.day = 0
        self.sketch: CountMinSketch | None = None
        self._buffer: list[tuple] = []
        self._recent: deque = deque(maxlen=8)  # (keys, slots) of the latest training pulls
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ key creation
    def __len__(self) -> int:
        return len(self.table)

    def _ensure_capacity(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = max(n, 2 * self._cap, 1024)
        for name in self._PER_KEY:
            setattr(self, name, _grow(getattr(self, name), cap))
        self.row = [_grow(r, cap) for r in self.row]
        for r in self.row:
            r[self._cap :] = -1
        self._cap = cap

    def _create(self, keys: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """Insert ``keys`` (some may exist); new keys start at the level of their count."""
        before = len(self.table)
        slots = self.table.insert(keys)
        after = len(self.table)
        if after > before:
            self._ensure_capacity(after)
            new = np.arange(before, after)
            self.z_w[new] = 0
            self.n_w[new] = 0
            self.count[new] = 0
            self.level[new] = 0
            self.last_day[new] = self.day
            if counts is not None:
                is_new = slots >= before
                self.count[slots[is_new]] = counts[is_new]
            # A key created for a batch has been seen at least once: level of count >= 1.
            self._promote(new, seen=True)
        return slots

    def _target_level(self, slots: np.ndarray, seen: bool = False) -> np.ndarray:
        c = self.count[slots]
        lev = levels_from_counts(np.maximum(c, 1) if seen else c, self.thresholds)
        lev[self.table.keys[slots] == BIAS_KEY] = 0
        return lev

    def _promote(self, slots: np.ndarray, seen: bool = False) -> None:
        """Raise ``level`` of ``slots`` to their count's level, creating factor rows."""
        if self.m == 0 or slots.size == 0:
            return
        target = self._target_level(slots, seen)
        up = target > self.level[slots]
        if not up.any():
            return
        slots, old, new = slots[up], self.level[slots[up]].astype(np.int64), target[up]
        keys = self.table.keys[slots]
        if not self.tied:
            for p in range(1, self.m + 1):
                gets = (old < p) & (new >= p)
                if gets.any():
                    v0 = init_factors(keys[gets], p, self.ranks[p - 1], self.model.init_std,
                                      self.seed)
                    rows = self.fac[p - 1].add(ftrl_init_z(v0, self.ftrl.factor))
                    self.row[p - 1][slots[gets]] = rows
        else:
            for k in range(1, self.m + 1):
                at = new == k
                if not at.any():
                    continue
                d = self.ranks[k - 1]
                s_k, old_k = slots[at], old[at]
                v0 = init_factors(keys[at], 0, d, self.model.init_std, self.seed)
                z0 = ftrl_init_z(v0, self.ftrl.factor)
                n0 = np.zeros_like(z0)
                for j in range(1, k):  # keep the trained prefix of a promoted vector
                    was = old_k == j
                    if was.any():
                        dj = self.ranks[j - 1]
                        r = self.row[j - 1][s_k[was]]
                        z0[was, :dj] = self.fac[j - 1].z[r]
                        n0[was, :dj] = self.fac[j - 1].nn[r]
                        self.row[j - 1][s_k[was]] = -1  # a hole, compacted at day end
                rows = self.fac[k - 1].add(z0)
                self.fac[k - 1].nn[rows] = n0
                self.row[k - 1][s_k] = rows
        self.level[slots] = new

    # ------------------------------------------------------------------ statistics pass
    def add_counts(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Statistics pass of the ``static`` policy: accumulate occurrence counts."""
        before = len(self.table)
        slots = self.table.insert(keys)
        self._ensure_capacity(len(self.table))
        self.count[before : len(self.table)] = 0
        np.add.at(self.count, slots, np.asarray(counts, dtype=np.float32))

    def finish_counts(self) -> dict[str, int]:
        """End of the statistics pass: admission by count, then levels and factor rows."""
        n = len(self.table)
        keep = self.count[:n] >= self.levels.admit_min_count
        keep |= self.table.keys == BIAS_KEY
        dropped = self._retain(keep)
        n = len(self.table)
        self.level[:n] = 0
        self.last_day[:n] = self.day
        self._promote(np.arange(n))
        return {"keys": n, "not_admitted": dropped}

    # ------------------------------------------------------------------ pull / push
    def _weights(self, slots: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Linear weights of ``keys`` at ``slots`` (0 where a slot is -1)."""
        present = slots >= 0
        w = np.zeros(slots.size, dtype=np.float32)
        s = slots[present]
        w[present] = ftrl_weight(self.z_w[s], self.n_w[s], self.ftrl.linear)
        bias = present & (keys == BIAS_KEY)
        if bias.any():
            sb = slots[bias]
            w[bias] = ftrl_weight(self.z_w[sb], self.n_w[sb], self._bias_params)
        return w

    def _table_members(self, lev: np.ndarray, p: int) -> np.ndarray:
        return lev == p if self.tied else lev >= p

    def pull(self, keys: np.ndarray, create: bool = False) -> PullResult:
        """Weights of ``keys`` (unique, any order); unknown keys: w = 0, level 0.

        ``create`` inserts unknown keys (training); evaluation never creates keys. Keys are
        created only when ``admit_min_count`` is 1; otherwise :meth:`push` admits them.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        if create and self.levels.admit_min_count <= 1:
            slots = self._create(keys)
            self._recent.append((keys, slots))
        else:
            slots = self.table.lookup(keys)
        present = slots >= 0
        lev = np.zeros(keys.size, dtype=np.int8)
        lev[present] = self.level[slots[present]]
        tables = []
        for p in range(1, self.m + 1):
            member = self._table_members(lev, p)
            r = self.row[p - 1][slots[member]]
            st = np.take(self.fac[p - 1].s, r, axis=0)  # (rows, 2, D): one gather
            tables.append(ftrl_weight(st[:, 0], st[:, 1], self.ftrl.factor))
        out = PullResult(self._weights(slots, keys), lev, tables)
        self.bytes_out += out.nbytes
        self.bytes_in += keys.nbytes
        return out

    def push(
        self,
        keys: np.ndarray,
        counts: np.ndarray,
        level: np.ndarray,
        grad_w: np.ndarray,
        grad_tables: list[np.ndarray],
    ) -> None:
        """Apply summed gradients: ``level`` is what the pull returned for ``keys`` (it says
        which rows ``grad_tables`` has); then counts, last-seen day and online promotion."""
        keys = np.asarray(keys, dtype=np.uint64)
        self.bytes_in += keys.nbytes + counts.nbytes + level.nbytes + grad_w.nbytes + sum(
            g.nbytes for g in grad_tables)
        slots = self._slots_of_pulled(keys)
        present = slots >= 0
        s = slots[present]
        if s.size:
            self._update_linear(s, grad_w[present], keys[present])
            self._update_factors(slots, level, grad_tables)
            self.count[s] += counts[present]
            self.last_day[s] = self.day
        if self.levels.policy == "online":
            if not present.all() and self.levels.admit_min_count > 1:
                self._admit(keys[~present], counts[~present])
            self._promote(s)

    def _slots_of_pulled(self, keys: np.ndarray) -> np.ndarray:
        """Slots of a push's keys: those of the training pull of the same keys when it is
        among the latest (slots stay put within a day), else a table lookup."""
        for i, (k, slots) in enumerate(self._recent):
            if k.size == keys.size and np.array_equal(k, keys):
                del self._recent[i]
                return slots
        return self.table.lookup(keys)

    def push_pull(
        self,
        keys: np.ndarray,
        counts: np.ndarray,
        level: np.ndarray,
        grad_w: np.ndarray,
        grad_tables: list[np.ndarray],
        pull_keys: np.ndarray,
        create: bool = False,
    ) -> PullResult:
        """:meth:`push` one batch, then :meth:`pull` the next: one actor call instead of two."""
        self.push(keys, counts, level, grad_w, grad_tables)
        return self.pull(pull_keys, create)

    def pull_packed(self, keys: np.ndarray, create: bool = False) -> np.ndarray:
        """:meth:`pull` answered as one buffer (:meth:`PullResult.unpack` reads it)."""
        return self.pull(keys, create).pack()

    def push_pull_packed(self, buf: np.ndarray) -> np.ndarray:
        """:meth:`push_pull` with its arguments in one buffer: ``pack([keys, counts, level,
        grad_w, *grad_tables, pull_keys, [create]])``; answers :meth:`pull_packed`'s buffer."""
        a = unpack(buf)
        m = self.m
        keys, counts, level, grad_w = a[:4]
        out = self.push_pull(keys, counts, level, grad_w, a[4: 4 + m], a[4 + m],
                             bool(a[5 + m][0]))
        return out.pack()

    def push_buffered(
        self,
        worker: int,
        keys: np.ndarray,
        counts: np.ndarray,
        level: np.ndarray,
        grad_w: np.ndarray,
        grad_tables: list[np.ndarray],
    ) -> None:
        """Sync mode: hold one worker's gradients of the current step until
        :meth:`apply_buffered`."""
        self._buffer.append((worker, keys, counts, level, grad_w, grad_tables))

    def apply_buffered(self) -> None:
        """Sync mode: sum the step's gradients per key in worker order; one FTRL update."""
        buf = sorted(self._buffer, key=lambda b: b[0])
        self._buffer = []
        if len(buf) <= 1:
            if buf:
                self.push(*buf[0][1:])
            return
        keys = np.concatenate([b[1] for b in buf])
        uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        counts = np.zeros(uniq.size, np.float64)  # float64 sums, rounded once
        np.add.at(counts, inv, np.concatenate([b[2] for b in buf]))
        counts = counts.astype(np.float32)
        levels = np.concatenate([b[3] for b in buf])
        level = levels[first]
        grad_w = np.zeros(uniq.size, np.float64)
        np.add.at(grad_w, inv, np.concatenate([b[4] for b in buf]))
        grad_w = grad_w.astype(np.float32)
        grads = []
        offsets = np.cumsum([0] + [b[1].size for b in buf])
        for p in range(1, self.m + 1):
            rows = np.cumsum(self._table_members(level, p)) - 1
            idx = np.concatenate([
                rows[inv[offsets[i] : offsets[i + 1]][self._table_members(b[3], p)]]
                for i, b in enumerate(buf)])
            g = np.zeros((int(self._table_members(level, p).sum()), self.ranks[p - 1]),
                         np.float64)
            np.add.at(g, idx, np.concatenate([b[5][p - 1] for b in buf]))
            grads.append(g.astype(np.float32))
        self.push(uniq, counts, level, grad_w, grads)

    def save_state(self, path: str) -> dict[str, int | str]:
        """Write this shard's checkpoint file; returns its size and SHA-256."""
        return write_shard_state(path, self.snapshot())

    def _update_linear(self, s: np.ndarray, g: np.ndarray, keys: np.ndarray) -> None:
        bias = keys == BIAS_KEY
        if bias.any():  # the bias is an ordinary key, but not regularised
            sb = s[bias]
            self.z_w[sb], self.n_w[sb] = ftrl_update(
                self.z_w[sb], self.n_w[sb], g[bias], self._bias_params)
            s, g = s[~bias], g[~bias]
        self.z_w[s], self.n_w[s] = ftrl_update(self.z_w[s], self.n_w[s], g, self.ftrl.linear)

    def _update_factors(
        self, slots: np.ndarray, level: np.ndarray, grad_tables: list[np.ndarray]
    ) -> None:
        for p in range(1, self.m + 1):
            member = self._table_members(level, p)
            g = grad_tables[p - 1]
            sl = slots[member]
            ok = sl >= 0
            if not ok.all():  # keys evicted between pull and push
                sl, g = sl[ok], g[ok]
            if not self.tied:
                r = self.row[p - 1][sl]
                f = self.fac[p - 1]
                st = np.take(f.s, r, axis=0)
                st[:, 0], st[:, 1] = ftrl_update(st[:, 0], st[:, 1], g, self.ftrl.factor)
                f.s[r] = st
                continue
            d = self.ranks[p - 1]
            cur = self.level[sl].astype(np.int64)  # promoted since the pull: apply to prefix
            for k in np.unique(cur):
                at = cur == k
                f = self.fac[k - 1]
                r = self.row[k - 1][sl[at]]
                f.z[r, :d], f.nn[r, :d] = ftrl_update(f.z[r, :d], f.nn[r, :d], g[at],
                                                      self.ftrl.factor)

    def _admit(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Count not-yet-admitted keys in the sketch; store those that reach the bar."""
        if self.sketch is None:
            self.sketch = CountMinSketch(seed=self.seed)
        est = self.sketch.add(keys, counts)
        ok = est >= self.levels.admit_min_count
        if ok.any():
            self._create(keys[ok], est[ok])

    # ------------------------------------------------------------------ day end
    def end_day(self, day: int) -> dict[str, int]:
        """Decay counts (online), evict keys unseen for ``ttl_days``, compact factor rows.
        ``day`` is the index of the day that starts next."""
        n = len(self.table)
        if self.levels.policy == "online" and self.levels.daily_decay < 1:
            self.count[:n] *= np.float32(self.levels.daily_decay)
        evicted = 0
        if self.levels.ttl_days:
            keep = (day - self.last_day[:n]) <= self.levels.ttl_days
            keep |= self.table.keys == BIAS_KEY
            evicted = self._retain(keep)
        self._compact_rows()
        self._trim()
        self.day = day
        return {"evicted": evicted, "keys": len(self.table)}

    def _trim(self, slack: float = 1.125) -> None:
        """Give back growth slack at day end: capacity ~ ``slack`` x what is stored."""
        n = len(self.table)
        cap = max(1024, int(n * slack))
        if self._cap > cap * 1.05:
            for name in self._PER_KEY:
                setattr(self, name, getattr(self, name)[:cap].copy())
            self.row = [r[:cap].copy() for r in self.row]
            self._cap = cap
        for f in self.fac:
            rcap = max(16, int(f.n * slack))
            if f.s.shape[0] > rcap * 1.05:
                f.s = f.s[:rcap].copy()

    def _retain(self, keep: np.ndarray) -> int:
        """Keep the keys where ``keep``; returns how many were dropped."""
        self._recent.clear()  # slots move
        n = len(self.table)
        if keep.all():
            return 0
        old = self.table.retain(keep)
        for arr in [getattr(self, name) for name in self._PER_KEY] + self.row:
            arr[: old.size] = arr[old]
        for r in self.row:
            r[old.size : n] = -1
        return n - old.size

    def _compact_rows(self) -> None:
        """Drop factor rows no key points at (after eviction or tied promotion)."""
        n = len(self.table)
        for p, f in enumerate(self.fac, start=1):
            r = self.row[p - 1][:n]
            has = r >= 0
            if int(has.sum()) == f.n:
                continue
            order = np.argsort(r[has], kind="stable")
            keep_rows = r[has][order]
            f.s[: keep_rows.size] = f.s[keep_rows]
            new_index = np.empty(keep_rows.size, dtype=np.int64)
            new_index[order] = np.arange(keep_rows.size)
            r[has] = new_index
            f.n = keep_rows.size

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, np.ndarray]:
        """The shard's whole state as plain arrays (saved with np.savez; no pickle)."""
        n = len(self.table)
        out = {f"table.{k}": v for k, v in self.table.snapshot().items()}
        for name in self._PER_KEY:
            out[name] = getattr(self, name)[:n].copy()
        for p, f in enumerate(self.fac, start=1):
            out[f"row{p}"] = self.row[p - 1][:n].copy()
            out[f"z{p}"] = f.z[: f.n].copy()
            out[f"n{p}"] = f.nn[: f.n].copy()
        out["meta"] = np.array([self.shard_id, self.n_shards, self.m, self.day], dtype=np.int64)
        out["ranks"] = np.array(self.ranks, dtype=np.int64)
        if self.sketch is not None:
            out["sketch"] = self.sketch.table.copy()
        return out

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Load a :meth:`snapshot` (of a shard of the same model and shard layout)."""
        self._recent.clear()
        meta = state["meta"]
        if [int(meta[0]), int(meta[1])] != [self.shard_id, self.n_shards] or tuple(
            int(r) for r in state["ranks"]
        ) != self.ranks:
            raise CheckpointError(
                f"Checkpoint of shard {int(meta[0])}/{int(meta[1])} with ranks "
                f"{[int(r) for r in state['ranks']]} cannot restore shard "
                f"{self.shard_id}/{self.n_shards} with ranks {list(self.ranks)}."
            )
        self.table = KeyTable.restore(
            {k[len("table."):]: v for k, v in state.items() if k.startswith("table.")}
        )
        n = len(self.table)
        self._cap = 0
        for name in self._PER_KEY:
            setattr(self, name, np.zeros(0, dtype=getattr(self, name).dtype))
        self.row = [np.zeros(0, np.int32) for _ in range(self.m)]
        self._ensure_capacity(max(n, 1))
        for name in self._PER_KEY:
            getattr(self, name)[:n] = state[name]
        for p, f in enumerate(self.fac, start=1):
            self.row[p - 1][:n] = state[f"row{p}"]
            f.n = 0
            rows = f.add(state[f"z{p}"])
            f.nn[rows] = state[f"n{p}"]
        self.day = int(meta[3])
        if "sketch" in state:
            self.sketch = CountMinSketch(width=state["sketch"].shape[1],
                                         depth=state["sketch"].shape[0], seed=self.seed)
            self.sketch.table[:] = state["sketch"]

    def stats(self) -> ShardStats:
        """Model size: keys, non-zero weights, factor rows per level, bytes."""
        n = len(self.table)
        s = np.arange(n)
        nz_w = int(np.count_nonzero(self._weights(s, self.table.keys)))
        nz_f = 0
        for f in self.fac:
            for lo in range(0, f.n, 1 << 20):
                hi = min(f.n, lo + (1 << 20))
                nz_f += int(np.count_nonzero(ftrl_weight(f.z[lo:hi], f.nn[lo:hi],
                                                         self.ftrl.factor)))
        ps_bytes = self.table.nbytes + sum(getattr(self, k).nbytes for k in self._PER_KEY)
        ps_bytes += sum(r.nbytes for r in self.row) + sum(f.s.nbytes for f in self.fac)
        ps_bytes += self.sketch.nbytes if self.sketch is not None else 0
        # Raw = what the model needs at least: every key (8 B) and the FTRL state (z, n) of
        # every stored coordinate (2 x 4 B), linear and factor.
        raw = n * (8 + 8) + sum(f.n * f.dim * 8 for f in self.fac)
        return ShardStats(n, nz_w, [int(f.n) for f in self.fac], nz_f, int(ps_bytes), int(raw))

    def weights(self) -> dict[str, np.ndarray]:
        """Every stored key's weights: ``keys``, ``w``, ``level`` and ``v{p}`` — the factors
        of level p for the keys in ``rows{p}`` (indices into ``keys``). For export."""
        n = len(self.table)
        s = np.arange(n)
        out = {"keys": self.table.keys.copy(), "w": self._weights(s, self.table.keys),
               "level": self.level[:n].copy()}
        for p, f in enumerate(self.fac, start=1):
            r = self.row[p - 1][:n]
            has = np.flatnonzero(r >= 0)
            out[f"rows{p}"] = has
            out[f"v{p}"] = ftrl_weight(f.z[r[has]], f.nn[r[has]], self.ftrl.factor)
        return out

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

import numpy as np

from psfm.checkpoint import write_shard_state
from psfm.config import FtrlConfig, LevelConfig, ModelConfig
from psfm.errors import CheckpointError, PsfmError
from psfm.hashing import BIAS_KEY
from psfm.optim.ftrl import FtrlParams, ftrl_init_z, ftrl_update, ftrl_weight
from psfm.ps.admission import CountMinSketch
from psfm.ps.levels import init_factors, level_thresholds, levels_from_counts
from psfm.ps.messages import PullResult, PushRequest, ShardStats
from psfm.ps.routing import table_members
from psfm.ps.shm import MessageFile
from psfm.ps.table import KeyTable
from psfm.ps.wire import pack_into, pad, unpack
from psfm.steps import resolve_ftrl

__all__ = ["ParameterShard"]

log = logging.getLogger(__name__)


class _Rows:
    """A growable FTRL state table of one factor level: ``s[row] = (z, n)``, shape
    (capacity, 2, D) float32, and (untied models below the top level) ``up[row]``: the key's
    row at the next level, -1 if none. z and n of a row sit side by side, so a pull is one
    random gather and a push one gather and one scatter per row (the shard's cost is memory
    latency)."""

    def __init__(self, dim: int, linked: bool) -> None:
        self.dim = dim
        self.n = 0
        self.s = np.zeros((16, 2, dim), dtype=np.float32)
        self.up = np.full(16, -1, np.int32) if linked else None

    @property
    def z(self) -> np.ndarray:
        return self.s[:, 0]

    @property
    def nn(self) -> np.ndarray:
        return self.s[:, 1]

    @property
    def nbytes(self) -> int:
        return self.s.nbytes + (0 if self.up is None else self.up.nbytes)

    def reserve(self, cap: int) -> None:
        """Room for ``cap`` rows (growth by half at least: amortized O(1) per row)."""
        if cap > self.s.shape[0]:
            cap = max(cap, self.s.shape[0] + self.s.shape[0] // 2)
            self.s = _grow(self.s, cap)
            if self.up is not None:
                self.up = _grow(self.up, cap)

    def reset(self, rows: np.ndarray, z0: np.ndarray | float = 0.0) -> None:
        """Rows start over: ``z = z0``, ``n = 0``, no row above."""
        self.s[rows, 0] = z0
        self.s[rows, 1] = 0
        if self.up is not None:
            self.up[rows] = -1

    def add(self, z0: np.ndarray) -> np.ndarray:
        """Append rows with initial ``z`` (``n = 0``); returns their row indices."""
        k = z0.shape[0]
        self.reserve(self.n + k)
        rows = np.arange(self.n, self.n + k, dtype=np.int64)
        self.reset(rows, z0)
        self.n += k
        return rows

    def keep(self, rows: np.ndarray) -> None:
        """Keep ``rows`` (ascending), renumbered ``0..len-1``."""
        k = rows.size
        self.s[:k] = self.s[rows]
        if self.up is not None:
            self.up[:k] = self.up[rows]
        self.n = k

    def trim(self, cap: int) -> None:
        if self.s.shape[0] > cap * 1.05:
            self.s = self.s[:cap].copy()
            if self.up is not None:
                self.up = self.up[:cap].copy()


def _grow(a: np.ndarray, cap: int) -> np.ndarray:
    """``a`` with room for ``cap`` rows; the new rows are uninitialised (every user sets a
    row before it reads it: :meth:`ParameterShard._init_slots`, :meth:`_Rows.reset`)."""
    out = np.empty((cap,) + a.shape[1:], dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


class ParameterShard:
    """Owns the keys with ``shard_of(key) == shard_id``; pull/push/snapshot/restore/stats.

    Per-key arrays (slot-indexed): ``z_w, n_w`` always; ``level`` for factor models; ``count``
    while something reads it (the ``online`` policy; the statistics pass of ``static``);
    ``last_day`` (uint16) when ``ttl_days`` evicts. Factor rows: an untied model whose first
    threshold is 1 (every stored key but the bias has level >= 1) keeps its level-1 row *at the
    key's slot*; otherwise ``row0[slot]`` points at it. Higher levels are reached through
    ``up``: the level-(p+1) row of a key is ``fac[p-1].up[its level-p row]``, so a key pays a
    row index only for the levels it has. A tied model keeps one row, ``row[slot]``, in the
    table of its own level.
    """

    def __init__(
        self,
        model: ModelConfig,
        ftrl: FtrlConfig,
        levels: LevelConfig,
        seed: int = 0,
        shard_id: int = 0,
        n_shards: int = 1,
    ) -> None:
        # a rate left to auto (alpha 0) is resolved by the run loop from the batch size; a
        # shard made outside a run takes the large-batch rate, as a worker takes that size
        ftrl = resolve_ftrl(ftrl, 0)
        self.model, self.ftrl, self.levels = model, ftrl, levels
        self.seed, self.shard_id, self.n_shards = seed, shard_id, n_shards
        self.ranks = tuple(model.ranks)
        self.m = len(self.ranks)
        self.tied = model.tied
        self.thresholds = level_thresholds(self.ranks, levels.count_per_dim, levels.level_min_count)
        self._bias_params = FtrlParams(ftrl.linear.alpha, ftrl.linear.beta, 0.0, 0.0)
        self.table = KeyTable()
        self._cap = 0
        self._slot1 = self.m > 0 and not self.tied and float(self.thresholds[0]) <= 1
        self._per_key: dict[str, tuple[type, int]] = {
            "z_w": (np.float32, 0),
            "n_w": (np.float32, 0),
        }
        if self.m:
            self._per_key["level"] = (np.int8, 0)
            if self.tied:
                self._per_key["row"] = (np.int32, -1)
            elif not self._slot1:
                self._per_key["row0"] = (np.int32, -1)
        if levels.policy == "online":
            self._per_key["count"] = (np.float32, 0)
        if levels.ttl_days:
            self._per_key["last_day"] = (np.uint16, 0)
        for name, (dtype, _) in self._per_key.items():
            setattr(self, name, np.zeros(0, dtype))
        self.fac = [
            _Rows(d, linked=not self.tied and p < self.m) for p, d in enumerate(self.ranks, start=1)
        ]
        self.day = 0
        self.sketch: CountMinSketch | None = None
        self._buffer: list[tuple] = []
        self._recent: deque = deque(maxlen=8)  # (keys, slots) of the latest training pulls
        self._files: dict[str, MessageFile] = {}  # workers' message files on this node
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ key creation
    def __len__(self) -> int:
        return len(self.table)

    @property
    def _counting(self) -> bool:
        return "count" in self._per_key

    def _ensure_capacity(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = max(n, self._cap + self._cap // 2, 1024)
        for name in self._per_key:
            setattr(self, name, _grow(getattr(self, name), cap))
        if self._slot1:
            self.fac[0].reserve(cap)
        self._cap = cap

    def _create(self, keys: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """Insert ``keys`` (some may exist); new keys start at the level of their count."""
        before = len(self.table)
        slots = self.table.insert(keys)
        after = len(self.table)
        if after > before:
            self._ensure_capacity(after)
            new = np.arange(before, after)
            self._init_slots(new)
            c = None
            if counts is not None:
                is_new = slots >= before
                c = np.zeros(new.size, np.float32)
                c[slots[is_new] - before] = counts[is_new]
                if self._counting:
                    self.count[new] = c
            # A key created for a batch has been seen at least once: level of count >= 1.
            self._promote(new, seen=True, counts=c)
        return slots

    def _init_slots(self, new: np.ndarray) -> None:
        """Fresh per-key state for new slots (slots are reused after eviction)."""
        for name, (_, fill) in self._per_key.items():
            getattr(self, name)[new] = fill
        if "last_day" in self._per_key:
            self.last_day[new] = self.day
        if self._slot1:
            self.fac[0].reset(new)

    def _target_level(self, slots: np.ndarray, seen: bool, counts: np.ndarray | None) -> np.ndarray:
        if counts is None:
            counts = self.count[slots] if self._counting else np.zeros(slots.size, np.float32)
        lev = levels_from_counts(np.maximum(counts, 1) if seen else counts, self.thresholds)
        lev[self.table.keys[slots] == BIAS_KEY] = 0
        return lev

    def _level1_rows(self, slots: np.ndarray) -> np.ndarray:
        """Level-1 rows of ``slots`` (untied; every slot must have level >= 1)."""
        return slots if self._slot1 else self.row0[slots].astype(np.int64)

    def _promote(
        self, slots: np.ndarray, seen: bool = False, counts: np.ndarray | None = None
    ) -> None:
        """Raise ``level`` of ``slots`` to their count's level (``counts`` if given, else
        the stored ones), creating factor rows."""
        if self.m == 0 or slots.size == 0:
            return
        target = self._target_level(slots, seen, counts)
        up = target > self.level[slots]
        if not up.any():
            return
        slots, old, new = slots[up], self.level[slots[up]].astype(np.int64), target[up]
        keys = self.table.keys[slots]
        if not self.tied:
            below = np.full(slots.size, -1, np.int64)  # each slot's row at level p - 1
            for p in range(1, self.m + 1):
                f = self.fac[p - 1]
                rows = np.full(slots.size, -1, np.int64)
                had = old >= p
                if had.any():
                    rows[had] = (
                        self._level1_rows(slots[had]) if p == 1 else self.fac[p - 2].up[below[had]]
                    )
                gets = (old < p) & (new >= p)
                if gets.any():
                    v0 = init_factors(
                        keys[gets], p, self.ranks[p - 1], self.model.init_std, self.seed
                    )
                    z0 = ftrl_init_z(v0, self.ftrl.factor)
                    if p == 1 and self._slot1:
                        f.reset(slots[gets], z0)
                        rows[gets] = slots[gets]
                    else:
                        rows[gets] = f.add(z0)
                        if p == 1:
                            self.row0[slots[gets]] = rows[gets]
                        else:
                            self.fac[p - 2].up[below[gets]] = rows[gets]
                below = rows
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
                        r = self.row[s_k[was]]
                        z0[was, :dj] = self.fac[j - 1].z[r]
                        n0[was, :dj] = self.fac[j - 1].nn[r]
                rows = self.fac[k - 1].add(z0)  # the old rows are holes until day end
                self.fac[k - 1].nn[rows] = n0
                self.row[s_k] = rows
        self.level[slots] = new

    # ------------------------------------------------------------------ statistics pass
    def add_counts(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Statistics pass of the ``static`` policy: accumulate occurrence counts (kept only
        until :meth:`finish_counts` unless the policy reads them later)."""
        if not self._counting:
            self._per_key["count"] = (np.float32, 0)
            self.count = np.zeros(self._cap, np.float32)
        before = len(self.table)
        slots = self.table.insert(keys)
        self._ensure_capacity(len(self.table))
        self._init_slots(np.arange(before, len(self.table)))
        np.add.at(self.count, slots, np.asarray(counts, dtype=np.float32))

    def finish_counts(self) -> dict[str, int]:
        """End of the statistics pass: admission by count, then levels and factor rows."""
        n = len(self.table)
        keep = self.count[:n] >= self.levels.admit_min_count
        keep |= self.table.keys == BIAS_KEY
        dropped = self._retain(keep)
        n = len(self.table)
        self._promote(np.arange(n))
        if self.levels.policy != "online":  # static levels: nothing reads counts any more
            del self._per_key["count"]
            self.count = np.zeros(0, np.float32)
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
        return table_members(lev, p, self.tied)

    def _member_rows(self, slots: np.ndarray, lev: np.ndarray) -> list[np.ndarray]:
        """Per level p, the level-p rows of the keys that have one (``lev >= p`` untied,
        ``lev == p`` tied), in key order. ``slots`` must be valid where ``lev > 0``."""
        if self.tied or self.m == 0:
            return [self.row[slots[lev == p]] for p in range(1, self.m + 1)]
        out = []
        sel = lev >= 1
        rows, ml = self._level1_rows(slots[sel]), lev[sel]
        for p in range(1, self.m + 1):
            if p > 1:
                keep = ml >= p
                rows, ml = self.fac[p - 2].up[rows[keep]], ml[keep]
            out.append(rows)
        return out

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
        lev = np.zeros(keys.size, dtype=np.int8)
        if self.m:
            present = slots >= 0
            lev[present] = self.level[slots[present]]
        tables = []
        for f, r in zip(self.fac, self._member_rows(slots, lev)):
            st = np.take(f.s, r, axis=0)  # (rows, 2, D): one gather
            tables.append(ftrl_weight(st[:, 0], st[:, 1], self.ftrl.factor))
        out = PullResult(self._weights(slots, keys), lev, tables)
        self.bytes_out += out.nbytes
        self.bytes_in += keys.nbytes
        return out

    def push(self, req: PushRequest) -> None:
        """Apply a batch's summed gradients (``req.level`` is what the pull returned for its
        keys: it says which rows the gradient tables have); then counts, last-seen day and
        online promotion."""
        keys = np.asarray(req.keys, dtype=np.uint64)
        self.bytes_in += req.nbytes
        inc_w, inc_tables = self._n_increments(req)
        slots = self._slots_of_pulled(keys)
        present = slots >= 0
        s = slots[present]
        if s.size:
            self._update_linear(
                s, req.grad_w[present], keys[present], None if inc_w is None else inc_w[present]
            )
            self._update_factors(slots, req.level, req.grad_tables, inc_tables)
            if self._counting:
                self.count[s] += req.counts[present]
            if "last_day" in self._per_key:
                self.last_day[s] = self.day
        if self.levels.policy == "online":
            if not present.all() and self.levels.admit_min_count > 1:
                self._admit(keys[~present], req.counts[~present])
            self._promote(s)

    def _n_increments(self, req: PushRequest) -> tuple[np.ndarray | None, list[np.ndarray | None]]:
        """What each coordinate's ``n`` grows by (:mod:`psfm.optim.ftrl`, ``accumulate``):
        None for the square of the summed gradient, the request's sums of squares, or the
        squared sum over the key's batch count."""
        rule = self.ftrl.accumulate
        none: list[np.ndarray | None] = [None] * self.m
        if rule == "square_of_sum":
            return None, none
        if rule == "sum_of_squares":
            if not req.has_sq:
                raise PsfmError(
                    f"Shard {self.shard_id}: ftrl.accumulate = 'sum_of_squares' "
                    "but the push carries no sums of squared gradients."
                )
            return req.sq_w, list(req.sq_tables or [])
        c = np.maximum(req.counts, np.float32(1))
        inc_w = req.grad_w * req.grad_w / c
        inc = []
        for p, g in enumerate(req.grad_tables, start=1):
            cp = c[self._table_members(req.level, p)][:, None]
            inc.append(g * g / cp)
        return inc_w, inc

    def _slots_of_pulled(self, keys: np.ndarray) -> np.ndarray:
        """Slots of a push's keys: those of the training pull of the same keys when it is
        among the latest (slots stay put within a day), else a table lookup."""
        for i, (k, slots) in enumerate(self._recent):
            if k.size == keys.size and np.array_equal(k, keys):
                del self._recent[i]
                return slots
        return self.table.lookup(keys)

    def push_pull(
        self, req: PushRequest, pull_keys: np.ndarray, create: bool = False
    ) -> PullResult:
        """:meth:`push` one batch, then :meth:`pull` the next: one actor call instead of two."""
        self.push(req)
        return self.pull(pull_keys, create)

    def pull_packed(self, keys: np.ndarray, create: bool = False) -> np.ndarray:
        """:meth:`pull` answered as one buffer (:meth:`PullResult.unpack` reads it)."""
        return self.pull(keys, create).pack()

    def push_pull_packed(self, buf: np.ndarray) -> np.ndarray:
        """:meth:`push_pull` with its arguments in one buffer: ``pack([*req.arrays,
        pull_keys, [create]])``; answers :meth:`pull_packed`'s buffer."""
        return self._push_pull_message(unpack(buf)).pack()

    def _push_pull_message(self, a: list[np.ndarray]) -> PullResult:
        return self.push_pull(PushRequest.from_arrays(a[:-2], self.m), a[-2], bool(a[-1][0]))

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
        if name not in self._files:
            raise PsfmError(f"Shard {self.shard_id}: no message file '{name}' is attached.")
        buf = self._files[name].slot(slot)
        a = unpack(buf[:length])
        if op == "pull":
            out = self.pull(a[0].copy(), bool(a[1][0]))  # keys outlive the call in _recent
        elif op == "push":
            self.push(PushRequest.from_arrays(a, self.m))
            return 0
        elif op == "push_pull":
            a[-2] = a[-2].copy()  # the pull keys outlive the call in _recent
            out = self._push_pull_message(a)
        else:
            raise PsfmError(f"Shard {self.shard_id}: unknown message op {op!r}.")
        return pack_into(out.arrays, buf[pad(length) :])

    def push_buffered(self, worker: int, req: PushRequest) -> None:
        """Sync mode: hold one worker's gradients of the current step until
        :meth:`apply_buffered`."""
        self._buffer.append((worker, req))

    def apply_buffered(self) -> None:
        """Sync mode: sum the step's gradients (and sums of squares) per key in worker
        order, in float64 rounded once; one FTRL update."""
        reqs = [r for _, r in sorted(self._buffer, key=lambda b: b[0])]
        self._buffer = []
        if len(reqs) <= 1:
            if reqs:
                self.push(reqs[0])
            return
        keys = np.concatenate([r.keys for r in reqs])
        uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        level = np.concatenate([r.level for r in reqs])[first]

        def per_key(parts: list[np.ndarray]) -> np.ndarray:
            out = np.zeros(uniq.size, np.float64)  # float64 sums, rounded once
            np.add.at(out, inv, np.concatenate(parts))
            return out.astype(np.float32)

        offsets = np.cumsum([0] + [r.keys.size for r in reqs])
        idx, members = [], []
        for p in range(1, self.m + 1):
            member = self._table_members(level, p)
            rows = np.cumsum(member) - 1
            members.append(int(member.sum()))
            idx.append(
                np.concatenate(
                    [
                        rows[inv[offsets[i] : offsets[i + 1]][self._table_members(r.level, p)]]
                        for i, r in enumerate(reqs)
                    ]
                )
            )

        def per_row(tables: list[list[np.ndarray]]) -> list[np.ndarray]:
            out = []
            for p in range(1, self.m + 1):
                g = np.zeros((members[p - 1], self.ranks[p - 1]), np.float64)
                np.add.at(g, idx[p - 1], np.concatenate([t[p - 1] for t in tables]))
                out.append(g.astype(np.float32))
            return out

        has_sq = all(r.has_sq for r in reqs)
        self.push(
            PushRequest(
                uniq,
                per_key([r.counts for r in reqs]),
                level,
                per_key([r.grad_w for r in reqs]),
                per_row([r.grad_tables for r in reqs]),
                per_key([r.sq_w for r in reqs]) if has_sq else None,
                per_row([r.sq_tables for r in reqs]) if has_sq else None,
            )
        )

    def save_state(self, path: str) -> dict[str, int | str]:
        """Write this shard's checkpoint file; returns its size and SHA-256."""
        return write_shard_state(path, self.snapshot())

    def _update_linear(
        self, s: np.ndarray, g: np.ndarray, keys: np.ndarray, inc: np.ndarray | None
    ) -> None:
        bias = keys == BIAS_KEY
        if bias.any():  # the bias is an ordinary key, but not regularised
            sb = s[bias]
            self.z_w[sb], self.n_w[sb] = ftrl_update(
                self.z_w[sb],
                self.n_w[sb],
                g[bias],
                self._bias_params,
                None if inc is None else inc[bias],
            )
            s, g = s[~bias], g[~bias]
            inc = None if inc is None else inc[~bias]
        self.z_w[s], self.n_w[s] = ftrl_update(self.z_w[s], self.n_w[s], g, self.ftrl.linear, inc)

    def _update_factors(
        self,
        slots: np.ndarray,
        level: np.ndarray,
        grad_tables: list[np.ndarray],
        inc_tables: list[np.ndarray | None],
    ) -> None:
        if self.m == 0:
            return
        gone = slots < 0  # keys evicted between pull and push
        if gone.any():
            keep = [slots[self._table_members(level, p)] >= 0 for p in range(1, self.m + 1)]
            grad_tables = [g[k] for g, k in zip(grad_tables, keep)]
            inc_tables = [None if i is None else i[k] for i, k in zip(inc_tables, keep)]
            level = np.where(gone, 0, level).astype(np.int8)
        for p, (f, r, g, inc) in enumerate(
            zip(self.fac, self._member_rows(slots, level), grad_tables, inc_tables), start=1
        ):
            if not self.tied:
                st = np.take(f.s, r, axis=0)
                st[:, 0], st[:, 1] = ftrl_update(st[:, 0], st[:, 1], g, self.ftrl.factor, inc)
                f.s[r] = st
                continue
            d = self.ranks[p - 1]
            sl = slots[level == p]
            cur = self.level[sl].astype(np.int64)  # promoted since the pull: apply to prefix
            for k in np.unique(cur):
                at = cur == k
                fk = self.fac[k - 1]
                rk = self.row[sl[at]]
                fk.z[rk, :d], fk.nn[rk, :d] = ftrl_update(
                    fk.z[rk, :d],
                    fk.nn[rk, :d],
                    g[at],
                    self.ftrl.factor,
                    None if inc is None else inc[at],
                )

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
        if self._counting and self.levels.daily_decay < 1:
            self.count[:n] *= np.float32(self.levels.daily_decay)
        evicted = 0
        if self.levels.ttl_days:
            if day > np.iinfo(np.uint16).max:
                raise CheckpointError(
                    f"Keys' last-seen days are stored as uint16: with ttl_days a run has at "
                    f"most {np.iinfo(np.uint16).max} days. Got day index {day} instead."
                )
            keep = (day - self.last_day[:n].astype(np.int64)) <= self.levels.ttl_days
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
            for name in self._per_key:
                setattr(self, name, getattr(self, name)[:cap].copy())
            self._cap = cap
        self.table.trim(slack)
        for p, f in enumerate(self.fac, start=1):
            f.trim(self._cap if p == 1 and self._slot1 else max(16, int(f.n * slack)))

    def _retain(self, keep: np.ndarray) -> int:
        """Keep the keys where ``keep``; returns how many were dropped. Factor rows of the
        dropped keys become holes (:meth:`_compact_rows`)."""
        self._recent.clear()  # slots move
        n = len(self.table)
        if keep.all():
            return 0
        old = self.table.retain(keep)
        for name in self._per_key:
            arr = getattr(self, name)
            arr[: old.size] = arr[old]
        if self._slot1:
            self.fac[0].keep(old)
        return n - old.size

    def _compact_rows(self) -> None:
        """Drop factor rows no key points at (after eviction or tied promotion)."""
        n = len(self.table)
        for p, f in enumerate(self.fac, start=1):
            if self.tied:
                sel = np.flatnonzero(self.level[:n] == p)
                ref, put = self.row[sel], (self.row, sel)
            elif p == 1:
                if self._slot1:
                    continue  # level-1 rows are the slots themselves
                ref, put = self.row0[:n], (self.row0, slice(0, n))
            else:
                below = self.fac[p - 2]
                k = n if p == 2 and self._slot1 else below.n
                ref, put = below.up[:k], (below.up, slice(0, k))
            has = ref >= 0
            if int(has.sum()) == f.n:
                continue
            order = np.argsort(ref[has], kind="stable")
            keep_rows = ref[has][order]
            f.keep(keep_rows)
            new_index = np.empty(keep_rows.size, dtype=np.int32)
            new_index[order] = np.arange(keep_rows.size)
            ref = ref.copy()
            ref[has] = new_index
            put[0][put[1]] = ref

    # ------------------------------------------------------------------ state
    def _slot_rows(self) -> list[np.ndarray]:
        """Per level p, every slot's level-p row (int64, -1 where it has none)."""
        n = len(self.table)
        if self.m == 0:
            return []
        lev = self.level[:n]
        out = []
        if self.tied:
            for p in range(1, self.m + 1):
                r = np.full(n, -1, np.int64)
                at = lev == p
                r[at] = self.row[:n][at]
                out.append(r)
            return out
        cur = np.full(n, -1, np.int64)
        at = lev >= 1
        cur[at] = self._level1_rows(np.flatnonzero(at))
        out.append(cur)
        for p in range(2, self.m + 1):
            nxt = np.full(n, -1, np.int64)
            at = lev >= p
            nxt[at] = self.fac[p - 2].up[cur[at]]
            out.append(nxt)
            cur = nxt
        return out

    def snapshot(self) -> dict[str, np.ndarray]:
        """The shard's whole state as plain arrays (saved with np.savez; no pickle): the
        per-key arrays, and per level p ``row{p}`` (each slot's row, -1 none) and the rows'
        ``z{p}``, ``n{p}`` — a format independent of how the shard links its rows."""
        n = len(self.table)
        out = {f"table.{k}": v for k, v in self.table.snapshot().items()}
        for name in self._per_key:
            if name not in ("row", "row0"):
                out[name] = getattr(self, name)[:n].copy()
        for p, (f, r) in enumerate(zip(self.fac, self._slot_rows()), start=1):
            has = r >= 0
            rows = np.full(n, -1, np.int32)
            rows[has] = np.arange(int(has.sum()))  # compact, in slot order
            out[f"row{p}"] = rows
            st = f.s[r[has]]
            out[f"z{p}"] = st[:, 0].copy()
            out[f"n{p}"] = st[:, 1].copy()
        out["meta"] = np.array([self.shard_id, self.n_shards, self.m, self.day], dtype=np.int64)
        out["ranks"] = np.array(self.ranks, dtype=np.int64)
        if self.sketch is not None:
            out["sketch"] = self.sketch.table.copy()
        return out

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Load a :meth:`snapshot` (of a shard of the same model and shard layout). Per-key
        arrays this configuration does not keep are ignored; those it keeps but the
        checkpoint lacks start fresh (counts 0, last seen on the checkpoint's day)."""
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
            {k[len("table.") :]: v for k, v in state.items() if k.startswith("table.")}
        )
        n = len(self.table)
        self.day = int(meta[3])
        self._cap = 0
        for name, (dtype, _) in self._per_key.items():
            setattr(self, name, np.zeros(0, dtype))
        self.fac = [_Rows(f.dim, f.up is not None) for f in self.fac]
        self._ensure_capacity(max(n, 1))
        self._init_slots(np.arange(n))
        for name in self._per_key:
            if name in state:
                getattr(self, name)[:n] = state[name]
        below = None  # level p - 1 row of each slot
        for p, f in enumerate(self.fac, start=1):
            r = np.asarray(state[f"row{p}"], dtype=np.int64)
            has = r >= 0
            z, nn = state[f"z{p}"], state[f"n{p}"]
            if p == 1 and self._slot1:
                slots = np.flatnonzero(has)
                f.s[slots, 0] = z[r[has]]
                f.s[slots, 1] = nn[r[has]]
                below = np.where(has, np.arange(n), -1)
                continue
            rows = f.add(z)
            f.nn[rows] = nn
            if self.tied:
                self.row[np.flatnonzero(has)] = r[has]
            elif p == 1:
                self.row0[np.flatnonzero(has)] = r[has]
            else:
                self.fac[p - 2].up[below[has]] = r[has]
            below = r
        if "sketch" in state:
            self.sketch = CountMinSketch(
                width=state["sketch"].shape[1], depth=state["sketch"].shape[0], seed=self.seed
            )
            self.sketch.table[:] = state["sketch"]

    def _rows_per_level(self) -> list[int]:
        if self.m == 0:
            return []
        lev = self.level[: len(self.table)]
        return [int(np.count_nonzero(self._table_members(lev, p))) for p in range(1, self.m + 1)]

    def stats(self) -> ShardStats:
        """Model size: keys, non-zero weights, factor rows per level, bytes."""
        n = len(self.table)
        s = np.arange(n)
        nz_w = int(np.count_nonzero(self._weights(s, self.table.keys)))
        nz_f = 0
        for f, r in zip(self.fac, self._slot_rows()):
            r = r[r >= 0]
            for lo in range(0, r.size, 1 << 20):
                st = f.s[r[lo : lo + (1 << 20)]]
                nz_f += int(np.count_nonzero(ftrl_weight(st[:, 0], st[:, 1], self.ftrl.factor)))
        ps_bytes = self.table.nbytes + sum(getattr(self, k).nbytes for k in self._per_key)
        ps_bytes += sum(f.nbytes for f in self.fac)
        ps_bytes += self.sketch.nbytes if self.sketch is not None else 0
        # Raw = what the model needs at least: every key (8 B) and the FTRL state (z, n) of
        # every stored coordinate (2 x 4 B), linear and factor.
        rows = self._rows_per_level()
        raw = n * (8 + 8) + sum(k * d * 8 for k, d in zip(rows, self.ranks))
        return ShardStats(n, nz_w, rows, nz_f, int(ps_bytes), int(raw))

    def weights(self) -> dict[str, np.ndarray]:
        """Every stored key's weights: ``keys``, ``w``, ``level`` and ``v{p}`` — the factors
        of level p for the keys in ``rows{p}`` (indices into ``keys``). For export."""
        n = len(self.table)
        s = np.arange(n)
        out = {
            "keys": self.table.keys.copy(),
            "w": self._weights(s, self.table.keys),
            "level": self.level[:n].copy() if self.m else np.zeros(n, np.int8),
        }
        for p, (f, r) in enumerate(zip(self.fac, self._slot_rows()), start=1):
            has = np.flatnonzero(r >= 0)
            out[f"rows{p}"] = has
            st = f.s[r[has]]
            out[f"v{p}"] = ftrl_weight(st[:, 0], st[:, 1], self.ftrl.factor)
        return out

"""A parameter-server shard: keyed FTRL state for the keys it owns (DESIGN §5).

Per key: linear FTRL state, occurrence count, level and last-seen day; per level the key's
factor rows (untied models keep a row in every level ``p <= k``, tied ones one row of size
``D_k`` in level ``k``: :class:`~psfm.models.layout.FactorLayout`). Weights are never stored:
they are the FTRL closed form of ``(z, n)``, so the state arrays *are* the checkpoint.

The shard is the in-process API (pull, push, synchronous steps, counts, levels and day end,
snapshot/restore, stats, weights). What it is made of: storage in :mod:`psfm.ps.store`, the
FTRL update in :mod:`psfm.ps.update`, the sync-step sums in :mod:`psfm.ps.sync`, the snapshot
format in :mod:`psfm.ps.snapshot`. Transport (packed buffers, shared-memory messages) and
checkpoint files belong to the Ray actor, :class:`psfm.ray_backend.server.ShardServer`. This
module imports no Ray.
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from psfm.config import FtrlConfig, LevelConfig, ModelConfig
from psfm.errors import CheckpointError
from psfm.hashing import BIAS_KEY
from psfm.models.layout import FactorLayout
from psfm.ps import snapshot as snapshot_format
from psfm.ps.admission import CountMinSketch
from psfm.ps.levels import counted_first, init_factors, level_thresholds, levels_from_counts
from psfm.ps.messages import PullResult, PushRequest, ShardStats
from psfm.ps.store import GROWTH_SLACK, FactorRows, KeyStore
from psfm.ps.sync import PushBuffer
from psfm.ps.table import KeyTable
from psfm.ps.update import FtrlRule
from psfm.steps import resolve_ftrl

__all__ = ["ParameterShard"]

log = logging.getLogger(__name__)


class ParameterShard:
    """Owns the keys with ``shard_of(key) == shard_id``; pull/push/snapshot/restore/stats.

    The store (:class:`~psfm.ps.store.KeyStore`) keeps ``z_w, n_w`` always; ``level`` for
    factor models; ``count`` while something reads it (the ``online`` policy; the statistics
    pass of ``static``); ``last_day`` (uint16) when ``ttl_days`` evicts.
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
        self.layout = FactorLayout(self.ranks, self.tied)
        self.thresholds = level_thresholds(self.ranks, levels.count_per_dim, levels.level_min_count)
        self.rule = FtrlRule(ftrl, self.layout)
        self._bias_params = self.rule.bias
        # untied, first threshold 1: every stored key but the bias has a level-1 row
        slot1 = self.m > 0 and not self.tied and float(self.thresholds[0]) <= 1
        self.store = KeyStore(
            self.layout, slot1, counting=levels.policy == "online", last_day=bool(levels.ttl_days)
        )
        # Static levels (and admission) store every key of the training days in the statistics
        # pass: after it the arrays keep no growth room while no key comes in (keys evicted and
        # seen again, days added to a run do: such a day ends with room again); the key index
        # keeps its room (its load sets the speed of every lookup)
        self._counted = counted_first(levels.policy, self.m, levels.admit_min_count)
        self.day = 0
        self.sketch: CountMinSketch | None = None
        self._buffer = PushBuffer(self.layout)
        self._recent: deque = deque(maxlen=8)  # (keys, slots) of the latest training pulls
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ the store
    def __len__(self) -> int:
        return len(self.store)

    @property
    def table(self) -> KeyTable:
        return self.store.table

    @property
    def fac(self) -> list[FactorRows]:
        return self.store.fac

    @property
    def count(self) -> np.ndarray:
        return self.store.count

    @property
    def _per_key(self) -> dict[str, tuple[type, int]]:
        return self.store.per_key

    @property
    def _counting(self) -> bool:
        return self.store.has("count")

    # ------------------------------------------------------------------ keys and levels
    def _create(self, keys: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """Insert ``keys`` (some may exist); new keys start at the level of their count."""
        before = len(self.store)
        slots, new = self.store.insert(keys, self.day)
        if new.size:
            c = None
            if counts is not None:
                is_new = slots >= before
                c = np.zeros(new.size, np.float32)
                c[slots[is_new] - before] = counts[is_new]
                if self._counting:
                    self.store.count[new] = c
            # A key created for a batch has been seen at least once: level of count >= 1.
            self._promote(new, seen=True, counts=c)
        return slots

    def _target_level(self, slots: np.ndarray, seen: bool, counts: np.ndarray | None) -> np.ndarray:
        if counts is None:
            counts = self.store.count[slots] if self._counting else np.zeros(slots.size, np.float32)
        lev = levels_from_counts(np.maximum(counts, 1) if seen else counts, self.thresholds)
        lev[self.table.keys[slots] == BIAS_KEY] = 0
        return lev

    def _promote(
        self, slots: np.ndarray, seen: bool = False, counts: np.ndarray | None = None
    ) -> None:
        """Raise ``level`` of ``slots`` to their count's level (``counts`` if given, else
        the stored ones), creating factor rows."""
        if self.m == 0 or slots.size == 0:
            return
        level = self.store.level
        target = self._target_level(slots, seen, counts)
        up = target > level[slots]
        if not up.any():
            return
        slots, old, new = slots[up], level[slots[up]].astype(np.int64), target[up]
        keys = self.table.keys[slots]

        def init(sel: np.ndarray, p: int) -> np.ndarray:
            """Initial z of the table-p rows of ``keys[sel]``. An untied row is drawn by its
            rank D_p: a key's D-dimensional factors start from the same draw in FM(D) and in
            every RaFM with a rank D, so comparisons of models (a study's points) share their
            random numbers and differ by the model alone. A tied vector is drawn by column
            (salt 0), so a promotion extends it and keeps its prefix."""
            salt = 0 if self.tied else self.ranks[p - 1]
            v0 = init_factors(keys[sel], salt, self.ranks[p - 1], self.model.init_std, self.seed)
            return self.rule.init_z(v0)

        self.store.raise_levels(slots, old, new, init)

    def add_counts(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Statistics pass of the ``static`` policy: accumulate occurrence counts (kept only
        until :meth:`finish_counts` unless the policy reads them later)."""
        if not self._counting:
            self.store.add_array("count", np.float32, 0)
        slots, _ = self.store.insert(keys, self.day)
        np.add.at(self.store.count, slots, np.asarray(counts, dtype=np.float32))

    def finish_counts(self) -> dict[str, int]:
        """End of the statistics pass: admission by count, then levels and factor rows."""
        n = len(self.table)
        keep = self.store.count[:n] >= self.levels.admit_min_count
        keep |= self.table.keys == BIAS_KEY
        dropped = self._retain(keep)
        n = len(self.table)
        self._promote(np.arange(n))
        if self.levels.policy != "online":  # static levels: nothing reads counts any more
            self.store.drop_array("count")
        self.store.trim(1.0 if self._counted else GROWTH_SLACK, GROWTH_SLACK)  # grew by halves
        return {"keys": n, "not_admitted": dropped}

    def _admit(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Count not-yet-admitted keys in the sketch; store those that reach the bar."""
        if self.sketch is None:
            self.sketch = CountMinSketch(seed=self.seed)
        est = self.sketch.add(keys, counts)
        ok = est >= self.levels.admit_min_count
        if ok.any():
            self._create(keys[ok], est[ok])

    # ------------------------------------------------------------------ pull / push
    def pull(self, keys: np.ndarray, create: bool = False, state: bool = False) -> PullResult:
        """Weights of ``keys`` (unique, any order); unknown keys: w = 0, level 0.

        ``create`` inserts unknown keys (training); evaluation never creates keys. Keys are
        created only when ``admit_min_count`` is 1; otherwise :meth:`push` admits them.
        ``state``: the keys' FTRL state instead of their weights, for worker-local steps
        (:class:`PullResult`; a key not stored has level -1).
        """
        keys = np.asarray(keys, dtype=np.uint64)
        store, rule = self.store, self.rule
        if create and self.levels.admit_min_count <= 1:
            slots = self._create(keys)
            self._recent.append((keys, slots))
        else:
            slots = store.table.lookup(keys)
        present = slots >= 0
        lev = np.zeros(keys.size, dtype=np.int8)
        if self.m:
            lev[present] = store.level[slots[present]]
        rows = store.member_rows(slots, lev)
        if state:
            lev[~present] = -1
            w = np.zeros((keys.size, 2), np.float32)
            s = slots[present]
            w[present, 0] = store.z_w[s]
            w[present, 1] = store.n_w[s]
            tables = [
                np.take(f.s, r, axis=0).reshape(r.size, 2 * f.dim) for f, r in zip(store.fac, rows)
            ]
            out = PullResult(w, lev, tables)
        else:
            tables = [rule.row_weights(f, r) for f, r in zip(store.fac, rows)]
            out = PullResult(rule.weights(store, slots, keys), lev, tables)
        self.bytes_out += out.nbytes
        self.bytes_in += keys.nbytes
        return out

    def push(self, req: PushRequest) -> None:
        """Apply a batch's summed gradients (``req.level`` is what the pull returned for its
        keys: it says which rows the gradient tables have); then counts, last-seen day and
        online promotion."""
        keys = np.asarray(req.keys, dtype=np.uint64)
        store = self.store
        self.bytes_in += req.nbytes
        inc_w: np.ndarray | None
        inc_tables: list[np.ndarray | None]
        if req.delta:  # worker-local steps: add what they added to (z, n)
            inc_w, inc_tables = req.sq_w, list(req.sq_tables or [])
        else:
            inc_w, inc_tables = self.rule.increments(req, f"Shard {self.shard_id}")
        slots = self._slots_of_pulled(keys)
        present = slots >= 0
        s = slots[present]
        if s.size:
            if req.delta:
                assert inc_w is not None
                self.rule.add_linear(store, s, req.grad_w[present], inc_w[present])
            else:
                self.rule.update_linear(
                    store,
                    s,
                    req.grad_w[present],
                    keys[present],
                    None if inc_w is None else inc_w[present],
                )
            # a delta's level -1 (not stored at the pull) is no table's member: no rows
            self.rule.update_factors(
                store, slots, req.level, req.grad_tables, inc_tables, delta=req.delta
            )
            if self._counting:
                store.count[s] += req.counts[present]
            if store.has("last_day"):
                store.last_day[s] = self.day
        if self.levels.policy == "online":
            if not present.all() and self.levels.admit_min_count > 1:
                self._admit(keys[~present], req.counts[~present])
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
        self, req: PushRequest, pull_keys: np.ndarray, create: bool = False, state: bool = False
    ) -> PullResult:
        """:meth:`push` one batch, then :meth:`pull` the next: one actor call instead of two."""
        self.push(req)
        return self.pull(pull_keys, create, state)

    def push_buffered(self, worker: int, req: PushRequest) -> None:
        """Sync mode: hold one worker's gradients of the current step until
        :meth:`apply_buffered`."""
        self._buffer.add(worker, req)

    def apply_buffered(self) -> None:
        """Sync mode: sum the step's gradients (and sums of squares) per key in worker
        order, in float64 rounded once (:class:`~psfm.ps.sync.PushBuffer`); one FTRL
        update."""
        req = self._buffer.take()
        if req is not None:
            self.push(req)

    # ------------------------------------------------------------------ day end
    def end_day(self, day: int) -> dict[str, int]:
        """Decay counts (online), evict keys unseen for ``ttl_days``, compact factor rows.
        ``day`` is the index of the day that starts next."""
        n = len(self.table)
        if self._counting and self.levels.daily_decay < 1:
            self.store.count[:n] *= np.float32(self.levels.daily_decay)
        evicted = 0
        if self.levels.ttl_days:
            if day > np.iinfo(np.uint16).max:
                raise CheckpointError(
                    f"Keys' last-seen days are stored as uint16: with ttl_days a run has at "
                    f"most {np.iinfo(np.uint16).max} days. Got day index {day} instead."
                )
            keep = (day - self.store.last_day[:n].astype(np.int64)) <= self.levels.ttl_days
            keep |= self.table.keys == BIAS_KEY
            evicted = self._retain(keep)
        self.store.compact_rows()
        settled = self._counted and not self.store.inserted
        self.store.trim(1.0 if settled else GROWTH_SLACK, GROWTH_SLACK)
        self.day = day
        return {"evicted": evicted, "keys": len(self.table)}

    def _retain(self, keep: np.ndarray) -> int:
        """Keep the keys where ``keep``; returns how many were dropped. Factor rows of the
        dropped keys become holes until the day end compacts them."""
        self._recent.clear()  # slots move
        return self.store.retain(keep)

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, np.ndarray]:
        """The shard's whole state as plain arrays (:mod:`psfm.ps.snapshot`)."""
        return snapshot_format.write(
            self.store, self.shard_id, self.n_shards, self.day, self.sketch
        )

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Load a :meth:`snapshot` (of a shard of the same model and shard layout). Per-key
        arrays this configuration does not keep are ignored; those it keeps but the
        checkpoint lacks start fresh (counts 0, last seen on the checkpoint's day)."""
        self._recent.clear()
        got = snapshot_format.read(state, self.store, self.shard_id, self.n_shards, self.seed)
        self.day = got.day
        if got.sketch is not None:
            self.sketch = got.sketch

    def _rows_per_level(self) -> list[int]:
        if self.m == 0:
            return []
        lev = self.store.level[: len(self.table)]
        return [int(np.count_nonzero(self.layout.members(lev, p))) for p in range(1, self.m + 1)]

    def stats(self) -> ShardStats:
        """Model size: keys, non-zero weights, factor rows per level, bytes."""
        n = len(self.table)
        s = np.arange(n)
        nz_w = int(np.count_nonzero(self.rule.weights(self.store, s, self.table.keys)))
        nz_f = 0
        for f, r in zip(self.fac, self.store.slot_rows()):
            r = r[r >= 0]
            for lo in range(0, r.size, 1 << 20):
                nz_f += int(np.count_nonzero(self.rule.row_weights(f, r[lo : lo + (1 << 20)])))
        ps_bytes = self.store.nbytes
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
            "w": self.rule.weights(self.store, s, self.table.keys),
            "level": self.store.level[:n].copy() if self.m else np.zeros(n, np.int8),
        }
        for p, (f, r) in enumerate(zip(self.fac, self.store.slot_rows()), start=1):
            has = np.flatnonzero(r >= 0)
            out[f"rows{p}"] = has
            out[f"v{p}"] = self.rule.row_weights(f, r[has])
        return out

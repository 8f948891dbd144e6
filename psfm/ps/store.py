"""Storage of a shard: growable per-key arrays over a :class:`KeyTable`'s slots, and the
factor rows of each level (DESIGN §5). No FTRL math and no transport: the shard
(:mod:`psfm.ps.shard`) says what to store, :mod:`psfm.ps.update` how it changes.

Per key (slot ``s``): linear FTRL state ``z_w[s], n_w[s]``; for factor models ``level[s]``;
``count[s]`` and ``last_day[s]`` when the shard asks for them. Factor rows: an untied model
whose first threshold is 1 (every stored key but the bias has level >= 1) keeps its level-1 row
*at the key's slot* (``slot1``); otherwise ``row0[slot]`` points at it. Higher levels are reached
through ``up``: the level-(p+1) row of a key is ``fac[p-1].up.get(its level-p row)``, so a key
pays a row index only for the levels it has above 1 (level-1 rows link by rank,
:class:`~psfm.ps.links.RankLinks`: a bit per key). A tied model keeps one row, ``row[slot]``,
in the table of its own level.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from psfm.models.layout import FactorLayout
from psfm.ps.links import DenseLinks, Links, RankLinks
from psfm.ps.table import GROWTH_SLACK, KeyTable

__all__ = ["GROWTH_SLACK", "FactorRows", "KeyStore", "grow", "set_rows"]

# (level-p keys as a mask over the slots being raised, table p) -> the rows' initial z
RowInit = Callable[[np.ndarray, int], np.ndarray]


class FactorRows:
    """A growable FTRL state table of one factor level: ``s[row] = (z, n)``, shape
    (capacity, 2, D) float32, and (untied models below the top level) ``up``: each row's
    row at the next level (:mod:`psfm.ps.links`; ``sparse``: few rows have one). z and n of
    a row sit side by side, so a pull is one random gather and a push one gather and one
    scatter per row (the shard's cost is memory latency)."""

    def __init__(self, dim: int, linked: bool, sparse: bool = False) -> None:
        self.dim = dim
        self.n = 0
        self.s = np.zeros((16, 2, dim), dtype=np.float32)
        self.up: Links | None = None
        if linked:
            self.up = RankLinks() if sparse else DenseLinks()
            self.up.reserve(16)

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
            self.s = grow(self.s, cap)
            if self.up is not None:
                self.up.reserve(cap)

    def reset(self, rows: np.ndarray, z0: np.ndarray | float = 0.0) -> None:
        """Rows start over: ``z = z0``, ``n = 0``, no row above."""
        self.s[rows, 0] = z0
        self.s[rows, 1] = 0
        if self.up is not None:
            self.up.reset(rows)

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
            self.up.keep(rows)
        self.n = k

    def trim(self, cap: int) -> None:
        if self.s.shape[0] > cap * 1.05:
            self.s = self.s[:cap].copy()
            if self.up is not None:
                self.up.trim(cap)


def set_rows(table: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``table[rows] = values`` for a C-contiguous table (rows along axis 0, any trailing
    shape), written as one 1-D assignment of whole rows (each row seen as one opaque item):
    numpy's row scatter of a 2-D/3-D float array takes 2-3x as long for rows of 8-16 floats.
    Duplicate ``rows`` keep the last value, as numpy's assignment does."""
    if not rows.size:
        return
    if not table.flags.c_contiguous:  # a view of rows needs whole rows side by side
        table[rows] = values
        return
    row = np.dtype((np.void, table.itemsize * int(np.prod(table.shape[1:], dtype=np.int64))))
    flat = table.reshape(table.shape[0], -1)
    src = np.ascontiguousarray(values, dtype=table.dtype).reshape(rows.size, -1)
    flat.view(row).reshape(-1)[rows] = src.view(row).reshape(-1)


def grow(a: np.ndarray, cap: int) -> np.ndarray:
    """``a`` with room for ``cap`` rows; the new rows are uninitialised (every user sets a
    row before it reads it: :meth:`KeyStore.init_slots`, :meth:`FactorRows.reset`)."""
    out = np.empty((cap,) + a.shape[1:], dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


class KeyStore:
    """The keys of a shard and their state arrays (see the module doc). ``per_key`` names the
    slot-indexed arrays kept (name -> (dtype, fill of a fresh slot)); each is an attribute."""

    z_w: np.ndarray
    n_w: np.ndarray
    level: np.ndarray
    row: np.ndarray
    row0: np.ndarray
    count: np.ndarray
    last_day: np.ndarray

    def __init__(
        self, layout: FactorLayout, slot1: bool, counting: bool = False, last_day: bool = False
    ) -> None:
        self.layout = layout
        self.m = layout.levels
        self.tied = layout.tied
        self.slot1 = slot1
        self.per_key: dict[str, tuple[type, int]] = {
            "z_w": (np.float32, 0),
            "n_w": (np.float32, 0),
        }
        if self.m:
            self.per_key["level"] = (np.int8, 0)
            if self.tied:
                self.per_key["row"] = (np.int32, -1)
            elif not slot1:
                self.per_key["row0"] = (np.int32, -1)
        if counting:
            self.per_key["count"] = (np.float32, 0)
        if last_day:
            self.per_key["last_day"] = (np.uint16, 0)
        self.reset(KeyTable())

    def reset(self, table: KeyTable) -> None:
        """Start over with the keys of ``table`` and no state arrays (capacity 0, no rows)."""
        self.table = table
        self.cap = 0
        self.inserted = 0  # keys inserted since the last trim
        for name, (dtype, _) in self.per_key.items():
            setattr(self, name, np.zeros(0, dtype))
        # level-1 rows are every stored key's and few of them have a level-2 row: a bit per
        # row and a link per linked row (RankLinks); the upper levels link most of their rows
        self.fac = [
            FactorRows(self.layout.width(p), linked=not self.tied and p < self.m, sparse=p == 1)
            for p in range(1, self.m + 1)
        ]

    def __len__(self) -> int:
        return len(self.table)

    def has(self, name: str) -> bool:
        return name in self.per_key

    def add_array(self, name: str, dtype: type, fill: int) -> None:
        """Keep one more per-key array (zeros for the slots already there)."""
        self.per_key[name] = (dtype, fill)
        setattr(self, name, np.zeros(self.cap, dtype))

    def drop_array(self, name: str) -> None:
        dtype, _ = self.per_key.pop(name)
        setattr(self, name, np.zeros(0, dtype))

    @property
    def nbytes(self) -> int:
        """Bytes of the key table, the per-key arrays and the factor rows."""
        out = self.table.nbytes + sum(getattr(self, k).nbytes for k in self.per_key)
        return out + sum(f.nbytes for f in self.fac)

    # ------------------------------------------------------------------ slots
    def ensure_capacity(self, n: int) -> None:
        if n <= self.cap:
            return
        cap = max(n, self.cap + self.cap // 2, 1024)
        for name in self.per_key:
            setattr(self, name, grow(getattr(self, name), cap))
        if self.slot1:
            self.fac[0].reserve(cap)
        self.cap = cap

    def insert(self, keys: np.ndarray, day: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots of ``keys`` (inserted where new) and the new slots, fresh (:meth:`init_slots`)."""
        before = len(self.table)
        slots = self.table.insert(keys)
        after = len(self.table)
        if after == before:
            return slots, np.arange(0)
        self.inserted += after - before
        self.ensure_capacity(after)
        new = np.arange(before, after)
        self.init_slots(new, day)
        return slots, new

    def init_slots(self, new: np.ndarray, day: int) -> None:
        """Fresh per-key state for new slots (slots are reused after eviction)."""
        for name, (_, fill) in self.per_key.items():
            getattr(self, name)[new] = fill
        if "last_day" in self.per_key:
            self.last_day[new] = day
        if self.slot1:
            self.fac[0].reset(new)

    def retain(self, keep: np.ndarray) -> int:
        """Keep the keys where ``keep``; returns how many were dropped. Factor rows of the
        dropped keys become holes (:meth:`compact_rows`)."""
        n = len(self.table)
        if keep.all():
            return 0
        old = self.table.retain(keep)
        for name in self.per_key:
            arr = getattr(self, name)
            arr[: old.size] = arr[old]
        if self.slot1:
            self.fac[0].keep(old)
        return n - old.size

    def trim(self, slack: float = GROWTH_SLACK, index_slack: float | None = None) -> None:
        """Give back growth slack: capacity ~ ``slack`` x what is stored, the key index
        sized for ``index_slack`` x the keys (``slack`` unless given: its load sets the
        speed of every lookup)."""
        n = len(self.table)
        cap = max(1024, int(n * slack))
        if self.cap > cap * 1.05:
            for name in self.per_key:
                setattr(self, name, getattr(self, name)[:cap].copy())
            self.cap = cap
        self.table.trim(slack, index_slack)
        self.inserted = 0
        for p, f in enumerate(self.fac, start=1):
            f.trim(self.cap if p == 1 and self.slot1 else max(16, int(f.n * slack)))

    # ------------------------------------------------------------------ rows
    def level1_rows(self, slots: np.ndarray) -> np.ndarray:
        """Level-1 rows of ``slots`` (untied; every slot must have level >= 1)."""
        return slots if self.slot1 else self.row0[slots].astype(np.int64)

    def member_rows(self, slots: np.ndarray, lev: np.ndarray) -> list[np.ndarray]:
        """Per table p, the rows of the keys that have one (:meth:`FactorLayout.members`), in
        key order. ``slots`` must be valid where ``lev > 0``."""
        if self.tied or self.m == 0:
            return [self.row[slots[self.layout.members(lev, p)]] for p in range(1, self.m + 1)]
        out = []
        sel = lev >= 1
        rows, ml = self.level1_rows(slots[sel]), lev[sel]
        for p in range(1, self.m + 1):
            if p > 1:
                keep = self.layout.members(ml, p)
                rows, ml = self._up(p - 1).get(rows[keep]), ml[keep]
            out.append(rows)
        return out

    def slot_rows(self) -> list[np.ndarray]:
        """Per table p, every slot's row (int64, -1 where it has none)."""
        n = len(self.table)
        if self.m == 0:
            return []
        lev = self.level[:n]
        out = []
        if self.tied:
            for p in range(1, self.m + 1):
                r = np.full(n, -1, np.int64)
                at = self.layout.members(lev, p)
                r[at] = self.row[:n][at]
                out.append(r)
            return out
        cur = np.full(n, -1, np.int64)
        at = lev >= 1
        cur[at] = self.level1_rows(np.flatnonzero(at))
        out.append(cur)
        for p in range(2, self.m + 1):
            nxt = np.full(n, -1, np.int64)
            at = self.layout.members(lev, p)
            nxt[at] = self._up(p - 1).get(cur[at])
            out.append(nxt)
            cur = nxt
        return out

    def raise_levels(
        self, slots: np.ndarray, old: np.ndarray, new: np.ndarray, init: RowInit
    ) -> None:
        """``slots`` go from level ``old`` to ``new`` (> old): they get the rows of the tables
        they join, with initial z ``init(mask over slots, p)`` for table p. Untied: a row per
        level gained, linked to the one below. Tied: one row at the new level, carrying the
        trained prefix of the old one (which stays a hole until :meth:`compact_rows`)."""
        if not self.tied:
            below = np.full(slots.size, -1, np.int64)  # each slot's row at level p - 1
            for p in range(1, self.m + 1):
                f = self.fac[p - 1]
                rows = np.full(slots.size, -1, np.int64)
                had = old >= p
                if had.any():
                    rows[had] = (
                        self.level1_rows(slots[had]) if p == 1 else self._up(p - 1).get(below[had])
                    )
                gets = (old < p) & (new >= p)
                if gets.any():
                    z0 = init(gets, p)
                    if p == 1 and self.slot1:
                        f.reset(slots[gets], z0)
                        rows[gets] = slots[gets]
                    else:
                        rows[gets] = f.add(z0)
                        if p == 1:
                            self.row0[slots[gets]] = rows[gets]
                        else:
                            self._up(p - 1).add(below[gets], rows[gets])
                below = rows
        else:
            for k in range(1, self.m + 1):
                at = new == k
                if not at.any():
                    continue
                s_k, old_k = slots[at], old[at]
                z0 = init(at, k)
                n0 = np.zeros_like(z0)
                for j in range(1, k):  # keep the trained prefix of a promoted vector
                    was = old_k == j
                    if was.any():
                        dj = self.layout.width(j)
                        r = self.row[s_k[was]]
                        z0[was, :dj] = self.fac[j - 1].z[r]
                        n0[was, :dj] = self.fac[j - 1].nn[r]
                rows = self.fac[k - 1].add(z0)  # the old rows are holes until day end
                self.fac[k - 1].nn[rows] = n0
                self.row[s_k] = rows
        self.level[slots] = new

    def _up(self, p: int) -> Links:
        """``up`` of table p (untied, p < m)."""
        up = self.fac[p - 1].up
        assert up is not None
        return up

    def load_rows(
        self, slot_rows: list[np.ndarray], z: list[np.ndarray], nn: list[np.ndarray]
    ) -> None:
        """Rows of a fresh store (:meth:`reset`, every slot initialised) from per table p every
        slot's row ``slot_rows[p-1]`` (-1 none) into ``z[p-1], nn[p-1]``: the inverse of
        :meth:`slot_rows` with the rows' state."""
        n = len(self.table)
        below = np.zeros(0, np.int64)  # level p - 1 row of each slot
        for p, f in enumerate(self.fac, start=1):
            r = slot_rows[p - 1]
            has = r >= 0
            if p == 1 and self.slot1:
                slots = np.flatnonzero(has)
                f.s[slots, 0] = z[0][r[has]]
                f.s[slots, 1] = nn[0][r[has]]
                below = np.where(has, np.arange(n), -1)
                continue
            rows = f.add(z[p - 1])
            f.nn[rows] = nn[p - 1]
            if self.tied:
                self.row[np.flatnonzero(has)] = r[has]
            elif p == 1:
                self.row0[np.flatnonzero(has)] = r[has]
            else:
                self._up(p - 1).add(below[has], r[has])
            below = r

    def compact_rows(self) -> None:
        """Drop factor rows no key points at (after eviction or tied promotion)."""
        n = len(self.table)
        for p, f in enumerate(self.fac, start=1):
            ref: np.ndarray
            put: Callable[[np.ndarray], None]
            if self.tied:
                sel = np.flatnonzero(self.layout.members(self.level[:n], p))
                ref, put = self.row[sel], partial(self.row.__setitem__, sel)
            elif p == 1:
                if self.slot1:
                    continue  # level-1 rows are the slots themselves
                ref, put = self.row0[:n], partial(self.row0.__setitem__, slice(0, n))
            else:
                up = self._up(p - 1)
                k = n if p == 2 and self.slot1 else self.fac[p - 2].n
                ref, put = up.dense(k), up.set_dense
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
            put(ref)

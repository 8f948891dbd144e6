"""The parameter-server protocol as typed values (pure numpy, no Ray): what a worker sends a
shard and what it gets back, and their wire form (:mod:`psfm.ps.wire`).

- :class:`PullResult`: the weights of a batch's keys or, for worker-local steps, their FTRL
  state ``(z, n)``.
- :class:`PushRequest`: one batch's per-key gradient sums, occurrence counts, the levels the
  pull returned (they say which factor rows the gradients have) and, for the
  ``sum_of_squares`` FTRL rule, the per-key sums of the squared per-occurrence gradients; or,
  after worker-local steps, what those steps added to each coordinate's ``(z, n)``.
- :class:`ShardStats`: model size of a shard (and of all shards, :meth:`ShardStats.merge`).

Wire form of a push: ``[keys, counts, level, grad_w, g_1..g_m]`` followed by ``[sq_w,
sq_1..sq_m]`` when the request carries sums of squares (``5 + 2m`` arrays instead of
``4 + m``) and by ``[[1]]`` (int8) for a delta push (``6 + 2m``); a fused push + pull appends
``[pull_keys, flags]``. A pull's flags are ``[create]`` or ``[create, state]`` (int8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from psfm.ps.wire import pack, unpack

__all__ = ["PullResult", "PushRequest", "ShardStats", "row_maps"]

_DELTA = np.ones(1, np.int8)  # the wire marker of a delta push


@dataclass
class PullResult:
    """Weights of ``keys`` in key order: ``w`` (n,) float32, ``level`` (n,) int8 and
    ``tables[p-1]``: (rows, D_p) float32 for the keys with a stored row at level p
    (level >= p untied, level == p tied), in key order.

    A *state* pull (for worker-local steps, :mod:`psfm.ps.local`) carries the FTRL state
    instead of the weights: ``w`` is (n, 2) ``[z, n]``, ``tables[p-1]`` (rows, 2 D_p), the
    row's ``z`` then its ``n``, and ``level`` is -1 for a key the shard does not store (it
    was not admitted: its weights stay 0)."""

    w: np.ndarray
    level: np.ndarray
    tables: list[np.ndarray]

    @property
    def state(self) -> bool:
        return self.w.ndim == 2

    def select(self, idx: np.ndarray, rowmap: Sequence[np.ndarray], layout) -> PullResult:
        """The answer for the keys ``idx`` (ascending positions into this answer's keys);
        ``rowmap[p-1]``: each key's row in table p (:func:`row_maps`)."""
        lev = self.level[idx]
        tables = [
            t[rm[idx[layout.members(lev, p)]]]
            for p, (t, rm) in enumerate(zip(self.tables, rowmap), start=1)
        ]
        return PullResult(self.w[idx], lev, tables)

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + self.level.nbytes + sum(t.nbytes for t in self.tables)

    @property
    def arrays(self) -> list[np.ndarray]:
        return [self.w, self.level, *self.tables]

    def pack(self) -> np.ndarray:
        """One buffer (:mod:`psfm.ps.wire`) for crossing actors."""
        return pack(self.arrays)

    @classmethod
    def unpack(cls, buf: np.ndarray) -> PullResult:
        a = unpack(buf)
        return cls(a[0], a[1], a[2:])


def row_maps(level: np.ndarray, layout) -> list[np.ndarray]:
    """Per table p, each key's row in a pull answer's table p (meaningful where the key is a
    member: :meth:`FactorLayout.members`)."""
    return [np.cumsum(layout.members(level, p)) - 1 for p in range(1, layout.levels + 1)]


@dataclass
class PushRequest:
    """One batch's update for a set of keys (unique, the pull's order).

    ``keys`` (n,) uint64; ``counts`` (n,) float32 occurrences in the batch; ``level`` (n,)
    int8 as pulled; ``grad_w`` (n,) float32 summed gradients of the linear weights;
    ``grad_tables[p-1]`` (rows_p, D_p) float32 summed gradients of the level-p rows (the
    pull's rows). ``sq_w`` / ``sq_tables``: the same shapes, sums over the key's occurrences
    of the squared per-occurrence gradients (``sum_i g_i^2``); None unless the FTRL rule
    ``sum_of_squares`` asks for them.

    A ``delta`` push follows worker-local steps (:mod:`psfm.ps.local`): ``grad_*`` hold what
    the steps added to each coordinate's ``z`` and ``sq_*`` what they added to its ``n``; the
    shard adds them (no FTRL math of its own).
    """

    keys: np.ndarray
    counts: np.ndarray
    level: np.ndarray
    grad_w: np.ndarray
    grad_tables: list[np.ndarray]
    sq_w: np.ndarray | None = None
    sq_tables: list[np.ndarray] | None = None
    delta: bool = False

    @property
    def has_sq(self) -> bool:
        return self.sq_w is not None

    @property
    def arrays(self) -> list[np.ndarray]:
        out = [self.keys, self.counts, self.level, self.grad_w, *self.grad_tables]
        if self.sq_w is not None:
            out += [self.sq_w, *(self.sq_tables or [])]
        if self.delta:
            out.append(_DELTA)
        return out

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    @classmethod
    def from_arrays(cls, a: Sequence[np.ndarray], m: int) -> PushRequest:
        """The request of :attr:`arrays` for a model of ``m`` levels."""
        if len(a) in (5 + 2 * m, 6 + 2 * m):
            delta = len(a) == 6 + 2 * m
            sq_end = len(a) - int(delta)
            return cls(
                a[0], a[1], a[2], a[3], list(a[4 : 4 + m]), a[4 + m], list(a[5 + m : sq_end]), delta
            )
        if len(a) != 4 + m:
            raise ValueError(
                f"a push of a {m}-level model has {4 + m}, {5 + 2 * m} or {6 + 2 * m} arrays; "
                f"got {len(a)}"
            )
        return cls(a[0], a[1], a[2], a[3], list(a[4:]))

    def take(self, idx: np.ndarray, rows: Sequence[np.ndarray]) -> PushRequest:
        """The request restricted to keys ``idx`` whose level-p rows are ``rows[p-1]``."""
        sq = None
        if self.sq_tables is not None:
            sq = [t[r] for t, r in zip(self.sq_tables, rows)]
        return PushRequest(
            self.keys[idx],
            self.counts[idx],
            self.level[idx],
            self.grad_w[idx],
            [t[r] for t, r in zip(self.grad_tables, rows)],
            None if self.sq_w is None else self.sq_w[idx],
            sq,
            self.delta,
        )


@dataclass
class ShardStats:
    """Model size: stored keys, non-zero linear weights, factor rows per level, non-zero
    factor entries, bytes the shard holds and the raw minimum (key + (z, n) per coordinate)."""

    keys: int
    nonzero_w: int
    factor_rows_per_level: list[int]
    nonzero_factors: int
    ps_bytes: int
    raw_bytes: int

    @property
    def nonzero_params(self) -> int:
        return self.nonzero_w + self.nonzero_factors

    @classmethod
    def merge(cls, parts: Sequence[ShardStats]) -> ShardStats:
        """Model size over all shards."""
        m = len(parts[0].factor_rows_per_level)
        return cls(
            keys=sum(p.keys for p in parts),
            nonzero_w=sum(p.nonzero_w for p in parts),
            factor_rows_per_level=[
                sum(p.factor_rows_per_level[i] for p in parts) for i in range(m)
            ],
            nonzero_factors=sum(p.nonzero_factors for p in parts),
            ps_bytes=sum(p.ps_bytes for p in parts),
            raw_bytes=sum(p.raw_bytes for p in parts),
        )

"""Links from the factor rows of one level to the rows of the next (DESIGN §5): the row of a
key at level p + 1 is ``up.get(its level-p row)``. Two layouts with one interface:

* :class:`DenseLinks` keeps an ``int32`` per row (-1: no row above). Right when most rows
  have a row above (the upper levels of RaFM).
* :class:`RankLinks` keeps one bit per row and an ``int32`` per *linked* row only: the links
  of the linked rows in row order, found by the rank of a row's bit (the number of set bits
  before it: a word's popcount plus a running count per 64-bit word). Right when few rows are
  linked: RaFM's level-1 rows are every stored key's, and only the keys frequent enough for
  level 2 (7% on the benchmark log at ``count_per_dim = 16``) have a row above, so a dense
  link costs 4 B a key where this costs ~0.19 B a key plus 4 B a linked key.

Worked example (rows 1 and 3 of 5 linked, to rows 7 and 2 of the level above)::

    >>> up = RankLinks()
    >>> up.reserve(5)
    >>> up.add(np.array([3, 1]), np.array([2, 7]))
    >>> up.get(np.array([1, 3, 3]))
    array([7, 2, 2], dtype=int32)
    >>> up.dense(5)
    array([-1,  7, -1,  2, -1])
    >>> up.keep(np.array([0, 3, 4]))  # rows 0, 3, 4 stay, renumbered 0, 1, 2
    >>> up.dense(3)
    array([-1,  2, -1])

``get`` costs a few vectorized passes over the queried rows (a gather each of the row's word,
its running count and its link, and a popcount); adding links rebuilds the running counts (one
pass over the words, 1/64 of the rows), which happens only when keys are promoted.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["DenseLinks", "Links", "RankLinks"]

assert sys.byteorder == "little", "RankLinks reads its uint64 words as bytes in little-endian order"

_ONE = np.uint64(1)
_BIT = np.left_shift(_ONE, np.arange(64, dtype=np.uint64))  # bit b of a word
_BELOW = _BIT - _ONE  # the bits below bit b


class DenseLinks:
    """An ``int32`` link per row, -1 where a row has none above."""

    def __init__(self) -> None:
        self.a = np.full(16, -1, np.int32)

    @property
    def nbytes(self) -> int:
        return int(self.a.nbytes)

    def reserve(self, cap: int) -> None:
        """Room for rows ``0..cap-1`` (the caller grows by half at least)."""
        if cap > self.a.size:
            self.a = np.concatenate([self.a, np.full(cap - self.a.size, -1, np.int32)])

    def reset(self, rows: np.ndarray) -> None:
        """``rows`` (fresh or reused) have no row above."""
        self.a[rows] = -1

    def get(self, rows: np.ndarray) -> np.ndarray:
        """The linked rows of ``rows``, which must all be linked."""
        return self.a[rows]

    def add(self, rows: np.ndarray, to: np.ndarray) -> None:
        """Link ``rows`` (distinct, not linked yet) to ``to``."""
        self.a[rows] = to

    def dense(self, k: int) -> np.ndarray:
        """The links of rows ``0..k-1`` (int64, -1 none)."""
        return self.a[:k].astype(np.int64)

    def set_dense(self, links: np.ndarray) -> None:
        """Rows ``0..len(links)-1`` take ``links`` (-1 none); later rows have none."""
        self.reserve(links.size)
        self.a[: links.size] = links
        self.a[links.size :] = -1

    def keep(self, rows: np.ndarray) -> None:
        """Keep ``rows`` (ascending), renumbered ``0..len-1``."""
        self.a[: rows.size] = self.a[rows]

    def trim(self, cap: int) -> None:
        if self.a.size > cap:
            self.a = self.a[:cap].copy()


class RankLinks:
    """A bit per row (set: linked) in ``uint64`` words, ``before[w]`` = set bits in words
    before ``w``, and ``to[r]`` = the link of the r-th linked row in row order."""

    def __init__(self) -> None:
        self.bits = np.zeros(1, np.uint64)
        self.before = np.zeros(1, np.int32)
        self.to = np.zeros(0, np.int32)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes + self.before.nbytes + self.to.nbytes)

    def reserve(self, cap: int) -> None:
        words = (cap + 63) >> 6
        if words > self.bits.size:
            self.bits = np.concatenate([self.bits, np.zeros(words - self.bits.size, np.uint64)])
            self._recount()

    def _recount(self) -> None:
        c = np.bitwise_count(self.bits)
        self.before = np.zeros(self.bits.size, np.int32)
        np.cumsum(c[:-1], out=self.before[1:], dtype=np.int32)

    def _rank(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row (int64): its word, and the number of set bits before it."""
        w = rows >> 6
        return w, self.before[w] + np.bitwise_count(self.bits[w] & _BELOW[rows & 63])

    def _linked(self, rows: np.ndarray) -> np.ndarray:
        return (self.bits[rows >> 6] & _BIT[rows & 63]) != 0

    def get(self, rows: np.ndarray) -> np.ndarray:
        """The linked rows of ``rows``, which must all be linked (the store asks only for
        the rows of keys whose level says they have a row above)."""
        if not rows.size:
            return np.zeros(0, np.int32)
        return self.to[self._rank(rows.astype(np.int64, copy=False))[1]]

    def add(self, rows: np.ndarray, to: np.ndarray) -> None:
        """Link ``rows`` (distinct, not linked yet) to ``to``."""
        if not rows.size:
            return
        order = np.argsort(rows, kind="stable")
        r = rows.astype(np.int64, copy=False)[order]
        w, rank = self._rank(r)
        # rows in ascending order with their ranks among the old links: each goes before the
        # old link at its rank, and rows sharing a rank keep their (ascending) order
        self.to = np.insert(self.to, rank, np.asarray(to)[order].astype(np.int32))
        np.bitwise_or.at(self.bits, w, _BIT[r & 63])
        self._recount()

    def reset(self, rows: np.ndarray) -> None:
        """``rows`` (fresh or reused) have no row above."""
        if not rows.size:
            return
        r = rows.astype(np.int64, copy=False)
        linked = self._linked(r)
        if not linked.any():
            return
        r = np.unique(r[linked])
        w, rank = self._rank(r)
        self.to = np.delete(self.to, rank)
        np.bitwise_and.at(self.bits, w, ~_BIT[r & 63])
        self._recount()

    def _members(self, k: int) -> np.ndarray:
        """Bool per row ``0..k-1``: linked."""
        return np.unpackbits(self.bits.view(np.uint8), count=k, bitorder="little").view(bool)

    def dense(self, k: int) -> np.ndarray:
        """The links of rows ``0..k-1`` (int64, -1 none)."""
        out = np.full(k, -1, np.int64)
        m = self._members(k)
        out[m] = self.to[: int(np.count_nonzero(m))]
        return out

    def _set_head(self, has: np.ndarray) -> None:
        """Bits: ``has`` for rows ``0..len(has)-1``, clear after."""
        self.reserve(has.size)
        self.bits[:] = 0
        head = np.packbits(has, bitorder="little")
        self.bits.view(np.uint8)[: head.size] = head

    def set_dense(self, links: np.ndarray) -> None:
        """Rows ``0..len(links)-1`` take ``links`` (-1 none); later rows have none."""
        has = links >= 0
        self._set_head(has)
        self.to = links[has].astype(np.int32)
        self._recount()

    def keep(self, rows: np.ndarray) -> None:
        """Keep ``rows`` (ascending), renumbered ``0..len-1``; rows after them have none."""
        r = rows.astype(np.int64, copy=False)
        kept = np.full(r.size, -1, np.int64)
        linked = self._linked(r)
        kept[linked] = self.get(r[linked])
        self.set_dense(kept)

    def trim(self, cap: int) -> None:
        words = max(1, (cap + 63) >> 6)
        if self.bits.size > words and not self.bits[words:].any():
            self.bits = self.bits[:words].copy()
            self._recount()


Links = DenseLinks | RankLinks

"""The factor layout of a model: which stored table holds a key's factors at each level.

Ranks ``D_1 < ... < D_m``; a key of level ``k`` (0..m) has level-p factors ``v^(p)`` for
``p <= k``. Two ways to store them (DESIGN §2):

- **untied** (FM, RaFM): table p holds one ``D_p`` row for every key with ``k >= p``; the level-p
  view of the batch is table p itself.
- **tied** (DiFacto): one vector of size ``D_k`` per key, kept in table k (keys with ``k == p``
  in table p); the level-p view takes the ``D_p`` prefix of every vector of level ``>= p``, and
  the gradients of all prefixes add into the one vector.

This module is the only place that states the membership rule; routing, the shard, the torch
model and the numpy serving model ask it. It works on numpy arrays and torch tensors alike
(only comparisons), and imports neither torch nor Ray.

>>> lay = FactorLayout((2, 4), tied=False)
>>> import numpy as np
>>> lay.members(np.array([0, 1, 2, 2]), 1).tolist()
[False, True, True, True]
>>> FactorLayout((2, 4), tied=True).members(np.array([0, 1, 2, 2]), 1).tolist()
[False, True, False, False]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["FactorLayout"]

A = TypeVar("A")  # a numpy array or a torch tensor


@dataclass(frozen=True)
class FactorLayout:
    """The stored tables of a model with ranks ``D_1..D_m`` (``()`` for LR)."""

    ranks: tuple[int, ...]
    tied: bool = False

    @property
    def levels(self) -> int:
        return len(self.ranks)

    def width(self, p: int) -> int:
        """The row width of stored table p (1-based): ``D_p`` in both layouts."""
        return self.ranks[p - 1]

    def members(self, level: A, p: int) -> A:
        """Which keys have a row in stored table p: ``level >= p`` untied, ``level == p`` tied."""
        lev: Any = level
        return lev == p if self.tied else lev >= p

    def view_members(self, level: A, p: int) -> A:
        """Which keys take part in the level-p view (both layouts): ``level >= p``."""
        lev: Any = level
        return lev >= p

    def view_is_table(self, p: int) -> bool:
        """Whether the level-p view is stored table p itself (same rows, same width): always
        untied; tied only at the top level (its members have ``level == m``, i.e. ``>= m``)."""
        return not self.tied or p == self.levels

    def tables_of_view(self, p: int) -> range:
        """The stored tables the level-p view reads: table p untied; tables p..m tied (their
        ``D_p`` prefixes)."""
        return range(p, self.levels + 1) if self.tied else range(p, p + 1)

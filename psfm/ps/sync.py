"""Synchronous steps on a shard: the workers' pushes of one step, held until the step ends and
then summed into one push (DESIGN §6, ``ps.mode = "sync"``).

The sum is per key (and per factor row) in worker order, in float64 rounded once, so a step of
W workers equals the one-worker step up to that single rounding, whatever order the pushes
arrived in.
"""

from __future__ import annotations

import numpy as np

from psfm.models.layout import FactorLayout
from psfm.ps.messages import PushRequest

__all__ = ["PushBuffer"]


class PushBuffer:
    """One step's pushes, by worker."""

    def __init__(self, layout: FactorLayout) -> None:
        self.layout = layout
        self._held: list[tuple[int, PushRequest]] = []

    def __len__(self) -> int:
        return len(self._held)

    def add(self, worker: int, req: PushRequest) -> None:
        """Hold ``worker``'s push of the current step."""
        self._held.append((worker, req))

    def take(self) -> PushRequest | None:
        """The step's pushes summed into one (None when there were none; a single push as it
        came), and an empty buffer."""
        reqs = [r for _, r in sorted(self._held, key=lambda b: b[0])]
        self._held = []
        if len(reqs) <= 1:
            return reqs[0] if reqs else None
        return self._sum(reqs)

    def _sum(self, reqs: list[PushRequest]) -> PushRequest:
        lay, m = self.layout, self.layout.levels
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
        for p in range(1, m + 1):
            member = lay.members(level, p)
            rows = np.cumsum(member) - 1
            members.append(int(member.sum()))
            idx.append(
                np.concatenate(
                    [
                        rows[inv[offsets[i] : offsets[i + 1]][lay.members(r.level, p)]]
                        for i, r in enumerate(reqs)
                    ]
                )
            )

        def per_row(tables: list[list[np.ndarray]]) -> list[np.ndarray]:
            out = []
            for p in range(1, m + 1):
                g = np.zeros((members[p - 1], lay.width(p)), np.float64)
                np.add.at(g, idx[p - 1], np.concatenate([t[p - 1] for t in tables]))
                out.append(g.astype(np.float32))
            return out

        sq_w = [r.sq_w for r in reqs if r.sq_w is not None]
        has_sq = len(sq_w) == len(reqs)  # every push carries sums of squares
        return PushRequest(
            uniq,
            per_key([r.counts for r in reqs]),
            level,
            per_key([r.grad_w for r in reqs]),
            per_row([r.grad_tables for r in reqs]),
            per_key(sq_w) if has_sq else None,
            per_row([r.sq_tables or [] for r in reqs]) if has_sq else None,
        )

"""The serving forward: the model of DESIGN §2 in numpy alone (float64), beside the torch
forward/backward of :mod:`psfm.models.family`.

A :class:`ServingModel` holds an exported model in memory — sorted keys, their weights and
levels, and per level p a dense table ``(n, D_p)`` of the keys' stored rows (zeros where a key
has none; which keys have one is :class:`~psfm.models.layout.FactorLayout`'s rule) — and
scores a batch given as occurrences: it looks the batch's keys up (an unknown key is a zero
weight at level 0), builds the per-level views (:func:`serving_views`) and runs
:func:`numpy_forward`. :class:`psfm.export.Predictor` reads the file; tests hold this forward
equal to the torch one (``tests/unit/test_serving_forward.py``). No torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from psfm.hashing import BIAS_KEY
from psfm.models.layout import FactorLayout
from psfm.models.loss import Loss

__all__ = ["ServingModel", "numpy_forward", "serving_views"]


def numpy_forward(
    ranks: Sequence[int],
    occ_sample: np.ndarray,
    occ_uniq: np.ndarray,
    occ_value: np.ndarray,
    n_rows: int,
    w: np.ndarray,
    level: np.ndarray,
    views: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and RaFM-low logits (float64) of DESIGN §2; ``views[p-1]``: the level-p factors
    of the keys with level >= p, in key order."""
    x = occ_value.astype(np.float64)
    lin = np.bincount(occ_sample, weights=w[occ_uniq] * x, minlength=n_rows)
    occ_level = level[occ_uniq]
    c = np.zeros(n_rows)
    low = None
    for p, d in enumerate(ranks, start=1):
        sel = occ_level >= p
        rows = (np.cumsum(level >= p) - 1)[occ_uniq[sel]]
        vx = views[p - 1][rows].astype(np.float64) * x[sel, None]  # (N_p, D_p)
        seg = occ_sample[sel] * 2 + (occ_level[sel] > p)
        t = np.stack(
            [np.bincount(seg, weights=vx[:, j], minlength=2 * n_rows) for j in range(d)], axis=1
        ).reshape(n_rows, 2, d)
        q = np.bincount(seg, weights=(vx * vx).sum(1), minlength=2 * n_rows).reshape(n_rows, 2)
        s_dep, s_all = t[:, 1], t[:, 0] + t[:, 1]
        a_pp = 0.5 * ((s_all * s_all).sum(1) - q.sum(1))
        a_next = 0.5 * ((s_dep * s_dep).sum(1) - q[:, 1])
        if p == 1:
            low = lin + a_pp
        c += a_pp - a_next
    return lin + c, (lin if low is None else low)


def serving_views(
    layout: FactorLayout, idx: np.ndarray, level: np.ndarray, tables: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """The views of :func:`numpy_forward` for a batch: ``idx[u]`` is the model row of the
    batch's key u and ``level[u]`` its level (0 for an unknown key); ``tables[p-1]``: the
    model's dense table of level p. ``views[p-1]`` (|{u: level[u] >= p}|, D_p) takes each
    member's row of every stored table the level-p view reads (its ``D_p`` prefix)."""
    views = []
    for p in range(1, layout.levels + 1):
        d = layout.width(p)
        member = layout.view_members(level, p)
        rows, lev = idx[member], level[member]
        view = np.zeros((rows.size, d))
        for k in layout.tables_of_view(p):
            at = layout.members(lev, k)
            view[at] = tables[k - 1][rows[at], :d]
        views.append(view)
    return views


@dataclass
class ServingModel:
    """An exported model in memory (module docstring)."""

    layout: FactorLayout
    loss: Loss
    keys: np.ndarray  # (n,) uint64, sorted
    w: np.ndarray  # (n,) float64
    level: np.ndarray  # (n,) int64
    tables: Sequence[np.ndarray]  # tables[p-1]: (n, D_p) float64, zeros where a key has no row

    def lookup(self, uniq: np.ndarray) -> np.ndarray:
        """The model row of each key, -1 for a key the model does not have."""
        i = np.searchsorted(self.keys, uniq)
        i = np.minimum(i, max(self.keys.size - 1, 0))
        found = (self.keys.size > 0) & (self.keys[i] == uniq)
        return np.where(found, i, -1)

    def logits(
        self,
        uniq: np.ndarray,
        occ_sample: np.ndarray,
        occ_uniq: np.ndarray,
        occ_value: np.ndarray,
        n_rows: int,
        idx: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits, RaFM-low logits) of a batch of ``n_rows`` samples whose occurrences are
        ``occ_*`` over its distinct keys ``uniq`` (:class:`psfm.data.batch.Batch`'s arrays);
        ``idx``: :meth:`lookup` of ``uniq`` when the caller has it."""
        idx = self.lookup(uniq) if idx is None else idx
        ok = idx >= 0
        w = np.where(ok, self.w[idx], 0.0)
        level = np.where(ok, self.level[idx], 0)
        views = serving_views(self.layout, idx, level, self.tables)
        return numpy_forward(
            self.layout.ranks, occ_sample, occ_uniq, occ_value, n_rows, w, level, views
        )

    def predict(
        self,
        uniq: np.ndarray,
        occ_sample: np.ndarray,
        occ_uniq: np.ndarray,
        occ_value: np.ndarray,
        n_rows: int,
        idx: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, RaFM-low predictions): the loss's link of :meth:`logits`."""
        logit, low = self.logits(uniq, occ_sample, occ_uniq, occ_value, n_rows, idx)
        return self.loss.link(logit), self.loss.link(low)

    @staticmethod
    def coverage(
        idx: np.ndarray, uniq: np.ndarray, occ_sample: np.ndarray, occ_uniq: np.ndarray, n_rows: int
    ) -> np.ndarray:
        """Per row, the fraction of its feature occurrences (the bias left out) whose key the
        model has (``idx``: :meth:`lookup` of ``uniq``); 1.0 for a row without features.
        Keys the export dropped (all parameters zero) count as unknown: they score zero
        either way."""
        feat = uniq != BIAS_KEY
        total = np.bincount(occ_sample, weights=feat[occ_uniq], minlength=n_rows)
        hit = np.bincount(occ_sample, weights=(feat & (idx >= 0))[occ_uniq], minlength=n_rows)
        out = np.ones(n_rows)
        np.divide(hit, total, out=out, where=total > 0)
        return out

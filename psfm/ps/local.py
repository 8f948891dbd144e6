"""Worker-local FTRL steps: several minibatch steps per pull and push (pure numpy, no Ray).

A small batch is what makes minibatch FTRL learn like per-sample FTRL (:mod:`psfm.steps`), and
a large message is what makes a parameter server fast: every message pays a call and the
shard's key lookups, and the unique keys of a batch grow more slowly than its rows (on the
39-field benchmark log 8.8 per row at 1,024 rows, 5.8 at 4,096). Local steps take both: a
worker pulls the FTRL *state* ``(z, n)`` of the keys of ``ps.local_steps`` consecutive batches
at once (:class:`~psfm.ps.messages.PullResult` with ``state``), runs the batches' FTRL steps
one after another on its copy (:class:`LocalSteps`: the weights of each batch from the copy's
closed form, forward/backward, then the same update the shard would apply), and pushes what
the steps added to each coordinate's ``z`` and ``n`` (a ``delta``
:class:`~psfm.ps.messages.PushRequest`), which the shard adds.

With one worker this is the training of ``data.batch_size``-row steps, up to float rounding of
the deltas (the shard adds ``z_local - z_pulled`` to ``z_pulled``). With several, a worker
sees the others' updates once per message instead of once per batch; FTRL's ``z`` is a sum of
gradients, so the deltas of two workers add up as their gradients would (dual averaging), and
``n`` grows by both workers' squared gradients. What the shard decides stays on the shard and
is decided once per message: keys created, admission (a key the shard does not store is pulled
with level -1 and kept at weight 0), counts, online promotion, last-seen day.
"""

from __future__ import annotations

import numpy as np

from psfm.hashing import BIAS_KEY
from psfm.optim.ftrl import ftrl_step, ftrl_weight_sqrt
from psfm.ps.messages import PullResult, PushRequest, row_maps
from psfm.ps.store import set_rows
from psfm.ps.update import FtrlRule

__all__ = ["LocalSteps"]


class LocalSteps:
    """A worker's copy of the FTRL state of one message's ``keys`` (sorted, unique), taken
    from a state pull; :meth:`weights` and :meth:`update` per batch, :meth:`delta` at the
    end. The steps are the shard's (:func:`~psfm.optim.ftrl.ftrl_step` with the rule's
    parameters), run on the rows the batch's weights were computed from."""

    def __init__(self, keys: np.ndarray, pulled: PullResult, rule: FtrlRule) -> None:
        if not pulled.state:
            raise ValueError("LocalSteps needs a state pull (PullResult with (z, n))")
        self.keys, self.rule, self.layout = keys, rule, rule.layout
        self.level = pulled.level
        self._z0, self._n0 = pulled.w[:, 0], pulled.w[:, 1]
        self.z_w, self.n_w = self._z0.copy(), self._n0.copy()
        self.stored = pulled.level >= 0  # a key the shard does not store stays at 0
        d = [self.layout.width(p) for p in range(1, len(pulled.tables) + 1)]
        # a state table is (rows, 2 D_p): z then n; kept as separate contiguous copies, so
        # every step reads and writes whole rows
        self._zt0 = [t[:, :dp] for t, dp in zip(pulled.tables, d)]
        self._nt0 = [t[:, dp:] for t, dp in zip(pulled.tables, d)]
        self.zt = [np.ascontiguousarray(x) for x in self._zt0]
        self.nt = [np.ascontiguousarray(x) for x in self._nt0]
        self.rowmap = row_maps(pulled.level, self.layout)
        self._bias = keys == BIAS_KEY

    def weights(self, idx: np.ndarray) -> PullResult:
        """The weights of ``keys[idx]`` now (what a pull of a batch's keys would return;
        ``idx`` ascending). The state they come from is kept for :meth:`update`, which
        steps from the same weights, as the shard's update would."""
        lay, rule = self.layout, self.rule
        z, n = self.z_w[idx], self.n_w[idx]
        sqrt_n = np.sqrt(n)
        w = ftrl_weight_sqrt(z, sqrt_n, rule.linear)
        bias = self._bias[idx]
        if bias.any():  # the bias is not regularised (FtrlRule.bias)
            w[bias] = ftrl_weight_sqrt(z[bias], sqrt_n[bias], rule.bias)
        lev = np.maximum(self.level[idx], 0).astype(np.int8)
        rows = [rm[idx[lay.members(lev, p)]] for p, rm in enumerate(self.rowmap, start=1)]
        tables, held = [], []
        for zt, nt, r in zip(self.zt, self.nt, rows):
            zr, nr = np.take(zt, r, axis=0), np.take(nt, r, axis=0)
            sq = np.sqrt(nr)
            wt = ftrl_weight_sqrt(zr, sq, rule.factor)
            tables.append(wt)
            held.append((zr, nr, sq, wt))
        self._held = (idx, rows, z, n, sqrt_n, w, held)
        return PullResult(w, lev, tables)

    def update(self, req: PushRequest) -> None:
        """One FTRL step, on this copy, with the push of the batch whose :meth:`weights`
        came last (``req``: its keys, the levels it was given, its gradients)."""
        idx, rows, z, n, sqrt_n, w, held = self._held
        inc_w, inc_t = self.rule.increments(req, "local steps")
        g = req.grad_w
        keep = self.stored[idx]
        if not keep.all():  # keys the shard does not store stay at 0
            idx, z, n, sqrt_n, w, g = idx[keep], z[keep], n[keep], sqrt_n[keep], w[keep], g[keep]
            inc_w = None if inc_w is None else inc_w[keep]
        # the step's rate is alpha alone (l1/l2 are in the weight), so the bias's step is the
        # linear one given the bias's own weight; z, n are this step's own gathered copies
        ftrl_step(z, n, sqrt_n, w, g, self.rule.linear, inc_w, inplace=True)
        self.z_w[idx], self.n_w[idx] = z, n
        parts = zip(self.zt, self.nt, rows, held, req.grad_tables, inc_t)
        for zt, nt, r, (zr, nr, sq, wt), g_p, inc in parts:
            ftrl_step(zr, nr, sq, wt, g_p, self.rule.factor, inc, inplace=True)
            set_rows(zt, r, zr)
            set_rows(nt, r, nr)

    def delta(self, counts: np.ndarray) -> PushRequest:
        """What the steps added to every coordinate, as a delta push (``counts``: the keys'
        occurrences over the message's batches)."""
        return PushRequest(
            self.keys,
            counts,
            self.level,
            self.z_w - self._z0,
            [z - z0 for z, z0 in zip(self.zt, self._zt0)],
            self.n_w - self._n0,
            [n - n0 for n, n0 in zip(self.nt, self._nt0)],
            delta=True,
        )

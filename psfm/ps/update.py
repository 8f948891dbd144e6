"""The FTRL update on a shard's stored state (:class:`~psfm.ps.store.KeyStore`), built on
:mod:`psfm.optim.ftrl`: weights of stored keys, the per-coordinate ``n`` increments of the
accumulation rules, and the linear and factor updates of a push.

Weights are never stored: they are the FTRL closed form of ``(z, n)``. The bias is an ordinary
key with its own, unregularised, parameters.
"""

from __future__ import annotations

import numpy as np

from psfm.config import FtrlConfig
from psfm.errors import PsfmError
from psfm.hashing import BIAS_KEY
from psfm.models.layout import FactorLayout
from psfm.optim.ftrl import FtrlParams, ftrl_init_z, ftrl_update, ftrl_weight
from psfm.ps.messages import PushRequest
from psfm.ps.store import FactorRows, KeyStore, set_rows

__all__ = ["FtrlRule"]


class FtrlRule:
    """The FTRL parameters of a shard (linear, factor, bias) and its accumulation rule."""

    def __init__(self, ftrl: FtrlConfig, layout: FactorLayout) -> None:
        self.linear = ftrl.linear
        self.factor = ftrl.factor
        self.bias = FtrlParams(ftrl.linear.alpha, ftrl.linear.beta, 0.0, 0.0)
        self.accumulate = ftrl.accumulate
        self.layout = layout

    def init_z(self, v0: np.ndarray) -> np.ndarray:
        """The factor state ``z`` whose weights are the initial factors ``v0``."""
        return ftrl_init_z(v0, self.factor)

    # ------------------------------------------------------------------ weights
    def weights(self, store: KeyStore, slots: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Linear weights of ``keys`` at ``slots`` (0 where a slot is -1)."""
        present = slots >= 0
        w = np.zeros(slots.size, dtype=np.float32)
        s = slots[present]
        w[present] = ftrl_weight(store.z_w[s], store.n_w[s], self.linear)
        bias = present & (keys == BIAS_KEY)
        if bias.any():
            sb = slots[bias]
            w[bias] = ftrl_weight(store.z_w[sb], store.n_w[sb], self.bias)
        return w

    def row_weights(self, f: FactorRows, rows: np.ndarray) -> np.ndarray:
        """Factor weights of ``rows`` of one table (one gather of their (z, n))."""
        st = np.take(f.s, rows, axis=0)  # (rows, 2, D)
        return ftrl_weight(st[:, 0], st[:, 1], self.factor)

    # ------------------------------------------------------------------ push
    def increments(
        self, req: PushRequest, owner: str
    ) -> tuple[np.ndarray | None, list[np.ndarray | None]]:
        """What each coordinate's ``n`` grows by (:mod:`psfm.optim.ftrl`, ``accumulate``):
        None for the square of the summed gradient, the request's sums of squares, or the
        squared sum over the key's batch count. ``owner`` names the shard in errors."""
        rule = self.accumulate
        none: list[np.ndarray | None] = [None] * self.layout.levels
        if rule == "square_of_sum":
            return None, none
        if rule == "sum_of_squares":
            if not req.has_sq:
                raise PsfmError(
                    f"{owner}: ftrl.accumulate = 'sum_of_squares' "
                    "but the push carries no sums of squared gradients."
                )
            return req.sq_w, list(req.sq_tables or [])
        c = np.maximum(req.counts, np.float32(1))
        inc_w = req.grad_w * req.grad_w / c
        inc: list[np.ndarray | None] = []
        for p, g in enumerate(req.grad_tables, start=1):
            cp = c[self.layout.members(req.level, p)][:, None]
            inc.append(g * g / cp)
        return inc_w, inc

    def update_linear(
        self,
        store: KeyStore,
        s: np.ndarray,
        g: np.ndarray,
        keys: np.ndarray,
        inc: np.ndarray | None,
    ) -> None:
        bias = keys == BIAS_KEY
        if bias.any():  # the bias is an ordinary key, but not regularised
            sb = s[bias]
            store.z_w[sb], store.n_w[sb] = ftrl_update(
                store.z_w[sb],
                store.n_w[sb],
                g[bias],
                self.bias,
                None if inc is None else inc[bias],
            )
            s, g = s[~bias], g[~bias]
            inc = None if inc is None else inc[~bias]
        store.z_w[s], store.n_w[s] = ftrl_update(store.z_w[s], store.n_w[s], g, self.linear, inc)

    @staticmethod
    def add_linear(store: KeyStore, s: np.ndarray, dz: np.ndarray, dn: np.ndarray) -> None:
        """A delta push (worker-local steps): add what the steps added to ``(z, n)``."""
        store.z_w[s] += dz
        store.n_w[s] += dn

    def update_factors(
        self,
        store: KeyStore,
        slots: np.ndarray,
        level: np.ndarray,
        grad_tables: list[np.ndarray],
        inc_tables: list[np.ndarray | None],
        delta: bool = False,
    ) -> None:
        """Apply table p's gradients to the rows of the keys of ``level`` (what their pull
        returned). Keys evicted since (slot -1) are skipped; a tied key promoted since the pull
        updates the prefix of its new vector. ``delta``: the tables are what worker-local
        steps added to ``z`` (``grad_tables``) and ``n`` (``inc_tables``); they are added."""
        m, lay = self.layout.levels, self.layout
        factor = self.factor

        def step(z, n, g, inc):
            if delta:
                return z + g, n + inc
            return ftrl_update(z, n, g, factor, inc)

        if m == 0:
            return
        gone = slots < 0  # keys evicted between pull and push
        if gone.any():
            keep = [slots[lay.members(level, p)] >= 0 for p in range(1, m + 1)]
            grad_tables = [g[k] for g, k in zip(grad_tables, keep)]
            inc_tables = [None if i is None else i[k] for i, k in zip(inc_tables, keep)]
            level = np.where(gone, 0, level).astype(np.int8)
        for p, (f, r, g, inc) in enumerate(
            zip(store.fac, store.member_rows(slots, level), grad_tables, inc_tables), start=1
        ):
            if not lay.tied:
                st = np.take(f.s, r, axis=0)
                st[:, 0], st[:, 1] = step(st[:, 0], st[:, 1], g, inc)
                set_rows(f.s, r, st)
                continue
            d = lay.width(p)
            sl = slots[lay.members(level, p)]
            cur = store.level[sl].astype(np.int64)  # promoted since the pull: apply to prefix
            for k in np.unique(cur):
                at = cur == k
                fk = store.fac[k - 1]
                rk = store.row[sl[at]]
                fk.z[rk, :d], fk.nn[rk, :d] = step(
                    fk.z[rk, :d], fk.nn[rk, :d], g[at], None if inc is None else inc[at]
                )

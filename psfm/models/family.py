"""One forward/backward for LR, FM, DiFacto-style FM and Rank-Aware FM (DESIGN §2).

Ranks ``D_1 < ... < D_m``; feature i has a level ``k_i`` in ``0..m`` and factors
``v_i^(p) in R^{D_p}`` for ``p <= k_i``. A pair interacts at ``k_ij = min(k_i, k_j)``::

    y = sum_i w_i x_i + sum_{i<j, k_ij > 0} <v_i^(k_ij), v_j^(k_ij)> x_i x_j

(the bias is an ordinary key with level 0 that every sample contains). With
``S_p^(l) = sum_{i in F_l} v_i^(p) x_i`` and ``Q_p^(l) = sum_{i in F_l} |v_i^(p) x_i|^2``,
``A_{p,l} = (|S_p^(l)|^2 - Q_p^(l)) / 2`` and the RaFM recursion (Chen et al. 2019, Thm. 3)
``B_{1,p} = B_{1,p-1} - A_{p-1,p} + A_{p,p}`` gives ``y = sum w x + B_{1,m}``. Only
``A_{p,p}`` and ``A_{p,p+1}`` are needed, so per level p the occurrences of features with
``k_i >= p`` are split into *free* (``k_i = p``) and *dependent* (``k_i > p``) and summed per
sample into two rows: ``S_p^(p+1)`` = dependent sum, ``S_p^(p)`` = both. The cost is
``O(sum_p D_p |F_p ∩ batch|)``; a RaFM whose rare features sit at low levels costs less than
one FM at the top rank.

Gradients (``g = dloss/dy`` per sample):

- free at level p: ``g x_i (S_p^(p) - v_i^(p) x_i)``;
- dependent at level p: ``g x_i (S_p^(p) - S_p^(p+1))`` plus the distillation term of RaFM
  Algorithm 1, ``c_p g_p x_i (S_p^(p) - v_i^(p) x_i)``, ``g_p = s(y_p) - s(y_{p+1})`` (logistic;
  ``y_p - y_{p+1}`` for squared loss), ``y_p = sum w x + B_{1,p}``, ``y_{p+1}`` a constant;
- DiFacto (``tied``): one stored vector per feature of size ``D_{k_i}`` whose prefixes are the
  ``v_i^(p)``; the gradients of all prefixes add into it; no distillation.

Stored tables (what the parameter servers hold, pull and push): table p has one row per key
with ``k_i >= p`` (untied) or ``k_i == p`` (tied), in the batch's unique-key order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["FamilySpec", "FamilyInputs", "FamilyOutput", "forward_backward", "level_views"]


@dataclass(frozen=True)
class FamilySpec:
    """Static description of a model of the family."""

    ranks: tuple[int, ...]  # D_1 < ... < D_m; () for LR
    tied: bool = False  # DiFacto-style prefixes of one vector
    dependent_lr_coef: tuple[float, ...] = ()  # c_1..c_{m-1}
    loss: str = "logistic"  # or "squared"
    exact_sums: bool = False  # per-key gradient sums in float64, rounded once (sync mode)
    grad_float64: bool = False  # return those sums unrounded (sync steps of several workers)

    @property
    def levels(self) -> int:
        return len(self.ranks)


@dataclass
class FamilyInputs:
    """One batch as tensors (all on one device).

    occ_sample, occ_uniq: (N,) int64; occ_value: (N,) float32; labels: (B,) float32;
    weights: (B,) float32 or None; w: (U,) float32; level: (U,) int64;
    tables[p-1]: (n_p, D_p) float32, the stored rows of level p (see module docstring).
    """

    occ_sample: torch.Tensor
    occ_uniq: torch.Tensor
    occ_value: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None
    w: torch.Tensor
    level: torch.Tensor
    tables: Sequence[torch.Tensor]


@dataclass
class FamilyOutput:
    """logits: (B,) y; logits_low: (B,) sum w x + B_{1,1} (the RaFM-low diagnostic);
    grad_w: (U,); grad_tables[p-1]: like tables[p-1]; loss: summed main loss (weighted)."""

    logits: torch.Tensor
    logits_low: torch.Tensor
    grad_w: torch.Tensor | None
    grad_tables: list[torch.Tensor] | None
    loss: float


def _rows(member: torch.Tensor) -> torch.Tensor:
    """Row index of each unique key inside the rows of its members (order kept)."""
    return torch.cumsum(member.to(torch.int64), 0) - 1


def level_views(
    spec: FamilySpec, level: torch.Tensor, tables: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``V_p``: (|{u: k_u >= p}|, D_p), the level-p factors of the keys with level >= p.

    Untied, these are the stored tables themselves. Tied, ``V_p`` gathers the ``D_p`` prefixes of
    every stored vector of level >= p.
    """
    if not spec.tied:
        return list(tables)
    views = []
    for p, d in enumerate(spec.ranks, start=1):
        member = level >= p
        rows = _rows(member)
        view = tables[0].new_empty((int(member.sum()), d))
        for k in range(p, spec.levels + 1):
            at_k = level == k
            view[rows[at_k]] = tables[k - 1][:, :d]
        views.append(view)
    return views


def _fold_tied_grads(
    spec: FamilySpec, level: torch.Tensor, grad_views: list[torch.Tensor],
    tables: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Add the gradient of every prefix view into the stored vector it came from."""
    out = [torch.zeros(t.shape, dtype=grad_views[0].dtype, device=t.device) for t in tables]
    for p, d in enumerate(spec.ranks, start=1):
        rows = _rows(level >= p)
        for k in range(p, spec.levels + 1):
            out[k - 1][:, :d] += grad_views[p - 1][rows[level == k]]
    return out


def forward_backward(
    spec: FamilySpec, x: FamilyInputs, compute_grad: bool = True
) -> FamilyOutput:
    """Predict a batch and, if asked, the summed gradients of every pulled parameter."""
    n_rows = x.labels.shape[0]
    dev, dt = x.labels.device, x.labels.dtype
    lin = torch.zeros(n_rows, device=dev, dtype=dt)
    lin.index_add_(0, x.occ_sample, x.w[x.occ_uniq] * x.occ_value)  # (B,)
    occ_level = x.level[x.occ_uniq]  # (N,)
    views = level_views(spec, x.level, x.tables)
    cache = []
    a_diag, a_next = [], []  # A_{p,p}, A_{p,p+1}: each (B,)
    for p in range(1, spec.levels + 1):
        sel = torch.nonzero(occ_level >= p).squeeze(1)  # occurrences in F_p
        rows = _rows(x.level >= p)[x.occ_uniq[sel]]  # (N_p,) rows of V_p
        xv = x.occ_value[sel]
        vx = views[p - 1][rows] * xv[:, None]  # (N_p, D_p)
        s_occ = x.occ_sample[sel]
        if p == spec.levels:  # the top level has no dependent features: one sum per row
            dep = None
            s_all = torch.zeros(n_rows, vx.shape[1], device=dev, dtype=dt)
            s_all.index_add_(0, s_occ, vx)
            q_all = torch.zeros(n_rows, device=dev, dtype=dt)
            q_all.index_add_(0, s_occ, (vx * vx).sum(1))
            s_dep = None
            a_diag.append(0.5 * ((s_all * s_all).sum(1) - q_all))
            a_next.append(torch.zeros_like(q_all))
        else:
            dep = occ_level[sel] > p  # (N_p,) dependent at level p
            seg = s_occ * 2 + dep.to(torch.int64)
            t = torch.zeros(n_rows * 2, vx.shape[1], device=dev, dtype=dt)
            t.index_add_(0, seg, vx)
            t = t.view(n_rows, 2, -1)  # [:, 0] free sum, [:, 1] dependent sum
            q = torch.zeros(n_rows * 2, device=dev, dtype=dt)
            q.index_add_(0, seg, (vx * vx).sum(1))
            q = q.view(n_rows, 2)
            s_dep = t[:, 1]  # S_p^(p+1)
            s_all = t[:, 0] + s_dep  # S_p^(p)
            a_diag.append(0.5 * ((s_all * s_all).sum(1) - q.sum(1)))
            a_next.append(0.5 * ((s_dep * s_dep).sum(1) - q[:, 1]))
        cache.append((sel, s_occ, rows, xv, vx, dep, s_all, s_dep))
    if spec.levels:
        c = torch.cumsum(torch.stack(a_diag) - torch.stack(a_next), 0)  # (m, B)
        b_1p = c + torch.stack(a_next)  # B_{1,p}, p = 1..m
        logits = lin + c[-1]
        logits_low = lin + b_1p[0]
    else:
        logits, logits_low = lin, lin
    if spec.loss == "logistic":
        prob = torch.sigmoid(logits)
        losses = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x.labels, reduction="none")
        g = prob - x.labels
    else:
        losses = 0.5 * (logits - x.labels) ** 2
        g = logits - x.labels
    if x.weights is not None:
        g = g * x.weights
        losses = losses * x.weights
    loss = float(losses.sum())
    if not compute_grad:
        return FamilyOutput(logits, logits_low, None, None, loss)

    # Per-key sums over the batch: in float64, rounded once, when exact sums are asked for
    # (sync mode: a key's gradient then hardly depends on how rows are split over workers).
    acc = torch.float64 if spec.exact_sums or spec.grad_float64 else dt
    grad_w = torch.zeros(x.w.shape, dtype=acc, device=dev)
    grad_w.index_add_(0, x.occ_uniq, (g[x.occ_sample] * x.occ_value).to(acc))
    out_dt = acc if spec.grad_float64 else x.w.dtype
    grad_w = grad_w.to(out_dt)
    link = torch.sigmoid if spec.loss == "logistic" else (lambda t: t)
    grad_views = []
    for p in range(1, spec.levels + 1):
        sel, s, rows, xv, vx, dep, s_all, s_dep = cache[p - 1]
        gx = g[s] * xv  # (N_p,)
        sa = s_all[s]  # (N_p, D_p)
        if dep is None:
            gocc = gx[:, None] * (sa - vx)
        else:
            gocc = gx[:, None] * (sa - torch.where(dep[:, None], s_dep[s], vx))
            if not spec.tied and spec.dependent_lr_coef[p - 1] != 0:
                # Distillation: y_p learns toward the constant y_{p+1} (RaFM Algorithm 1).
                g_p = link(lin + b_1p[p - 1]) - link(lin + b_1p[p]).detach()
                if x.weights is not None:
                    g_p = g_p * x.weights
                coef = spec.dependent_lr_coef[p - 1] * g_p[s] * xv * dep.to(dt)
                gocc = gocc + coef[:, None] * (sa - vx)
        gv = torch.zeros(views[p - 1].shape, dtype=acc, device=dev)
        gv.index_add_(0, rows, gocc.to(acc))
        grad_views.append(gv)
    if spec.tied:
        grad_views = _fold_tied_grads(spec, x.level, grad_views, x.tables)
    grad_tables = [gv.to(out_dt) for gv in grad_views]
    return FamilyOutput(logits, logits_low, grad_w, grad_tables, loss)

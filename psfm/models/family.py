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
sample: ``S_p^(p+1)`` = dependent sum, ``S_p^(p)`` = both. :func:`forward_backward` does every
level at once on one wide row per batch key (see there): a handful of ``embedding_bag`` passes
of width ``sum_p D_p + m`` over the batch's occurrences, whatever the number of levels.

Gradients (``g = dloss/dy`` per sample):

- free at level p: ``g x_i (S_p^(p) - v_i^(p) x_i)``;
- dependent at level p: ``g x_i (S_p^(p) - S_p^(p+1))`` plus the distillation term of RaFM
  Algorithm 1, ``c_p g_p x_i (S_p^(p) - v_i^(p) x_i)``, ``g_p = s(y_p) - s(y_{p+1})`` (logistic;
  ``y_p - y_{p+1}`` for squared loss), ``y_p = sum w x + B_{1,p}``, ``y_{p+1}`` a constant;
- DiFacto (``tied``): one stored vector per feature of size ``D_{k_i}`` whose prefixes are the
  ``v_i^(p)``; the gradients of all prefixes add into it; no distillation.

Stored tables (what the parameter servers hold, pull and push): table p has one row per key
with ``k_i >= p`` (untied) or ``k_i == p`` (tied), in the batch's unique-key order; the rule is
:class:`~psfm.models.layout.FactorLayout`'s. The loss (link, ``dloss/dy``) is a
:class:`~psfm.models.loss.Loss`; :mod:`psfm.models.serving` is the same forward in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from psfm.models.layout import FactorLayout
from psfm.models.loss import Loss, loss_by_name

__all__ = ["FamilySpec", "FamilyInputs", "FamilyOutput", "forward_backward", "level_views"]


@dataclass(frozen=True)
class FamilySpec:
    """Static description of a model of the family."""

    ranks: tuple[int, ...]  # D_1 < ... < D_m; () for LR
    tied: bool = False  # DiFacto-style prefixes of one vector
    dependent_lr_coef: tuple[float, ...] = ()  # c_1..c_{m-1}
    loss: str = "logistic"  # a name of psfm.models.loss.LOSSES
    exact_sums: bool = False  # per-key gradient sums in float64, rounded once (sync mode)
    grad_float64: bool = False  # return those sums unrounded (sync steps of several workers)
    sum_sq: bool = False  # also per-key sums of squared per-occurrence gradients (FTRL's n)

    def __post_init__(self) -> None:
        loss_by_name(self.loss)  # unknown names fail here

    @property
    def levels(self) -> int:
        return len(self.ranks)

    @property
    def layout(self) -> FactorLayout:
        return FactorLayout(self.ranks, self.tied)

    @property
    def loss_fn(self) -> Loss:
        return loss_by_name(self.loss)


@dataclass
class FamilyInputs:
    """One batch as tensors (all on one device).

    occ_sample, occ_uniq: (N,) int64, occurrences in sample order (occ_sample non-decreasing);
    occ_value: (N,) float32; labels: (B,) float32;
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
    sample_offsets: torch.Tensor | None = None  # (B,) first occurrence of every sample
    occ_order: torch.Tensor | None = None  # (N,) occurrences grouped by key (stable)
    uniq_offsets: torch.Tensor | None = None  # (U,) first position of every key in occ_order
    unit_values: bool = False  # every occ_value is 1 (skip the multiplications)


@dataclass
class FamilyOutput:
    """logits: (B,) y; logits_low: (B,) sum w x + B_{1,1} (the RaFM-low diagnostic);
    grad_w: (U,); grad_tables[p-1]: like tables[p-1]; loss: summed main loss (weighted);
    sq_w, sq_tables: like grad_w and grad_tables, the sums over each key's occurrences of the
    squared per-occurrence gradients (``spec.sum_sq``), else None."""

    logits: torch.Tensor
    logits_low: torch.Tensor
    grad_w: torch.Tensor | None
    grad_tables: list[torch.Tensor] | None
    loss: float
    sq_w: torch.Tensor | None = None
    sq_tables: list[torch.Tensor] | None = None


def _rows(member: torch.Tensor) -> torch.Tensor:
    """Row index of each unique key inside the rows of its members (order kept)."""
    # an int32 scan: torch's int64 cumsum on CPU is about 10x slower
    return torch.cumsum(member.to(torch.int32), 0, dtype=torch.int32).to(torch.int64) - 1


def level_views(
    spec: FamilySpec, level: torch.Tensor, tables: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``V_p``: (|{u: k_u >= p}|, D_p), the level-p factors of the keys with level >= p.

    Untied, these are the stored tables themselves. Tied, ``V_p`` gathers the ``D_p`` prefixes of
    every stored vector of level >= p.
    """
    lay = spec.layout
    views = []
    for p, d in enumerate(spec.ranks, start=1):
        if lay.view_is_table(p):
            views.append(tables[p - 1])
            continue
        member = lay.view_members(level, p)
        rows = _rows(member)
        view = tables[0].new_empty((int(member.sum()), d))
        for k in lay.tables_of_view(p):
            view[rows[lay.members(level, k)]] = tables[k - 1][:, :d]
        views.append(view)
    return views


def _bag(
    table: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """Per-bag sums ``out[b] = sum_{i in bag b} weights[i] * table[idx[i]]``: one fused gather
    and reduce (``embedding_bag``), several times faster on CPU than a gather followed by a
    scatter-add."""
    return F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=weights)


def _bag_powers(
    table: torch.Tensor,
    idx: torch.Tensor,
    offsets: torch.Tensor,
    x: torch.Tensor | None,
    groups: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """Bags of a table whose column groups ``(width, power)`` are weighted by ``x**power``:
    one bag when every x is 1, one per group otherwise."""
    if x is None:
        return _bag(table, idx, offsets, None)
    outs, lo = [], 0
    for width, power in groups:
        xp = x if power == 1 else x**power
        outs.append(_bag(table[:, lo : lo + width].contiguous(), idx, offsets, xp))
        lo += width
    return torch.cat(outs, 1)


def _sq_sums(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_i (x_i r_i - x_i^2 s_i v)^2`` per key from the bags ``a = sum x^2 r^2``,
    ``b = sum x^3 s r`` and ``c = sum x^4 s^2`` (s broadcast to v's columns), clamped at 0
    against rounding."""
    return torch.clamp(a - 2 * v * b + v * v * c, min=0)


def _groups(x: FamilyInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bag offsets of the samples, and the occurrences grouped by key with its offsets
    (taken from the inputs when the batch builder has them, computed otherwise)."""
    n_rows, n_keys = x.labels.shape[0], x.w.shape[0]
    so, order, uo = x.sample_offsets, x.occ_order, x.uniq_offsets
    if so is None:
        cnt = torch.bincount(x.occ_sample, minlength=n_rows)
        so = torch.cumsum(cnt, 0) - cnt
    if order is None:
        order = torch.argsort(x.occ_uniq, stable=True)
    if uo is None:
        cnt = torch.bincount(x.occ_uniq, minlength=n_keys)
        uo = torch.cumsum(cnt, 0) - cnt
    return so, order, uo


def _bag2(
    table: torch.Tensor,
    split: int,
    idx: torch.Tensor,
    offsets: torch.Tensor,
    xv: torch.Tensor | None,
    xsq: torch.Tensor | None,
) -> torch.Tensor:
    """Bags of a table whose first ``split`` columns are weighted by x and the rest by x^2:
    one bag when every x is 1, two otherwise."""
    if xv is None:
        return _bag(table, idx, offsets, None)
    return torch.cat(
        [
            _bag(table[:, :split].contiguous(), idx, offsets, xv),
            _bag(table[:, split:].contiguous(), idx, offsets, xsq),
        ],
        1,
    )


def forward_backward(spec: FamilySpec, x: FamilyInputs, compute_grad: bool = True) -> FamilyOutput:
    """Predict a batch and, if asked, the summed gradients of every pulled parameter.

    All levels are computed together on one *wide* row per key, ``[v^(1) | ... | v^(m) |
    |v^(1)|^2 ... |v^(m)|^2]`` (zeros above the key's level), so a RaFM costs a few bags of
    width ``sum_p D_p + m`` like one FM of that width:

    - forward: per-sample bags of the wide rows give every ``S_p^(p)`` and ``Q_p^(p)``, and bags
      of the rows masked to the dependent levels (``k_i > p``) every ``S_p^(p+1)``, ``Q_p^(p+1)``;
    - backward: a key at level k needs, per level p, the per-sample rows ``g S_p^(p)`` (p = k,
      free) or ``g (S_p^(p) - S_p^(p+1)) + c_p g_p S_p^(p)`` (p < k, dependent); these are laid
      out per k, and one bag over the key's occurrences (``occ_order`` groups them) sums them.
      The ``- v x`` parts are ``v`` times a bag of ``g x^2`` (free) or ``c_p g_p x^2``.
    """
    n_rows = x.labels.shape[0]
    dt = x.labels.dtype
    so, order, uo = _groups(x)
    xv = None if x.unit_values else x.occ_value
    xsq = None if xv is None else xv * xv
    lin = _bag(x.w[:, None], x.occ_uniq, so, xv)[:, 0]  # (B,)
    m, ranks, lay = spec.levels, spec.ranks, spec.layout
    if m:
        views = level_views(spec, x.level, x.tables)
        width = sum(ranks)
        offs = [sum(ranks[:p]) for p in range(m + 1)]
        n_keys = x.level.shape[0]
        members = [torch.nonzero(lay.view_members(x.level, p)).squeeze(1) for p in range(1, m + 1)]
        wide = views[0].new_zeros((n_keys, width + m))  # [v^(1..m) | |v^(p)|^2]
        for p in range(1, m + 1):
            wide[:, offs[p - 1] : offs[p]].index_copy_(0, members[p - 1], views[p - 1])
            v = wide[:, offs[p - 1] : offs[p]]
            wide[:, width + p - 1] = (v * v).sum(1)
        sums = _bag2(wide, width, x.occ_uniq, so, xv, xsq)  # (B, width + m)
        if m > 1:
            # Rows masked to the dependent levels of each key (p < k): one pattern per level k.
            pattern = torch.zeros((m + 1, width + m), dtype=wide.dtype, device=wide.device)
            for k in range(2, m + 1):
                pattern[k, : offs[k - 1]] = 1
                pattern[k, width : width + k - 1] = 1
            # The top level has no dependent part: bag only the columns below it.
            lo, cols = offs[m - 1], list(range(offs[m - 1])) + list(range(width, width + m - 1))
            cols_t = torch.tensor(cols, device=wide.device)
            dep = wide.index_select(1, cols_t) * pattern.index_select(1, cols_t).index_select(
                0, x.level
            )
            part = _bag2(dep, lo, x.occ_uniq, so, xv, xsq)  # (B, lo + m - 1)
            dsums = torch.zeros_like(sums)
            dsums[:, :lo] = part[:, :lo]
            dsums[:, width : width + m - 1] = part[:, lo:]
        else:  # FM: no dependent features
            dsums = torch.zeros_like(sums)
        s_all = [sums[:, offs[p] : offs[p + 1]] for p in range(m)]
        s_dep = [dsums[:, offs[p] : offs[p + 1]] for p in range(m)]
        a_diag = 0.5 * (torch.stack([(t * t).sum(1) for t in s_all]) - sums[:, width:].T)
        a_next = 0.5 * (torch.stack([(t * t).sum(1) for t in s_dep]) - dsums[:, width:].T)
        c = torch.cumsum(a_diag - a_next, 0)  # (m, B)
        b_1p = c + a_next  # B_{1,p}, p = 1..m
        logits = lin + c[-1]
        logits_low = lin + b_1p[0]
    else:
        logits, logits_low = lin, lin
    losses, g = spec.loss_fn.losses_and_grad_torch(logits, x.labels)
    if x.weights is not None:
        g = g * x.weights
        losses = losses * x.weights
    loss = float(losses.sum())
    if not compute_grad:
        return FamilyOutput(logits, logits_low, None, None, loss)

    # Per-key sums over the batch: in float64, rounded once, when exact sums are asked for
    # (sync mode: a key's gradient then hardly depends on how rows are split over workers).
    acc = torch.float64 if spec.exact_sums or spec.grad_float64 else dt
    out_dt = acc if spec.grad_float64 else x.w.dtype
    s_ord = x.occ_sample.index_select(0, order)  # each occurrence's sample, grouped by key
    x_ord = None if xv is None else xv.index_select(0, order).to(acc)
    xsq_ord = None if x_ord is None else x_ord * x_ord
    ga = g.to(acc)[:, None]  # (B, 1)
    grad_w = _bag(ga, s_ord, uo, x_ord)[:, 0].to(out_dt)
    sq_w = _bag(ga * ga, s_ord, uo, xsq_ord)[:, 0].to(out_dt) if spec.sum_sq else None
    if not m:
        return FamilyOutput(logits, logits_low, grad_w, [], loss, sq_w, [] if spec.sum_sq else None)
    link = spec.loss_fn.link_torch
    free_rows, dep_rows, dep_scal = [], [], []
    zero = torch.zeros_like(ga)
    for p in range(1, m + 1):
        sa = s_all[p - 1].to(acc)
        free_rows.append(ga * sa)
        if p == m:
            break
        rows, scal = ga * (sa - s_dep[p - 1].to(acc)), zero
        if not spec.tied and spec.dependent_lr_coef[p - 1] != 0:
            # Distillation: y_p learns toward the constant y_{p+1} (RaFM Algorithm 1).
            g_p = link(lin + b_1p[p - 1]) - link(lin + b_1p[p]).detach()
            if x.weights is not None:
                g_p = g_p * x.weights
            scal = (spec.dependent_lr_coef[p - 1] * g_p).to(acc)[:, None]
            rows = rows + scal * sa
        dep_rows.append(rows)
        dep_scal.append(scal)
    # A key of level k gets, per sample, the row r (dependent levels p < k, free level k,
    # nothing above) and the scalar s of each level; its per-occurrence gradient at level p is
    # x r_p - x^2 s_p v^(p). The variants for k = 1..m are stacked and one bag over each
    # key's occurrences (grouped by ``order``; idx picks the key's variant) sums them.
    idx = s_ord
    if m > 1:
        u_ord = x.occ_uniq.index_select(0, order)
        k_occ = torch.clamp(x.level, min=1).index_select(0, u_ord) - 1
        idx = s_ord + n_rows * k_occ
    if spec.tied:
        grad_tables, sq_tables = _tied_backward(
            spec, x, ga, dep_rows, free_rows, idx, uo, x_ord, acc, out_dt
        )
        return FamilyOutput(logits, logits_low, grad_w, grad_tables, loss, sq_w, sq_tables)
    rep = torch.tensor(ranks, device=ga.device)
    variants = []
    for k in range(1, m + 1):
        parts = dep_rows[: k - 1] + [free_rows[k - 1]]
        parts += [torch.zeros((n_rows, ranks[p]), dtype=acc, device=ga.device) for p in range(k, m)]
        row = torch.cat(parts + dep_scal[: k - 1] + [ga] + [zero] * (m - k), 1)  # (B, width + m)
        if spec.sum_sq:
            r, scal = row[:, :width], row[:, width:]
            row = torch.cat([row, r * r, torch.repeat_interleave(scal, rep, 1) * r, scal * scal], 1)
        variants.append(row)
    table = torch.cat(variants) if m > 1 else variants[0]  # (m B, cols)
    groups = [(width, 1), (m, 2)] + ([(width, 2), (width, 3), (m, 4)] if spec.sum_sq else [])
    out = _bag_powers(table, idx, uo, x_ord, groups)  # (U, cols)
    v = wide[:, :width].to(acc)
    scal = torch.repeat_interleave(out[:, width : width + m], rep, 1)
    grad_wide = out[:, :width] - v * scal

    def per_level(t: torch.Tensor) -> list[torch.Tensor]:  # untied: stored rows = view rows
        return [
            t[:, offs[p - 1] : offs[p]].index_select(0, members[p - 1]).to(out_dt)
            for p in range(1, m + 1)
        ]

    sq_tables = None
    if spec.sum_sq:
        lo = width + m
        sq = _sq_sums(
            out[:, lo : lo + width],
            out[:, lo + width : lo + 2 * width],
            torch.repeat_interleave(out[:, lo + 2 * width :], rep, 1),
            v,
        )
        sq_tables = per_level(sq)
    return FamilyOutput(logits, logits_low, grad_w, per_level(grad_wide), loss, sq_w, sq_tables)


def _tied_backward(
    spec: FamilySpec,
    x: FamilyInputs,
    ga: torch.Tensor,
    dep_rows: list[torch.Tensor],
    free_rows: list[torch.Tensor],
    idx: torch.Tensor,
    uo: torch.Tensor,
    x_ord: torch.Tensor | None,
    acc: torch.dtype,
    out_dt: torch.dtype,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """DiFacto: the gradient of a stored vector u (level k, size D_k) is the sum of its
    prefixes' gradients. Per sample the level rows are folded onto u's coordinates first,
    ``R_k[:, :D_p] += r_p`` for p <= k; only the free level has a scalar (g, no distillation),
    so an occurrence's gradient is ``x R_k - x^2 g u`` and one bag per key gives the sums (and
    the sums of squares, exactly: the fold happens before squaring)."""
    ranks, m, lay = spec.ranks, spec.levels, spec.layout
    top = ranks[-1]
    n_rows = ga.shape[0]
    variants = []
    for k in range(1, m + 1):
        r = torch.zeros((n_rows, top), dtype=acc, device=ga.device)
        for p, rows in enumerate(dep_rows[: k - 1] + [free_rows[k - 1]], start=1):
            r[:, : ranks[p - 1]] += rows
        cols = [r, ga]
        if spec.sum_sq:
            cols += [r * r, ga * r, ga * ga]
        variants.append(torch.cat(cols, 1))
    table = torch.cat(variants) if m > 1 else variants[0]
    groups = [(top, 1), (1, 2)] + ([(top, 2), (top, 3), (1, 4)] if spec.sum_sq else [])
    out = _bag_powers(table, idx, uo, x_ord, groups)  # (U, cols)
    u = x.tables[0].new_zeros((x.level.shape[0], top)).to(acc)  # stored vectors, padded
    at = [torch.nonzero(lay.members(x.level, k)).squeeze(1) for k in range(1, m + 1)]
    for k in range(1, m + 1):
        u[at[k - 1], : ranks[k - 1]] = x.tables[k - 1].to(acc)
    grad = out[:, :top] - u * out[:, top : top + 1]

    def per_level(t: torch.Tensor) -> list[torch.Tensor]:
        return [t.index_select(0, at[k - 1])[:, : ranks[k - 1]].to(out_dt) for k in range(1, m + 1)]

    sq = None
    if spec.sum_sq:
        lo = top + 1
        sq = per_level(
            _sq_sums(
                out[:, lo : lo + top], out[:, lo + top : lo + 2 * top], out[:, lo + 2 * top :], u
            )
        )
    return per_level(grad), sq

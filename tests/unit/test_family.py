"""The model family against an O(n^2) pairwise oracle and torch autograd of that oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psfm.models.family import FamilyInputs, FamilySpec, forward_backward

torch.set_default_dtype(torch.float64)


def _random_case(rng, ranks, tied, n_keys=40, n_rows=24, max_per_row=9, level_mix=None, twins=True):
    m = len(ranks)
    level = rng.integers(0, m + 1, n_keys) if level_mix is None else level_mix(n_keys)
    level[0] = 0  # key 0 plays the bias: level 0, in every row
    rows, uniq, vals = [], [], []
    for b in range(n_rows):
        k = rng.integers(0, max_per_row + 1)
        members = np.concatenate([[0], rng.choice(np.arange(1, n_keys), size=k, replace=False)])
        if twins and b % 5 == 0 and k:  # the same key twice in a row (hashed layouts allow it)
            members = np.concatenate([members, members[-1:]])
        rows.append(np.full(members.size, b))
        uniq.append(members)
        vals.append(np.where(rng.random(members.size) < 0.5, 1.0, rng.normal(size=members.size)))
    occ_sample = torch.tensor(np.concatenate(rows))
    occ_uniq = torch.tensor(np.concatenate(uniq))
    occ_value = torch.tensor(np.concatenate(vals))
    level_t = torch.tensor(level, dtype=torch.int64)
    if tied:
        tables = [
            torch.tensor(rng.normal(size=(int((level == p).sum()), d)))
            for p, d in enumerate(ranks, 1)
        ]
    else:
        tables = [
            torch.tensor(rng.normal(size=(int((level >= p).sum()), d)))
            for p, d in enumerate(ranks, 1)
        ]
    x = FamilyInputs(
        occ_sample=occ_sample,
        occ_uniq=occ_uniq,
        occ_value=occ_value,
        labels=torch.tensor(rng.integers(0, 2, n_rows).astype(float)),
        weights=torch.tensor(rng.uniform(0.5, 2.0, n_rows)),
        w=torch.tensor(rng.normal(size=n_keys)),
        level=level_t,
        tables=tables,
    )
    return x


def _vec(spec, x, tables, key, p):
    """v_key^(p) from the stored tables (a view that autograd follows)."""
    lev = x.level
    if spec.tied:
        k = int(lev[key])
        row = int(((lev == k)[:key]).sum())
        return tables[k - 1][row, : spec.ranks[p - 1]]
    row = int(((lev >= p)[:key]).sum())
    return tables[p - 1][row]


def _oracle(spec, x, w, tables, cap=None):
    """y (or y_cap: every pair truncated at level cap) by explicit pairs."""
    n_rows = x.labels.shape[0]
    out = []
    for b in range(n_rows):
        occ = torch.nonzero(x.occ_sample == b).squeeze(1).tolist()
        y = sum((w[x.occ_uniq[i]] * x.occ_value[i] for i in occ), torch.tensor(0.0))
        for a in range(len(occ)):
            for c in range(a + 1, len(occ)):
                i, j = int(x.occ_uniq[occ[a]]), int(x.occ_uniq[occ[c]])
                k = min(int(x.level[i]), int(x.level[j]))
                if cap is not None:
                    k = min(k, cap)
                if k == 0:
                    continue
                vi, vj = _vec(spec, x, tables, i, k), _vec(spec, x, tables, j, k)
                y = y + (vi * vj).sum() * x.occ_value[occ[a]] * x.occ_value[occ[c]]
        out.append(y)
    return torch.stack(out)


def _loss(spec, y, target, weights):
    if spec.loss == "logistic":
        ll = torch.nn.functional.binary_cross_entropy_with_logits(y, target, reduction="none")
    else:
        ll = 0.5 * (y - target) ** 2
    return (ll * weights).sum()


def _expected_grads(spec, x):
    w = x.w.clone().requires_grad_(True)
    tables = [t.clone().requires_grad_(True) for t in x.tables]
    y = _oracle(spec, x, w, tables)
    main = _loss(spec, y, x.labels, x.weights)
    gw, *gt = torch.autograd.grad(main, [w, *tables], allow_unused=True)
    gt = [torch.zeros_like(t) if g is None else g for t, g in zip(tables, gt)]
    if not spec.tied:
        link = torch.sigmoid if spec.loss == "logistic" else (lambda t: t)
        for p in range(1, spec.levels):
            yp = _oracle(spec, x, w, tables, cap=p)
            target = link(_oracle(spec, x, w, tables, cap=p + 1)).detach()
            lp = _loss(spec, yp, target, x.weights)
            (g,) = torch.autograd.grad(lp, [tables[p - 1]])
            dependent = (x.level[x.level >= p] > p).to(g.dtype)[:, None]
            gt[p - 1] = gt[p - 1] + spec.dependent_lr_coef[p - 1] * g * dependent
    return y.detach(), gw, gt


CASES = [
    FamilySpec(ranks=()),
    FamilySpec(ranks=(4,)),
    FamilySpec(ranks=(1, 2, 4, 8), dependent_lr_coef=(1.0, 0.5, 2.0)),
    FamilySpec(ranks=(2, 3), dependent_lr_coef=(1.0,), loss="squared"),
    FamilySpec(ranks=(1, 2, 4), tied=True, dependent_lr_coef=(1.0, 1.0)),
    FamilySpec(ranks=(3,), tied=True),
]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s.ranks}-tied{s.tied}-{s.loss}")
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_and_gradients_match_pairwise_oracle(spec, seed):
    x = _random_case(np.random.default_rng(seed), spec.ranks, spec.tied)
    out = forward_backward(spec, x)
    y, gw, gt = _expected_grads(spec, x)
    torch.testing.assert_close(out.logits, y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.grad_w, gw, rtol=1e-10, atol=1e-10)
    assert len(out.grad_tables) == len(gt)
    for got, want in zip(out.grad_tables, gt):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _one_sample(x, b):
    """Sample b of a batch as a batch of its own (same keys and tables)."""
    occ = x.occ_sample == b
    return FamilyInputs(
        occ_sample=torch.zeros(int(occ.sum()), dtype=torch.int64),
        occ_uniq=x.occ_uniq[occ],
        occ_value=x.occ_value[occ],
        labels=x.labels[b : b + 1],
        weights=x.weights[b : b + 1],
        w=x.w,
        level=x.level,
        tables=x.tables,
    )


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s.ranks}-tied{s.tied}-{s.loss}")
@pytest.mark.parametrize("unit", [False, True])
def test_sums_of_squares_are_the_per_sample_gradients_squared(spec, unit):
    """The FTRL ``sum_of_squares`` rule: a batch's sq sums equal the sum over its samples of
    each sample's gradient (the batch code on that sample alone) squared, for every model kind,
    distillation included (no key twice in a row: then a sample has one occurrence per key)."""
    import dataclasses

    spec = dataclasses.replace(spec, sum_sq=True)
    x = _random_case(np.random.default_rng(5), spec.ranks, spec.tied, twins=False)
    if unit:
        x.occ_value = torch.ones_like(x.occ_value)
        x.unit_values = True
    out = forward_backward(spec, x)
    want_w = torch.zeros_like(out.grad_w)
    want_t = [torch.zeros_like(t) for t in out.grad_tables]
    for b in range(x.labels.shape[0]):
        one = forward_backward(spec, _one_sample(x, b))
        want_w += one.grad_w**2
        for acc, g in zip(want_t, one.grad_tables):
            acc += g**2
    torch.testing.assert_close(out.sq_w, want_w, rtol=1e-9, atol=1e-10)
    assert len(out.sq_tables) == len(want_t)
    for got, want in zip(out.sq_tables, want_t):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    # and the sums of squares change nothing else
    plain = forward_backward(dataclasses.replace(spec, sum_sq=False), x)
    assert plain.sq_w is None and plain.sq_tables is None
    torch.testing.assert_close(plain.grad_w, out.grad_w, rtol=0, atol=0)
    for a, b in zip(plain.grad_tables, out.grad_tables):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_low_output_is_the_model_truncated_at_level_one():
    spec = FamilySpec(ranks=(1, 2, 4), dependent_lr_coef=(1.0, 1.0))
    x = _random_case(np.random.default_rng(3), spec.ranks, False)
    out = forward_backward(spec, x, compute_grad=False)
    torch.testing.assert_close(out.logits_low, _oracle(spec, x, x.w, x.tables, cap=1))


def test_every_level_mix_of_pairs_is_covered():
    # All (k_i, k_j) combinations appear: make each row hold one key of each level.
    spec = FamilySpec(ranks=(1, 2, 4), dependent_lr_coef=(1.0, 1.0))
    rng = np.random.default_rng(5)
    x = _random_case(
        rng, spec.ranks, False, n_keys=60, max_per_row=20, level_mix=lambda n: np.arange(n) % 4
    )
    out = forward_backward(spec, x)
    y, gw, gt = _expected_grads(spec, x)
    torch.testing.assert_close(out.logits, y)
    for got, want in zip(out.grad_tables, gt):
        torch.testing.assert_close(got, want)


def test_rafm_with_every_feature_at_the_top_equals_fm_of_the_top_rank():
    rng = np.random.default_rng(7)
    rafm = FamilySpec(ranks=(2, 8), dependent_lr_coef=(1.0,))
    x = _random_case(rng, rafm.ranks, False, level_mix=lambda n: np.full(n, 2))
    fm = FamilySpec(ranks=(8,))
    x_fm = FamilyInputs(
        **{**x.__dict__, "level": torch.clamp(x.level, max=1), "tables": [x.tables[1]]}
    )
    a, b = forward_backward(rafm, x), forward_backward(fm, x_fm)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.grad_tables[1], b.grad_tables[0])


def test_fm_with_no_factors_equals_lr():
    rng = np.random.default_rng(8)
    x = _random_case(rng, (4,), False, level_mix=lambda n: np.zeros(n, dtype=np.int64))
    fm = forward_backward(FamilySpec(ranks=(4,)), x)
    lr = forward_backward(FamilySpec(ranks=()), FamilyInputs(**{**x.__dict__, "tables": []}))
    torch.testing.assert_close(fm.logits, lr.logits)
    torch.testing.assert_close(fm.grad_w, lr.grad_w)


def test_difacto_with_one_level_equals_fm():
    rng = np.random.default_rng(9)
    x = _random_case(rng, (5,), False)
    a = forward_backward(FamilySpec(ranks=(5,), tied=True), x)
    b = forward_backward(FamilySpec(ranks=(5,)), x)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.grad_tables[0], b.grad_tables[0])


def test_cost_scales_with_active_factors_not_top_rank():
    # A RaFM whose features all sit at level 1 touches only D_1 columns: the top table is empty.
    rng = np.random.default_rng(10)
    spec = FamilySpec(ranks=(1, 64), dependent_lr_coef=(1.0,))
    x = _random_case(rng, spec.ranks, False, level_mix=lambda n: np.ones(n, dtype=np.int64))
    out = forward_backward(spec, x)
    assert x.tables[1].shape == (0, 64)
    assert out.grad_tables[1].shape == (0, 64)

"""The numpy serving forward (:mod:`psfm.models.serving`, what ``psfm predict`` scores with)
equals the torch forward of :mod:`psfm.models.family` (what training scores with, held to the
pairwise oracle by ``test_family.py``) for every model kind, on the same keys, levels, factors
and occurrences (numeric values included); and the comparison sees a wrong level rule."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from psfm.models.family import FamilyInputs, FamilySpec, forward_backward
from psfm.models.layout import FactorLayout
from psfm.models.loss import LOGISTIC, SQUARED, loss_by_name
from psfm.models.serving import ServingModel
from tests.unit.test_family import _random_case

KINDS = {
    "lr": FamilySpec(ranks=()),
    "fm8": FamilySpec(ranks=(8,)),
    "difacto1248": FamilySpec(ranks=(1, 2, 4, 8), tied=True, dependent_lr_coef=(1.0, 1.0, 1.0)),
    "rafm1248": FamilySpec(ranks=(1, 2, 4, 8), dependent_lr_coef=(1.0, 0.5, 2.0)),
}
TOL = {"rtol": 1e-5, "atol": 1e-5}  # torch float32 against numpy float64


def _stored(spec: FamilySpec, level: np.ndarray, p: int) -> np.ndarray:
    """The keys with a row in stored table p, written out here (not asked of the layout)."""
    return level == p if spec.tied else level >= p


@dataclass
class Case:
    """One batch as the *model* sees it: per batch key u its weight, level and a dense row of
    every table (the stored row where ``_stored``, noise elsewhere: no forward may read it)."""

    spec: FamilySpec
    x: FamilyInputs  # occurrences and labels (float64; w, level, tables replaced below)
    w: np.ndarray
    level: np.ndarray
    dense: list[np.ndarray]
    unknown: np.ndarray  # batch keys the model does not have (level 0, weight 0)


def _case(spec: FamilySpec, seed: int) -> Case:
    rng = np.random.default_rng(seed)
    x = _random_case(rng, spec.ranks, spec.tied, n_keys=60, n_rows=40)
    level = x.level.numpy().copy()
    dense = []
    for p, t in enumerate(x.tables, start=1):
        d = rng.normal(size=(level.size, spec.ranks[p - 1])) * 7.0  # noise where no row
        d[_stored(spec, level, p)] = t.numpy()
        dense.append(d)
    w = x.w.numpy().copy()
    zero = np.flatnonzero(level == 0)[1:]  # key 0 (the bias) stays known
    unknown = rng.choice(zero, size=zero.size // 2, replace=False)
    w[unknown] = 0.0
    return Case(spec, x, w, level, dense, unknown)


def _torch_out(c: Case) -> tuple[np.ndarray, np.ndarray]:
    """Logits and RaFM-low logits of the training forward, in float32 as training runs it."""
    tables = [
        torch.tensor(d[_stored(c.spec, c.level, p)], dtype=torch.float32)
        for p, d in enumerate(c.dense, start=1)
    ]
    x = replace(
        c.x,
        occ_value=c.x.occ_value.float(),
        labels=c.x.labels.float(),
        weights=c.x.weights.float(),
        w=torch.tensor(c.w, dtype=torch.float32),
        level=torch.tensor(c.level),
        tables=tables,
    )
    out = forward_backward(c.spec, x, compute_grad=False)
    return out.logits.numpy(), out.logits_low.numpy()


def _serving(
    c: Case, seed: int, layout: FactorLayout | None = None
) -> tuple[ServingModel, np.ndarray]:
    """The model as exported — sorted uint64 keys: the batch's known keys among others, so
    the model's rows are not the batch's order — and the batch's keys (``Batch.uniq``)."""
    rng = np.random.default_rng(seed + 100)
    n_extra = 25
    n = c.level.size
    keys = np.unique(rng.integers(1, 2**63, size=n + n_extra, dtype=np.uint64))
    assert keys.size == n + n_extra
    batch = np.sort(rng.choice(keys, size=n, replace=False))  # Batch.uniq is sorted
    known = np.setdiff1d(np.arange(n), c.unknown)
    model_keys = np.union1d(batch[known], np.setdiff1d(keys, batch))
    rows = np.searchsorted(model_keys, batch[known])
    m = model_keys.size
    w, level = rng.normal(size=m), rng.integers(0, len(c.spec.ranks) + 1, m)
    w[rows], level[rows] = c.w[known], c.level[known]
    tables = []
    for d in c.dense:
        t = rng.normal(size=(m, d.shape[1]))
        t[rows] = d[known]
        tables.append(t)
    lay = layout or FactorLayout(c.spec.ranks, c.spec.tied)
    return ServingModel(lay, LOGISTIC, model_keys, w, level, tables), batch


def _occurrences(c: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The batch's occurrences as a Batch holds them (values in float32)."""
    x = c.x
    return x.occ_sample.numpy(), x.occ_uniq.numpy(), x.occ_value.float().numpy(), len(x.labels)


def _serving_out(c: Case, served: tuple[ServingModel, np.ndarray]) -> tuple[np.ndarray, ...]:
    model, uniq = served
    return model.logits(uniq, *_occurrences(c))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_serving_forward_equals_the_training_forward(kind, seed):
    c = _case(KINDS[kind], seed)
    model, uniq = _serving(c, seed)
    logits, low = _serving_out(c, (model, uniq))
    want, want_low = _torch_out(c)
    assert logits.dtype == np.float64
    np.testing.assert_allclose(logits, want, **TOL)
    np.testing.assert_allclose(low, want_low, **TOL)
    assert c.unknown.size and np.abs(logits).max() > 1  # keys missing, factors at work
    probs, probs_low = model.predict(uniq, *_occurrences(c))
    link = c.spec.loss_fn.link_torch  # the worker's predictions
    np.testing.assert_allclose(probs, link(torch.tensor(want)).numpy(), **TOL)
    np.testing.assert_allclose(probs_low, link(torch.tensor(want_low)).numpy(), **TOL)


def _demote(c: Case, u: int) -> Case:
    """Key u one level lower: untied it keeps its rows below (the old top row becomes noise
    no forward may read); tied its one vector moves to the table below, cut to D_{k-1}."""
    k = int(c.level[u])
    level, dense = c.level.copy(), [d.copy() for d in c.dense]
    level[u] = k - 1
    if c.spec.tied and k > 1:
        dense[k - 2][u] = dense[k - 1][u, : c.spec.ranks[k - 2]]
    return replace(c, level=level, dense=dense)


@pytest.mark.parametrize("kind", [k for k in KINDS if KINDS[k].ranks])
def test_a_key_level_changes_both_forwards_alike(kind):
    """Demoting a key changes the answer (pairs interact at min(k_i, k_j)), and both forwards
    still agree: a serving rule off by one level (``>`` for ``>=``, a table of the wrong
    level) would not."""
    c = _case(KINDS[kind], 3)
    before, before_low = _serving_out(c, _serving(c, 3))
    occ_level = c.level[c.x.occ_uniq.numpy()]
    m = len(c.spec.ranks)
    checked = 0
    for k in range(1, m + 1):
        # a key of level k sharing a sample with another key of level >= k
        samples = c.x.occ_sample.numpy()
        at_k = np.flatnonzero(occ_level == k)
        u = next(
            int(c.x.occ_uniq[i])
            for i in at_k
            if ((samples == samples[i]) & (occ_level >= k)).sum() >= 2
        )
        d = _demote(c, u)
        logits, low = _serving_out(d, _serving(d, 3))
        want, want_low = _torch_out(d)
        np.testing.assert_allclose(logits, want, **TOL)
        np.testing.assert_allclose(low, want_low, **TOL)
        assert np.abs(logits - before).max() > 1e-3, k
        if k == 1:  # a level-1 factor is part of the RaFM-low model too
            assert np.abs(low - before_low).max() > 1e-3
        checked += 1
    assert checked == m


@pytest.mark.parametrize("kind", ["difacto1248", "rafm1248"])
def test_the_comparison_sees_the_wrong_table_layout(kind):
    """Serving a tied model as untied (or the reverse) reads rows the model does not have: the
    logits no longer agree with training's, so a wrong layout rule cannot pass unseen."""
    spec = KINDS[kind]
    c = _case(spec, 4)
    wrong = FactorLayout(spec.ranks, not spec.tied)
    logits, _ = _serving_out(c, _serving(c, 4, wrong))
    want, _ = _torch_out(c)
    assert not np.allclose(logits, want, **TOL)


@pytest.mark.parametrize("loss", [LOGISTIC, SQUARED], ids=lambda f: f.name)
def test_the_numpy_loss_equals_the_torch_loss_and_its_gradient(loss):
    """A loss's numpy side (serving, tools) against its torch side (training): link, per-sample
    and summed loss, and ``dloss/dy`` against autograd."""
    rng = np.random.default_rng(6)
    y = np.concatenate([rng.normal(scale=5, size=64), [-800.0, 800.0]])
    t = rng.integers(0, 2, y.size).astype(float) if loss.classification else rng.normal(size=y.size)
    wt = rng.uniform(0.5, 2, y.size)
    assert not loss.bad_labels(t).any() and loss.bad_labels(np.array([np.nan])).all()
    yt = torch.tensor(y, requires_grad=True)
    losses, g = loss.losses_and_grad_torch(yt, torch.tensor(t))
    (auto,) = torch.autograd.grad(losses.sum(), [yt])
    np.testing.assert_allclose(loss.losses(y, t), losses.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = g.detach().numpy()
    np.testing.assert_allclose(loss.dloss(y, t), g, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, auto.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loss.link(y), loss.link_torch(yt).detach().numpy(), rtol=1e-12)
    total = loss.total(y, t, wt)
    assert total == pytest.approx(float((losses.detach().numpy() * wt).sum()), rel=1e-12)
    assert loss.metrics == (("auc", "logloss") if loss.classification else ("rmse", "mae"))
    assert loss_by_name(loss.name) is loss

"""The per-sample FTRL FM reference (tests/reference/ftrl_fm.py) against independent oracles.

The reference is what psfm's minibatch FTRL is measured against (DESIGN §3), so it is checked on
its own: one step by hand from psfm's coordinate-wise ``ftrl_update``/``ftrl_weight``; several
steps against an O(k^2) pairwise FM with scalar FTRL per coordinate; ``dim = 0`` against
per-sample FTRL logistic regression; on a generated log, that it learns; and that psfm with
one-row batches (where every minibatch rule is per-sample FTRL) scores like it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.reference

from psfm.config import load_config  # noqa: E402
from psfm.datasets.gen import GenSpec, generate  # noqa: E402
from psfm.errors import ConfigError  # noqa: E402
from psfm.optim.ftrl import FtrlParams, ftrl_init_z, ftrl_update, ftrl_weight  # noqa: E402
from psfm.ps.levels import init_factors  # noqa: E402
from psfm.trainer import train_local  # noqa: E402
from tests.reference.ftrl_fm import PerSampleFtrlFM, Rows, run_reference  # noqa: E402

LIN = FtrlParams(alpha=0.1, beta=1.0, l1=0.2, l2=0.5)
FAC = FtrlParams(alpha=0.05, beta=1.0, l1=0.01, l2=0.3)
BIAS = FtrlParams(alpha=LIN.alpha, beta=LIN.beta, l1=0.0, l2=0.0)


def _sig(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def _step(z: float, n: float, g: float, p: FtrlParams) -> tuple[float, float]:
    """psfm's FTRL step on one coordinate (1-element float64 arrays)."""
    zz, nn = ftrl_update(np.array([z]), np.array([n]), np.array([g]), p)
    return float(zz[0]), float(nn[0])


def _weight(z: float, n: float, p: FtrlParams) -> float:
    return float(ftrl_weight(np.array([z]), np.array([n]), p)[0])


def _v0(keys: list[int], dim: int, std: float, seed: int) -> np.ndarray:
    return init_factors(np.array(keys, np.uint64), dim, dim, std, seed).astype(np.float64)


def test_one_step_equals_hand_computation():
    dim, std, seed = 2, 0.3, 5
    keys, x, y = [11, 12], [1.0, 0.5], 1.0
    v0 = _v0(keys, dim, std, seed)  # (2, D)
    zf0 = ftrl_init_z(v0, FAC)
    v = ftrl_weight(zf0, np.zeros_like(zf0), FAC)  # the factors the model starts from
    assert np.allclose(v, v0)
    # b = w_1 = w_2 = 0 before the first step: y^ = <v_1, v_2> x_1 x_2
    p = _sig(float(v[0] @ v[1]) * x[0] * x[1])
    g = p - y
    want_bias = _step(0.0, 0.0, g, BIAS)
    want_lin = [_step(0.0, 0.0, g * x[i], LIN) for i in range(2)]
    other = [1, 0]
    want_fac = [
        [_step(zf0[i, f], 0.0, g * x[i] * v[other[i], f] * x[other[i]], FAC) for f in range(dim)]
        for i in range(2)
    ]

    m = PerSampleFtrlFM(LIN, FAC, dim=dim, init_std=std, seed=seed)
    got_p = m.fit([keys], [x], [y])
    assert got_p[0] == pytest.approx(p, rel=1e-12)
    assert m.bias_state() == pytest.approx(want_bias, rel=1e-12)
    for i, k in enumerate(keys):
        z, n = m.state_of(k)
        assert (z[0], n[0]) == pytest.approx(want_lin[i], rel=1e-12)
        for f in range(dim):
            assert (z[1 + f], n[1 + f]) == pytest.approx(want_fac[i][f], rel=1e-12, abs=1e-15)


class _PairwiseOracle:
    """FM by its definition: explicit sums over occurrence pairs, scalar FTRL per coordinate."""

    def __init__(self, dim: int, std: float, seed: int) -> None:
        self.dim, self.std, self.seed = dim, std, seed
        self.bias = (0.0, 0.0)
        self.lin: dict[int, tuple[float, float]] = {}
        self.fac: dict[int, list[tuple[float, float]]] = {}

    def _ensure(self, k: int) -> None:
        if k not in self.lin:
            self.lin[k] = (0.0, 0.0)
            z0 = ftrl_init_z(_v0([k], self.dim, self.std, self.seed)[0], FAC)
            self.fac[k] = [(float(z), 0.0) for z in z0]

    def fit_row(self, keys: list[int], x: list[float], y: float) -> float:
        for k in keys:
            self._ensure(k)
        b = _weight(*self.bias, BIAS)
        w = {k: _weight(*self.lin[k], LIN) for k in keys}
        v = {k: [_weight(z, n, FAC) for z, n in self.fac[k]] for k in keys}
        t = b + sum(w[k] * xi for k, xi in zip(keys, x))
        for a in range(len(keys)):
            for c in range(a + 1, len(keys)):
                t += sum(v[keys[a]][f] * v[keys[c]][f] for f in range(self.dim)) * x[a] * x[c]
        p = _sig(t)
        g = p - y
        gw = dict.fromkeys(keys, 0.0)
        gv = {k: [0.0] * self.dim for k in keys}
        for a, (k, xa) in enumerate(zip(keys, x)):
            gw[k] += g * xa
            for f in range(self.dim):
                gv[k][f] += g * xa * sum(v[keys[c]][f] * x[c] for c in range(len(keys)) if c != a)
        self.bias = _step(*self.bias, g, BIAS)
        for k in gw:
            self.lin[k] = _step(*self.lin[k], gw[k], LIN)
            self.fac[k] = [_step(z, n, gv[k][f], FAC) for f, (z, n) in enumerate(self.fac[k])]
        return p


def test_several_steps_equal_pairwise_oracle():
    rng = np.random.default_rng(0)
    dim, std, seed = 3, 0.2, 1
    rows = [list(rng.choice([101, 102, 103, 104, 105], size=3, replace=False)) for _ in range(8)]
    rows.append([101, 102, 101])  # a key twice in a row: one step with the summed gradient
    rows.append([])  # the bias alone
    xs = [list(rng.uniform(0.3, 2.0, size=len(r))) for r in rows]
    ys = [float(rng.integers(0, 2)) for _ in rows]
    oracle = _PairwiseOracle(dim, std, seed)
    want = [oracle.fit_row([int(k) for k in r], x, y) for r, x, y in zip(rows, xs, ys)]
    m = PerSampleFtrlFM(LIN, FAC, dim=dim, init_std=std, seed=seed)
    got = m.fit(rows, xs, ys)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert m.bias_state() == pytest.approx(oracle.bias, rel=1e-10)
    for k in oracle.lin:
        z, n = m.state_of(k)
        want_z = [oracle.lin[k][0]] + [zn[0] for zn in oracle.fac[k]]
        want_n = [oracle.lin[k][1]] + [zn[1] for zn in oracle.fac[k]]
        np.testing.assert_allclose(z, want_z, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(n, want_n, rtol=1e-9, atol=1e-12)
    assert np.count_nonzero(m.weights_of(list(oracle.lin))[:, 0]) > 0  # l1 did not zero all


def test_dim0_equals_per_sample_ftrl_lr():
    rng = np.random.default_rng(1)
    rows = [
        list(rng.choice(np.arange(1, 8), size=int(rng.integers(1, 5)), replace=False))
        for _ in range(12)
    ]
    ys = [float(rng.integers(0, 2)) for _ in rows]
    bias, lin, want = (0.0, 0.0), {}, []
    for r, y in zip(rows, ys):
        t = _weight(*bias, BIAS) + sum(_weight(*lin.get(k, (0.0, 0.0)), LIN) for k in r)
        g = _sig(t) - y
        want.append(_sig(t))
        bias = _step(*bias, g, BIAS)
        for k in r:
            lin[k] = _step(*lin.get(k, (0.0, 0.0)), g, LIN)
    m = PerSampleFtrlFM(LIN, FAC, dim=0, init_std=0.1, seed=0)
    np.testing.assert_allclose(m.fit(rows, None, ys), want, rtol=1e-12)
    for k, (z, n) in lin.items():
        assert tuple(a[0] for a in m.state_of(k)) == pytest.approx((z, n), rel=1e-12)


def test_predict_is_the_training_forward_and_creates_nothing():
    rng = np.random.default_rng(2)
    rows = [list(rng.choice(np.arange(1, 30), size=5, replace=False)) for _ in range(40)]
    xs = [list(rng.uniform(0.5, 1.5, size=5)) for _ in rows]
    ys = rng.integers(0, 2, size=len(rows)).astype(float)
    m = PerSampleFtrlFM(LIN, FAC, dim=4, init_std=0.1, seed=3)
    m.fit(rows[:30], xs[:30], ys[:30])
    keys_before = m.num_keys
    pred = m.predict(rows[30:], xs[30:])  # vectorized over rows, weights fixed
    assert m.num_keys == keys_before
    prog = [m.fit([r], [x], [y])[0] for r, x, y in zip(rows[30:], xs[30:], ys[30:])]
    assert pred[0] == pytest.approx(prog[0], rel=1e-12)  # same weights for the first row
    # unseen keys contribute 0: a row of unseen keys scores the bias alone
    assert m.predict([[10_000, 10_001]])[0] == pytest.approx(_sig(m.bias_weight()), rel=1e-12)
    empty = Rows(np.zeros(0, np.uint64), None, np.array([0, 0]), np.zeros(1))
    assert m.predict_rows(empty)[0] == pytest.approx(_sig(m.bias_weight()), rel=1e-12)


def test_rejects_bad_parameters():
    with pytest.raises(ConfigError, match="'dim' parameter"):
        PerSampleFtrlFM(LIN, FAC, dim=-1)
    with pytest.raises(ConfigError, match="'init_std' parameter"):
        PerSampleFtrlFM(LIN, FAC, init_std=float("nan"))


def test_learns_a_generated_log(tmp_path):
    generate(tmp_path, days=2, rows_per_day=5000, spec=GenSpec.small(), seed=3)
    res = run_reference(str(tmp_path), ["1"], ["2"])
    assert res["train_rows"] == 5000 and res["rows"] == 5000
    assert res["auc"] > 0.6
    assert res["logloss"] < 0.69


@pytest.mark.parametrize("model", [['model.kind="fm"', "model.ranks=[4]"], ['model.kind="lr"']])
def test_psfm_with_one_row_batches_equals_the_reference(tmp_path, model):
    # Same keys, order, hyperparameters and initial factors: only float32 vs float64 differs.
    # Large rates so that 600 rows move the model well away from its start (64-row batches
    # then differ from per-sample FTRL by ~0.02 in logloss).
    generate(tmp_path, days=2, rows_per_day=600, spec=GenSpec.small(), seed=4)
    rates = [
        "ftrl.linear.alpha=0.5",
        "ftrl.linear.l1=0.1",
        "ftrl.factor.alpha=0.2",
        "ftrl.factor.l1=0.01",
        "model.init_std=0.1",
    ]
    cfg = load_config(
        None, [f"data.root={json.dumps(str(tmp_path))}", *model, *rates, "data.batch_size=1"]
    )
    dim = cfg.model.ranks[0] if cfg.model.ranks else 0
    ref = run_reference(str(tmp_path), ["1"], ["2"], dim=dim, config=cfg)
    rep = train_local(cfg)
    assert rep["test"]["auc"] == pytest.approx(ref["auc"], abs=1e-5)
    assert rep["test"]["logloss"] == pytest.approx(ref["logloss"], abs=1e-5)

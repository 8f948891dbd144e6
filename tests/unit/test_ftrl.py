"""FTRL-Proximal against a per-coordinate reference written from McMahan et al. 2013, Alg. 1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from psfm.errors import ConfigError
from psfm.optim.ftrl import FtrlParams, ftrl_init_z, ftrl_update, ftrl_weight


def _reference(grads, p: FtrlParams, z=0.0, n=0.0):
    """The paper's pseudo-code for one coordinate, in plain Python floats."""
    ws = []
    for g in grads:
        if abs(z) <= p.l1:
            w = 0.0
        else:
            w = -(z - math.copysign(p.l1, z)) / ((p.beta + math.sqrt(n)) / p.alpha + p.l2)
        ws.append(w)
        sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / p.alpha
        z += g - sigma * w
        n += g * g
    return ws, z, n


@pytest.mark.parametrize("l1", [0.0, 0.3, 2.0])
def test_matches_reference_coordinate_by_coordinate(l1):
    rng = np.random.default_rng(0)
    p = FtrlParams(alpha=0.2, beta=1.0, l1=l1, l2=0.5)
    grads = rng.normal(scale=2.0, size=(50, 64))  # 50 steps of 64 independent coordinates
    z = np.zeros(64)
    n = np.zeros(64)
    got_w = []
    for g in grads:
        got_w.append(ftrl_weight(z, n, p))
        z, n = ftrl_update(z, n, g, p)
    for j in range(64):
        ws, zr, nr = _reference(grads[:, j], p)
        np.testing.assert_allclose([w[j] for w in got_w], ws, rtol=1e-12, atol=1e-15)
        assert z[j] == pytest.approx(zr, rel=1e-12, abs=1e-12)
        assert n[j] == pytest.approx(nr, rel=1e-12)


def test_weight_is_exactly_zero_inside_l1_for_negative_and_positive_z():
    p = FtrlParams(alpha=0.1, beta=1.0, l1=1.0, l2=0.0)
    z = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, -1.5, 1.5])
    n = np.ones_like(z)
    w = ftrl_weight(z, n, p)
    assert np.all(w[:5] == 0.0)
    # Outside: w = -(z - sgn(z) l1) / ((beta + sqrt(n)) / alpha + l2) = -(+-0.5) / 20
    np.testing.assert_allclose(w[5:], [0.5 / 20, -0.5 / 20])


def test_init_encoding_returns_v0_at_n_zero():
    rng = np.random.default_rng(1)
    for p in [FtrlParams(0.05, 1.0, 0.1, 5.0), FtrlParams(0.5, 0.3, 0.0, 0.0)]:
        v0 = rng.normal(scale=0.1, size=1000).astype(np.float32)
        z0 = ftrl_init_z(v0, p)
        w = ftrl_weight(z0, np.zeros_like(z0), p)
        np.testing.assert_allclose(w, v0, rtol=1e-5, atol=1e-7)
        assert np.all(np.abs(z0) > p.l1)  # a random start is never cut to zero by l1


def test_update_is_elementwise_in_float32():
    # Updating coordinates together or one by one gives bitwise the same state.
    rng = np.random.default_rng(2)
    p = FtrlParams(0.1, 1.0, 0.1, 1.0)
    z = rng.normal(size=100).astype(np.float32)
    n = rng.uniform(0, 3, size=100).astype(np.float32)
    g = rng.normal(size=100).astype(np.float32)
    za, na = ftrl_update(z, n, g, p)
    for i in range(0, 100, 7):
        zb, nb = ftrl_update(z[i : i + 7], n[i : i + 7], g[i : i + 7], p)
        assert np.array_equal(za[i : i + 7], zb) and np.array_equal(na[i : i + 7], nb)
    assert za.dtype == np.float32 and na.dtype == np.float32


def test_converges_to_the_minimiser_of_a_quadratic():
    p = FtrlParams(alpha=0.5, beta=1.0, l1=0.0, l2=0.0)
    target = np.array([0.7, -1.3, 0.0])
    z, n = np.zeros(3), np.zeros(3)
    for _ in range(3000):
        w = ftrl_weight(z, n, p)
        z, n = ftrl_update(z, n, w - target, p)
    np.testing.assert_allclose(ftrl_weight(z, n, p), target, atol=1e-3)


@pytest.mark.parametrize("name,value", [("alpha", -0.1), ("l1", -0.1), ("l2", float("nan"))])
def test_bad_hyperparameters_are_named(name, value):
    with pytest.raises(ConfigError, match=f"'{name}' parameter of FtrlParams"):
        FtrlParams(**{name: value})


def test_beta_must_be_positive():
    # beta = 0 divides 0 by 0 at z = 0, n = 0 (a fresh coordinate's weight would be NaN)
    with pytest.raises(ConfigError) as e:
        FtrlParams(beta=0.0)
    assert str(e.value) == (
        "The 'beta' parameter of FtrlParams must be a float > 0. Got 0.0 instead."
    )
    assert isinstance(e.value, ValueError)
    p = FtrlParams(beta=1e-6)
    assert np.isfinite(ftrl_weight(np.zeros(1), np.zeros(1), p)).all()


def test_a_batch_with_sums_of_squares_equals_per_sample_steps_with_frozen_weights():
    """McMahan et al. 2013 per coordinate over c occurrences with the weight held at its
    batch-start value: z gains sum g_i - (sqrt(n + sum g_i^2) - sqrt(n)) / alpha * w and n
    gains sum g_i^2, which is ``ftrl_update(z, n, sum g, p, g2=sum g^2)``."""
    rng = np.random.default_rng(4)
    p = FtrlParams(alpha=0.1, beta=1.0, l1=0.05, l2=1.0)
    z = rng.normal(0, 0.5, 200)
    n = rng.uniform(0, 3, 200)
    g = rng.normal(0, 0.3, (7, 200))
    w = ftrl_weight(z, n, p)  # frozen within the batch
    zs, ns = z.copy(), n.copy()
    for gi in g:
        sigma = (np.sqrt(ns + gi * gi) - np.sqrt(ns)) / p.alpha
        zs, ns = zs + gi - sigma * w, ns + gi * gi
    zb, nb = ftrl_update(z, n, g.sum(0), p, (g * g).sum(0))
    np.testing.assert_allclose(nb, ns, rtol=1e-12)
    np.testing.assert_allclose(zb, zs, rtol=1e-10, atol=1e-12)
    # the square of the sum is a different rule: one step of the summed gradient
    z1, n1 = ftrl_update(z, n, g.sum(0), p)
    np.testing.assert_allclose(n1, n + g.sum(0) ** 2, rtol=1e-12)
    assert not np.allclose(n1, ns)

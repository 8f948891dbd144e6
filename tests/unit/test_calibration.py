"""The reliability summary and ECE (psfm.metrics.reliability, MetricAccumulator.calibration_bins,
calibration_error) against a per-row oracle: the same bins filled row by row from the raw
predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from psfm.metrics import MetricAccumulator, calibration_error, reliability


def _sample(rng: np.random.Generator, n: int, shift: float = 0.0):
    """CTR-like predictions (logit ~ N(-3, 1.3), mostly small) and labels drawn from
    sigmoid(logit + shift): calibrated when shift = 0."""
    z = rng.normal(-3.0, 1.3, n)
    p = 1.0 / (1.0 + np.exp(-z))
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(z + shift)))).astype(np.int8)
    return y, p


def _oracle(bins, y, p, w):
    """Per bin: sum w, sum w p, sum w y of the rows whose prediction lies in [lo, hi]."""
    b = np.searchsorted(np.asarray(bins["hi"][:-1]), p, side="right")  # (n,) bin of each row
    assert np.all(np.asarray(bins["lo"])[b] <= p) and np.all(p <= np.asarray(bins["hi"])[b])
    k = len(bins["hi"])
    return (
        np.bincount(b, weights=w, minlength=k),
        np.bincount(b, weights=w * p, minlength=k),
        np.bincount(b, weights=w * y, minlength=k),
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_the_bins_hold_the_rows_sums_of_a_per_row_oracle(weighted):
    rng = np.random.default_rng(7 + weighted)
    n = 200_000
    y, p = _sample(rng, n)
    w = rng.gamma(2.0, 0.5, n) if weighted else np.ones(n)
    acc = MetricAccumulator()
    for lo in range(0, n, 30_000):
        acc.update(
            y[lo : lo + 30_000], p[lo : lo + 30_000], w[lo : lo + 30_000] if weighted else None
        )
    bins = acc.calibration_bins()

    assert len(bins["weight"]) == 20
    assert np.all(np.diff(bins["lo"]) > 0) and np.all(np.asarray(bins["lo"]) < bins["hi"])
    assert np.all(np.asarray(bins["hi"][:-1]) <= bins["lo"][1:])  # disjoint, ascending
    sw, swp, swy = _oracle(bins, y, p, w)
    assert np.allclose(bins["weight"], sw, rtol=1e-12)  # exact: the histogram's own counts
    assert np.allclose(bins["label"], swy, rtol=1e-12)
    assert np.allclose(bins["pred"], swp, rtol=3e-4)  # fine bins at their centre
    if not weighted:
        assert sum(bins["weight"]) == n
    # quantile bins: each about a twentieth of the weight
    assert np.all(np.abs(np.asarray(bins["weight"]) / w.sum() - 0.05) < 0.005)
    ece = calibration_error(bins)
    exact = np.abs(swp - swy).sum() / w.sum()
    assert ece == pytest.approx(exact, abs=1e-4) and 0.0 <= ece < 0.02  # calibrated


def test_ece_sees_a_miscalibrated_model_and_the_bins_show_where():
    rng = np.random.default_rng(11)
    y, p = _sample(rng, 100_000, shift=0.7)  # true odds twice the predicted ones
    acc = MetricAccumulator()
    acc.update(y, p)
    bins = acc.calibration_bins()
    rate = np.asarray(bins["label"]) / bins["weight"]
    mean = np.asarray(bins["pred"]) / bins["weight"]
    assert np.all(rate[5:] > mean[5:])  # under-predicted in every well-populated bin
    ece = calibration_error(bins)
    ratio = acc.result()["calibration"]  # sum pred / sum label
    assert 0.02 < ece <= 1.0 and ratio < 0.75
    assert ece == pytest.approx(float(np.sum(bins["label"]) - np.sum(bins["pred"])) / 1e5, rel=0.05)


def test_merged_accumulators_give_the_bins_of_one_and_survive_a_state_round_trip():
    rng = np.random.default_rng(3)
    y, p = _sample(rng, 60_000)
    one, a, b = MetricAccumulator(), MetricAccumulator(), MetricAccumulator()
    one.update(y, p)
    a.update(y[:25_000], p[:25_000])
    b.update(y[25_000:], p[25_000:])
    merged = MetricAccumulator.from_state(a.merge(b).state())  # as workers send them
    want, got = one.calibration_bins(), merged.calibration_bins()
    assert got.keys() == want.keys()
    for k in want:
        assert np.allclose(got[k], want[k], rtol=1e-12), k


def test_a_point_mass_is_one_bin_and_no_rows_is_empty():
    acc = MetricAccumulator()
    acc.update([0, 1, 0, 0], [0.2, 0.2, 0.2, 0.2])
    bins = acc.calibration_bins()
    assert bins["weight"] == [4.0] and bins["label"] == [1.0]
    assert bins["lo"][0] < 0.2 < bins["hi"][0] and bins["pred"][0] == pytest.approx(0.8, rel=3e-4)
    assert calibration_error(bins) == pytest.approx(0.05, rel=3e-3)
    empty = MetricAccumulator().calibration_bins()
    assert all(v == [] for v in empty.values())
    assert math.isnan(calibration_error(empty))


def test_reliability_checks_its_inputs():
    from psfm.errors import ConfigError, DataError

    with pytest.raises(DataError, match="one length"):
        reliability(np.zeros(4), np.zeros(5))
    with pytest.raises(ConfigError, match="bins must be an int >= 1; got 0"):
        reliability(np.zeros(4), np.zeros(4), bins=0)

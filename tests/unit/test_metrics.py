"""Tests of psfm.metrics against slow oracles, direct formulas and invariants."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from psfm import metrics
from psfm.errors import DataError, PsfmError
from psfm.metrics import (
    MetricAccumulator,
    StreamingAUC,
    auc_exact,
    calibration,
    logloss,
    normalized_entropy,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- helpers


def brute_force_auc(labels: IntArray, scores: FloatArray, weights: FloatArray | None) -> float:
    """O(n^2) oracle: weighted share of (positive, negative) pairs ordered right, ties 1/2."""
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    num = 0.0
    den = 0.0
    for i in range(len(labels)):
        if labels[i] != 1:
            continue
        for j in range(len(labels)):
            if labels[j] != 0:
                continue
            pair = w[i] * w[j]
            den += pair
            if scores[i] > scores[j]:
                num += pair
            elif scores[i] == scores[j]:
                num += 0.5 * pair
    return num / den


def tied_sample(rng: np.random.Generator, n: int) -> tuple[IntArray, FloatArray]:
    """Labels with both classes and scores drawn from few values (many ties)."""
    labels = rng.integers(0, 2, size=n)
    labels[:2] = (0, 1)
    rng.shuffle(labels)
    scores = rng.integers(0, 7, size=n) / 4.0 - 0.5
    return labels, scores


def ctr_sample(
    rng: np.random.Generator, n: int, noise: float = 0.3, intercept: float = -1.75
) -> tuple[npt.NDArray[np.int8], FloatArray]:
    """Predictions of a well-trained CTR model.

    p_true = sigmoid(b + x.w) with 8 standard normal features (logit sd ~1.1; base rate ~0.2 at
    the default intercept b), labels ~ Bernoulli(p_true), predictions = sigmoid(logit + noise),
    noise ~ N(0, noise^2) in logit space.
    """
    d = 8
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal(d)
    w *= 1.1 / np.linalg.norm(w)
    logit = intercept + x @ w  # (n,)
    p_true = 1.0 / (1.0 + np.exp(-logit))
    labels = (rng.random(n) < p_true).astype(np.int8)
    pred = 1.0 / (1.0 + np.exp(-(logit + noise * rng.standard_normal(n))))
    return labels, pred


def score_weights(rng: np.random.Generator, pred: FloatArray) -> FloatArray:
    """Weights that depend on the prediction, so that they change the AUC."""
    return rng.uniform(0.0, 2.0, size=pred.size) * (0.1 + 4.0 * pred)


def batches(n: int, rng: np.random.Generator) -> list[slice]:
    """Uneven consecutive slices covering range(n), including an empty one."""
    cuts = np.sort(rng.integers(0, n, size=6))
    edges = [0, *cuts.tolist(), cuts[-1], n]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


# --------------------------------------------------------------------------- auc_exact


@pytest.mark.parametrize("weighted", [False, True])
def test_auc_exact_matches_pairwise_oracle_with_ties(weighted: bool) -> None:
    rng = np.random.default_rng(11 + weighted)
    for _ in range(40):
        n = int(rng.integers(2, 60))
        labels, scores = tied_sample(rng, n)
        weights = rng.uniform(0.0, 3.0, size=n) if weighted else None
        if weighted:
            assert weights is not None
            weights[rng.random(n) < 0.2] = 0.0  # zero weights must drop their pairs
            weights[np.flatnonzero(labels == 1)[0]] = 1.0
            weights[np.flatnonzero(labels == 0)[0]] = 1.0
        expected = brute_force_auc(labels, scores, weights)
        assert auc_exact(labels, scores, weights) == pytest.approx(expected, abs=1e-12)


def test_auc_exact_integer_weights_equal_repeated_rows() -> None:
    rng = np.random.default_rng(3)
    labels, scores = tied_sample(rng, 200)
    counts = rng.integers(0, 4, size=200)
    counts[np.flatnonzero(labels == 1)[0]] = 1
    counts[np.flatnonzero(labels == 0)[0]] = 1
    repeated = auc_exact(np.repeat(labels, counts), np.repeat(scores, counts))
    assert auc_exact(labels, scores, counts) == pytest.approx(repeated, abs=1e-14)


def test_auc_exact_known_values() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert auc_exact(labels, scores) == 1.0
    assert auc_exact(labels, -scores) == 0.0
    assert auc_exact(labels, np.full(5, 0.4)) == 0.5
    assert auc_exact([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8]) == 0.875
    assert auc_exact([True, False], [0.7, 0.3]) == 1.0  # bool labels
    assert auc_exact([1.0, 0.0], [np.inf, -np.inf]) == 1.0
    assert auc_exact([1, 0, 1, 0], [np.inf, np.inf, 0.0, 1.0]) == 0.375  # equal infinities tie


def test_auc_exact_invariant_under_monotone_transform() -> None:
    rng = np.random.default_rng(5)
    labels, scores = tied_sample(rng, 500)
    base = auc_exact(labels, scores)
    assert 0.3 < base < 0.7
    assert auc_exact(labels, np.exp(scores)) == pytest.approx(base, abs=1e-15)
    assert auc_exact(labels, scores**3 + 2.0 * scores) == pytest.approx(base, abs=1e-15)
    assert auc_exact(labels, 1.0 / (1.0 + np.exp(-scores))) == pytest.approx(base, abs=1e-15)
    assert auc_exact(labels, -(scores**3)) == pytest.approx(1.0 - base, abs=1e-15)


@pytest.mark.parametrize("label", [0, 1])
def test_auc_exact_single_class_raises(label: int) -> None:
    labels = np.full(1000, label)
    scores = np.random.default_rng(0).random(1000)
    with pytest.raises(DataError, match=rf"all labels are one class: got 1000 rows, all {label}\."):
        auc_exact(labels, scores)
    with pytest.raises(ValueError):
        auc_exact(labels, scores)
    with pytest.raises(PsfmError):
        auc_exact([], [])


def test_auc_exact_zero_weight_class_raises() -> None:
    with pytest.raises(DataError, match="zero total weight: got positive weight 0.0"):
        auc_exact([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], weights=[1.0, 0.0, 2.0, 0.0])


@pytest.mark.parametrize(
    ("labels", "scores", "weights", "message"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], None, r"labels must be 0 or 1; got 2 at index 2\."),
        ([0, 1, 0.5], [0.1, 0.2, 0.3], None, r"labels must be 0 or 1; got 0.5 at index 2\."),
        ([0, 1, -1], [0.1, 0.2, 0.3], None, r"got -1 at index 2\."),
        (["0", "1"], [0.1, 0.2], None, r"labels must be a numeric array"),
        ([0, 1, 1], [0.1, 0.2], None, r"scores must have one value per label; got 2 values"),
        ([0, 1], [0.1, np.nan], None, r"scores must not be NaN; got nan at index 1\."),
        ([0, 1], [0.1, 0.2], [1.0, -1.0], r"weights must be finite and >= 0; got -1.0 at index"),
        ([0, 1], [0.1, 0.2], [1.0], r"weights must have one value per label"),
        ([[0, 1]], [[0.1, 0.2]], None, r"labels must be a 1-D array; got shape \(1, 2\)\."),
    ],
)
def test_auc_exact_rejects_bad_input(
    labels: object, scores: object, weights: object, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        auc_exact(labels, scores, weights)  # type: ignore[arg-type]


def test_auc_exact_error_names_first_bad_index() -> None:
    labels = np.zeros(40, dtype=np.int64)
    labels[17] = 2
    labels[30] = 3
    with pytest.raises(DataError, match=r"labels must be 0 or 1; got 2 at index 17\."):
        auc_exact(labels, np.zeros(40))


# ----------------------------------------------------------------- logloss, NE, calibration


def direct_logloss(y: IntArray, p: FloatArray, w: FloatArray, eps: float = 1e-7) -> float:
    total = 0.0
    for yi, pi, wi in zip(y, p, w, strict=True):
        q = min(max(float(pi), eps), 1.0 - eps)
        total += wi * -(math.log(q) if yi == 1 else math.log(1.0 - q))
    return total / float(np.sum(w))


@pytest.mark.parametrize("weighted", [False, True])
def test_logloss_ne_calibration_match_direct_formulas(weighted: bool) -> None:
    rng = np.random.default_rng(21 + weighted)
    n = 500
    labels = (rng.random(n) < 0.3).astype(np.int64)
    probs = rng.uniform(0.0, 1.0, size=n)
    probs[:3] = (0.0, 1.0, 1e-12)  # clipped, so finite
    w = rng.uniform(0.0, 2.0, size=n) if weighted else np.ones(n)
    weights = w if weighted else None

    ll = direct_logloss(labels, probs, w)
    ctr = float(np.sum(w * labels) / np.sum(w))
    entropy = -(ctr * math.log(ctr) + (1.0 - ctr) * math.log(1.0 - ctr))
    assert logloss(labels, probs, weights) == pytest.approx(ll, rel=1e-12)
    assert normalized_entropy(labels, probs, weights) == pytest.approx(ll / entropy, rel=1e-12)
    expected_cal = float(np.sum(w * probs) / np.sum(w * labels))
    assert calibration(labels, probs, weights) == pytest.approx(expected_cal, rel=1e-12)
    assert logloss(labels, probs, weights, eps=1e-3) == pytest.approx(
        direct_logloss(labels, probs, w, eps=1e-3), rel=1e-12
    )


def test_logloss_known_values() -> None:
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2.0), rel=1e-15)
    assert logloss([1], [1.0]) == pytest.approx(-math.log(1.0 - 1e-7), rel=1e-9)
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7), rel=1e-12)
    # weights 0 drop a row, weight 2 counts it twice
    assert logloss([1, 0, 1], [0.9, 0.2, 0.1], [2.0, 1.0, 0.0]) == pytest.approx(
        logloss([1, 1, 0], [0.9, 0.9, 0.2]), rel=1e-15
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_ne_of_constant_base_rate_predictor_is_one(weighted: bool) -> None:
    rng = np.random.default_rng(8)
    n = 10_000
    labels = (rng.random(n) < 0.2).astype(np.int64)
    weights = rng.uniform(0.5, 2.0, size=n) if weighted else None
    w = np.ones(n) if weights is None else weights
    ctr = float(np.sum(w * labels) / np.sum(w))
    const = np.full(n, ctr)
    assert normalized_entropy(labels, const, weights) == pytest.approx(1.0, abs=1e-12)
    assert calibration(labels, const, weights) == pytest.approx(1.0, abs=1e-12)
    # any other constant is worse
    assert normalized_entropy(labels, np.full(n, ctr * 1.2), weights) > 1.0 + 1e-4


def test_ne_and_calibration_undefined_raise() -> None:
    with pytest.raises(DataError, match="base rate is 0 or 1"):
        normalized_entropy([1, 1, 1], [0.5, 0.6, 0.7])
    with pytest.raises(DataError, match="observed CTR is 0: got 3 rows"):
        calibration([0, 0, 0], [0.5, 0.6, 0.7])
    with pytest.raises(DataError, match="total weight is 0"):
        logloss([0, 1], [0.5, 0.5], [0.0, 0.0])
    with pytest.raises(DataError, match=r"probs must be probabilities in \[0, 1\]; got 1.5"):
        logloss([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="eps must be"):
        logloss([0, 1], [0.5, 0.5], eps=0.0)


# --------------------------------------------------------------------------- StreamingAUC


def test_streaming_auc_matches_exact_on_realistic_ctr_predictions() -> None:
    rng = np.random.default_rng(2014)
    labels, pred = ctr_sample(rng, 2_000_000)
    # the generator is realistic: base rate ~0.2, most predictions in [0.01, 0.6]
    assert 0.17 < labels.mean() < 0.23
    assert np.mean((pred > 0.01) & (pred < 0.6)) > 0.9
    exact = auc_exact(labels, pred)
    assert 0.7 < exact < 0.8

    acc = StreamingAUC()
    acc.update(labels, pred)
    assert abs(acc.value() - exact) <= 1e-4
    assert acc.rows == 2_000_000

    weights = score_weights(rng, pred)
    exact_weighted = auc_exact(labels, pred, weights)
    assert abs(exact_weighted - exact) > 1e-3  # the weights matter
    weighted = StreamingAUC()
    weighted.update(labels, pred, weights)
    assert abs(weighted.value() - exact_weighted) <= 1e-4


def test_streaming_auc_resolves_predictions_clustered_near_zero() -> None:
    # conversion-like rates (~3e-4, p mostly in [1e-5, 2e-3]): bins uniform in p of the same
    # count would be off by ~1e-3 here; logit bins stay within 1e-4
    rng = np.random.default_rng(9)
    labels, pred = ctr_sample(rng, 1_000_000, intercept=-9.0)
    assert 1e-4 < labels.mean() < 1e-3
    acc = StreamingAUC()
    acc.update(labels, pred)
    assert abs(acc.value() - auc_exact(labels, pred)) <= 1e-4


def test_streaming_bins_are_uniform_in_logit() -> None:
    n_bins = 1 << 16
    width = 32.0 / n_bins
    z = -16.0 + (np.arange(0, n_bins, 97) + 0.5) * width  # bin centres
    p = 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_array_equal(metrics._bin_index(p, n_bins), np.arange(0, n_bins, 97))
    ends = metrics._bin_index(np.array([0.0, 1e-300, 0.5, 1.0 - 1e-16, 1.0]), n_bins)
    np.testing.assert_array_equal(ends, [0, 0, n_bins // 2, n_bins - 1, n_bins - 1])


def test_streaming_auc_is_exact_auc_of_binned_predictions() -> None:
    rng = np.random.default_rng(4)
    labels, pred = ctr_sample(rng, 20_000)
    pred[:50] = 0.0
    pred[50:100] = 1.0
    for n_bins in (7, 64, 1 << 16):
        acc = StreamingAUC(n_bins)
        acc.update(labels, pred)
        bins = metrics._bin_index(pred, n_bins)
        assert bins.min() >= 0 and bins.max() < n_bins
        assert acc.value() == pytest.approx(auc_exact(labels, bins), abs=1e-13)
    # bins are monotone in p
    p = np.sort(rng.uniform(0.0, 1.0, 10_000))
    assert np.all(np.diff(metrics._bin_index(p, 1 << 16)) >= 0)


def test_streaming_auc_known_values() -> None:
    acc = StreamingAUC()
    acc.update([0, 1, 0, 1], [0.1, 0.9, 0.3, 0.2])
    assert acc.value() == 0.75
    tied = StreamingAUC()
    tied.update([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3])
    assert tied.value() == 0.5
    ends = StreamingAUC()
    ends.update([0, 1], [0.0, 1.0])
    assert ends.value() == 1.0


def test_streaming_auc_single_class_raises() -> None:
    acc = StreamingAUC()
    with pytest.raises(DataError, match="empty input: got 0 rows"):
        acc.value()
    acc.update(np.zeros(1000), np.full(1000, 0.2))
    with pytest.raises(DataError, match=r"one class: got 1000 rows, all 0\."):
        acc.value()
    with pytest.raises(DataError, match="probs must be probabilities"):
        acc.update([0], [-0.1])


def test_streaming_auc_merge_of_halves_equals_one_pass() -> None:
    rng = np.random.default_rng(9)
    labels, pred = ctr_sample(rng, 200_000)
    half = labels.size // 2
    whole = StreamingAUC()
    whole.update(labels, pred)
    first, second = StreamingAUC(), StreamingAUC()
    first.update(labels[:half], pred[:half])
    second.update(labels[half:], pred[half:])
    assert first.merge(second) is first
    for key, arr in whole.state().items():
        np.testing.assert_array_equal(first.state()[key], arr, strict=True)
    assert first.value() == whole.value()

    # weighted: merge equals sequential updates bitwise and one pass up to rounding
    weights = score_weights(rng, pred)
    seq, a, b, one = StreamingAUC(), StreamingAUC(), StreamingAUC(), StreamingAUC()
    seq.update(labels[:half], pred[:half], weights[:half])
    seq.update(labels[half:], pred[half:], weights[half:])
    a.update(labels[:half], pred[:half], weights[:half])
    b.update(labels[half:], pred[half:], weights[half:])
    one.update(labels, pred, weights)
    a.merge(b)
    for key, arr in seq.state().items():
        np.testing.assert_array_equal(a.state()[key], arr, strict=True)
    np.testing.assert_allclose(a.state()["pos"], one.state()["pos"], rtol=1e-12)
    assert a.value() == pytest.approx(one.value(), abs=1e-12)


def test_streaming_auc_merge_rejects_other_binning() -> None:
    with pytest.raises(ValueError, match="with 1024 bins into one with 65536 bins"):
        StreamingAUC().merge(StreamingAUC(1024))
    with pytest.raises(TypeError, match="other must be a StreamingAUC"):
        StreamingAUC().merge(MetricAccumulator())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_bins must be an int in"):
        StreamingAUC(1)


def test_streaming_auc_state_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    labels, pred = ctr_sample(rng, 50_000)
    acc = StreamingAUC(4096)
    acc.update(labels[:30_000], pred[:30_000])
    path = tmp_path / "auc.npz"
    snapshot = acc.state()
    np.savez(path, **snapshot)
    with np.load(path, allow_pickle=False) as data:
        restored = StreamingAUC.from_state(data)
    assert restored.n_bins == 4096
    assert restored.value() == acc.value()
    # both continue identically, and neither the snapshot nor the loaded arrays are aliased
    acc.update(labels[30_000:], pred[30_000:])
    restored.update(labels[30_000:], pred[30_000:])
    assert snapshot["rows"].sum() == 30_000
    assert snapshot["pos"].sum() + snapshot["neg"].sum() == 30_000
    for key, arr in acc.state().items():
        np.testing.assert_array_equal(restored.state()[key], arr, strict=True)


def test_streaming_auc_from_state_rejects_bad_state() -> None:
    good = StreamingAUC(16)
    good.update([0, 1], [0.2, 0.7])
    state = good.state()
    with pytest.raises(DataError, match="state must have the key 'neg'"):
        StreamingAUC.from_state({k: v for k, v in state.items() if k != "neg"})
    with pytest.raises(DataError, match="must be 1-D arrays of one length"):
        StreamingAUC.from_state({**state, "neg": np.zeros(8)})
    with pytest.raises(DataError, match=r"state\['pos'\] must be finite and >= 0; got -1.0"):
        StreamingAUC.from_state({**state, "pos": np.full(16, -1.0)})
    with pytest.raises(DataError, match="logit_limit"):
        StreamingAUC.from_state({**state, "logit_limit": np.array(8.0)})


# --------------------------------------------------------------------------- MetricAccumulator


@pytest.mark.parametrize("weighted", [False, True])
def test_metric_accumulator_over_batches_equals_one_shot(weighted: bool) -> None:
    rng = np.random.default_rng(31 + weighted)
    n = 300_000
    labels, pred = ctr_sample(rng, n)
    pred[:20] = 0.0  # exercises the clip
    weights = score_weights(rng, pred) if weighted else None
    acc = MetricAccumulator()
    for part in batches(n, rng):
        acc.update(labels[part], pred[part], None if weights is None else weights[part])
    res = acc.result()

    assert set(res) == {"auc", "logloss", "ne", "calibration", "rows", "ctr", "mean_pred"}
    assert res["rows"] == n
    assert res["logloss"] == pytest.approx(logloss(labels, pred, weights), abs=1e-9)
    assert res["ne"] == pytest.approx(normalized_entropy(labels, pred, weights), abs=1e-9)
    assert res["calibration"] == pytest.approx(calibration(labels, pred, weights), abs=1e-9)
    w = np.ones(n) if weights is None else weights
    assert res["ctr"] == pytest.approx(np.sum(w * labels) / np.sum(w), abs=1e-12)
    assert res["mean_pred"] == pytest.approx(np.sum(w * pred) / np.sum(w), abs=1e-12)
    assert abs(res["auc"] - auc_exact(labels, pred, weights)) <= 1e-4
    one = StreamingAUC()
    one.update(labels, pred, weights)
    assert res["auc"] == pytest.approx(one.value(), abs=1e-12)


def test_metric_accumulator_merge_and_state_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(41)
    labels, pred = ctr_sample(rng, 100_000)
    whole = MetricAccumulator()
    whole.update(labels, pred)
    first, second = MetricAccumulator(), MetricAccumulator()
    first.update(labels[:40_000], pred[:40_000])
    second.update(labels[40_000:], pred[40_000:])

    path = tmp_path / "metrics.npz"
    np.savez(path, **second.state())
    with np.load(path, allow_pickle=False) as data:
        restored = MetricAccumulator.from_state(data)
    assert restored.result() == second.result()

    assert first.merge(restored) is first
    merged, expected = first.result(), whole.result()
    assert merged["rows"] == expected["rows"] == 100_000
    assert merged["auc"] == expected["auc"]  # integer counts: bitwise
    for key in ("logloss", "ne", "calibration", "ctr", "mean_pred"):
        assert merged[key] == pytest.approx(expected[key], rel=1e-12)
    with pytest.raises(DataError, match="sums"):
        MetricAccumulator.from_state({**whole.state(), "sums": np.zeros(3)})


def test_metric_accumulator_undefined_metrics_are_nan() -> None:
    empty = MetricAccumulator().result()
    assert empty["rows"] == 0
    assert all(math.isnan(v) for k, v in empty.items() if k != "rows")

    acc = MetricAccumulator()
    acc.update([0, 0, 0], [0.1, 0.2, 0.3])
    res = acc.result()
    assert math.isnan(res["auc"]) and math.isnan(res["ne"]) and math.isnan(res["calibration"])
    assert res["ctr"] == 0.0
    assert res["mean_pred"] == pytest.approx(0.2, abs=1e-15)
    assert res["logloss"] == pytest.approx(logloss([0, 0, 0], [0.1, 0.2, 0.3]), abs=1e-15)

    acc.update([1], [0.6])
    res = acc.result()
    assert res["auc"] == 1.0
    assert res["rows"] == 4
    assert res["calibration"] == pytest.approx(1.2 / 1.0, abs=1e-12)

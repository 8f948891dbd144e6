"""Evaluation metrics for binary CTR prediction: AUC, logloss, normalized entropy, calibration.

Notation: n rows with labels y_i in {0, 1}, predictions p_i in [0, 1] (scores s_i for AUC) and
non-negative sample weights w_i (all 1 when ``weights`` is None). W = sum_i w_i.

* ROC AUC, the Mann-Whitney statistic with ties counted as one half (Hanley & McNeil 1982):

      AUC = sum_{i: y_i=1} sum_{j: y_j=0} w_i w_j ([s_i > s_j] + 1/2 [s_i = s_j]) / (W_+ W_-)

  with W_+ / W_- the total weight of the positive / negative rows. ``auc_exact`` sorts once and
  groups tied scores: O(n log n). AUC is undefined when one class is empty (or has zero weight);
  the functions raise :class:`~psfm.errors.DataError` then instead of inventing 0.5.
* Logloss (binary cross entropy), with p clipped to [eps, 1 - eps]:

      LL = -(1/W) sum_i w_i (y_i log p_i + (1 - y_i) log(1 - p_i))

* Normalized entropy (He et al. 2014, "Practical lessons from predicting clicks on ads at
  Facebook", section 2): the logloss divided by the entropy of the base rate
  ctr = (1/W) sum_i w_i y_i, i.e. relative to always predicting the observed CTR:

      NE = LL / H(ctr),   H(q) = -(q log q + (1 - q) log(1 - q))

  NE = 1 for the constant base-rate predictor; lower is better.
* Calibration (He et al. 2014, section 2): mean prediction over observed CTR,
  ``sum_i w_i p_i / sum_i w_i y_i``; 1 is perfectly calibrated in the mean.

Streaming AUC (:class:`StreamingAUC`) keeps, per probability bin, the total weight of positive and
negative rows; pairs in different bins are ordered by bin and pairs in one bin count one half, so
the histogram is the exact AUC of the binned predictions and it merges by adding counts. Bins are
uniform in the logit log(p / (1 - p)) clipped to [-16, 16]: with the default 2^16 bins a bin is
4.9e-4 wide in logit, i.e. about 7.8e-5 in p near p = 0.2 and finer towards 0 and 1, where CTR
predictions cluster. On realistic CTR predictions this agrees with ``auc_exact`` to well within
1e-4 (checked in ``tests/unit/test_metrics.py`` on 2M rows). :class:`MetricAccumulator` adds the
four weighted sums behind logloss, NE and calibration; both keep their state as plain float64 /
int64 arrays (``state`` / ``from_state``) that ``np.savez`` stores without pickle.

* Reliability (calibration by bin) and expected calibration error, read off the same histogram
  (:func:`reliability`, ``MetricAccumulator.calibration_bins``, :func:`calibration_error`): the
  fine logit bins are grouped into B = 20 bins of about equal weight (quantile bins), and per
  bin b the summary keeps W_b = sum_{i in b} w_i, P_b = sum_{i in b} w_i p_i, Y_b = sum_{i in b}
  w_i y_i, so that

      ECE = sum_b (W_b / W) |P_b / W_b - Y_b / W_b| = (1/W) sum_b |P_b - Y_b|,   in [0, 1].

  Why quantile bins of the logit histogram: CTR predictions are mostly small, so 20 equal-width
  bins on [0, 1] put nearly every row into the first one, and even bins equal in logit leave most
  bins empty and a few crowded; bins of equal weight put the 20 points of the reliability
  diagram where the predictions are, each estimated from W/20 of the weight. They cost nothing
  per row: W_b and Y_b are sums of the histogram's exact per-bin weights, and P_b takes each
  fine bin's predictions at the bin's centre, within half a fine bin (2.4e-4 in logit with the
  default bins, so within 2.4e-4 p relative) of the true sum. It merges as the histogram does.

Example::

    >>> auc_exact([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8])
    0.875
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from psfm.errors import ConfigError, DataError

__all__ = [
    "MetricAccumulator",
    "StreamingAUC",
    "auc_exact",
    "calibration",
    "calibration_error",
    "reliability",
    "logloss",
    "normalized_entropy",
]

DEFAULT_EPS = 1e-7
DEFAULT_N_BINS = 1 << 16
LOGIT_LIMIT = 16.0  # histogram bins cover logit(p) in [-LOGIT_LIMIT, LOGIT_LIMIT]
CALIBRATION_BINS = 20  # bins of the reliability summary (quantile bins of the histogram)
_MAX_N_BINS = 1 << 26

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


# --------------------------------------------------------------------------- input checks


def _first_bad(ok: BoolArray) -> int:
    return int(np.flatnonzero(~ok)[0])


def _as_1d(name: str, values: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array; got shape {arr.shape}.")
    return arr


def _labels(labels: npt.ArrayLike) -> BoolArray:
    """Labels as a boolean "is positive" mask; they must be 0 or 1 (bool, int or float)."""
    y = _as_1d("labels", labels)
    if y.dtype == np.bool_:
        return y
    if y.dtype.kind not in "iuf":
        raise DataError(f"labels must be a numeric array of 0 and 1; got dtype {y.dtype}.")
    pos = y == 1
    ok = pos | (y == 0)
    if not ok.all():
        i = _first_bad(ok)
        raise DataError(f"labels must be 0 or 1; got {y[i].item()!r} at index {i}.")
    return pos


def _floats(name: str, values: npt.ArrayLike, n: int) -> FloatArray:
    """``values`` as a 1-D float64 array (no copy when already float64) of length n."""
    arr = _as_1d(name, values)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name} must be a numeric array; got dtype {arr.dtype}.")
    if arr.shape[0] != n:
        raise DataError(
            f"{name} must have one value per label; got {arr.shape[0]} values for {n} labels."
        )
    return arr.astype(np.float64, copy=False)


def _require(name: str, arr: FloatArray, ok: BoolArray, rule: str) -> None:
    if not ok.all():
        i = _first_bad(ok)
        raise DataError(f"{name} {rule}; got {arr[i].item()!r} at index {i}.")


def _weights(weights: npt.ArrayLike | None, n: int) -> FloatArray | None:
    if weights is None:
        return None
    w = _floats("weights", weights, n)
    _require("weights", w, np.isfinite(w) & (w >= 0.0), "must be finite and >= 0")
    return w


def _inputs(
    labels: npt.ArrayLike,
    probs: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    *,
    name: str = "probs",
    unit: bool = True,
) -> tuple[BoolArray, FloatArray, FloatArray | None]:
    pos = _labels(labels)
    p = _floats(name, probs, pos.shape[0])
    if unit:
        _require(name, p, (p >= 0.0) & (p <= 1.0), "must be probabilities in [0, 1]")
    else:
        _require(name, p, ~np.isnan(p), "must not be NaN")
    return pos, p, _weights(weights, pos.shape[0])


def _check_eps(eps: float) -> float:
    if not 0.0 < eps < 0.5:
        raise ConfigError(f"eps must be a float in (0, 0.5); got {eps!r}.")
    return float(eps)


# --------------------------------------------------------------------------- AUC core


def _one_class_error(n_pos: int, n_neg: int, w_pos: float, w_neg: float) -> DataError:
    rows = n_pos + n_neg
    if rows == 0:
        return DataError("AUC is undefined on empty input: got 0 rows.")
    if n_pos == 0 or n_neg == 0:
        label = 1 if n_neg == 0 else 0
        return DataError(
            f"AUC is undefined when all labels are one class: got {rows} rows, all {label}."
        )
    return DataError(
        "AUC is undefined when one class has zero total weight: got positive weight "
        f"{w_pos!r} and negative weight {w_neg!r} over {rows} rows."
    )


def _auc_from_groups(w_pos: FloatArray, w_neg: FloatArray) -> float | None:
    """AUC from per-group weights of positives / negatives, groups in ascending score order.

    Pairs in different groups are ordered by group, pairs within a group count one half.
    Returns None when one class has zero total weight.
    """
    cum_neg = np.cumsum(w_neg)
    total_neg = float(cum_neg[-1]) if cum_neg.size else 0.0
    total_pos = float(w_pos.sum())
    if total_pos <= 0.0 or total_neg <= 0.0:
        return None
    neg_below = cum_neg - w_neg  # (G,) negative weight strictly below each group
    pairs = float(np.dot(w_pos, neg_below + 0.5 * w_neg))
    return min(1.0, max(0.0, pairs / total_pos / total_neg))


def auc_exact(
    labels: npt.ArrayLike, scores: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> float:
    """Exact ROC AUC (Mann-Whitney, ties count 1/2) with optional non-negative sample weights.

    ``scores`` may be any real scores (probabilities, logits); only their order matters.
    Raises :class:`DataError` on single-class input, mismatched lengths, labels outside {0, 1},
    NaN scores or negative weights.
    """
    pos, s, w = _inputs(labels, scores, weights, name="scores", unit=False)
    n_pos = int(np.count_nonzero(pos))
    n_neg = pos.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise _one_class_error(n_pos, n_neg, float(n_pos), float(n_neg))
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    pos_sorted = pos[order]
    if w is None:
        wp = pos_sorted.astype(np.float64)
        wn = 1.0 - wp
    else:
        w_sorted = w[order]
        wp = np.where(pos_sorted, w_sorted, 0.0)
        wn = np.where(pos_sorted, 0.0, w_sorted)
    # groups of equal scores; `!=` (not diff) so that equal infinities stay one group
    starts = np.flatnonzero(np.concatenate(([True], s_sorted[1:] != s_sorted[:-1])))
    auc = _auc_from_groups(np.add.reduceat(wp, starts), np.add.reduceat(wn, starts))
    if auc is None:
        raise _one_class_error(n_pos, n_neg, float(wp.sum()), float(wn.sum()))
    return auc


# --------------------------------------------------------------------------- pointwise metrics


def _batch_sums(
    pos: BoolArray, p: FloatArray, w: FloatArray | None, eps: float
) -> tuple[float, float, float, float]:
    """(sum w, sum w*y, sum w*p, sum w*loss) of one batch, loss = clipped cross entropy."""
    pc = np.clip(p, eps, 1.0 - eps)
    loss = -np.where(pos, np.log(pc), np.log1p(-pc))  # (n,)
    if w is None:
        return (
            float(pos.shape[0]),
            float(np.count_nonzero(pos)),
            float(p.sum()),
            float(loss.sum()),
        )
    return (
        float(w.sum()),
        float(w[pos].sum()),
        float(np.dot(w, p)),
        float(np.dot(w, loss)),
    )


def _binary_entropy(q: float) -> float:
    return -(q * math.log(q) + (1.0 - q) * math.log1p(-q))


def _sums(
    what: str,
    labels: npt.ArrayLike,
    probs: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    eps: float,
) -> tuple[int, float, float, float, float]:
    pos, p, w = _inputs(labels, probs, weights)
    sw, swy, swp, swl = _batch_sums(pos, p, w, _check_eps(eps))
    if not sw > 0.0:
        raise DataError(
            f"{what} is undefined when the total weight is 0: got {pos.shape[0]} rows "
            f"with total weight {sw!r}."
        )
    return pos.shape[0], sw, swy, swp, swl


def logloss(
    labels: npt.ArrayLike,
    probs: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    eps: float = DEFAULT_EPS,
) -> float:
    """Mean (weighted) binary cross entropy, natural log, probs clipped to [eps, 1 - eps]."""
    _, sw, _, _, swl = _sums("logloss", labels, probs, weights, eps)
    return swl / sw


def normalized_entropy(
    labels: npt.ArrayLike,
    probs: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    eps: float = DEFAULT_EPS,
) -> float:
    """Logloss over the entropy of the (weighted) base rate (He et al. 2014).

    Raises :class:`DataError` when the base rate is 0 or 1 (its entropy is 0).
    """
    rows, sw, swy, _, swl = _sums("normalized entropy", labels, probs, weights, eps)
    ctr = swy / sw
    if not 0.0 < ctr < 1.0:
        raise DataError(
            "normalized entropy is undefined when the base rate is 0 or 1 (its entropy is 0): "
            f"got base rate {ctr!r} over {rows} rows."
        )
    return (swl / sw) / _binary_entropy(ctr)


def calibration(
    labels: npt.ArrayLike, probs: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> float:
    """Mean prediction over observed CTR, sum(w p) / sum(w y); probs are not clipped.

    Raises :class:`DataError` when the observed CTR is 0.
    """
    rows, _, swy, swp, _ = _sums("calibration", labels, probs, weights, DEFAULT_EPS)
    if not swy > 0.0:
        raise DataError(
            f"calibration is undefined when the observed CTR is 0: got {rows} rows and "
            f"positive weight {swy!r}."
        )
    return swp / swy


# --------------------------------------------------------------------------- streaming


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"n_bins must be an int in [2, {_MAX_N_BINS}]; got {n_bins!r}.")
    if not 2 <= n_bins <= _MAX_N_BINS:
        raise ConfigError(f"n_bins must be an int in [2, {_MAX_N_BINS}]; got {n_bins!r}.")
    return int(n_bins)


def _bin_index(p: FloatArray, n_bins: int) -> npt.NDArray[np.intp]:
    """Bin of each probability: uniform in logit(p) clipped to [-LOGIT_LIMIT, LOGIT_LIMIT]."""
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-p)  # (n,) logit; -inf at p = 0, +inf at p = 1
    np.clip(z, -LOGIT_LIMIT, LOGIT_LIMIT, out=z)
    z += LOGIT_LIMIT
    z *= n_bins / (2.0 * LOGIT_LIMIT)
    idx = z.astype(np.intp)  # floor, z >= 0
    np.minimum(idx, n_bins - 1, out=idx)
    return idx


def _state_array(state: Mapping[str, np.ndarray], key: str, kind: str) -> np.ndarray:
    if key not in state:
        raise DataError(f"state must have the key {key!r}; got keys {sorted(state)}.")
    arr = np.array(state[key], copy=True)
    if arr.dtype.kind not in kind:
        raise DataError(f"state[{key!r}] must be a numeric array; got dtype {arr.dtype}.")
    return arr


class StreamingAUC:
    """Mergeable histogram AUC: positives and negatives counted per probability bin.

    ``pos[b]`` / ``neg[b]`` hold the total weight of positive / negative rows whose prediction
    falls in bin b (bins uniform in logit(p), see the module docstring). ``value`` is the exact
    AUC of the binned predictions: pairs in one bin count one half.

    >>> acc = StreamingAUC(); acc.update([0, 1, 0, 1], [0.1, 0.9, 0.3, 0.2]); acc.value()
    0.75
    """

    def __init__(self, n_bins: int = DEFAULT_N_BINS) -> None:
        self.n_bins = _check_n_bins(n_bins)
        self._pos = np.zeros(self.n_bins, dtype=np.float64)  # (n_bins,) weight of positives
        self._neg = np.zeros(self.n_bins, dtype=np.float64)  # (n_bins,) weight of negatives
        self._rows = np.zeros(2, dtype=np.int64)  # (negative rows, positive rows)
        # Batches not yet in the histogram: (bin + n_bins * label, weight or None). A
        # histogram pass costs O(n_bins), so batches are added about n_bins rows at a time.
        self._pending: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._pending_rows = 0

    def _add(self, pos: BoolArray, p: FloatArray, w: FloatArray | None) -> None:
        code = _bin_index(p, self.n_bins)
        code[pos] += self.n_bins
        self._pending.append((code, w))
        self._pending_rows += code.shape[0]
        n_pos = int(np.count_nonzero(pos))
        self._rows += (pos.shape[0] - n_pos, n_pos)
        if self._pending_rows >= self.n_bins:
            self._flush()

    def _flush(self) -> None:
        """Add the pending batches to the histogram: one pass over the bins."""
        if not self._pending:
            return
        codes = np.concatenate([c for c, _ in self._pending])
        weights = None
        if any(w is not None for _, w in self._pending):
            weights = np.concatenate(
                [np.ones(c.shape[0]) if w is None else w for c, w in self._pending]
            )
        hist = np.bincount(codes, weights=weights, minlength=2 * self.n_bins)
        self._neg += hist[: self.n_bins]
        self._pos += hist[self.n_bins :]
        self._pending, self._pending_rows = [], 0

    def update(
        self,
        labels: npt.ArrayLike,
        probs: npt.ArrayLike,
        weights: npt.ArrayLike | None = None,
    ) -> None:
        """Add a batch: labels in {0, 1}, probs in [0, 1], optional weights >= 0."""
        self._add(*_inputs(labels, probs, weights))

    def merge(self, other: StreamingAUC) -> StreamingAUC:
        """Add ``other``'s counts into this histogram and return self; bins must match."""
        if not isinstance(other, StreamingAUC):
            raise TypeError(f"other must be a StreamingAUC; got {type(other).__name__}.")
        if other.n_bins != self.n_bins:
            raise DataError(
                f"cannot merge a StreamingAUC with {other.n_bins} bins into one with "
                f"{self.n_bins} bins; bins must match."
            )
        self._flush()
        other._flush()
        self._pos += other._pos
        self._neg += other._neg
        self._rows += other._rows
        return self

    @property
    def rows(self) -> int:
        """Number of rows added so far."""
        return int(self._rows.sum())

    def _value_or_none(self) -> float | None:
        self._flush()
        return _auc_from_groups(self._pos, self._neg)

    def value(self) -> float:
        """AUC of the rows so far; raises :class:`DataError` when they are single-class."""
        auc = self._value_or_none()
        if auc is None:
            n_neg, n_pos = (int(r) for r in self._rows)
            raise _one_class_error(n_pos, n_neg, float(self._pos.sum()), float(self._neg.sum()))
        return auc

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the counts as plain arrays: pos, neg (float64, (n_bins,)), rows (int64,
        (negative rows, positive rows)) and logit_limit (float64, 0-d)."""
        self._flush()
        return {
            "pos": self._pos.copy(),
            "neg": self._neg.copy(),
            "rows": self._rows.copy(),
            "logit_limit": np.array(LOGIT_LIMIT),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> StreamingAUC:
        """Rebuild from :meth:`state` (a dict or an ``np.load`` result); validates the arrays."""
        pos = _state_array(state, "pos", "iuf").astype(np.float64)
        neg = _state_array(state, "neg", "iuf").astype(np.float64)
        rows = _state_array(state, "rows", "iu").astype(np.int64)
        limit = _state_array(state, "logit_limit", "iuf")
        if limit.shape != () or float(limit) != LOGIT_LIMIT:
            raise DataError(
                f"state['logit_limit'] must be {LOGIT_LIMIT} (the binning of this version); "
                f"got {limit!r}."
            )
        if pos.ndim != 1 or pos.shape != neg.shape:
            raise DataError(
                "state['pos'] and state['neg'] must be 1-D arrays of one length; got shapes "
                f"{pos.shape} and {neg.shape}."
            )
        for key, arr in (("pos", pos), ("neg", neg)):
            ok = np.isfinite(arr) & (arr >= 0.0)
            if not ok.all():
                i = _first_bad(ok)
                raise DataError(
                    f"state[{key!r}] must be finite and >= 0; got {arr[i].item()!r} at index {i}."
                )
        if rows.shape != (2,) or (rows < 0).any():
            raise DataError(f"state['rows'] must be 2 counts >= 0; got {rows!r}.")
        acc = cls(pos.shape[0])
        acc._pos, acc._neg, acc._rows = pos, neg, rows
        return acc


# --------------------------------------------------------------------------- reliability


@functools.lru_cache(maxsize=4)
def _fine_bins(n_bins: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(left edge, centre, right edge) in p of each histogram bin (uniform in logit); the end
    bins reach 0 and 1 (they hold the clipped logits). Cached: read-only arrays."""
    z = np.linspace(-LOGIT_LIMIT, LOGIT_LIMIT, n_bins + 1)  # (n_bins + 1,) logit edges
    edges = 1.0 / (1.0 + np.exp(-z))
    edges[0], edges[-1] = 0.0, 1.0
    centres = 1.0 / (1.0 + np.exp(-(z[:-1] + z[1:]) / 2.0))
    for a in (edges, centres):
        a.flags.writeable = False
    return edges[:-1], centres, edges[1:]


def reliability(
    pos: npt.ArrayLike, neg: npt.ArrayLike, bins: int = CALIBRATION_BINS
) -> dict[str, list[float]]:
    """The reliability summary of a logit histogram (``StreamingAUC`` bins: ``pos[j]`` /
    ``neg[j]`` the weight of positive / negative rows in bin j, uniform in logit).

    Fine bin j goes to quantile bin ``min(B - 1, floor(B (C_j - w_j / 2) / W))``, with
    ``w_j = pos[j] + neg[j]``, ``C_j`` their running sum and ``W`` the total, so every bin is a
    run of fine bins with about W / B of the weight (fewer, heavier bins when a fine bin holds
    more than that). Returns lists, one entry per non-empty bin in ascending order: ``lo`` /
    ``hi`` (the predictions' range: the outer edges of its non-empty fine bins), ``weight``
    (W_b), ``pred`` (P_b, fine bins at their centre) and ``label`` (Y_b); see the module
    docstring. Empty lists when the total weight is 0.

    >>> r = reliability([0, 1, 0, 3], [2, 1, 0, 1], bins=2)
    >>> r["weight"], r["label"]
    ([4.0, 4.0], [1.0, 3.0])
    """
    p_w = np.asarray(pos, dtype=np.float64)
    n_w = np.asarray(neg, dtype=np.float64)
    if p_w.ndim != 1 or p_w.shape != n_w.shape or p_w.size < 2:
        raise DataError(
            "pos and neg must be 1-D arrays of one length >= 2; got shapes "
            f"{p_w.shape} and {n_w.shape}."
        )
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ConfigError(f"bins must be an int >= 1; got {bins!r}.")
    w = p_w + n_w  # (n,) weight per fine bin
    cum = np.cumsum(w)
    total = float(cum[-1])
    out: dict[str, list[float]] = {k: [] for k in ("lo", "hi", "weight", "pred", "label")}
    if not total > 0.0:
        return out
    lo, centre, hi = _fine_bins(w.size)
    coarse = np.minimum(((cum - 0.5 * w) * (bins / total)).astype(np.intp), bins - 1)  # (n,)
    used = np.flatnonzero(w > 0.0)  # non-empty fine bins, ascending; coarse[used] ascending
    c = coarse[used]
    first = np.flatnonzero(np.concatenate(([True], c[1:] != c[:-1])))  # first fine bin of a run
    last = np.concatenate((first[1:], [c.size])) - 1
    sums = (
        np.add.reduceat(w[used], first),
        np.add.reduceat(w[used] * centre[used], first),
        np.add.reduceat(p_w[used], first),
    )
    out.update(lo=lo[used[first]].tolist(), hi=hi[used[last]].tolist())
    out.update(weight=sums[0].tolist(), pred=sums[1].tolist(), label=sums[2].tolist())
    return out


def calibration_error(r: Mapping[str, list[float]]) -> float:
    """The expected calibration error (1/W) sum_b |P_b - Y_b| of a :func:`reliability`
    summary, in [0, 1]; NaN when it is empty.

    >>> calibration_error({"weight": [4.0, 4.0], "pred": [1.0, 3.0], "label": [1.0, 2.0]})
    0.125
    """
    total = float(np.sum(r["weight"]))
    if not total > 0.0:
        return float("nan")
    return min(1.0, float(np.abs(np.subtract(r["pred"], r["label"])).sum()) / total)


class MetricAccumulator:
    """Streaming logloss / NE / calibration / AUC over many batches; mergeable.

    Keeps (sum w, sum w y, sum w p, sum w loss) in float64 next to a :class:`StreamingAUC`, so
    logloss, NE and calibration equal the one-shot functions up to float rounding and AUC equals
    the histogram AUC. ``eps`` for the logloss clip is DEFAULT_EPS, as in :func:`logloss`.
    """

    def __init__(self, n_bins: int = DEFAULT_N_BINS) -> None:
        self._auc = StreamingAUC(n_bins)
        self._sums = np.zeros(4, dtype=np.float64)  # sum w, sum w*y, sum w*p, sum w*loss

    @property
    def n_bins(self) -> int:
        return self._auc.n_bins

    def update(
        self,
        labels: npt.ArrayLike,
        probs: npt.ArrayLike,
        weights: npt.ArrayLike | None = None,
    ) -> None:
        """Add a batch: labels in {0, 1}, probs in [0, 1], optional weights >= 0."""
        pos, p, w = _inputs(labels, probs, weights)
        self._sums += _batch_sums(pos, p, w, DEFAULT_EPS)
        self._auc._add(pos, p, w)

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Add ``other``'s sums and counts into this accumulator and return self."""
        if not isinstance(other, MetricAccumulator):
            raise TypeError(f"other must be a MetricAccumulator; got {type(other).__name__}.")
        self._auc.merge(other._auc)
        self._sums += other._sums
        return self

    def result(self) -> dict[str, float]:
        """Metrics of the rows so far; never raises.

        Keys: auc, logloss, ne, calibration, rows (an int), ctr, mean_pred. A metric that is
        undefined so far is float('nan'): auc on single-class data, ne when ctr is 0 or 1,
        calibration when ctr is 0, everything but rows before any weight was seen. The
        reliability summary and ECE: :meth:`calibration_bins`, :func:`calibration_error`.
        """
        nan = float("nan")
        sw, swy, swp, swl = (float(x) for x in self._sums)
        auc = self._auc._value_or_none()
        out: dict[str, float] = {
            "auc": nan if auc is None else auc,
            "logloss": nan,
            "ne": nan,
            "calibration": nan,
            "rows": self._auc.rows,
            "ctr": nan,
            "mean_pred": nan,
        }
        if sw > 0.0:
            ctr = swy / sw
            out.update(ctr=ctr, mean_pred=swp / sw, logloss=swl / sw)
            if 0.0 < ctr < 1.0:
                out["ne"] = (swl / sw) / _binary_entropy(ctr)
            if swy > 0.0:
                out["calibration"] = swp / swy
        return out

    def calibration_bins(self, bins: int = CALIBRATION_BINS) -> dict[str, list[float]]:
        """The reliability summary of the rows so far (:func:`reliability` of the AUC
        histogram): per quantile bin lo, hi, weight, pred, label. Nothing is added per row."""
        self._auc._flush()
        return reliability(self._auc._pos, self._auc._neg, bins)

    def state(self) -> dict[str, np.ndarray]:
        """The :meth:`StreamingAUC.state` arrays plus ``sums`` (float64, (4,)): sum w, sum w y,
        sum w p, sum w loss."""
        return {**self._auc.state(), "sums": self._sums.copy()}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> MetricAccumulator:
        """Rebuild from :meth:`state` (a dict or an ``np.load`` result); validates the arrays."""
        auc = StreamingAUC.from_state(state)
        sums = _state_array(state, "sums", "iuf").astype(np.float64)
        if sums.shape != (4,) or not np.isfinite(sums).all():
            raise DataError(f"state['sums'] must be 4 finite floats; got {sums!r}.")
        acc = cls(auc.n_bins)
        acc._auc, acc._sums = auc, sums
        return acc

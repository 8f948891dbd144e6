"""The charts of a run's report, as data: each chart's series built once from ``report.json``.

``psfm report`` draws every chart twice, as inline SVG in the HTML page
(:mod:`psfm.report_html`) and, with matplotlib, as a PNG file (:mod:`psfm.report_png`); both
renderers take the values from here, so the two always show the same numbers. Three shapes:

* :class:`LineChart` -- series over shared x labels (progressive AUC and logloss by day,
  validation AUC by pass);
* :class:`BarChart` -- one value per label (factor rows per level);
* :class:`CalibrationChart` -- the reliability diagram of the test days: per bin the mean
  prediction P_b / W_b (x) against the observed click rate Y_b / W_b (y), the diagonal y = x of
  perfect calibration and the weight W_b of each bin (rows, for unweighted data), from the
  ``test.calibration_bins`` summary (:func:`psfm.metrics.reliability`). Both axes are on a log
  scale: CTR predictions span decades near 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["BarChart", "CalibrationChart", "Chart", "LineChart", "run_charts"]


@dataclass(frozen=True)
class LineChart:
    """``series`` (name -> one value per label, NaN = no point) over the x ``labels``."""

    name: str  # file stem of the PNG
    title: str
    labels: list[str]
    series: dict[str, list[float]]


@dataclass(frozen=True)
class BarChart:
    """One horizontal bar per label."""

    name: str
    title: str
    bars: dict[str, float]


@dataclass(frozen=True)
class CalibrationChart:
    """Per bin, in ascending order of prediction: mean prediction ``pred``, observed rate
    ``rate`` and total ``weight``; ``ece`` and ``ratio`` (sum pred / sum label) of the days."""

    name: str
    title: str
    pred: list[float]
    rate: list[float]
    weight: list[float]
    lo: list[float]  # the range of the predictions in the bin
    hi: list[float]
    ece: float
    ratio: float

    def limits(self) -> tuple[float, float]:
        """The shared (log-scale) range of both axes: every mean prediction and every non-zero
        rate, a little beyond; a bin without clicks is drawn at the lower limit."""
        vals = [v for v in (*self.pred, *self.rate) if v > 0.0]
        lo, hi = min(vals), max(vals)
        return max(lo / 1.5, 1e-7), min(hi * 1.5, 1.0)


Chart = LineChart | BarChart | CalibrationChart


def _day_charts(report: dict[str, Any]) -> list[Chart]:
    days = report["train"].get("per_day", [])
    if not days:
        return []
    several = len({int(d.get("pass", 1)) for d in days}) > 1
    labels = [f"{d.get('pass', 1)}:{d['day']}" if several else str(d["day"]) for d in days]
    what = " (pass:day)" if several else ""
    return [
        LineChart(
            "progressive_auc",
            f"progressive AUC by day{what}",
            labels,
            {"AUC": [float(d["progressive_auc"]) for d in days]},
        ),
        LineChart(
            "progressive_logloss",
            f"progressive logloss by day{what}",
            labels,
            {"logloss": [float(d["logloss"]) for d in days]},
        ),
    ]


def _valid_chart(report: dict[str, Any]) -> list[Chart]:
    valid = report.get("valid") or []
    if not valid:
        return []
    return [
        LineChart(
            "validation_auc",
            "validation AUC by pass",
            [str(v["pass"]) for v in valid],
            {"AUC": [float(v["auc"]) for v in valid]},
        )
    ]


def _size_chart(report: dict[str, Any]) -> list[Chart]:
    m = report["model"]
    rows = m.get("factor_rows_per_level") or []
    bars = {
        f"level {i + 1} (rank {r})": float(n)
        for i, (n, r) in enumerate(zip(rows, m.get("ranks") or []))
    }
    return [BarChart("factor_rows_per_level", "factor rows per level", bars)] if bars else []


def _calibration_chart(report: dict[str, Any]) -> list[Chart]:
    t = report["test"]
    b = t.get("calibration_bins") or {}
    keep = [i for i, w in enumerate(b.get("weight", [])) if w > 0.0]
    if not keep:  # a report of an older version, or no test rows
        return []
    w = [float(b["weight"][i]) for i in keep]
    pred = [float(b["pred"][i]) / wi for i, wi in zip(keep, w)]
    rate = [float(b["label"][i]) / wi for i, wi in zip(keep, w)]
    lo, hi = ([float(b[k][i]) for i in keep] for k in ("lo", "hi"))
    if not any(v > 0.0 for v in (*pred, *rate)):
        return []
    days = ", ".join(map(str, t.get("days", [])))
    ece, ratio = (float("nan") if t.get(k) is None else float(t[k]) for k in ("ece", "calibration"))
    return [
        CalibrationChart(
            "calibration", f"calibration on test days {days}", pred, rate, w, lo, hi, ece, ratio
        )
    ]


def run_charts(report: dict[str, Any]) -> dict[str, Chart]:
    """Every chart of a run's report that has data, by name (the PNG's file stem), in page
    order: progressive_auc, progressive_logloss, validation_auc, factor_rows_per_level,
    calibration."""
    charts = [
        *_day_charts(report),
        *_valid_chart(report),
        *_size_chart(report),
        *_calibration_chart(report),
    ]
    return {c.name: c for c in charts}


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values 1, 2, 5 x 10^k within [lo, hi] (0 < lo < hi); with fewer than three, the
    ends too."""
    ticks = [
        m * 10.0**k
        for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        for m in (1.0, 2.0, 5.0)
        if lo <= m * 10.0**k <= hi
    ]
    return ticks if len(ticks) >= 3 else sorted({lo, *ticks, hi})

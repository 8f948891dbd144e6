"""Summing a pass's unit reports: progress lines while it runs, and the test / validation
metrics at its end (AUC from the histogram, exact when the rows fit, logloss, NE, calibration,
the RaFM-low AUC)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from psfm.backend import Backend, UnitReport
from psfm.config import Config
from psfm.data.parquet import WorkUnit, work_units
from psfm.metrics import MetricAccumulator, auc_exact, calibration_error
from psfm.progress import Progress

__all__ = ["Progress", "Tally", "evaluate_days", "test_metrics", "EXACT_AUC_MAX_ROWS"]

log = logging.getLogger("psfm.runloop")

EXACT_AUC_MAX_ROWS = 20_000_000  # test sets up to this size also get the exact AUC


class Tally:
    """A pass's unit reports summed (rows, skipped rows, bytes, metric accumulators, kept
    predictions), with a :class:`Progress` line at a steady interval: rows, samples/s, (with
    ``show_metrics``) logloss and AUC so far, ETA."""

    def __init__(self, what: str, total_rows: int, every_s: float, show_metrics: bool) -> None:
        self.progress = Progress(
            what, total_rows, every_s, "samples", self._metrics if show_metrics else None
        )
        self.rows = self.skipped = self.bytes = self.cached_rows = 0
        self.cpu = 0.0  # the units' CPU seconds (UnitReport.cpu_seconds)
        self.acc, self.acc_low = MetricAccumulator(), MetricAccumulator()
        self.predictions: list[np.ndarray] = []

    def add(self, r: UnitReport) -> None:
        self.skipped += r.skipped
        self.bytes += r.bytes_pulled + r.bytes_pushed
        self.cached_rows += r.rows if r.cached else 0
        self.cpu += r.cpu_seconds
        if r.acc_state is not None:
            self.acc.merge(MetricAccumulator.from_state(r.acc_state))
        if r.acc_low_state is not None:
            self.acc_low.merge(MetricAccumulator.from_state(r.acc_low_state))
        if r.predictions is not None:
            self.predictions.append(r.predictions)
        self.rows += r.rows
        # last: its line shows this unit's metrics too; skipped rows are part of the total
        self.progress.add(r.rows + r.skipped)

    def _metrics(self) -> str:
        r = self.acc.result()
        return f", logloss {r['logloss']:.4f}, auc {r['auc']:.4f}" if r["rows"] else ""


def evaluate_days(
    cfg: Config,
    backend: Backend,
    days: Sequence[str],
    root: str | None = None,
    what: str = "test",
    reuse: bool = False,
    units: Sequence[WorkUnit] | None = None,
) -> dict[str, Any]:
    """Predict-only pass over ``days`` (no keys created, no updates): AUC (histogram, and
    exact when the rows fit), logloss, normalized entropy, calibration, and the RaFM-low AUC
    (``sum w x + B_{1,1}``). ``what`` names the pass in progress lines; ``reuse``: the days
    are scored again later (validation), so the workers keep their batches; ``units``: the
    days' work units when the caller has listed them already."""
    if units is None:
        root = cfg.data.root if root is None else root
        units = [u for d in days for u in work_units(root, d, cfg.data.rows_per_unit)]
    total = sum(u.rows for u in units)
    keep = total <= EXACT_AUC_MAX_ROWS
    tally = Tally(what, total, cfg.train.log_every_s, show_metrics=False)
    backend.evaluate(units, keep, tally.add, reuse)
    tally.progress.close()
    return test_metrics(
        list(days),
        tally.rows,
        tally.skipped,
        tally.acc,
        tally.acc_low,
        tally.predictions if keep else None,
    )


def test_metrics(
    days: list[str],
    rows: int,
    skipped: int,
    acc: MetricAccumulator,
    acc_low: MetricAccumulator,
    preds: list[np.ndarray] | None,
) -> dict[str, Any]:
    """The report's ``test`` section; exact AUCs when the predictions were kept (they must
    agree with the histogram AUC to 1e-4). ``calibration_bins``: the reliability summary
    (:meth:`~psfm.metrics.MetricAccumulator.calibration_bins`: per bin of about equal weight,
    lo, hi, weight, pred and label sums), ``ece`` the expected calibration error over it."""
    r, r_low = acc.result(), acc_low.result()
    bins = acc.calibration_bins()
    out: dict[str, Any] = {
        "days": list(days),
        "rows": rows,
        "skipped_rows": skipped,
        "auc": r["auc"],
        "auc_hist": r["auc"],
        "logloss": r["logloss"],
        "ne": r["ne"],
        "calibration": r["calibration"],
        "ece": calibration_error(bins),
        "ctr": r["ctr"],
        "auc_low": r_low["auc"],
        "calibration_bins": bins,
    }
    if preds:
        allp = np.concatenate(preds, axis=1)
        out["auc"] = auc_exact(allp[2], allp[0])
        out["auc_low"] = auc_exact(allp[2], allp[1])
        if abs(out["auc"] - out["auc_hist"]) > 1e-4:
            log.warning(
                "histogram AUC %.6f and exact AUC %.6f differ by more than 1e-4",
                out["auc_hist"],
                out["auc"],
            )
    return out

"""Passes over the training days, validation after each pass, and early stopping: the
schedule the run loop (:mod:`psfm.runloop`) walks.

The schedule is ``train.passes`` passes over the training days, one :class:`Step` per (pass,
day). Pass 1 trains each day's work units in file order, exactly as a one-pass run; pass
``p >= 2`` shuffles each day's units with a generator seeded from (``train.seed``, p, day
index) (:func:`pass_units`), so the order is the same on every backend and a run resumed
mid-pass trains the same order as one that was not interrupted (no generator state has to
be carried in a checkpoint). Units are shuffled within a day, never across days: days stay
in time order, which the per-day decay and eviction of the shards assume.

A step's position in the whole schedule (``Step.seq``) is the ``day_index`` its checkpoint
records (pass 1: the day's index, as in a one-pass run), so the most recent checkpoint is
still the one with the highest ``day_index``; checkpoints of pass 1 keep their ``day=D``
names and later passes write ``pass=P.day=D``.

Early stopping (Prechelt, "Early stopping — but when?", 1998, the patience rule): after
each pass the validation days are scored predict-only; :class:`EarlyStopping` decides from
the history of those scores whether the pass improved on the best so far
(:attr:`StopDecision.IMPROVED`), did not but patience is left (:attr:`StopDecision.WAIT`), or
is the ``patience``-th pass in a row without improvement (:attr:`StopDecision.STOP`).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from psfm.data.parquet import WorkUnit

__all__ = [
    "Step",
    "schedule",
    "checkpoint_name",
    "pass_units",
    "unit_groups",
    "StopDecision",
    "EarlyStopping",
    "valid_record",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """Day ``index`` (0-based) of the training days in pass ``pass_no`` (1-based); ``seq``:
    the step's position in the whole schedule; ``last``: the pass's last day."""

    pass_no: int
    index: int
    day: str
    seq: int
    last: bool


def schedule(train_days: Sequence[str], passes: int) -> list[Step]:
    """Every (pass, day) step in training order."""
    n = len(train_days)
    return [
        Step(p, i, d, (p - 1) * n + i, i == n - 1)
        for p in range(1, passes + 1)
        for i, d in enumerate(train_days)
    ]


def checkpoint_name(step: Step) -> str:
    """The folder under ``checkpoints/`` of the checkpoint written after ``step``."""
    return f"day={step.day}" if step.pass_no == 1 else f"pass={step.pass_no}.day={step.day}"


def pass_units(
    units: Sequence[WorkUnit], seed: int, pass_no: int, day_index: int
) -> list[WorkUnit]:
    """A day's units in the order pass ``pass_no`` trains them: file order in pass 1, a
    permutation seeded from (``seed``, ``pass_no``, ``day_index``) after.

    Why shuffle: a second pass in the first pass's order replays the same sequence of
    updates, so whatever the order taught (the last file's rows weigh most in FTRL's
    adaptive rates) is taught twice."""
    if pass_no == 1:
        return list(units)
    rng = np.random.default_rng([seed & ((1 << 64) - 1), pass_no, day_index])
    return [units[i] for i in rng.permutation(len(units))]


def unit_groups(rows: Sequence[int], start: int, every: int) -> list[tuple[int, int]]:
    """The ``[lo, hi)`` index ranges in which a day's units (``rows`` each) are trained from
    unit ``start``: one range, or with ``every > 0`` ranges of at least ``every`` rows (the
    last one what is left), a checkpoint after each but the last.

    >>> unit_groups([5, 5, 5, 5, 5], 0, 0), unit_groups([5, 5, 5, 5, 5], 0, 8)
    ([(0, 5)], [(0, 2), (2, 4), (4, 5)])
    >>> unit_groups([5, 5, 5, 5, 5], 3, 8), unit_groups([5, 5, 5], 3, 8)
    ([(3, 5)], [])
    """
    n = len(rows)
    if start >= n:
        return []
    if every <= 0:
        return [(start, n)]
    out, lo, acc = [], start, 0
    for i in range(start, n):
        acc += rows[i]
        if acc >= every:
            out.append((lo, i + 1))
            lo, acc = i + 1, 0
    if lo < n:
        out.append((lo, n))
    return out


class StopDecision(enum.Enum):
    """What early stopping makes of a pass's validation score."""

    IMPROVED = "improved"  # a new best: keep this state, go on
    WAIT = "wait"  # no better than the best, patience left: go on
    STOP = "stop"  # ``patience`` passes in a row without improvement: stop training


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``metric`` (``"logloss"``: lower is better, ``"auc"``: higher) of the
    validation days has not improved on its best for ``patience`` consecutive passes.

    Only a strict improvement counts, so a pass that ties the best does not reset the count.
    A metric that is not a number (AUC of a single-class day) never improves."""

    metric: str
    patience: int

    def _loss(self, rec: dict[str, Any]) -> float:
        v = float(rec[self.metric])
        if math.isnan(v):
            return math.inf
        return v if self.metric == "logloss" else -v

    def best(self, history: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The validation record of the best pass (the earliest among equals)."""
        return min(history, key=self._loss)

    def decide(self, history: Sequence[dict[str, Any]]) -> StopDecision:
        """Decide on the last record of ``history`` (one per pass, in pass order); logs the
        decision with the numbers it rests on."""
        last, best = history[-1], self.best(history)
        p, b = last["pass"], best["pass"]
        m = self.metric
        if b == p:
            log.info(
                "pass %d: valid %s %.6f is the best so far: %s",
                p,
                m,
                last[m],
                StopDecision.IMPROVED.value,
            )
            return StopDecision.IMPROVED
        since = p - b
        decision = StopDecision.STOP if since >= self.patience else StopDecision.WAIT
        log.info(
            "pass %d: valid %s %.6f, no better than %.6f of pass %d for %d pass(es) "
            "(patience %d): %s",
            p,
            m,
            last[m],
            best[m],
            b,
            since,
            self.patience,
            decision.value,
        )
        return decision


def valid_record(pass_no: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """One ``valid`` entry of the report (and a metrics.jsonl line): the pass and the
    validation days' predict-only metrics."""
    rec = {
        "pass": pass_no,
        "days": metrics["days"],
        "rows": metrics["rows"],
        "auc": metrics["auc"],
        "logloss": metrics["logloss"],
        "ne": metrics["ne"],
        "calibration": metrics["calibration"],
    }
    log.info(
        "pass %d: valid days %s: auc %.4f, logloss %.4f over %d rows",
        pass_no,
        ",".join(metrics["days"]),
        rec["auc"],
        rec["logloss"],
        rec["rows"],
    )
    return rec

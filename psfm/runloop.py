"""The run loop, written once: days, statistics pass, training days, checkpoints, test pass and
report, over a :class:`Backend` that trains and scores work units (DESIGN §7, §8, §10).

Schedule: resolve the days and the run directory; start the backend; restore the latest
complete checkpoint (``--resume``, or a replayed day) or run the statistics pass when the levels
need counts (checkpointed as ``day=stats``); then per training day: the day's work units
(``data.rows_per_unit``), trained with progressive validation (on the first day, the first
``ps.warmup_units`` units by one worker alone), shards end the day, optionally the next day is
scored (``train.eval_next_day``), a checkpoint is written and a ``train_day`` line goes to
``metrics.jsonl``; then a predict-only pass over the test days, a ``test`` line and
``report.json``.

Why one loop over a backend: the in-process trainer and the Ray driver used to hold a copy
each, and the copies drifted (work units, metrics lines, retries). A backend only moves units
to workers and calls to shards; every decision about days, metrics and failures is made here,
and never depends on which backend runs. Both backends report a unit as one typed
:class:`UnitReport`.

A failed day goes to a :class:`FailurePolicy`: a lost shard or worker (which only the backend
can recognise) is retried a bounded number of times per day, by starting the backend afresh,
restoring the last complete checkpoint and replaying the day, so each row is applied once in
the final model (DESIGN §8); anything else (bad input, a bug) fails the run at once.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from psfm.checkpoint import latest_checkpoint, load_checkpoint, read_bytes, resolve, write_bytes
from psfm.config import Config, config_from_dict, to_dict
from psfm.data.parquet import WorkUnit, list_days, split_days, work_units
from psfm.errors import CheckpointError
from psfm.metrics import MetricAccumulator, auc_exact
from psfm.ps.messages import ShardStats
from psfm.steps import auto_batch_size, steps_warning

__all__ = [
    "run", "Backend", "UnitReport", "Decision", "FailurePolicy", "RunDir", "Tally",
    "needs_stats_pass", "check_resume_config", "load_run_config", "evaluate_days",
    "test_metrics", "model_report", "build_report", "EXACT_AUC_MAX_ROWS", "MAX_RETRIES_PER_DAY",
]

log = logging.getLogger(__name__)

EXACT_AUC_MAX_ROWS = 20_000_000  # test sets up to this size also get the exact AUC
MAX_RETRIES_PER_DAY = 2  # replays of one day after lost actors before the run gives up


@dataclass(frozen=True)
class UnitReport:
    """What one worker did with one work unit (in synchronous steps: its slice of the unit),
    the one value every backend hands the loop. Plain numbers and arrays, so it crosses a Ray
    boundary as it is.

    ``acc_state`` / ``acc_low_state``: :meth:`MetricAccumulator.state` of the unit's
    predictions (progressive when training) and of the RaFM-low output ``b + Σ w x + B_{1,1}``;
    None where not measured. ``predictions``: (3, rows) = (probs, probs_low, labels), only
    when the caller asked for them (the exact test AUC)."""

    unit: str
    rows: int
    skipped: int
    loss: float
    seconds: float
    acc_state: dict[str, np.ndarray] | None = None
    acc_low_state: dict[str, np.ndarray] | None = None
    bytes_pulled: int = 0
    bytes_pushed: int = 0
    predictions: np.ndarray | None = None


OnUnit = Callable[[UnitReport], None]


class Backend(Protocol):
    """Shards and workers, in this process or on Ray. ``start`` makes empty shards and the
    workers; ``close`` releases them (idempotent); ``start`` after ``close`` starts afresh.

    ``train`` / ``evaluate`` run every unit once and call ``on_unit`` with each report as it
    arrives (in the order units finish), so progress is logged during the pass; ``warmup``
    units are trained first by one worker alone (moot with one worker). ``count`` runs the
    statistics pass and returns the rows counted; ``finish_counts`` sets the levels and
    returns ``keys`` and ``not_admitted`` summed over shards. ``end_day(n)``: ``n`` training
    days are done (decay, eviction). ``checkpoint`` writes every shard's file and then the
    manifest with ``meta``; ``restore`` loads shard states in shard order. ``lost(error)``:
    why ``error`` means a lost shard or worker that a restore and replay recovers from (e.g.
    ``"an actor died"``), or None when it is anything else. ``workers``: how many train at
    once."""

    workers: int

    def start(self) -> None: ...

    def close(self) -> None: ...

    def lost(self, error: BaseException) -> str | None: ...

    def count(self, units: Sequence[WorkUnit]) -> int: ...

    def finish_counts(self) -> dict[str, int]: ...

    def train(self, units: Sequence[WorkUnit], warmup: int, on_unit: OnUnit) -> None: ...

    def evaluate(self, units: Sequence[WorkUnit], keep_predictions: bool,
                 on_unit: OnUnit) -> None: ...

    def end_day(self, days_done: int) -> None: ...

    def checkpoint(self, ckpt_dir: str, meta: dict[str, Any]) -> None: ...

    def restore(self, states: list[dict[str, np.ndarray]]) -> None: ...

    def stats(self) -> ShardStats: ...


class Decision(enum.Enum):
    """What the loop does with a failed day."""

    RETRY_DAY = "retry_day"  # start the backend afresh, restore the last checkpoint, replay
    GIVE_UP = "give_up"  # re-raise the error


@dataclass(frozen=True)
class FailurePolicy:
    """Decides a failed day: :attr:`Decision.RETRY_DAY` when ``lost(error)`` names a lost
    shard or worker, the run has checkpoints to restore from, and the day has failed at most
    ``max_retries_per_day`` times before; else :attr:`Decision.GIVE_UP`.

    Why per day: a long run on preemptible nodes may lose an actor on many days, and each
    loss costs one day's replay; a day that keeps failing (a node that always dies on it)
    must still end the run. Why only lost actors: bad input or a bug fails the same way
    again, and replaying it only hides the error for a while."""

    lost: Callable[[BaseException], str | None]
    max_retries_per_day: int = MAX_RETRIES_PER_DAY
    can_restore: bool = True

    def decide(self, error: BaseException, day: str, attempt: int) -> Decision:
        """``attempt``: how many times ``day`` has failed, this failure included (1, 2, …)."""
        what = f"{type(error).__name__}: {error}"
        reason = self.lost(error)
        if reason is None:
            log.error("day %s: %s; not a lost shard or worker: giving up", day, what)
            return Decision.GIVE_UP
        if not self.can_restore:
            log.error("day %s: %s (%s); no run directory with checkpoints to restore from: "
                      "giving up", day, reason, what)
            return Decision.GIVE_UP
        if attempt > self.max_retries_per_day:
            log.error("day %s: %s (%s) on attempt %d; %d retries per day spent: giving up",
                      day, reason, what, attempt, self.max_retries_per_day)
            return Decision.GIVE_UP
        log.warning("day %s: %s (%s); restoring the last checkpoint and replaying the day "
                    "(retry %d of %d for this day)", day, reason, what, attempt,
                    self.max_retries_per_day)
        return Decision.RETRY_DAY


def needs_stats_pass(cfg: Config) -> bool:
    """Static RaFM/DiFacto levels need counts before training; so does static admission."""
    return cfg.levels.policy == "static" and (
        cfg.model.levels >= 2 or cfg.levels.admit_min_count > 1
    )


class RunDir:
    """``run_dir/``: config.json, metrics.jsonl, checkpoints/, report.json (local or a
    ``pyarrow.fs`` URI)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._metrics: list[str] = []

    def file(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def write_config(self, cfg: Config) -> None:
        write_bytes(self.file("config.json"), json.dumps(to_dict(cfg), indent=1).encode())

    def keep_metrics(self) -> None:
        """On resume: continue the existing metrics.jsonl."""
        try:
            self._metrics = read_bytes(self.file("metrics.jsonl")).decode().splitlines()
        except CheckpointError:
            self._metrics = []

    def metric(self, record: dict[str, Any]) -> None:
        self._metrics.append(json.dumps(record))
        write_bytes(self.file("metrics.jsonl"), ("\n".join(self._metrics) + "\n").encode())

    def write_report(self, report: dict[str, Any]) -> None:
        write_bytes(self.file("report.json"), json.dumps(report, indent=1).encode())

    def checkpoint_dir(self, day: str) -> str:
        return self.file("checkpoints", f"day={day}")

    def clear_checkpoints(self) -> None:
        """A fresh (not resumed) run must never resume from an older run's checkpoints."""
        fs, p = resolve(self.file("checkpoints"))
        fs.delete_dir_contents(p, missing_dir_ok=True)


def check_resume_config(cfg: Config, saved: dict[str, Any], where: str) -> None:
    """A resumed run must train the model its checkpoint holds: same model, FTRL, levels,
    shard count and seed."""
    now = to_dict(cfg)
    for section in ("model", "ftrl", "levels"):
        if now[section] != saved.get(section):
            raise CheckpointError(f"--resume: the '{section}' section differs from the one "
                                  f"the checkpoint '{where}' was trained with.")
    for section, key in (("ps", "shards"), ("train", "seed")):
        if now[section][key] != saved.get(section, {}).get(key):
            raise CheckpointError(f"--resume: {section}.{key} = {now[section][key]!r} but the "
                                  f"checkpoint '{where}' has "
                                  f"{saved.get(section, {}).get(key)!r}.")


def load_run_config(run_dir: str) -> Config:
    raw = read_bytes(posixpath.join(str(run_dir), "config.json"))
    return config_from_dict(json.loads(raw))


class Tally:
    """A pass's unit reports summed (rows, skipped rows, bytes, metric accumulators, kept
    predictions), with a progress line at a steady interval: rows, samples/s, (with
    ``show_metrics``) logloss and AUC so far, ETA."""

    def __init__(self, what: str, total_rows: int, every_s: float, show_metrics: bool) -> None:
        self.what, self.total, self.every_s, self.show_metrics = (
            what, total_rows, every_s, show_metrics)
        self.rows = self.skipped = self.bytes = 0
        self.acc, self.acc_low = MetricAccumulator(), MetricAccumulator()
        self.predictions: list[np.ndarray] = []
        self.t0 = self.last = time.perf_counter()

    def add(self, r: UnitReport) -> None:
        self.rows += r.rows
        self.skipped += r.skipped
        self.bytes += r.bytes_pulled + r.bytes_pushed
        if r.acc_state is not None:
            self.acc.merge(MetricAccumulator.from_state(r.acc_state))
        if r.acc_low_state is not None:
            self.acc_low.merge(MetricAccumulator.from_state(r.acc_low_state))
        if r.predictions is not None:
            self.predictions.append(r.predictions)
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self._log(now)

    def _log(self, now: float) -> None:
        rate = self.rows / max(now - self.t0, 1e-9)
        eta = max(self.total - self.rows, 0) / max(rate, 1e-9)
        msg = f"{self.what}: {self.rows:,}/{self.total:,} rows, {rate:,.0f} samples/s"
        r = self.acc.result()
        if self.show_metrics and r["rows"]:
            msg += f", logloss {r['logloss']:.4f}, auc {r['auc']:.4f}"
        log.info("%s, ETA %.0fs", msg, eta)


def evaluate_days(cfg: Config, backend: Backend, days: Sequence[str],
                  root: str | None = None) -> dict[str, Any]:
    """Predict-only pass over ``days`` (no keys created, no updates): AUC (histogram, and
    exact when the rows fit), logloss, normalized entropy, calibration, and the RaFM-low AUC
    (``sum w x + B_{1,1}``)."""
    root = cfg.data.root if root is None else root
    units = [u for d in days for u in work_units(root, d, cfg.data.rows_per_unit)]
    total = sum(u.rows for u in units)
    keep = total <= EXACT_AUC_MAX_ROWS
    tally = Tally("test", total, cfg.train.log_every_s, show_metrics=False)
    backend.evaluate(units, keep, tally.add)
    return test_metrics(list(days), tally.rows, tally.skipped, tally.acc, tally.acc_low,
                        tally.predictions if keep else None)


def test_metrics(days: list[str], rows: int, skipped: int, acc: MetricAccumulator,
                 acc_low: MetricAccumulator, preds: list[np.ndarray] | None) -> dict[str, Any]:
    """The report's ``test`` section; exact AUCs when the predictions were kept (they must
    agree with the histogram AUC to 1e-4)."""
    r, r_low = acc.result(), acc_low.result()
    out = {"days": list(days), "rows": rows, "skipped_rows": skipped, "auc": r["auc"],
           "auc_hist": r["auc"], "logloss": r["logloss"], "ne": r["ne"],
           "calibration": r["calibration"], "ctr": r["ctr"], "auc_low": r_low["auc"]}
    if preds:
        allp = np.concatenate(preds, axis=1)
        out["auc"] = auc_exact(allp[2], allp[0])
        out["auc_low"] = auc_exact(allp[2], allp[1])
        if abs(out["auc"] - out["auc_hist"]) > 1e-4:
            log.warning("histogram AUC %.6f and exact AUC %.6f differ by more than 1e-4",
                        out["auc_hist"], out["auc"])
    return out


def day_record(day: str, tally: Tally, seconds: float) -> dict[str, Any]:
    """One ``train.per_day`` entry (also a metrics.jsonl line)."""
    r = tally.acc.result()
    rec = {"day": day, "rows": tally.rows, "skipped_rows": tally.skipped, "seconds": seconds,
           "samples_per_s": tally.rows / max(seconds, 1e-9), "progressive_auc": r["auc"],
           "logloss": r["logloss"], "ne": r["ne"], "calibration": r["calibration"],
           "bytes": tally.bytes}
    log.info("day %s: %d rows in %.1fs (%.0f samples/s), progressive logloss %.4f auc %.4f",
             day, tally.rows, seconds, rec["samples_per_s"], r["logloss"], r["auc"])
    return rec


def next_day_record(day: str, test: dict[str, Any]) -> dict[str, Any]:
    log.info("next day %s: auc %.4f, logloss %.4f", day, test["auc"], test["logloss"])
    return {"day": day, "auc": test["auc"], "logloss": test["logloss"], "rows": test["rows"]}


def model_report(cfg: Config, s: ShardStats) -> dict[str, Any]:
    """The report's ``model`` section: model size over all shards."""
    return {
        "kind": cfg.model.kind,
        "ranks": list(cfg.model.ranks),
        "keys": s.keys,
        "nonzero_params": s.nonzero_params,
        "nonzero_w": s.nonzero_w,
        "nonzero_factors": s.nonzero_factors,
        "factor_rows_per_level": s.factor_rows_per_level,
        "ps_bytes": s.ps_bytes,
        "raw_bytes": s.raw_bytes,
    }


def build_report(cfg: Config, test: dict[str, Any], model: dict[str, Any],
                 train_days: list[str], per_day: list[dict[str, Any]],
                 wall_seconds: float) -> dict[str, Any]:
    """The ``report.json`` layout of DESIGN §10."""
    rows = sum(d["rows"] for d in per_day)
    seconds = sum(d["seconds"] for d in per_day)
    return {
        "test": test,
        "model": model,
        "train": {
            "days": list(train_days),
            "rows": rows,
            "samples_per_s": rows / max(seconds, 1e-9),
            "bytes_per_sample": sum(d.get("bytes", 0) for d in per_day) / max(rows, 1),
            "per_day": per_day,
            "wall_seconds": wall_seconds,
        },
        "config": to_dict(cfg),
    }


def run(cfg: Config, make_backend: Callable[[Config], Backend],
        resume: bool = False) -> dict[str, Any]:
    """Train and evaluate ``cfg`` on the backend ``make_backend(cfg)`` builds; returns the
    report (also written to the run directory). The backend is built only after the days
    and the run directory are settled, so a bad day spec or a missing checkpoint fails
    before any worker starts."""
    return _Run(cfg, resume).go(make_backend)


class _Run:
    """One run's days, run directory and schedule."""

    def __init__(self, cfg: Config, resume: bool) -> None:
        self.cfg, self.root = cfg, cfg.data.root
        self.all_days = list_days(self.root)
        self.train_days, self.test_days = split_days(self.all_days, cfg.data.train_days,
                                                     cfg.data.test_days)
        self.cfg = self._resolve(cfg)
        log.info("config: %s", json.dumps(to_dict(self.cfg)))
        self.run = RunDir(cfg.train.run_dir) if cfg.train.run_dir else None
        if resume and (self.run is None or latest_checkpoint(self.run.path) is None):
            raise CheckpointError(f"--resume: no complete checkpoint in '{cfg.train.run_dir}'.")
        if self.run:
            if resume:
                self.run.keep_metrics()
            else:
                self.run.clear_checkpoints()
            self.run.write_config(self.cfg)

    def _resolve(self, cfg: Config) -> Config:
        """What the config leaves to the data, settled before any worker starts and written
        into the run directory: the layout of the files, and the batch size
        (``data.batch_size = 0``: :func:`psfm.steps.auto_batch_size` of one pass)."""
        from psfm.data.batch import resolve_layout
        from psfm.data.parquet import day_files

        days = self.train_days + self.test_days
        data = resolve_layout(cfg.data, day_files(self.root, days[0])[0]) if days else cfg.data
        rows = sum(u.rows for d in self.train_days
                   for u in work_units(self.root, d, cfg.data.rows_per_unit))
        if data.batch_size == 0:
            data = dataclasses.replace(data, batch_size=auto_batch_size(rows))
            log.info("data.batch_size = 0 (auto): %d rows per update for a pass of %d rows",
                     data.batch_size, rows)
        else:
            warning = steps_warning(rows, data.batch_size)
            if warning:
                log.warning("%s", warning)
        return dataclasses.replace(cfg, data=data)

    def go(self, make_backend: Callable[[Config], Backend]) -> dict[str, Any]:
        t_start = time.perf_counter()
        backend = make_backend(self.cfg)
        try:
            backend.start()
            start, per_day = self._restore_or_start(backend)
            log.info("train days %s (from %s), test days %s, %d shards, %d workers, %s mode",
                     self.train_days, self.train_days[start] if start < len(self.train_days)
                     else "-", self.test_days, self.cfg.ps.shards, backend.workers,
                     self.cfg.ps.mode)
            per_day = self._train_days(backend, start, per_day)
            test = evaluate_days(self.cfg, backend, self.test_days)
            model = model_report(self.cfg, backend.stats())
        finally:
            backend.close()
        report = build_report(self.cfg, test, model, self.train_days, per_day,
                              time.perf_counter() - t_start)
        if self.run:
            self.run.metric({"event": "test", **test})
            self.run.write_report(report)
        return report

    def _restore_or_start(self, backend: Backend) -> tuple[int, list[dict[str, Any]]]:
        """Load the latest complete checkpoint, or run the statistics pass; returns the index
        of the first day to train and the per-day records so far."""
        ckpt = latest_checkpoint(self.run.path) if self.run else None
        if ckpt is None:
            if needs_stats_pass(self.cfg):
                self._stats_pass(backend)
            return 0, []
        states, manifest = load_checkpoint(ckpt)
        check_resume_config(self.cfg, manifest.get("config", {}), ckpt)
        if len(states) != self.cfg.ps.shards:
            raise CheckpointError(f"Checkpoint '{ckpt}' has {len(states)} shards; the run has "
                                  f"ps.shards = {self.cfg.ps.shards}.")
        backend.restore(states)
        start = int(manifest["day_index"]) + 1
        log.info("restored %s: %d of %d training days done", ckpt, start,
                 len(self.train_days))
        return start, list(manifest.get("per_day", []))

    def _stats_pass(self, backend: Backend) -> None:
        t0 = time.perf_counter()
        units = [u for d in self.train_days
                 for u in work_units(self.root, d, self.cfg.data.rows_per_unit)]
        rows = backend.count(units)
        info = backend.finish_counts()
        log.info("statistics pass: %d rows, %d keys (%d not admitted) in %.1fs", rows,
                 info["keys"], info["not_admitted"], time.perf_counter() - t0)
        if self.run:  # so that a crash during day 1 resumes without a second counting pass
            backend.checkpoint(self.run.checkpoint_dir("stats"),
                               {"day": None, "day_index": -1, "per_day": [],
                                "config": to_dict(self.cfg)})

    def _train_days(self, backend: Backend, start: int,
                    per_day: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every training day from ``start``; a failed day goes to the failure policy."""
        policy = FailurePolicy(backend.lost, can_restore=self.run is not None)
        failures: Counter[int] = Counter()
        i = start
        while i < len(self.train_days):
            try:
                rec = self._day(backend, i, per_day)
            except Exception as e:
                failures[i] += 1
                if policy.decide(e, self.train_days[i], failures[i]) is Decision.GIVE_UP:
                    raise
                backend.close()
                backend.start()
                i, per_day = self._restore_or_start(backend)
                continue
            per_day = [*per_day, rec]
            if self.run:  # after the checkpoint: a replayed day never writes its line twice
                self.run.metric({"event": "train_day", **rec})
            i += 1
        return per_day

    def _day(self, backend: Backend, i: int, per_day: list[dict[str, Any]]) -> dict[str, Any]:
        """Train day ``i``, end it on the shards, score the next day if asked, checkpoint."""
        day = self.train_days[i]
        units = work_units(self.root, day, self.cfg.data.rows_per_unit)
        tally = Tally(f"day {day}", sum(u.rows for u in units), self.cfg.train.log_every_s,
                      show_metrics=True)
        t0 = time.perf_counter()
        backend.train(units, self.cfg.ps.warmup_units if i == 0 else 0, tally.add)
        rec = day_record(day, tally, time.perf_counter() - t0)
        backend.end_day(i + 1)
        k = self.all_days.index(day) + 1
        if self.cfg.train.eval_next_day and k < len(self.all_days):
            nxt = self.all_days[k]
            rec["next_day"] = next_day_record(nxt, evaluate_days(self.cfg, backend, [nxt]))
        if self.run:
            backend.checkpoint(self.run.checkpoint_dir(day),
                               {"day": day, "day_index": i, "per_day": [*per_day, rec],
                                "config": to_dict(self.cfg)})
        return rec

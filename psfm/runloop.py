"""The run loop, written once: days, statistics pass, passes over the training days,
validation and early stopping, checkpoints, test pass and report, over a :class:`Backend` that
trains and scores work units (DESIGN §7, §8, §10).

Schedule: resolve the days (train, validation, test) and the run directory; start the
backend; restore the most recent complete checkpoint (``--resume``, or a replayed day) or run
the statistics pass when the levels need counts (once, before pass 1, checkpointed as
``day=stats``), or, for a warm start (``train.init_from``) without a checkpoint of its own,
load the source's state (below); then the ``train.passes`` passes of :mod:`psfm.passes`, per
training day: the day's work units (``data.rows_per_unit``; shuffled after pass 1), trained
with progressive validation (on the first day of pass 1, the first ``ps.warmup_units`` units by
one worker alone), shards end the day, optionally the next day is scored
(``train.eval_next_day``); at a pass's last day the validation days are scored and early
stopping decides; a checkpoint is written and a ``train_day`` (and ``valid``) line goes to
``metrics.jsonl``. When early stopping kept an earlier pass as the best, that pass's
end-of-pass checkpoint (or, without a run directory, its in-memory snapshot) is restored; then
a predict-only pass over the test days, a ``test`` line and ``report.json``
(:mod:`psfm.rundir`).

Why one loop over a backend: the in-process trainer and the Ray driver used to hold a copy
each, and the copies drifted (work units, metrics lines, retries). A backend only moves units
to workers and calls to shards; every decision about days, passes, metrics and failures is
made here, and never depends on which backend runs. Both backends report a unit as one typed
:class:`UnitReport`.

A failed day goes to a :class:`FailurePolicy`: a lost shard or worker (which only the backend
can recognise) is retried a bounded number of times per day, by starting the backend afresh,
restoring the last complete checkpoint and replaying the day, so each row is applied once in
the final model (DESIGN §8); anything else (bad input, a bug) fails the run at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from psfm.backend import Backend, States
from psfm.checkpoint import (
    load_checkpoint,
    load_newest_checkpoint,
    prune_checkpoints,
    resume_checkpoint,
)
from psfm.config import Config, to_dict
from psfm.data.parquet import WorkUnit, day_roles, list_days, work_units
from psfm.errors import CheckpointError, ConfigError
from psfm.failure import Decision, FailurePolicy
from psfm.memory import process_age
from psfm.passes import (
    EarlyStopping,
    Step,
    StopDecision,
    checkpoint_name,
    pass_units,
    schedule,
    unit_groups,
    valid_record,
)
from psfm.ps.levels import counted_first
from psfm.ps.snapshot import resplit
from psfm.rundir import (
    RunDir,
    build_report,
    check_resume_config,
    day_record,
    model_report,
    next_day_record,
)
from psfm.scoring import Progress, Tally, evaluate_days
from psfm.steps import resolve_steps
from psfm.warmstart import InitSource, check_init_config, load_init_states, open_init

__all__ = ["run", "needs_stats_pass"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_RUNS = itertools.count()  # runs started in this process (seconds_to_first_batch: the first's)


def needs_stats_pass(cfg: Config) -> bool:
    """Static RaFM/DiFacto levels need counts before training; so does static admission."""
    return counted_first(cfg.levels.policy, cfg.model.levels, cfg.levels.admit_min_count)


def run(
    cfg: Config, make_backend: Callable[[Config], Backend], resume: bool = False
) -> dict[str, Any]:
    """Train and evaluate ``cfg`` on the backend ``make_backend(cfg)`` builds; returns the
    report (also written to the run directory). The backend is built only after the days
    and the run directory are settled, so a bad day spec or a missing checkpoint fails
    before any worker starts."""
    return _Run(cfg, resume).go(make_backend)


def _absolute(path: str) -> str:
    """A local path made absolute (URIs and "" as they are)."""
    return path if not path or "://" in path else os.path.abspath(path)


@dataclass(frozen=True)
class _Progress:
    """Where a run stands: ``next``, the index in the schedule of the next step to train;
    the per-day and validation records so far; whether early stopping ended training; and,
    without a run directory, the best pass's shard states (with one, its checkpoint);
    ``units_done``: work units of step ``next`` trained before a checkpoint within the day
    (``train.checkpoint_every_rows``)."""

    next: int = 0
    per_day: list[dict[str, Any]] = field(default_factory=list)
    valid: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    best_states: States | None = None
    units_done: int = 0


class _Run:
    """One run's days, run directory and schedule."""

    def __init__(self, cfg: Config, resume: bool) -> None:
        self.cfg, self.root = cfg, cfg.data.root
        self.all_days = list_days(self.root)
        roles = day_roles(
            self.all_days, cfg.data.train_days, cfg.data.test_days, cfg.data.valid_days
        )
        self.train_days, self.valid_days, self.test_days = roles.train, roles.valid, roles.test
        self._units: dict[str, list[WorkUnit]] = {}
        self.cfg = self._resolve(cfg)
        self.steps = schedule(self.train_days, cfg.train.passes)
        self.stopper = (
            EarlyStopping(cfg.train.early_stop, cfg.train.patience)
            if cfg.train.early_stop
            else None
        )
        log.debug("config: %s", json.dumps(to_dict(self.cfg)))  # also RUN_DIR/config.json
        run_dir = self.cfg.train.run_dir
        self.run = RunDir(run_dir) if run_dir else None
        if resume and self.run is None:
            raise CheckpointError("--resume needs a run directory (train.run_dir).")
        restart = False  # resumed before the run's first checkpoint: nothing trained to keep
        if resume and self.run is not None and resume_checkpoint(self.run.path) is None:
            if self.run.existing_run():  # checkpoints none of which verifies, or a report
                raise CheckpointError(f"--resume: no complete checkpoint in '{run_dir}'.")
            log.warning(
                "--resume: '%s' has no checkpoint yet (the run stopped before its first one): "
                "starting the run from the beginning",
                run_dir,
            )
            resume, restart = False, True
        self.day_base = 0  # the day index the shards had reached before this run's first day
        self.warm_from = ""  # the warm start's source, once started from it (no warm-up unit)
        self.init: InitSource | None = None
        init_from = self.cfg.train.init_from
        if init_from and not resume:
            if run_dir and init_from.rstrip("/") == run_dir.rstrip("/"):
                raise ConfigError(
                    f"train.init_from is this run's own directory '{run_dir}', which a new run "
                    "starts over; continue that run with --resume instead."
                )
            self.init = open_init(init_from)
            check_init_config(self.cfg, self.schema, self.init)
        if self.run:
            if resume:
                self.run.keep_metrics()
            else:
                there = self.run.existing_run()
                if there and not cfg.train.overwrite and not restart:
                    raise CheckpointError(
                        f"Run directory '{run_dir}' already holds a run ({', '.join(there)}). "
                        "Continue it with --resume, choose another --run-dir, or start it over "
                        "with --overwrite (train.overwrite = true), which deletes them."
                    )
                self.run.start_over()
            self.run.write_config(self.cfg)

    def _units_of(self, day: str) -> list[WorkUnit]:
        """A day's work units, listed once per run (every file's footer is read: the
        batch-size resolution, the statistics pass, each pass over the day and each scoring
        of a validation, next or test day share them)."""
        if day not in self._units:
            self._units[day] = work_units(self.root, day, self.cfg.data.rows_per_unit)
        return self._units[day]

    def _units_in(self, days: Sequence[str]) -> list[WorkUnit]:
        return [u for d in days for u in self._units_of(d)]

    def _resolve(self, cfg: Config) -> Config:
        """What the config leaves to the data, settled before any worker starts and written
        into the run directory: the layout of the files, and the batch size
        (``data.batch_size = 0``: :func:`psfm.steps.auto_batch_size` of one pass)."""
        from psfm.data.batch import resolve_layout
        from psfm.data.parquet import day_files
        from psfm.data.schemas import check_files, left_out, schema_record

        days = self.train_days + self.test_days
        first = day_files(self.root, days[0])[0] if days else ""
        data = resolve_layout(cfg.data, first) if days else cfg.data
        # the features as keys are made of them: in every manifest, in the exported model
        self.schema = schema_record(data, first) if days else None
        if self.schema is not None and (skipped := left_out(data, first, self.schema)):
            log.warning(
                "column(s) %s of the training files have no feature type and are left out "
                "(name them in data.ignore to say so, or convert them to int, string or float)",
                ", ".join(skipped),
            )
        if self.schema is not None:  # and every file of the run has them, before any training
            every = [*self.train_days, *self.valid_days, *self.test_days]
            check_files(data, [f for d in every for f in day_files(self.root, d)], self.schema)
        # stored absolute: a resumed run, a Ray worker elsewhere read the same folders
        data = dataclasses.replace(data, root=_absolute(data.root))
        train = dataclasses.replace(
            cfg.train,
            run_dir=_absolute(cfg.train.run_dir),
            init_from=_absolute(cfg.train.init_from),
        )
        cfg = dataclasses.replace(cfg, train=train)
        rows = sum(u.rows for u in self._units_in(self.train_days))
        return resolve_steps(dataclasses.replace(cfg, data=data), rows)

    def go(self, make_backend: Callable[[Config], Backend]) -> dict[str, Any]:
        # the process's age says what its user waited for its first run alone (a study's
        # later runs, a notebook's, would count those before them)
        t_start, age = time.perf_counter(), process_age() if next(_RUNS) == 0 else None
        backend = make_backend(self.cfg)
        try:
            backend.start()
            t_started = time.perf_counter()
            prog = self._retrying(  # counts again from the log: nothing to restore first
                backend,
                "the statistics pass",
                lambda b, fresh: self._restore_or_start(b),
                needs_restore=False,
            )
            at = (
                f"pass {self.steps[prog.next].pass_no} day {self.steps[prog.next].day}"
                if prog.next < len(self.steps) and not prog.stopped
                else "-"
            )
            log.info(
                "train days %s x %d pass(es) (from %s), valid days %s, test days %s, "
                "%d shards, %d workers, %s mode",
                self.train_days,
                self.cfg.train.passes,
                at,
                self.valid_days,
                self.test_days,
                self.cfg.ps.shards,
                backend.workers,
                self.cfg.ps.mode,
            )
            t_train = time.perf_counter()
            prog = self._train(backend, prog)
            tested = self._restore_best(backend, prog)

            def test_pass(b: Backend, fresh: bool) -> dict[str, Any]:
                if fresh:  # a restarted backend: the tested state back on its shards
                    self._restore_or_start(b)
                    self._restore_best(b, prog)
                return evaluate_days(
                    self.cfg, b, self.test_days, units=self._units_in(self.test_days)
                )

            t_test = time.perf_counter()
            test = self._retrying(backend, "the test pass", test_pass)
            t_tested = time.perf_counter()
            model = model_report(self.cfg, backend.stats())
            memory = backend.memory()
        finally:
            backend.close()
        report = build_report(
            self.cfg,
            test,
            model,
            self.train_days,
            prog.per_day,
            time.perf_counter() - t_start,
            valid=prog.valid,
            best_pass=tested,
            early_stopped=prog.stopped,
        )
        # where the time outside the training days goes: starting Ray and its actors, then
        # the statistics pass or the restore, before the first batch; the test pass. And
        # what a user waits for the first batch, from the start of the process (its imports,
        # the plan of the run) where the system says when that was, for its first run
        report["timing"] = {
            "startup_seconds": t_started - t_start,
            "seconds_before_training": t_train - t_start,
            "seconds_to_first_batch": None if age is None else age + t_train - t_start,
            "test_seconds": t_tested - t_test,
        }
        report["memory"] = memory
        if self.run:
            self.run.metric({"event": "test", **test})
            self.run.write_report(report)
        return report

    def _retrying(
        self,
        backend: Backend,
        what: str,
        fn: Callable[[Backend, bool], T],
        needs_restore: bool = True,
    ) -> T:
        """``fn(backend, fresh)`` for a phase outside the training days (the statistics
        pass, the test pass), under the same failure policy as a day: a lost shard or worker
        restarts the backend and runs the phase again with ``fresh`` true (``fn`` restores
        what it needs), at most ``MAX_RETRIES_PER_DAY`` times."""
        can_restore = self.run is not None or not needs_restore
        policy = FailurePolicy(backend.lost, can_restore=can_restore)
        attempt, fresh = 0, False
        while True:
            try:
                return fn(backend, fresh)
            except Exception as e:
                attempt += 1
                if policy.decide(e, what, attempt) is Decision.GIVE_UP:
                    raise
                backend.close()
                backend.start()
                fresh = True

    def _restore_or_start(self, backend: Backend) -> _Progress:
        """Load the most recent complete checkpoint, or run the statistics pass; returns
        where the schedule stands."""
        found = load_newest_checkpoint(self.run.path) if self.run else None
        if found is None:
            if self.init is not None:
                return self._warm_start(backend, self.init)
            if needs_stats_pass(self.cfg):
                self._stats_pass(backend)
            return _Progress()
        ckpt, states, manifest = found
        self.day_base = int(manifest.get("day_base", 0))
        self.warm_from = str(manifest.get("init_from") or "")
        check_resume_config(self.cfg, manifest.get("config", {}), ckpt)
        self._check_schedule(ckpt, manifest)
        if len(states) != self.cfg.ps.shards:
            raise CheckpointError(
                f"Checkpoint '{ckpt}' has {len(states)} shards; the run has "
                f"ps.shards = {self.cfg.ps.shards}."
            )
        backend.restore(states)
        prog = _Progress(
            int(manifest["day_index"]) + 1,
            list(manifest.get("per_day", [])),
            list(manifest.get("valid", [])),
            bool(manifest.get("stopped")),
            units_done=int(manifest.get("units_done", 0)),
        )
        log.info(
            "restored %s: %d of %d training days (%d x %d passes) done%s%s",
            ckpt,
            prog.next,
            len(self.steps),
            len(self.train_days),
            self.cfg.train.passes,
            f", and {prog.units_done} work units of the next" if prog.units_done else "",
            "; early stopping ended training" if prog.stopped else "",
        )
        return prog

    def _meta(self, **meta: Any) -> dict[str, Any]:
        """A checkpoint's manifest fields: ``meta`` and what every checkpoint of the run
        carries (config, feature schema, the warm start's day base and source)."""
        out = {**meta, "config": to_dict(self.cfg), "day_base": self.day_base}
        if self.schema is not None:
            out["schema"] = self.schema
        if self.warm_from:
            out["init_from"] = self.warm_from
        return out

    def _warm_start(self, backend: Backend, init: InitSource) -> _Progress:
        """Put the warm start's source state on the empty shards (with this run's statistics
        pass folded in when the levels need one) and checkpoint it as ``day=init``."""
        t0 = time.perf_counter()
        states, self.day_base = load_init_states(self.cfg, init)
        self.warm_from = init.path
        keys = sum(int(st["table.keys"].size) for st in states)
        if needs_stats_pass(self.cfg):
            self._stats_pass(backend, checkpoint=False)
            counted = backend.snapshot()
            states = resplit([*states, *counted], self.cfg.ps.shards, tied=self.cfg.model.tied)
        backend.restore(states)
        log.info(
            "warm start from %s: %d keys%s, day index %d, in %.1fs",
            init.checkpoint or init.path,
            keys,
            " (weights only: n = 0)" if not init.checkpoint else "",
            self.day_base,
            time.perf_counter() - t0,
        )
        if self.run:  # a replayed first day or a resumed run starts here, not from the source
            meta = self._meta(day=None, day_index=-1, per_day=[])
            backend.checkpoint(self.run.checkpoint_dir("day=init"), meta)
        return _Progress()

    def _check_schedule(self, ckpt: str, manifest: dict[str, Any]) -> None:
        """A resumed run continues the schedule the checkpoint was trained on: the steps done
        must be the first steps of this run's schedule. Adding days after the last one (one
        pass) extends a run; changing the days already trained, or the days of a run with
        several passes, is refused."""
        done = [(int(r.get("pass", 1)), str(r["day"])) for r in manifest.get("per_day", [])]
        ahead = [(st.pass_no, st.day) for st in self.steps[: len(done)]]
        if done != ahead:
            raise CheckpointError(
                f"--resume: checkpoint '{ckpt}' was trained on (pass, day) {done}, but this "
                f"run's schedule starts with {ahead} (train days {self.train_days}, "
                f"{self.cfg.train.passes} pass(es)). Resume with the days it was trained on; "
                "to extend a one-pass run, add days after its last one."
            )

    def _stats_pass(self, backend: Backend, checkpoint: bool = True) -> None:
        """Count every training day once, before pass 1: counts are occurrences in the log,
        whatever the number of passes."""
        t0 = time.perf_counter()
        units = self._units_in(self.train_days)
        progress = Progress(
            "statistics pass", sum(u.rows for u in units), self.cfg.train.log_every_s
        )
        rows = backend.count(units, reuse=True, on_rows=progress.add)  # pass 1 replays them
        progress.close()
        info = backend.finish_counts()
        log.info(
            "statistics pass: %d rows, %d keys (%d not admitted) in %.1fs",
            rows,
            info["keys"],
            info["not_admitted"],
            time.perf_counter() - t0,
        )
        if self.run and checkpoint:  # a crash during day 1 resumes without a second count
            backend.checkpoint(
                self.run.checkpoint_dir("day=stats"),
                self._meta(day=None, day_index=-1, per_day=[]),
            )

    def _train(self, backend: Backend, prog: _Progress) -> _Progress:
        """Every step of the schedule from ``prog.next`` until the last or until early
        stopping ends training; a failed day goes to the failure policy."""
        policy = FailurePolicy(backend.lost, can_restore=self.run is not None)
        failures: Counter[int] = Counter()
        while prog.next < len(self.steps) and not prog.stopped:
            step = self.steps[prog.next]
            try:
                nxt, rec = self._step(backend, step, prog)
            except Exception as e:
                failures[step.seq] += 1
                label = f"day {step.day}" + (
                    f" of pass {step.pass_no}" if self.cfg.train.passes > 1 else ""
                )
                if policy.decide(e, label, failures[step.seq]) is Decision.GIVE_UP:
                    raise
                backend.close()
                backend.start()
                prog = self._restore_or_start(backend)
                continue
            if self.run:  # after the checkpoint: a replayed day never writes its line twice
                self.run.metric({"event": "train_day", **rec})
                if len(nxt.valid) > len(prog.valid):
                    self.run.metric({"event": "valid", **nxt.valid[-1]})
            prog = nxt
        return prog

    def _step(
        self, backend: Backend, step: Step, prog: _Progress
    ) -> tuple[_Progress, dict[str, Any]]:
        """Train one day of one pass; at a pass's end, validate and let early stopping
        decide; checkpoint. Returns where the run then stands and the day's record."""
        rec = self._day(backend, step, prog)
        nxt = dataclasses.replace(
            prog, next=step.seq + 1, per_day=[*prog.per_day, rec], units_done=0
        )
        if step.last and self.valid_days:
            nxt = self._validate(backend, step, nxt)
        if self.run:
            self._checkpoint(backend, step, nxt)
        return nxt, rec

    def _checkpoint(
        self, backend: Backend, step: Step, prog: _Progress, units_done: int = 0
    ) -> None:
        """Checkpoint after ``step`` (``prog``: where the run then stands), or within it after
        its first ``units_done`` work units (``prog``: where it stood before the step); then
        keep the newest ``train.keep_checkpoints`` (and the best pass's)."""
        assert self.run is not None
        name = checkpoint_name(step)
        meta = self._meta(
            day=step.day,
            day_index=step.seq - 1 if units_done else step.seq,
            per_day=prog.per_day,
            valid=prog.valid,
            stopped=prog.stopped,
        )
        meta["pass"] = step.pass_no
        if units_done:
            meta["units_done"] = units_done
            name += f".units={units_done:06d}"
        if self.stopper and prog.valid:  # the run's model for export / evaluate
            meta["best_checkpoint"] = self._best_name(prog.valid)
        backend.checkpoint(self.run.checkpoint_dir(name), meta)
        protect = {meta["best_checkpoint"]} if "best_checkpoint" in meta else set()
        for gone in prune_checkpoints(self.run.path, self.cfg.train.keep_checkpoints, protect):
            log.debug(
                "removed checkpoint %s (train.keep_checkpoints = %d)",
                gone,
                self.cfg.train.keep_checkpoints,
            )

    def _day(self, backend: Backend, step: Step, prog: _Progress) -> dict[str, Any]:
        """Train ``step``'s day (from unit ``prog.units_done``, checkpointing within it every
        ``train.checkpoint_every_rows``), end it on the shards, score the next day if
        asked."""
        day = step.day
        units = pass_units(self._units_of(day), self.cfg.train.seed, step.pass_no, step.index)
        start = prog.units_done
        what = f"day {day}" + (f" of pass {step.pass_no}" if step.pass_no > 1 else "")
        tally = Tally(what, sum(u.rows for u in units[start:]), self.cfg.train.log_every_s, True)
        t0, started = time.perf_counter(), time.time()
        first = step.seq == 0 and not self.warm_from and start == 0
        warmup = self.cfg.ps.warmup_units if first else 0
        reuse = step.pass_no < self.cfg.train.passes
        every = self.cfg.train.checkpoint_every_rows if self.run else 0
        shard_cpu0, driver_cpu0 = backend.train_cpu(), time.process_time()
        for lo, hi in unit_groups([u.rows for u in units], start, every):
            backend.train(units[lo:hi], warmup, tally.add, reuse=reuse)
            warmup = 0
            if hi < len(units):  # within the day: resumes after unit hi
                self._checkpoint(backend, step, prog, units_done=hi)
        tally.progress.close()
        rec = day_record(
            day,
            step.pass_no,
            tally.rows,
            tally.skipped,
            tally.bytes,
            tally.acc,
            time.perf_counter() - t0,
            cached_rows=tally.cached_rows,
        )
        # CPU per sample of the workers and of the shards: what psfm.sizing scales from
        shard_cpu = backend.train_cpu()
        rec["started"] = started  # Unix time: lines the day up with outside measurements
        rec["worker_cpu_seconds"] = tally.cpu
        rec["shard_cpu_seconds"] = None if shard_cpu is None else shard_cpu - (shard_cpu0 or 0.0)
        # this process's (None in process: it is the worker's, already counted)
        rec["driver_cpu_seconds"] = None if shard_cpu is None else time.process_time() - driver_cpu0
        if start:
            rec["resumed_at_unit"] = start  # the rows and metrics are those after it
        kept = backend.end_day(self.day_base + step.seq + 1)
        rec["keys"], rec["evicted"] = int(kept["keys"]), int(kept["evicted"])
        if self.cfg.levels.ttl_days:
            log.info("day %s end: %d keys stored, %d evicted", day, rec["keys"], rec["evicted"])
        k = self.all_days.index(day) + 1
        if self.cfg.train.eval_next_day and k < len(self.all_days):
            nxt = self.all_days[k]
            # keep its batches when it is read again: validated, or trained later
            later = {st.day for st in self.steps[step.seq + 1 :]}
            again = nxt in self.valid_days or nxt in later
            rec["next_day"] = next_day_record(
                nxt, evaluate_days(self.cfg, backend, [nxt], reuse=again, units=self._units_of(nxt))
            )
        return rec

    def _validate(self, backend: Backend, step: Step, prog: _Progress) -> _Progress:
        """Score the validation days after pass ``step.pass_no``; with early stopping, decide
        (:class:`~psfm.passes.StopDecision`, logged with its numbers) and, without a run
        directory, keep a new best pass's state in memory."""
        more = step.pass_no < self.cfg.train.passes  # scored again after the next pass
        rec = valid_record(
            step.pass_no,
            evaluate_days(
                self.cfg,
                backend,
                self.valid_days,
                what="valid",
                reuse=more,
                units=self._units_in(self.valid_days),
            ),
        )
        if self.stopper is None:
            return dataclasses.replace(prog, valid=[*prog.valid, rec])
        history = [*prog.valid, rec]
        decision = self.stopper.decide(history)
        rec.update(decision=decision.value, best_pass=self.stopper.best(history)["pass"])
        best_states = prog.best_states
        if decision is StopDecision.IMPROVED and self.run is None:
            best_states = backend.snapshot()
        return dataclasses.replace(
            prog,
            valid=[*prog.valid, rec],
            best_states=best_states,
            stopped=decision is StopDecision.STOP,
        )

    def _best_name(self, valid: list[dict[str, Any]]) -> str:
        """The checkpoint folder of the best validated pass's last day."""
        assert self.stopper is not None
        b, n = int(self.stopper.best(valid)["pass"]), len(self.train_days)
        return checkpoint_name(Step(b, n - 1, self.train_days[-1], b * n - 1, True))

    def _restore_best(self, backend: Backend, prog: _Progress) -> int | None:
        """With early stopping, put the best validated pass's state back on the shards when
        a later pass was worse: its end-of-pass checkpoint, or without a run directory its
        in-memory snapshot. Returns the pass whose state is tested (None: the last)."""
        if self.stopper is None or not prog.valid:
            return None
        best, last = self.stopper.best(prog.valid), prog.valid[-1]
        if best["pass"] == last["pass"]:
            return best["pass"]
        m = self.stopper.metric
        log.info(
            "testing pass %d's state (valid %s %.6f), not the last pass %d's (%.6f)",
            best["pass"],
            m,
            best[m],
            last["pass"],
            last[m],
        )
        if self.run:
            states, _ = load_checkpoint(self.run.checkpoint_dir(self._best_name(prog.valid)))
        else:
            assert prog.best_states is not None, "a best pass without its snapshot"
            states = prog.best_states
        backend.restore(states)
        return int(best["pass"])

"""Running a study: every grid point is an ordinary psfm run (the one run loop, in this process
or on Ray) in ``STUDY_DIR/runs/<name>/``, one after another.

The study resumes: a run whose ``report.json`` exists is skipped (after checking that it was
trained with this grid point's config); one holding checkpoints but no report (interrupted) is
resumed from them (``resume=True``: the run loop restores its newest checkpoint that verifies);
any other is trained afresh. A run that fails is recorded with its error
(:func:`psfm.errors.user_message`) and the study goes on; the next invocation tries it again.
After each run the study writes its record (``study_run.json`` in the run directory) and
re-renders the outputs (:func:`psfm.study.report.write_outputs`).
"""

from __future__ import annotations

import json
import logging
import posixpath
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from psfm.checkpoint import latest_checkpoint, load_checkpoint, resume_checkpoint, write_bytes
from psfm.config import Config, to_dict
from psfm.errors import PsfmError, user_message
from psfm.study.report import (
    RUN_RECORD,
    STUDY_FILE,
    exists,
    format_summary,
    run_dir_of,
    write_outputs,
)
from psfm.study.spec import GridPoint, Study

__all__ = ["run_study", "stale_keys", "measure_test_seconds"]

log = logging.getLogger("psfm.study")

# the config keys (dotted, prefixes) that define what a finished run trained; a finished run
# whose report config differs from its grid point's config on one of them is not reused
_DEFINING = (
    "model.",
    "levels.",
    "ftrl.",
    "train.seed",
    "train.passes",
    "train.early_stop",
    "train.patience",
    "data.train_days",
    "data.test_days",
    "data.valid_days",
    "data.batch_size",
    "data.label",
    "data.weight",
    "data.categorical",
    "data.numeric",
    "data.numeric_transform",
    "data.ignore",
    "ps.mode",
    "ps.shards",
)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def stale_keys(cfg: Config, trained: dict[str, Any]) -> list[str]:
    """The run-defining keys on which ``cfg`` (a grid point's config, unresolved) and a run's
    stored config ``trained`` (resolved) differ; a value ``cfg`` leaves to the data (batch
    size 0, FTRL alpha 0) is not compared."""
    now, then = _flat(to_dict(cfg)), _flat(trained)
    out = []
    for key, value in now.items():
        if not any(key == p or (p.endswith(".") and key.startswith(p)) for p in _DEFINING):
            continue
        if key in ("data.batch_size", "ftrl.linear.alpha", "ftrl.factor.alpha") and value == 0:
            continue
        if then.get(key) != value:
            out.append(f"{key}: {then.get(key)!r} there, {value!r} here")
    return out


def measure_test_seconds(run_dir: str, days: list[str]) -> tuple[float, float]:
    """Seconds of one in-process predict-only pass over ``days`` with the run's model (the
    checkpoint it tested: the best pass's under early stopping), at the run's batch size and
    ``train.torch_threads``, and the AUC it gives (the report's test AUC, recomputed)."""
    from psfm.ps.client import LocalClient
    from psfm.trainer import evaluate, load_run_config, make_shards
    from psfm.worker import Worker

    cfg = load_run_config(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise PsfmError(f"Run directory '{run_dir}' has no complete checkpoint.")
    states, _ = load_checkpoint(ckpt)
    client = LocalClient(make_shards(cfg))
    client.restore(states)
    if cfg.train.torch_threads:  # as the run's in-process backend scores (LocalBackend.start)
        import torch

        torch.set_num_threads(cfg.train.torch_threads)
    worker = Worker(cfg)
    t0 = time.perf_counter()
    out = evaluate(cfg, worker, client, cfg.data.root, days)
    return time.perf_counter() - t0, float(out["auc"])


def _train(cfg: Config, resume: bool, address: str | None, in_process: bool) -> dict[str, Any]:
    """One ordinary psfm run, as ``psfm train`` runs it."""
    if in_process:
        from psfm.trainer import train_local

        return train_local(cfg, resume=resume)
    from psfm.ray_backend.driver import train_ray

    return train_ray(cfg, resume=resume, address=address)


def _read_json(path: str) -> dict[str, Any] | None:
    from psfm.checkpoint import read_bytes

    try:
        return json.loads(read_bytes(path))
    except (PsfmError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _write_record(run_dir: str, record: dict[str, Any]) -> None:
    write_bytes(posixpath.join(run_dir, RUN_RECORD), json.dumps(record, indent=1).encode())


def _one(
    study: Study,
    point: GridPoint,
    run_dir: str,
    *,
    in_process: bool,
    address: str | None,
) -> tuple[str, dict[str, Any] | None]:
    """Run (or skip, or resume) one grid point. Returns what happened (``skipped``,
    ``trained``, ``resumed``, ``failed``) and the record to write (None: keep the old one)."""
    report_path = posixpath.join(run_dir, "report.json")
    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "name": point.name,
        "params": point.params(),
        "started_at": time.time(),
    }
    try:
        cfg = study.run_config(point, run_dir)
        if exists(report_path):
            report = _read_json(report_path)
            if report is None:
                raise PsfmError(f"'{report_path}' is not readable JSON: delete it to rerun.")
            stale = stale_keys(cfg, report.get("config", {}))
            if stale:
                raise PsfmError(
                    f"'{run_dir}' holds a finished run of another config ({'; '.join(stale)}): "
                    "delete that folder to rerun it with this study's config."
                )
            old = _read_json(posixpath.join(run_dir, RUN_RECORD))
            if old is not None and old.get("status") == "ok":
                return "skipped", None
            # finished, but its record was not written (the study stopped in between)
            record.update(status="ok", error=None, resumed=False)
            action = "skipped"
        else:
            resume = resume_checkpoint(run_dir) is not None
            report = _train(cfg, resume, address, in_process)
            record.update(status="ok", error=None, resumed=resume)
            action = "resumed" if resume else "trained"
        record["study_seconds"] = time.perf_counter() - t0
        record["finished_at"] = time.time()
        if study.measure_test_seconds and "seconds" not in report["test"]:
            try:
                secs, auc = measure_test_seconds(run_dir, list(report["test"]["days"]))
            except Exception as e:  # a measurement, not the run: note it and go on
                log.warning("could not time the test pass of %s: %s", point.name, user_message(e))
            else:
                record.update(test_seconds=secs, test_auc_rescored=auc)
                if abs(auc - float(report["test"]["auc"])) > 1e-6:
                    log.warning(
                        "%s: the test AUC rescored from its checkpoint (%.6f) differs from "
                        "the report's (%.6f)",
                        point.name,
                        auc,
                        report["test"]["auc"],
                    )
        return action, record
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a failed grid point is recorded; the study goes on
        log.debug("grid point %s failed", point.name, exc_info=True)
        record.update(
            status="failed",
            error=user_message(e),
            resumed=False,
            study_seconds=time.perf_counter() - t0,
        )
        return "failed", record


def run_study(
    study: Study,
    out: str,
    *,
    in_process: bool = False,
    address: str | None = None,
    echo: Callable[[str], None] = print,
    plot: bool = True,
    concurrency: int | None = None,
) -> dict[str, Any]:
    """Run every grid point of ``study`` under ``out`` (``STUDY_DIR``), one after another or,
    on Ray, ``concurrency`` at once (default ``study.concurrency``; each run's actors are one
    placement group, so a run waits for room rather than oversubscribing the cluster);
    returns :func:`~psfm.study.report.write_outputs`'s result plus ``actions`` (per grid
    point: skipped, trained, resumed or failed)."""
    out = out if "://" in str(out) else posixpath.abspath(str(out))
    write_bytes(posixpath.join(out, STUDY_FILE), json.dumps(study.to_dict(), indent=1).encode())
    n = len(study.points)
    where = "in this process" if in_process else f"on Ray ({address or 'local or RAY_ADDRESS'})"
    at_once = max(1, concurrency or study.concurrency)
    if in_process and at_once > 1:
        echo(f"concurrency {at_once} needs Ray: with --in-process the runs go one at a time")
        at_once = 1
    at_once = min(at_once, n) if n else 1
    echo(
        f"study {study.name!r} ({study.protocol}): {n} runs {where}"
        + (f", {at_once} at once" if at_once > 1 else "")
        + f", into {out}"
    )
    actions: dict[str, str] = {}
    res: dict[str, Any] = {}
    t_study = time.perf_counter()

    def one(point: GridPoint) -> tuple[str, dict[str, Any] | None]:
        return _one(study, point, run_dir_of(out, point), in_process=in_process, address=address)

    finished = 0
    configs = []
    for p in study.points if at_once > 1 else ():
        try:
            configs.append(study.run_config(p, run_dir_of(out, p)))
        except PsfmError:
            pass  # recorded as failed when its turn comes
    for i, point, (action, record) in _run_points(study.points, one, at_once, address, configs):
        finished += 1
        run_dir = run_dir_of(out, point)
        actions[point.name] = action
        if record is not None:
            _write_record(run_dir, record)
        line = f"[{i}/{n}] {point.name}: {action}"
        if action == "failed" and record is not None:
            line += f": {record['error']}"
        elif record is not None:
            line += f" in {record['study_seconds']:.1f}s"
        echo(line)
        if action != "skipped" or finished == n:  # the outputs as runs finish
            res = write_outputs(out, study, plot=plot)
    if not n:
        res = write_outputs(out, study, plot=plot)
    res["actions"] = {p.name: actions[p.name] for p in study.points}  # grid order
    failed = [k for k, a in actions.items() if a == "failed"]
    echo(format_summary(res["summary"]))
    echo(
        f"{n - len(failed)} of {n} runs finished ({len(failed)} failed) in "
        f"{time.perf_counter() - t_study:.1f}s; wrote {', '.join(res['files'])} in {out}"
    )
    if res["plot_error"]:
        echo(f"no auc_vs_size.png: {res['plot_error']}")
    return res


def _run_points(
    points: Sequence[GridPoint],
    one: Callable[[GridPoint], tuple[str, dict[str, Any] | None]],
    at_once: int,
    address: str | None,
    configs: Sequence[Config] = (),
) -> Iterator[tuple[int, GridPoint, tuple[str, dict[str, Any] | None]]]:
    """``(grid index, point, one(point))`` as runs finish: in order in this thread, or from
    ``at_once`` threads, each taking the next point. Ray is connected once, first (a local
    one sized for the largest of the runs' ``configs``); the caller writes the outputs, one
    run at a time. The threads are daemons: a Ctrl-C ends the study without waiting for the
    runs in flight (their actors go with the driver; rerunning resumes them from their
    checkpoints)."""
    if at_once <= 1:
        for i, p in enumerate(points, 1):
            yield i, p, one(p)
        return
    from psfm.ray_backend.driver import connect_for

    connect_for(configs, address)
    todo: queue.Queue[tuple[int, GridPoint]] = queue.Queue()
    for item in enumerate(points, 1):
        todo.put(item)
    done: queue.Queue[tuple[int, GridPoint, tuple[str, dict[str, Any] | None]]] = queue.Queue()

    def work() -> None:
        while True:
            try:
                i, p = todo.get_nowait()
            except queue.Empty:
                return
            try:
                result = one(p)
            except BaseException as e:  # _one records failures; this is what escaped it
                result = ("failed", {"name": p.name, "params": p.params(), "status": "failed",
                                     "error": user_message(e), "resumed": False,
                                     "study_seconds": 0.0})  # fmt: skip
            done.put((i, p, result))

    for _ in range(at_once):
        threading.Thread(target=work, daemon=True).start()
    for _ in range(len(points)):
        yield done.get()

"""The in-process trainer: days through a :class:`Worker` and N :class:`ParameterShard` objects
in one process — the same classes the Ray actors wrap.

Schedule (DESIGN §7): optional statistics pass over the training days (``static`` levels, or
admission by count), then per training day: every work unit is trained with progressive
validation, shards end the day (decay, eviction), a checkpoint is written; then a predict-only
pass over the test days (no keys created, no updates) and the report.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from typing import Any

import numpy as np
import torch

from psfm.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    read_bytes,
    resolve,
    save_checkpoint,
    write_bytes,
)
from psfm.config import Config, config_from_dict, to_dict
from psfm.data.parquet import WorkUnit, list_days, split_days, work_units
from psfm.errors import CheckpointError
from psfm.metrics import MetricAccumulator, auc_exact
from psfm.ps.client import LocalClient
from psfm.ps.shard import ParameterShard
from psfm.worker import Worker

__all__ = ["train_local", "evaluate", "needs_stats_pass", "model_report", "EXACT_AUC_MAX_ROWS"]

log = logging.getLogger(__name__)

EXACT_AUC_MAX_ROWS = 20_000_000  # test sets up to this size also get the exact AUC


def needs_stats_pass(cfg: Config) -> bool:
    """Static RaFM/DiFacto levels need counts before training; so does static admission."""
    return cfg.levels.policy == "static" and (
        cfg.model.levels >= 2 or cfg.levels.admit_min_count > 1
    )


def make_shards(cfg: Config) -> list[ParameterShard]:
    n = cfg.ps.shards
    return [ParameterShard(cfg.model, cfg.ftrl, cfg.levels, cfg.train.seed, i, n)
            for i in range(n)]


class Progress:
    """A progress line at a steady interval: rows, samples/s, logloss, AUC, ETA."""

    def __init__(self, what: str, total_rows: int, every_s: float) -> None:
        self.what, self.total, self.every = what, total_rows, every_s
        self.t0 = self.last = time.perf_counter()
        self.rows = 0

    def update(self, rows: int, acc: MetricAccumulator | None) -> None:
        self.rows += rows
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        rate = self.rows / max(now - self.t0, 1e-9)
        eta = max(self.total - self.rows, 0) / max(rate, 1e-9)
        msg = f"{self.what}: {self.rows:,}/{self.total:,} rows, {rate:,.0f} samples/s"
        if acc is not None and acc.result()["rows"]:
            r = acc.result()
            msg += f", logloss {r['logloss']:.4f}, auc {r['auc']:.4f}"
        log.info("%s, ETA %.0fs", msg, eta)


def model_report(cfg: Config, client) -> dict[str, Any]:
    s = client.stats()
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


def evaluate(cfg: Config, worker: Worker, client, root: str, days: list[str]) -> dict[str, Any]:
    """Predict-only pass over ``days``: AUC (histogram, and exact when it fits), logloss,
    normalized entropy, calibration, and the RaFM-low AUC (``sum w x + B_{1,1}``)."""
    acc, acc_low = MetricAccumulator(), MetricAccumulator()
    units = [u for d in days for u in work_units(root, d)]
    total = sum(u.rows for u in units)
    keep = total <= EXACT_AUC_MAX_ROWS
    preds, rows, skipped = [], 0, 0
    prog = Progress("test", total, cfg.train.log_every_s)
    for u in units:
        res = worker.run_unit(u, client, train=False, acc=acc, acc_low=acc_low,
                              keep_predictions=keep)
        preds.extend(res.predictions)
        rows += res.rows
        skipped += res.skipped
        prog.update(res.rows, None)
    return test_metrics(days, rows, skipped, acc, acc_low, preds if keep else None)


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


def day_record(day: str, rows: int, skipped: int, seconds: float, acc: MetricAccumulator,
               nbytes: int) -> dict[str, Any]:
    """One ``train.per_day`` entry (also a metrics.jsonl line)."""
    r = acc.result()
    rec = {"day": day, "rows": rows, "skipped_rows": skipped, "seconds": seconds,
           "samples_per_s": rows / max(seconds, 1e-9), "progressive_auc": r["auc"],
           "logloss": r["logloss"], "ne": r["ne"], "calibration": r["calibration"],
           "bytes": nbytes}
    log.info("day %s: %d rows in %.1fs (%.0f samples/s), progressive logloss %.4f auc %.4f",
             day, rows, seconds, rec["samples_per_s"], r["logloss"], r["auc"])
    return rec


def next_day(days: list[str], day: str) -> str | None:
    """The day after ``day`` in the data, if any."""
    i = days.index(day)
    return days[i + 1] if i + 1 < len(days) else None


def next_day_record(day: str, test: dict[str, Any]) -> dict[str, Any]:
    log.info("next day %s: auc %.4f, logloss %.4f", day, test["auc"], test["logloss"])
    return {"day": day, "auc": test["auc"], "logloss": test["logloss"], "rows": test["rows"]}


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


def train_local(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate in one process; returns the report (also written to the run dir)."""
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    root = cfg.data.root
    days = list_days(root)
    train_days, test_days = split_days(days, cfg.data.train_days, cfg.data.test_days)
    run = RunDir(cfg.train.run_dir) if cfg.train.run_dir else None
    client = LocalClient(make_shards(cfg))
    worker = Worker(cfg)
    per_day: list[dict[str, Any]] = []
    start_day = 0
    t_start = time.perf_counter()
    if resume:
        ckpt = latest_checkpoint(run.path) if run else None
        if ckpt is None:
            raise CheckpointError(f"--resume: no complete checkpoint in '{cfg.train.run_dir}'.")
        states, manifest = load_checkpoint(ckpt)
        check_resume_config(cfg, manifest.get("config", {}), ckpt)
        client.restore(states)
        start_day = int(manifest["day_index"]) + 1
        per_day = list(manifest.get("per_day", []))
        run.keep_metrics()
        log.info("resumed from %s: %d of %d training days done", ckpt, start_day,
                 len(train_days))
    if run:
        if not resume:
            run.clear_checkpoints()
        run.write_config(cfg)
    log.info("train days %s, test days %s", train_days, test_days)
    if start_day == 0 and needs_stats_pass(cfg):
        t0 = time.perf_counter()
        rows = sum(worker.count_unit(u, client) for d in train_days for u in work_units(root, d))
        info = client.finish_counts()
        log.info("statistics pass: %d rows, %d keys (%d not admitted) in %.1fs", rows,
                 info["keys"], info["not_admitted"], time.perf_counter() - t0)
    for i in range(start_day, len(train_days)):
        day = train_days[i]
        rec = _train_day(cfg, worker, client, root, day, i, run)
        client.end_day(i + 1)
        nxt = next_day(days, day)
        if cfg.train.eval_next_day and nxt is not None:
            rec["next_day"] = next_day_record(nxt, evaluate(cfg, worker, client, root, [nxt]))
        per_day.append(rec)
        if run:
            save_checkpoint(run.checkpoint_dir(day), client.snapshots(),
                            {"day": day, "day_index": i, "per_day": per_day,
                             "config": to_dict(cfg)})
    test = evaluate(cfg, worker, client, root, test_days)
    report = build_report(cfg, test, model_report(cfg, client), train_days, per_day,
                          time.perf_counter() - t_start)
    if run:
        run.metric({"event": "test", **test})
        run.write_report(report)
    return report


def _train_day(cfg, worker: Worker, client, root: str, day: str, index: int,
               run: RunDir | None) -> dict[str, Any]:
    units: list[WorkUnit] = work_units(root, day)
    acc = MetricAccumulator()
    prog = Progress(f"day {day}", sum(u.rows for u in units), cfg.train.log_every_s)
    rows = skipped = 0
    b0 = client.bytes_pulled + client.bytes_pushed
    t0 = time.perf_counter()
    for u in units:
        res = worker.run_unit(u, client, train=True, acc=acc)
        rows += res.rows
        skipped += res.skipped
        prog.update(res.rows, acc)
    rec = day_record(day, rows, skipped, time.perf_counter() - t0, acc,
                     client.bytes_pulled + client.bytes_pushed - b0)
    if run:
        run.metric({"event": "train_day", **rec})
    return rec

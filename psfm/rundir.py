"""The run directory and the report (DESIGN §7, §10): ``run_dir/`` with the resolved config,
``metrics.jsonl``, ``checkpoints/`` and ``report.json``, the checks a resumed run makes
against it, and the records the run loop (:mod:`psfm.runloop`) writes into both.

``metrics.jsonl`` has one line per event: ``train_day`` (a ``train.per_day`` record),
``valid`` (after each pass, when ``data.valid_days`` is set: a ``valid`` record) and
``test``. ``report.json`` is DESIGN §10's layout, plus ``valid`` (one record per pass) and,
in ``train``, ``passes`` (how many were trained), ``best_pass`` (the pass whose end state
was tested: the best by validation under early stopping, else the last) and
``early_stopped``.

A warm start (``train.init_from``) from another run's checkpoint or an exported model is
:mod:`psfm.warmstart`.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from typing import Any

import pyarrow.fs as pafs

from psfm.checkpoint import JOURNAL, list_checkpoints, read_bytes, resolve, write_bytes
from psfm.config import Config, config_from_dict, to_dict
from psfm.errors import CheckpointError
from psfm.memory import memory_line
from psfm.metrics import MetricAccumulator
from psfm.ps.messages import ShardStats

__all__ = [
    "RunDir",
    "check_resume_config",
    "load_run_config",
    "day_record",
    "next_day_record",
    "model_report",
    "build_report",
    "summary",
]

log = logging.getLogger(__name__)


class RunDir:
    """``run_dir/``: config.json, metrics.jsonl, checkpoints/, report.json (local or a
    ``pyarrow.fs`` URI)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._metrics: list[str] = []
        if "://" not in self.path and not os.path.exists(self.path):
            # a new local run directory is its owner's alone (checkpoints are the model);
            # one that exists keeps the permissions its owner gave it
            os.makedirs(self.path, mode=0o700, exist_ok=True)

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

    def checkpoint_dir(self, name: str) -> str:
        """``checkpoints/NAME``: ``day=stats``, ``day=D`` or ``pass=P.day=D``."""
        return self.file("checkpoints", name)

    def existing_run(self) -> list[str]:
        """What of an earlier run the directory holds (checkpoints, a report): a new run must
        not delete it unasked."""
        found = [f"{len(c)} checkpoint(s)"] if (c := list_checkpoints(self.path)) else []
        fs, p = resolve(self.file("report.json"))
        if fs.get_file_info(p).type == pafs.FileType.File:
            found.append("report.json")
        return found

    def start_over(self) -> None:
        """A fresh (not resumed) run must never resume from an older run's checkpoints, nor
        leave its report or checkpoint journal behind."""
        fs, p = resolve(self.file("checkpoints"))
        fs.delete_dir_contents(p, missing_dir_ok=True)
        for name in ("report.json", JOURNAL):
            fs, p = resolve(self.file(name))
            if fs.get_file_info(p).type == pafs.FileType.File:
                fs.delete_file(p)


def check_resume_config(cfg: Config, saved: dict[str, Any], where: str) -> None:
    """A resumed run must train the model its checkpoint holds: same model, FTRL, levels,
    shard count and seed."""
    now = to_dict(cfg)
    for section in ("model", "ftrl", "levels"):
        if now[section] != saved.get(section):
            raise CheckpointError(
                f"--resume: the '{section}' section differs from the one "
                f"the checkpoint '{where}' was trained with."
            )
    for section, key in (("ps", "shards"), ("train", "seed")):
        if now[section][key] != saved.get(section, {}).get(key):
            raise CheckpointError(
                f"--resume: {section}.{key} = {now[section][key]!r} but the "
                f"checkpoint '{where}' has "
                f"{saved.get(section, {}).get(key)!r}."
            )


def load_run_config(run_dir: str) -> Config:
    raw = read_bytes(posixpath.join(str(run_dir), "config.json"))
    return config_from_dict(json.loads(raw))


def day_record(
    day: str,
    pass_no: int,
    rows: int,
    skipped: int,
    nbytes: int,
    acc: MetricAccumulator,
    seconds: float,
    cached_rows: int = 0,
) -> dict[str, Any]:
    """One ``train.per_day`` entry (also a metrics.jsonl line): day ``day`` of pass
    ``pass_no``, its rows (``cached_rows`` of them replayed from the workers' pass cache)
    and its progressive metrics ``acc``."""
    r = acc.result()
    rec = {
        "day": day,
        "pass": pass_no,
        "rows": rows,
        "skipped_rows": skipped,
        "seconds": seconds,
        "samples_per_s": rows / max(seconds, 1e-9),
        "progressive_auc": r["auc"],
        "logloss": r["logloss"],
        "ne": r["ne"],
        "calibration": r["calibration"],
        "bytes": nbytes,
        "cached_rows": cached_rows,
    }
    log.info(
        "day %s%s: %d rows in %.1fs (%.0f samples/s), progressive logloss %.4f auc %.4f",
        day,
        f" of pass {pass_no}" if pass_no > 1 else "",
        rows,
        seconds,
        rec["samples_per_s"],
        r["logloss"],
        r["auc"],
    )
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


def build_report(
    cfg: Config,
    test: dict[str, Any],
    model: dict[str, Any],
    train_days: list[str],
    per_day: list[dict[str, Any]],
    wall_seconds: float,
    valid: list[dict[str, Any]] | None = None,
    best_pass: int | None = None,
    early_stopped: bool = False,
) -> dict[str, Any]:
    """The ``report.json`` layout of DESIGN §10, with the ``valid`` records (one per pass)
    and, in ``train``, the passes trained, the pass whose state was tested (``best_pass``;
    default: the last trained) and whether early stopping ended the run."""
    rows = sum(d["rows"] for d in per_day)
    seconds = sum(d["seconds"] for d in per_day)
    passes = max((int(d.get("pass", 1)) for d in per_day), default=0)
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
            "passes": passes,
            "best_pass": passes if best_pass is None else best_pass,
            "early_stopped": early_stopped,
            **cpu_per_sample(per_day),
        },
        "valid": list(valid or []),
        "config": to_dict(cfg),
    }


def cpu_per_sample(per_day: list[dict[str, Any]]) -> dict[str, float | None]:
    """The training days' CPU µs per sample of the workers, the shards and the driver (None
    when not measured: in process the shards' and the driver's time is in the workers'), over
    the days that recorded it: what :mod:`psfm.sizing` scales a cluster from."""
    out: dict[str, float | None] = {}
    for who in ("worker", "shard", "driver"):
        days = [d for d in per_day if d.get(f"{who}_cpu_seconds") is not None]
        rows = sum(d["rows"] for d in days)
        cpu = sum(d[f"{who}_cpu_seconds"] for d in days)
        out[f"{who}_cpu_us_per_sample"] = cpu * 1e6 / rows if rows else None
    return out


def summary(report: dict[str, Any]) -> str:
    """The human summary of a report; its last line is the test AUC."""
    m, t, tr = report["model"], report["test"], report["train"]
    lines = [
        f"model      {m['kind']} ranks {m['ranks']}",
        f"train      days {', '.join(tr['days'])}: {tr['rows']:,} rows, "
        f"{tr['samples_per_s']:,.0f} samples/s, {tr['bytes_per_sample']:,.0f} bytes/sample",
    ]
    passes = tr.get("passes", 1) > 1
    for d in tr["per_day"]:
        where = f"pass {d.get('pass', 1)} day {d['day']:>4}" if passes else f"day {d['day']:>4}"
        lines.append(
            f"  {where}  progressive auc {d['progressive_auc']:.4f}  "
            f"logloss {d['logloss']:.4f}  {d['seconds']:.1f}s"
        )
    for v in report.get("valid", []):
        best = "  (best: tested)" if v["pass"] == tr.get("best_pass") else ""
        lines.append(
            f"valid      pass {v['pass']}: auc {v['auc']:.4f}  logloss {v['logloss']:.4f}{best}"
        )
    if tr.get("early_stopped"):
        lines.append(f"           stopped early after pass {len(report.get('valid', []))}")
    lines.append(
        f"size       {m['nonzero_params']:,} non-zero parameters ({m['nonzero_w']:,} linear, "
        f"factor rows per level {m['factor_rows_per_level']}), {m['ps_bytes'] / 2**20:.1f} MiB "
        "on the parameter servers"
    )
    if timing := report.get("timing"):
        lines.append(timing_line(timing))
    if report.get("memory"):
        lines.append(memory_line(report["memory"]))
    return "\n".join(lines + test_lines(t))


def timing_line(timing: dict[str, Any]) -> str:
    """The summary's line on the time outside the training days."""
    first = timing.get("seconds_to_first_batch")
    start = (
        f"first batch {first:.1f}s after the process started"
        if first is not None
        else f"first batch {timing['seconds_before_training']:.1f}s after the run started"
    )
    return (
        f"time       {start} (Ray and actors {timing['startup_seconds']:.1f}s), "
        f"testing {timing['test_seconds']:.1f}s"
    )


def test_lines(t: dict[str, Any]) -> list[str]:
    """The test metrics' lines of a summary (also ``psfm evaluate``'s); the last is the AUC."""
    return [
        f"test       days {', '.join(map(str, t['days']))}: {t['rows']:,} rows, logloss "
        f"{t['logloss']:.4f}, NE {t['ne']:.4f}, calibration {t['calibration']:.3f}, "
        f"RaFM-low AUC {t['auc_low']:.4f}",
        f"test AUC   {t['auc']:.4f}",
    ]

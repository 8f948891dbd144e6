"""The in-process trainer: :func:`train_local` runs the one run loop (:mod:`psfm.runloop`) on
the in-process backend (:class:`~psfm.local_backend.LocalBackend`: a :class:`Worker` and N
:class:`ParameterShard` objects in this process — the same classes the Ray actors wrap), so it
trains the same work units and writes the same ``metrics.jsonl`` and ``report.json`` as the
Ray driver with one worker.

:func:`evaluate` scores days with an existing worker and client (``psfm evaluate``). The
loop's helpers are re-exported here for the modules that import them from this one.
"""

from __future__ import annotations

from typing import Any

from psfm.config import Config
from psfm.local_backend import LocalBackend, make_shards
from psfm.ps.client import LocalClient
from psfm.rundir import RunDir, build_report, check_resume_config, load_run_config, model_report
from psfm.runloop import needs_stats_pass, run
from psfm.scoring import EXACT_AUC_MAX_ROWS, evaluate_days, test_metrics
from psfm.worker import Worker

__all__ = [
    "train_local",
    "evaluate",
    "make_shards",
    "needs_stats_pass",
    "load_run_config",
    "model_report",
    "build_report",
    "test_metrics",
    "check_resume_config",
    "RunDir",
    "EXACT_AUC_MAX_ROWS",
]


def train_local(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate in one process; returns the report (also written to the run dir)."""
    return run(cfg, LocalBackend, resume=resume)


def evaluate(
    cfg: Config, worker: Worker, client: LocalClient, root: str, days: list[str]
) -> dict[str, Any]:
    """Predict-only pass over ``days`` of ``root`` with ``worker`` and ``client``: AUC
    (histogram, and exact when it fits), logloss, normalized entropy, calibration, and the
    RaFM-low AUC (``sum w x + B_{1,1}``). No keys are created."""
    return evaluate_days(cfg, LocalBackend(cfg, worker, client), days, root)

"""The in-process backend: one :class:`Worker` over a :class:`LocalClient` of
:class:`ParameterShard` objects, the same classes the Ray actors wrap — the Ray driver with one
worker, without Ray.

:func:`report_unit` turns one worker's pass over a unit into the loop's :class:`UnitReport`;
the Ray worker actor calls it too, so both backends report a unit the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from psfm.backend import OnUnit, UnitReport
from psfm.checkpoint import save_checkpoint
from psfm.config import Config
from psfm.data.parquet import WorkUnit
from psfm.memory import keep_freed_memory, memory_report, process_memory
from psfm.metrics import MetricAccumulator
from psfm.ps.client import LocalClient, PsClient
from psfm.ps.messages import ShardStats
from psfm.ps.shard import ParameterShard
from psfm.worker import Worker

__all__ = ["LocalBackend", "make_shards", "report_unit", "pipeline_of"]


def make_shards(cfg: Config) -> list[ParameterShard]:
    n = cfg.ps.shards
    return [ParameterShard(cfg.model, cfg.ftrl, cfg.levels, cfg.train.seed, i, n) for i in range(n)]


def pipeline_of(cfg: Config) -> str:
    """A worker's pull/push pipelining: ``ps.pipeline`` in async mode; strictly sequential in
    sync mode (reproducible). With in-process shards ``overlap`` applies the same pulls and
    pushes in the same order as ``none``."""
    return cfg.ps.pipeline if cfg.ps.mode == "async" else "none"


def report_unit(
    worker: Worker,
    client: PsClient,
    unit: WorkUnit,
    train: bool,
    keep_predictions: bool,
    pipeline: str,
    reuse: bool = False,
) -> UnitReport:
    """Train on (or score) ``unit`` with ``worker`` against ``client``; the unit's metrics,
    bytes and (when kept) predictions as one :class:`UnitReport`."""
    acc, acc_low = MetricAccumulator(), MetricAccumulator()
    p0, q0, cpu0 = client.bytes_pulled, client.bytes_pushed, time.process_time()
    res = worker.run_unit(
        unit, client, train, acc, acc_low, keep_predictions, pipeline=pipeline, reuse=reuse
    )
    return UnitReport(
        unit=unit.uid,
        rows=res.rows,
        skipped=res.skipped,
        loss=res.loss,
        seconds=res.seconds,
        acc_state=acc.state(),
        acc_low_state=acc_low.state(),
        bytes_pulled=client.bytes_pulled - p0,
        bytes_pushed=client.bytes_pushed - q0,
        predictions=np.concatenate(res.predictions, axis=1) if res.predictions else None,
        cached=res.cached,
        cpu_seconds=time.process_time() - cpu0,
    )


class LocalBackend:
    """The :class:`~psfm.runloop.Backend` of ``train_local`` and ``psfm train --in-process``:
    every unit in order on one worker (``train.workers`` is not used: nothing runs
    concurrently, so there is no warm-up either). Nothing in-process can be lost and
    replayed: every error ends the run.

    ``worker`` / ``client``: an existing pair to score with (:func:`psfm.trainer.evaluate`);
    otherwise :meth:`start` makes them (fresh, empty shards after :meth:`close`)."""

    workers = 1

    def __init__(
        self, cfg: Config, worker: Worker | None = None, client: LocalClient | None = None
    ) -> None:
        self.cfg = cfg
        self.worker, self.client = worker, client
        self.pipeline = pipeline_of(cfg)

    def start(self) -> None:
        keep_freed_memory()
        if self.cfg.train.torch_threads:
            torch.set_num_threads(self.cfg.train.torch_threads)
        self.worker = self.worker or Worker(self.cfg)
        self.client = self.client or LocalClient(make_shards(self.cfg))

    def close(self) -> None:
        if self.worker is not None:
            self.worker.cache.close()
        self.worker = self.client = None

    def _pair(self) -> tuple[Worker, LocalClient]:
        assert self.worker is not None and self.client is not None, "start() first"
        return self.worker, self.client

    def lost(self, error: BaseException) -> str | None:
        return None

    def count(
        self,
        units: Sequence[WorkUnit],
        reuse: bool = False,
        on_rows: Callable[[int], None] | None = None,
    ) -> int:
        worker, client = self._pair()
        total = 0
        for u in units:
            rows = worker.count_unit(u, client, reuse)
            total += rows
            if on_rows is not None:
                on_rows(rows)
        return total

    def finish_counts(self) -> dict[str, int]:
        return self._pair()[1].finish_counts()

    def _run(
        self, units: Sequence[WorkUnit], train: bool, keep: bool, on_unit: OnUnit, reuse: bool
    ) -> None:
        worker, client = self._pair()
        for u in units:
            on_unit(report_unit(worker, client, u, train, keep, self.pipeline, reuse))

    def train(
        self, units: Sequence[WorkUnit], warmup: int, on_unit: OnUnit, reuse: bool = False
    ) -> None:
        self._run(units, True, False, on_unit, reuse)

    def evaluate(
        self,
        units: Sequence[WorkUnit],
        keep_predictions: bool,
        on_unit: OnUnit,
        reuse: bool = False,
    ) -> None:
        self._run(units, False, keep_predictions, on_unit, reuse)

    def end_day(self, days_done: int) -> dict[str, int]:
        return self._pair()[1].end_day(days_done)

    def checkpoint(self, ckpt_dir: str, meta: dict[str, Any]) -> None:
        save_checkpoint(ckpt_dir, self._pair()[1].snapshots(), meta)

    def restore(self, states: list[dict[str, np.ndarray]]) -> None:
        self._pair()[1].restore(states)

    def snapshot(self) -> list[dict[str, np.ndarray]]:
        """Every shard's state (copies: training goes on in the same arrays)."""
        return self._pair()[1].snapshots()

    def stats(self) -> ShardStats:
        return self._pair()[1].stats()

    def train_cpu(self) -> float | None:
        return None

    def memory(self) -> dict[str, Any] | None:
        return memory_report(process_memory())  # one process holds it all

"""The Ray actors: ``ShardActor = ray.remote(MeteredShard)`` (a :class:`ParameterShard` with its
transport and checkpoint files, :mod:`psfm.ray_backend.server`, whose day end reports its keys
and bytes for the driver's gauges; defined in :mod:`psfm.ray_backend.shard_actor`, which a shard
process imports without torch) and a worker actor over :class:`WorkerRunner`, a plain class
that owns a :class:`Worker` and a :class:`RayClient`. A worker reports each unit (or its slice
of a unit in synchronous steps) as the run loop's :class:`~psfm.runloop.UnitReport`, made by
the same :func:`~psfm.local_backend.report_unit` as in-process, and adds its rows and bytes to
the run's counters (:mod:`psfm.ray_backend.metrics`: per unit, never per batch).

Shards are placed with ``scheduling_strategy="SPREAD"`` (and a custom resource when the cluster
defines one), workers ask for a GPU when their device is CUDA.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import ray

from psfm.backend import UnitReport
from psfm.config import config_from_dict
from psfm.data.parquet import WorkUnit
from psfm.memory import process_memory
from psfm.metrics import MetricAccumulator
from psfm.ray_backend.client import RayClient
from psfm.ray_backend.metrics import WorkerMetrics
from psfm.ray_backend.shard_actor import MeteredShard, ShardActor

if TYPE_CHECKING:
    from psfm.worker import Worker

__all__ = ["ShardActor", "MeteredShard", "WorkerActor", "WorkerRunner"]

log = logging.getLogger(__name__)


class WorkerRunner:
    """One worker process: reads its units, pulls, computes, pushes."""

    def __init__(
        self,
        config: dict[str, Any],
        shards: list,
        worker_id: int,
        n_workers: int,
        run: str = "",
    ) -> None:
        # torch here, not at the top: the driver imports this module for the actor classes
        # and never computes (its import of torch cost 1.7 s before Ray could start)
        import torch

        from psfm.memory import keep_freed_memory
        from psfm.worker import Worker

        keep_freed_memory()
        self.cfg = config_from_dict(config)
        if self.cfg.train.torch_threads:
            torch.set_num_threads(self.cfg.train.torch_threads)
        self.worker_id, self.n_workers = worker_id, n_workers
        self.sync_steps = self.cfg.ps.mode == "sync" and n_workers > 1
        # data.batch_size rows per update: in sync mode the workers take slices of one global
        # batch; in async mode each worker's push is an update, so each reads batch_size rows
        # (W async workers of b rows train about like one worker of b rows, only faster).
        self.worker: Worker = Worker(self.cfg)
        if self.sync_steps:
            # Send float64 partial sums: the shards add them and round once, so a step's
            # gradient equals the one-worker gradient up to that single rounding.
            self.worker.spec = dataclasses.replace(self.worker.spec, grad_float64=True)
        self.client = RayClient(
            shards,
            self.cfg.model.tied,
            self.cfg.ps.max_in_flight,
            buffered_worker=worker_id if self.sync_steps else None,
            ranks=self.cfg.model.ranks,
            transport=self.cfg.ps.transport,
        )
        self._metrics = WorkerMetrics(run, worker_id)  # run: the tag of every metric
        self._sync: dict[str, Any] | None = None

    def _publish(self, rows: int, phase: str, pulled0: int, pushed0: int) -> None:
        """A unit's rows and bytes (those since ``pulled0`` / ``pushed0``) to the counters."""
        c = self.client
        self._metrics.unit(rows, phase, c.bytes_pulled - pulled0, c.bytes_pushed - pushed0)

    def count_unit(self, unit: WorkUnit, reuse: bool = False) -> int:
        p0, q0 = self.client.bytes_pulled, self.client.bytes_pushed
        rows = self.worker.count_unit(unit, self.client, reuse)
        self.client.flush()
        self._publish(rows, "count", p0, q0)
        return rows

    def prefetch(self, unit: WorkUnit) -> int:
        """Decode ``unit`` into the pass cache for a later :meth:`run_unit` (rows kept). The
        driver does not wait for it: a bad row is not raised here (nobody would hear it) but
        by the :meth:`run_unit` of the same unit, which reads it again."""
        try:
            return self.worker.prefetch(unit)
        except Exception as e:  # the unit's run_unit raises it where the driver hears it
            log.debug("prefetch of %s stopped: %s", unit.uid, e)
            return 0

    def run_unit(
        self, unit: WorkUnit, train: bool, keep_predictions: bool = False, reuse: bool = False
    ) -> UnitReport:
        from psfm.local_backend import pipeline_of, report_unit

        p0, q0 = self.client.bytes_pulled, self.client.bytes_pushed
        rep = report_unit(
            self.worker, self.client, unit, train, keep_predictions, pipeline_of(self.cfg), reuse
        )
        self._publish(rep.rows, "train" if train else "eval", p0, q0)
        return rep

    # Synchronous data-parallel steps (driver-orchestrated barrier) -----------------------
    def begin_sync(self, unit: WorkUnit, reuse: bool = False) -> None:
        self._sync = {
            "unit": unit.uid,
            "t0": time.perf_counter(),
            "it": self.worker.batches(unit, part=self.worker_id, parts=self.n_workers, reuse=reuse),
            "acc": MetricAccumulator(),
            "rows": 0,
            "skipped": 0,
            "loss": 0.0,
            "p0": self.client.bytes_pulled,
            "q0": self.client.bytes_pushed,
            "cpu0": time.process_time(),
        }

    def sync_step(self) -> bool:
        """Process this worker's slice of the next global batch; False when the unit ended."""
        st = self._sync
        nxt = next(st["it"], None)
        if nxt is None:
            return False
        batch, _ = nxt
        probs, _, loss = self.worker.step(batch, self.client, train=True)
        st["rows"] += batch.size
        st["skipped"] += batch.skipped
        st["loss"] += loss
        if batch.size:
            st["acc"].update(batch.labels, probs, batch.weights)
        return True

    def end_sync(self) -> UnitReport:
        st, self._sync = self._sync, None
        self._publish(st["rows"], "train", st["p0"], st["q0"])
        return UnitReport(
            unit=st["unit"],
            rows=st["rows"],
            skipped=st["skipped"],
            loss=st["loss"],
            seconds=time.perf_counter() - st["t0"],
            acc_state=st["acc"].state(),
            bytes_pulled=self.client.bytes_pulled - st["p0"],
            bytes_pushed=self.client.bytes_pushed - st["q0"],
            cpu_seconds=time.process_time() - st["cpu0"],
        )

    def ping(self) -> int:
        return self.worker_id

    def memory(self) -> dict[str, int | None]:
        return process_memory()

    def close(self) -> None:
        """Drop the pass cache (its disk files are unlinked already: a killed worker frees
        them too)."""
        self.worker.cache.close()


WorkerActor = ray.remote(WorkerRunner)

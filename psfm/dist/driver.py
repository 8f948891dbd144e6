"""The distributed driver: shard and worker actors on Ray, multi-day schedule, test day.

Per run: connect to Ray (a local one started here when no address is given — the embedded
default — or ``--address``/``RAY_ADDRESS``), create ``ps.shards`` shard actors (SPREAD) and
``train.workers`` worker actors, run the statistics pass when levels need it, then per training
day hand out work units from a queue (a slow worker never holds the day: whoever is free takes
the next unit), end the day on the shards, and checkpoint (each shard writes its own file, the
driver writes the manifest). ``ps.mode = "sync"`` with several workers runs barrier steps: every
worker takes its slice of the same global batch, the shards sum the workers' gradients in worker
order and apply one FTRL update. The test days are a predict-only pass (no keys created).

A shard or worker that dies mid-day is handled by restoring every shard from the last complete
checkpoint and replaying the day's units, so each row is applied once in the final model.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, WorkerCrashedError

from psfm.checkpoint import latest_checkpoint, load_checkpoint, write_manifest
from psfm.config import Config, to_dict
from psfm.data.parquet import WorkUnit, list_days, split_days, split_tail, work_units
from psfm.dist.actors import ShardActor, WorkerActor
from psfm.errors import CheckpointError
from psfm.metrics import MetricAccumulator
from psfm.ps.messages import ShardStats
from psfm.trainer import (
    EXACT_AUC_MAX_ROWS,
    RunDir,
    Progress,
    build_report,
    check_resume_config,
    day_record,
    model_report,
    needs_stats_pass,
    next_day,
    next_day_record,
    test_metrics,
)

__all__ = ["train_ray", "connect", "RayCluster"]

log = logging.getLogger(__name__)

MAX_DAY_RETRIES = 2


# Ray puts task arguments and results over 100 KB into the shared-memory object store (a
# create/seal/get round trip per object); a worker's push and pull messages are a few hundred
# KB, and passing them inline in the task RPC instead was about 10% faster end to end (FM(8),
# 2 shards + 2 workers). On one node the messages go through psfm's own shared-memory files
# (ps.transport = "auto"); this applies to ps.transport = "ray" and to messages between
# nodes. Set for the Ray that psfm starts itself; clusters set
# RAY_max_direct_call_object_size on their nodes (cluster/README.md).
LOCAL_SYSTEM_CONFIG = {"max_direct_call_object_size": 4 << 20}
# One thread per actor (torch and BLAS): actors are sized one per CPU.
ACTOR_ENV = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join a cluster (``address``, else ``RAY_ADDRESS``) or start an embedded local Ray bound
    to 127.0.0.1."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:  # a job's runtime env (working_dir, env vars) comes from the job itself
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env=ACTOR_ENV, log_to_driver=True,
                 _system_config=LOCAL_SYSTEM_CONFIG)


class RayCluster:
    """The run's actors and the calls the driver makes on them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        res = ray.cluster_resources()
        shard_opts: dict[str, Any] = {"num_cpus": cfg.ray.shard_cpus,
                                      "scheduling_strategy": "SPREAD"}
        if "psfm_shard" in res:
            shard_opts["resources"] = {"psfm_shard": 0.01}
        worker_opts: dict[str, Any] = {"num_cpus": cfg.ray.worker_cpus,
                                       "scheduling_strategy": "SPREAD"}
        if "psfm_worker" in res:
            worker_opts["resources"] = {"psfm_worker": 0.01}
        if cfg.train.device == "cuda" or (cfg.train.device == "auto" and res.get("GPU", 0) > 0):
            worker_opts["num_gpus"] = 1
        n, k = cfg.ps.shards, cfg.train.workers
        # Named (psfm-RUN-shard-i / -worker-w) so operators and tests can find them.
        self.run_id = uuid.uuid4().hex[:8]
        self.shards = [
            ShardActor.options(name=f"psfm-{self.run_id}-shard-{i}", **shard_opts).remote(
                cfg.model, cfg.ftrl, cfg.levels, cfg.train.seed, i, n)
            for i in range(n)
        ]
        conf = to_dict(cfg)
        self.workers = [
            WorkerActor.options(name=f"psfm-{self.run_id}-worker-{w}", **worker_opts).remote(
                conf, self.shards, w, k)
            for w in range(k)
        ]
        ray.get([w.ping.remote() for w in self.workers])

    def kill(self) -> None:
        for a in self.shards + self.workers:
            ray.kill(a, no_restart=True)

    def on_shards(self, method: str, *args: Any) -> list:
        return ray.get([getattr(s, method).remote(*args) for s in self.shards])

    def stats(self):
        return ShardStats.merge(self.on_shards("stats"))

    def restore(self, states: list[dict[str, np.ndarray]]) -> None:
        ray.get([s.restore.remote(st) for s, st in zip(self.shards, states)])

    def checkpoint(self, ckpt_dir: str, meta: dict[str, Any]) -> None:
        infos = ray.get([s.save_state.remote(f"{ckpt_dir}/shard-{i:05d}.npz")
                         for i, s in enumerate(self.shards)])
        write_manifest(ckpt_dir, {f"shard-{i:05d}.npz": inf for i, inf in enumerate(infos)},
                       meta)

    def dispatch(self, units: list[WorkUnit], method: str, args: tuple,
                 on_result: Callable[[Any], None]) -> None:
        """Hand units to whichever worker is free; one ``ray.wait`` at a time."""
        queue = deque(units)
        pending: dict = {}
        for w in self.workers:
            if queue:
                pending[getattr(w, method).remote(queue.popleft(), *args)] = w
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            w = pending.pop(done[0])
            on_result(ray.get(done[0]))
            if queue:
                pending[getattr(w, method).remote(queue.popleft(), *args)] = w

    def sync_unit(self, unit: WorkUnit) -> list[dict]:
        """Barrier steps over one unit: all workers step, then all shards apply."""
        ray.get([w.begin_sync.remote(unit) for w in self.workers])
        while True:
            more = ray.get([w.sync_step.remote() for w in self.workers])
            self.on_shards("apply_buffered")
            if not any(more):
                break
        return ray.get([w.end_sync.remote() for w in self.workers])


def _train_day(cluster: RayCluster, cfg: Config, root: str, day: str,
               warmup: int = 0) -> dict[str, Any]:
    """Train one day; async with several workers, the first ``warmup`` units go to one worker
    alone (``ps.warmup_units``, on the first day of a fresh run)."""
    units = work_units(root, day, cfg.data.rows_per_unit)
    acc = MetricAccumulator()
    prog = Progress(f"day {day}", sum(u.rows for u in units), cfg.train.log_every_s)
    tot = {"rows": 0, "skipped": 0, "bytes": 0}

    def take(r: dict) -> None:
        tot["rows"] += r["rows"]
        tot["skipped"] += r["skipped"]
        tot["bytes"] += r["bytes_pulled"] + r["bytes_pushed"]
        acc.merge(MetricAccumulator.from_state(r["acc"]))
        prog.update(r["rows"], acc)

    t0 = time.perf_counter()
    if cfg.ps.mode == "sync" and len(cluster.workers) > 1:
        for u in units:
            for r in cluster.sync_unit(u):
                take(r)
    else:
        w = min(warmup, len(units) - 1) if len(cluster.workers) > 1 else 0
        if w > 0:
            cluster.dispatch(units[:w], "run_unit", (True, False), take)
        cluster.dispatch(split_tail(units[w:], len(cluster.workers)), "run_unit",
                         (True, False), take)
    return day_record(day, tot["rows"], tot["skipped"], time.perf_counter() - t0, acc,
                      tot["bytes"])


def _evaluate(cluster: RayCluster, cfg: Config, root: str, days: list[str]) -> dict[str, Any]:
    units = [u for d in days for u in work_units(root, d, cfg.data.rows_per_unit)]
    total = sum(u.rows for u in units)
    keep = total <= EXACT_AUC_MAX_ROWS
    acc, acc_low = MetricAccumulator(), MetricAccumulator()
    preds: list[np.ndarray] = []
    tot = {"rows": 0, "skipped": 0}
    prog = Progress("test", total, cfg.train.log_every_s)

    def take(r: dict) -> None:
        tot["rows"] += r["rows"]
        tot["skipped"] += r["skipped"]
        acc.merge(MetricAccumulator.from_state(r["acc"]))
        acc_low.merge(MetricAccumulator.from_state(r["acc_low"]))
        if r["predictions"] is not None:
            preds.append(r["predictions"])
        prog.update(r["rows"], None)

    cluster.dispatch(split_tail(units, len(cluster.workers)), "run_unit", (False, keep), take)
    return test_metrics(days, tot["rows"], tot["skipped"], acc, acc_low, preds if keep else None)


def _restore_or_start(cluster: RayCluster, cfg: Config, run: RunDir | None,
                      train_days: list[str], root: str) -> tuple[int, list[dict]]:
    """Load the latest complete checkpoint, or run the statistics pass; returns the index of
    the first day to train and the per-day records so far."""
    ckpt = latest_checkpoint(run.path) if run else None
    if ckpt is not None:
        states, manifest = load_checkpoint(ckpt)
        check_resume_config(cfg, manifest.get("config", {}), ckpt)
        if len(states) != cfg.ps.shards:
            raise CheckpointError(f"Checkpoint '{ckpt}' has {len(states)} shards; the run has "
                                  f"ps.shards = {cfg.ps.shards}.")
        cluster.restore(states)
        log.info("restored %s", ckpt)
        return int(manifest["day_index"]) + 1, list(manifest.get("per_day", []))
    if needs_stats_pass(cfg):
        t0 = time.perf_counter()
        rows = [0]
        units = [u for d in train_days for u in work_units(root, d, cfg.data.rows_per_unit)]
        cluster.dispatch(split_tail(units, len(cluster.workers)), "count_unit", (),
                         lambda r: rows.__setitem__(0, rows[0] + r))
        info = cluster.on_shards("finish_counts")
        log.info("statistics pass: %d rows, %d keys (%d not admitted) in %.1fs", rows[0],
                 sum(i["keys"] for i in info), sum(i["not_admitted"] for i in info),
                 time.perf_counter() - t0)
        if run:  # so that a crash during day 1 resumes without a second counting pass
            cluster.checkpoint(run.checkpoint_dir("stats"),
                               {"day": None, "day_index": -1, "per_day": [],
                                "config": to_dict(cfg)})
    return 0, []


def train_ray(cfg: Config, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Train and evaluate on Ray; returns the report (also written to the run dir)."""
    t_start = time.perf_counter()
    root = cfg.data.root
    all_days = list_days(root)
    train_days, test_days = split_days(all_days, cfg.data.train_days, cfg.data.test_days)
    run = RunDir(cfg.train.run_dir) if cfg.train.run_dir else None
    if resume and (run is None or latest_checkpoint(run.path) is None):
        raise CheckpointError(f"--resume: no complete checkpoint in '{cfg.train.run_dir}'.")
    connect(address, num_cpus=max(os.cpu_count() or 1,
                                  int(cfg.ps.shards * cfg.ray.shard_cpus
                                      + cfg.train.workers * cfg.ray.worker_cpus + 0.999)))
    if run:
        if resume:
            run.keep_metrics()
        run.write_config(cfg)
    cluster = RayCluster(cfg)
    try:
        if not resume and run:
            run.clear_checkpoints()
        start, per_day = _restore_or_start(cluster, cfg, run, train_days, root)
        log.info("train days %s (from %s), test days %s, %d shards, %d workers, %s mode",
                 train_days, train_days[start] if start < len(train_days) else "-", test_days,
                 cfg.ps.shards, cfg.train.workers, cfg.ps.mode)
        i = start
        retries = 0
        while i < len(train_days):
            day = train_days[i]
            try:
                rec = _train_day(cluster, cfg, root, day, cfg.ps.warmup_units if i == 0 else 0)
            except (RayActorError, WorkerCrashedError) as e:
                if retries >= MAX_DAY_RETRIES or run is None:
                    raise
                retries += 1
                log.warning("day %s: an actor died (%s); restoring the last checkpoint and "
                            "replaying the day (retry %d of %d)", day, e, retries,
                            MAX_DAY_RETRIES)
                cluster.kill()
                cluster = RayCluster(cfg)
                i, per_day = _restore_or_start(cluster, cfg, run, train_days, root)
                continue
            cluster.on_shards("end_day", i + 1)
            nxt = next_day(all_days, day)
            if cfg.train.eval_next_day and nxt is not None:
                rec["next_day"] = next_day_record(nxt, _evaluate(cluster, cfg, root, [nxt]))
            per_day.append(rec)
            if run:
                run.metric({"event": "train_day", **rec})
                cluster.checkpoint(run.checkpoint_dir(day),
                                   {"day": day, "day_index": i, "per_day": per_day,
                                    "config": to_dict(cfg)})
            i += 1
        test = _evaluate(cluster, cfg, root, test_days)
        model = model_report(cfg, cluster)
    finally:
        cluster.kill()
    report = build_report(cfg, test, model, train_days, per_day, time.perf_counter() - t_start)
    if run:
        run.metric({"event": "test", **test})
        run.write_report(report)
    return report

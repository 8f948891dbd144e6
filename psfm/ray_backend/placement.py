"""Can the cluster place a run's actors? Checked before any actor is created, so that a run
that would wait forever for resources (two shards and two workers on a 2-CPU head, a CUDA
worker on a cluster without GPUs) fails in seconds and says what is missing and what to change.
Pure: it reads the nodes' resources as Ray reports them (``ray.nodes()``) and imports no Ray.

The check packs the actors onto the alive nodes first-fit by decreasing size (what Ray's
scheduler can at best do), CPUs and GPUs; custom resources psfm asks for are fractions that any
node labelled with them fits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from psfm.config import Config
from psfm.errors import ConfigError

__all__ = ["ActorNeed", "needs", "check_placement", "bundles"]


@dataclass(frozen=True)
class ActorNeed:
    what: str  # "shard" or "worker"
    cpus: float
    gpus: float


def needs(cfg: Config, gpus_per_worker: float) -> list[ActorNeed]:
    """What each of the run's actors asks Ray for."""
    shards = [ActorNeed("shard", cfg.ray.shard_cpus, 0.0)] * cfg.ps.shards
    workers = [ActorNeed("worker", cfg.ray.worker_cpus, gpus_per_worker)] * cfg.train.workers
    return shards + workers


def bundles(
    cfg: Config, gpus_per_worker: float, labels: Mapping[str, bool]
) -> list[dict[str, float]] | None:
    """The run's placement-group bundles, shards first then workers (each actor's CPUs, GPUs
    and, where the cluster labels nodes with them (``labels``), the ``psfm_shard`` /
    ``psfm_worker`` fraction), or None when an actor asks for nothing Ray can reserve (0
    CPUs on an unlabelled cluster): such a run is placed actor by actor instead.

    >>> from psfm.config import load_config
    >>> bundles(load_config(None, ["ps.shards=1", "train.workers=2"]), 0.0, {})
    [{'CPU': 1.0}, {'CPU': 1.0}, {'CPU': 1.0}]
    """
    out = []
    for a in needs(cfg, gpus_per_worker):
        b = {k: v for k, v in (("CPU", a.cpus), ("GPU", a.gpus)) if v > 0}
        label = f"psfm_{a.what}"
        if labels.get(label):
            b[label] = 0.01
        if not b:
            return None
        out.append(b)
    return out


def check_placement(
    cfg: Config, nodes: Sequence[Mapping[str, float]], gpus_per_worker: float
) -> None:
    """Raise a ConfigError naming the shortfall when the actors cannot all be placed on
    ``nodes`` (each a node's total resources: ``{"CPU": 2.0, "GPU": 1.0, ...}``)."""
    free = [[float(n.get("CPU", 0.0)), float(n.get("GPU", 0.0))] for n in nodes]
    want = needs(cfg, gpus_per_worker)
    cpus = sum(a.cpus for a in want)
    gpus = sum(a.gpus for a in want)
    have_cpu, have_gpu = sum(f[0] for f in free), sum(f[1] for f in free)
    where = f"the Ray cluster ({len(free)} node(s), {have_cpu:g} CPUs, {have_gpu:g} GPUs)"
    ask = (
        f"{cfg.ps.shards} shard(s) x {cfg.ray.shard_cpus:g} CPU + {cfg.train.workers} "
        f"worker(s) x {cfg.ray.worker_cpus:g} CPU"
        + (f" and {gpus_per_worker:g} GPU" if gpus_per_worker else "")
    )
    if gpus > have_gpu:
        raise ConfigError(
            f"train.device = {cfg.train.device!r} asks {gpus:g} GPU(s) for {cfg.train.workers} "
            f'worker(s) but {where} has {have_gpu:g}: set train.device = "cpu" (or "auto"), '
            "or add GPU nodes."
        )
    for a in sorted(want, key=lambda a: (a.gpus, a.cpus), reverse=True):
        for f in free:
            if f[0] >= a.cpus - 1e-9 and f[1] >= a.gpus - 1e-9:
                f[0] -= a.cpus
                f[1] -= a.gpus
                break
        else:
            short = "in all" if cpus > have_cpu else "on any one node, as packed"
            raise ConfigError(
                f"{where} cannot place the run's actors: {ask} need {cpus:g} CPUs {short}. "
                "Lower ps.shards / train.workers (--shards, --workers), or the CPUs each actor "
                "asks for (--set ray.shard_cpus=0.5 --set ray.worker_cpus=0.5), or add nodes; "
                "on an autoscaling cluster, start the nodes first."
            )

"""How fast a run would train on a cluster of a given shape, from one run's measured costs.

A run's report records, over its training days, the CPU its workers and its shards spent per
sample (``train.worker_cpu_us_per_sample``, ``train.shard_cpu_us_per_sample``: process CPU
time, every thread, so Ray's own work in those processes is in it) and the bytes a sample
moves between them (``train.bytes_per_sample``). Those three numbers and the cluster's shape
bound the samples per second:

- a worker is one process on one core: ``workers / worker_us`` samples/µs;
- a shard applies one message at a time: ``shards / shard_us`` ("shards' CPU");
- a node's cores are shared by the actors on it, and on one machine (``machine_cpus``: a
  local multi-node cluster) by every actor of the run;
- a node's link carries its actors' messages to other nodes, the larger direction (pushes,
  ``PUSH_SHARE`` of the bytes) at ``link_gbps``;
- a message between nodes costs CPU that one within a node does not (Ray's messages instead
  of the shared-memory link: serialising, copying, the socket), per byte on each side:
  ``remote_worker_ns_per_byte`` and ``remote_shard_ns_per_byte``, measured by ``psfm bench``
  (the worker-shard message cost).

The prediction is the tightest bound, named. It assumes what psfm does at its defaults:
keys hashed evenly over shards, asynchronous workers that keep their cores busy
(``ps.max_in_flight`` messages in flight hide the round trips), a work queue that balances
the workers. It does not model a straggling node, a skewed key, synchronous mode's barriers
or a day too short for its warm-up unit.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Costs", "Layout", "Prediction", "predict", "layouts", "PUSH_SHARE"]

# Of the bytes a sample moves, the share of pushes (worker -> shard, the larger direction):
# BENCHMARKS.md section 3, FM(8) 282.8 pushed of 542.5, LR 98.1 of 173.1, RaFM 254.1 of 485.1.
PUSH_SHARE = 0.57
# Extra CPU per message byte when worker and shard are on different nodes (Ray's messages
# instead of shared memory), from psfm bench's worker-shard message cost on a 2-core
# machine: (CPU per push_pull on Ray's messages - on shared memory) / bytes per call.
REMOTE_WORKER_NS_PER_BYTE = 0.97
REMOTE_SHARD_NS_PER_BYTE = 0.48


@dataclass(frozen=True)
class Costs:
    """Per training sample: worker and shard CPU (µs, shards summed) measured with the
    shards on the workers' node, and the bytes pulled + pushed; ``other_us``: the driver's
    CPU per sample, which counts only where one machine holds every node
    (``Layout.machine_cpus``; Ray's own processes at rest are ``Layout.background_cores``)."""

    worker_us: float
    shard_us: float
    bytes_per_sample: float
    remote_worker_ns_per_byte: float = REMOTE_WORKER_NS_PER_BYTE
    remote_shard_ns_per_byte: float = REMOTE_SHARD_NS_PER_BYTE
    other_us: float = 0.0  # the driver's: counts only where one machine holds every node

    @classmethod
    def from_report(cls, report: Mapping[str, Any], **remote: float) -> Costs:
        """The costs of a finished run on Ray (its ``report.json``); ``remote`` overrides
        the per-byte costs of messages between nodes."""
        tr = report["train"]
        w, s = tr.get("worker_cpu_us_per_sample"), tr.get("shard_cpu_us_per_sample")
        if w is None or s is None:
            raise ValueError(
                "the report has no CPU per sample of its workers and shards: sizing needs a "
                "run on Ray (not --in-process) made by this version of psfm"
            )
        other = float(tr.get("driver_cpu_us_per_sample") or 0.0)
        return cls(float(w), float(s), float(tr["bytes_per_sample"]), other_us=other, **remote)


@dataclass(frozen=True)
class Layout:
    """A cluster's shape. Workers spread evenly over ``worker_nodes`` nodes of
    ``worker_node_cpus`` cores; shards on ``shard_nodes`` nodes of their own
    (``shard_node_cpus`` cores) or, with ``shard_nodes = 0``, spread over the workers' nodes.
    ``machine_cpus``: every node on one machine with this many cores (a local multi-node
    cluster), of which its idle Ray processes keep ``background_cores`` busy; 0 for real
    machines."""

    workers: int
    shards: int
    worker_nodes: int = 1
    worker_node_cpus: int = 0  # 0: a core per actor on the node
    shard_nodes: int = 0
    shard_node_cpus: int = 0
    link_gbps: float = 10.0
    machine_cpus: int = 0
    background_cores: float = 0.0  # what the idle Ray of that machine keeps busy


@dataclass(frozen=True)
class Prediction:
    samples_per_s: float
    bound: str  # which limit binds, in words
    bounds: dict[str, float]  # every limit, samples/s
    remote_share: float  # of the message bytes, the share that crosses nodes


def remote_share(lay: Layout) -> float:
    """The share of a worker's message bytes that go to a shard on another node."""
    if lay.shard_nodes > 0:
        return 1.0
    # shards spread over the workers' nodes: a worker's own node holds 1/worker_nodes of them
    return 1.0 - 1.0 / lay.worker_nodes


def predict(c: Costs, lay: Layout) -> Prediction:
    """Samples/s of ``c``'s run on ``lay`` (the tightest of the bounds in the module's
    docstring) and every bound."""
    if lay.workers < 1 or lay.shards < 1 or lay.worker_nodes < 1:
        raise ValueError("workers, shards and worker_nodes must be >= 1")
    rho = remote_share(lay)
    remote_bytes = rho * c.bytes_per_sample
    w = c.worker_us + remote_bytes * c.remote_worker_ns_per_byte / 1e3  # µs per sample
    s = c.shard_us + remote_bytes * c.remote_shard_ns_per_byte / 1e3
    b: dict[str, float] = {
        "workers' CPU": lay.workers * 1e6 / w,
        "shards' CPU": lay.shards * 1e6 / s,
    }
    wpn = math.ceil(lay.workers / lay.worker_nodes)  # workers on the busiest node
    spn = 0 if lay.shard_nodes else math.ceil(lay.shards / lay.worker_nodes)
    if lay.worker_node_cpus:
        # the busiest worker node: its workers' share of the samples, and its shards'
        need = wpn / lay.workers * w + spn / lay.shards * s
        b["worker nodes' cores"] = lay.worker_node_cpus * 1e6 / need
    if lay.shard_nodes and lay.shard_node_cpus:
        b["shard nodes' cores"] = (
            lay.shard_node_cpus * 1e6 / (math.ceil(lay.shards / lay.shard_nodes) / lay.shards * s)
        )
    if lay.machine_cpus:
        free = lay.machine_cpus - lay.background_cores
        b["the machine's cores"] = free * 1e6 / (w + s + c.other_us)
    if rho > 0 and lay.link_gbps > 0:
        link = lay.link_gbps * 1e9 / 8  # bytes/s each way
        push = PUSH_SHARE * remote_bytes
        # what leaves the busiest worker node: its workers' pushes and, where shards share
        # the node, their answers to the workers of other nodes
        out = wpn / lay.workers * push + spn / lay.shards * (remote_bytes - push)
        b["worker nodes' links"] = link / out
        if lay.shard_nodes:
            b["shard nodes' links"] = link / (push / lay.shard_nodes)
    bound = min(b, key=lambda k: b[k])
    return Prediction(b[bound], bound, b, rho)


def layouts(workers: int, shards: int, node_cpus: int, separate: bool, link_gbps: float) -> Layout:
    """``workers`` and ``shards`` on nodes of ``node_cpus`` cores, one core an actor: shards on
    nodes of their own (``separate``) or packed with the workers."""
    if separate:
        return Layout(
            workers,
            shards,
            worker_nodes=math.ceil(workers / node_cpus),
            worker_node_cpus=node_cpus,
            shard_nodes=math.ceil(shards / node_cpus),
            shard_node_cpus=node_cpus,
            link_gbps=link_gbps,
        )
    nodes = math.ceil((workers + shards) / node_cpus)
    return Layout(workers, shards, nodes, node_cpus, 0, 0, link_gbps)


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected counts >= 1 like 1,2,4, got {text!r}")
    return out


def _cmd(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from psfm.errors import ConfigError

    path = Path(args.run)
    path = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(path.read_text())
        costs = Costs.from_report(report)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such report (a finished run's report.json)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if args.node_cpus < 1 or args.link_gbps <= 0:
        raise ConfigError("--node-cpus must be >= 1 and --link-gbps > 0")
    rows = []
    for s in args.shards:
        for w in args.workers:
            lay = layouts(w, s, args.node_cpus, args.separate_shards, args.link_gbps)
            p = predict(costs, lay)
            nodes = lay.worker_nodes + lay.shard_nodes
            rows.append({"workers": w, "shards": s, "nodes": nodes, **p.__dict__})
    if args.json:
        print(json.dumps({"costs": costs.__dict__, "predictions": rows}, indent=1))
        return 0
    print(
        f"measured: worker {costs.worker_us:.2f} µs CPU/sample, shards "
        f"{costs.shard_us:.2f} µs CPU/sample, {costs.bytes_per_sample:,.0f} bytes/sample; "
        f"nodes of {args.node_cpus} cores, {args.link_gbps:g} Gb/s, shards "
        + ("on nodes of their own" if args.separate_shards else "with the workers")
    )
    print(f"{'workers':>8} {'shards':>7} {'nodes':>6} {'samples/s':>12}  bound")
    for r in rows:
        print(
            f"{r['workers']:>8} {r['shards']:>7} {r['nodes']:>6} "
            f"{r['samples_per_s']:>12,.0f}  {r['bound']}"
        )
    return 0


def add_cli(sub: Any) -> None:
    """``psfm sizing RUN_DIR``: samples/s of that run's model and data on clusters of a grid
    of shapes."""
    p = sub.add_parser(
        "sizing",
        help="predict samples/s on a cluster from a finished run's measured costs",
        description="Reads a Ray run's report (its workers' and shards' CPU per sample and "
        "bytes per sample) and prints the samples/s it would train at with each number of "
        "workers and shards, and which limit binds: the workers' CPU, the shards, the "
        "nodes' cores or links (psfm.sizing).",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a run directory or its report.json")
    p.add_argument("--workers", type=_ints, default=[1, 2, 4, 8, 16, 32], help="e.g. 1,2,4,8")
    p.add_argument("--shards", type=_ints, default=[1, 2, 4, 8], help="e.g. 1,2,4")
    p.add_argument("--node-cpus", type=int, default=16, help="cores per node (default 16)")
    p.add_argument("--link-gbps", type=float, default=10.0, help="node link (default 10)")
    p.add_argument(
        "--separate-shards",
        action="store_true",
        help="shards on nodes of their own (default: packed with the workers)",
    )
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=_cmd)

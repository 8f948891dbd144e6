"""``psfm bench``: the benchmark suite behind ``BENCHMARKS.md`` (the markdown is written here).

On a generated Criteo-like log (``GenSpec()``: 13 numeric + 26 categorical fields, Zipf values)
it measures, for LR, FM(8) and RaFM({1,2,4,8}):

1. per-sample stage costs on pre-built batches and one in-process shard (static levels set by
   the statistics pass): Parquet read -> keys, unique/inverse, routing to 2 shards, pull,
   forward/backward (torch CPU, 1 thread), push, and the pickle (protocol 5) round trip of the
   pull answer and the push arguments as a proxy for crossing actors;
2. end-to-end training samples/s of one day: in-process, and on local Ray (1+1, 1+2, 2+2);
3. bytes pulled/pushed per sample against the active-factor minimum;
4. parameter-server bytes per stored key against the raw state and alphaFM's 8(3+3k);
5. the training step at batch sizes 1k..64k, and pull/push as the shard grows to 1M..50M keys;
6. a memory-bandwidth ceiling (random gather + scatter-add of FM(8)'s per-batch shape);
7. the issue's targets, PASS/FAIL; 8. forward/backward on CUDA when torch sees a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from psfm.config import Config, load_config
from psfm.data.batch import unique_inverse_counts
from psfm.data.parquet import work_units
from psfm.datasets.gen import GenSpec, generate, generate_day
from psfm.models.family import FamilyInputs, forward_backward
from psfm.ps.client import LocalClient
from psfm.ps.messages import PullResult, PushRequest
from psfm.ps.routing import merge_pulls, route, split_push
from psfm.trainer import make_shards, needs_stats_pass, train_local
from psfm.worker import Worker, push_request

__all__ = [
    "MODELS",
    "Sizes",
    "sizes",
    "machine_info",
    "make_data",
    "read_batches",
    "stage_costs",
    "end_to_end",
    "message_cost",
    "ps_memory",
    "batch_scaling",
    "table_scaling",
    "bandwidth_ceiling",
    "gpu_forward_backward",
    "targets",
    "run_bench",
    "render_markdown",
    "main",
]

MODELS: dict[str, list[str]] = {
    "LR": ['model.kind="lr"', "model.ranks=[]"],
    "FM(8)": ['model.kind="fm"', "model.ranks=[8]"],
    # c = 16: the level study's pick (tools/rafm_levels.py; jobs/configs/rafm.toml)
    "RaFM({1,2,4,8})": ['model.kind="rafm"', "model.ranks=[1,2,4,8]", "levels.count_per_dim=16"],
}
FM, RAFM = "FM(8)", "RaFM({1,2,4,8})"
LAYOUTS = ((1, 1), (1, 2), (2, 2))  # Ray shards x workers measured end to end
STAGES = [
    "read -> keys",
    "unique/inverse",
    "routing (2 shards)",
    "pull",
    "forward/backward",
    "push",
    "pickle pull answer",
    "pickle push args",
]
_U64_MAX = int(np.iinfo(np.uint64).max)


@dataclass(frozen=True)
class Sizes:
    """How much each section measures."""

    rows: int  # training day (end-to-end)
    test_rows: int  # the small test day train_local / train_ray score
    stage_rows: int  # rows of pre-built batches for the stage costs
    reps: int  # repetitions of each stage timing (median)
    scale_rows: int  # rows per batch-size / table-size point
    scale_reps: int
    batch_sizes: tuple[int, ...]
    table_sizes: tuple[int, ...]
    e2e_reps: int  # end-to-end runs per model and layout (median)


def sizes(quick: bool, rows: int | None = None) -> Sizes:
    """The full run (2M rows, 5 repetitions, up to 50M keys) or ``--quick``."""
    if quick:
        r = rows or 300_000
        return Sizes(
            r,
            32_768,
            min(r, 262_144),
            3,
            min(r, 131_072),
            2,
            (1024, 4096, 16384, 65536),
            (1_000_000,),
            1,
        )
    r = rows or 2_000_000
    return Sizes(
        r,
        65_536,
        min(r, 524_288),
        5,
        min(r, 262_144),
        3,
        (1024, 4096, 16384, 65536),
        (1_000_000, 10_000_000, 50_000_000),
        3,
    )


_T0 = time.perf_counter()


def _say(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _timed(fn: Callable[[], Any], reps: int) -> tuple[float, list[float], Any]:
    """Median seconds of ``reps`` calls, every run's seconds, and the last result."""
    runs, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs, out


def _config(root: str, model: str, *extra: str) -> Config:
    # The engine at the batch size large logs train with, a pull and a push per batch
    # (data.batch_size = 0 would give this 2M-row day 1024-row batches, psfm.steps, and
    # ps.local_steps = 0 several of them to a message, psfm.ps.local), so figures compare
    # across versions; end_to_end measures the defaults on their own.
    return load_config(
        None,
        [
            f"data.root={json.dumps(root)}",
            'data.train_days="1"',
            'data.test_days="2"',
            "ps.shards=1",
            "data.batch_size=4096",
            "ps.local_steps=1",
            *MODELS[model],
            *extra,
        ],
    )


DEFAULTS = ("data.batch_size=0", "ps.local_steps=0")  # what a user gets (on top of _config)


def _proc_bytes(path: str, field: str) -> int | None:
    """A ``Field:  N kB`` line of a /proc file, in bytes (None where it cannot be read)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _mem_available() -> int:
    got = _proc_bytes("/proc/meminfo", "MemAvailable")
    return got if got is not None else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    """Resident bytes of this process (0 where /proc is missing)."""
    return _proc_bytes("/proc/self/status", "VmRSS") or 0


def machine_info() -> dict[str, Any]:
    """CPU, versions and the load average (at the start of the run)."""
    import ray

    cpu = platform.processor()
    try:
        cpu = (
            next(
                (
                    ln.split(":", 1)[1].strip()
                    for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")
                ),
                cpu,
            )
            or cpu
        )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "processor": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "ray": ray.__version__,
        "memory_gb": _mem_available() / 1e9,
        "load_start": list(os.getloadavg()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def make_data(root: str, sz: Sizes, seed: int = 1) -> None:
    """Day 1: ``sz.rows`` training rows; day 2: a small test day (same true model)."""
    generate(root, days=1, rows_per_day=sz.rows, seed=seed, spec=GenSpec())
    os.makedirs(f"{root}/day=2", exist_ok=True)
    pq.write_table(
        generate_day(GenSpec(), 2, sz.test_rows, seed),
        f"{root}/day=2/part-00000.parquet",
        row_group_size=65_536,
        compression="none",
    )


def read_batches(root: str, cfg: Config, max_rows: int, batch_rows: int | None = None) -> list:
    """The first ``max_rows`` rows of day 1 as batches (read_unit + build_batch)."""
    worker, out, n = Worker(cfg, batch_rows), [], 0
    for u in work_units(root, "1", cfg.data.rows_per_unit):
        for b, _ in worker.batches(u):
            out.append(b)
            n += b.size
            if n >= max_rows:
                return out
    return out


def _prepared_client(cfg: Config, batches: list) -> LocalClient:
    """One in-process shard with the statistics pass done when the levels need it."""
    client = LocalClient(make_shards(cfg))
    if needs_stats_pass(cfg):
        for b in batches:
            client.add_counts(b.uniq, b.counts)
        client.finish_counts()
    return client


# ---------------------------------------------------------------- 1 + 3: stages and bytes
def stage_costs(root: str, sz: Sizes) -> dict[str, Any]:
    """Each stage timed alone on the same pre-built batches; bytes against the minimum."""
    cfg0 = _config(root, FM)
    t_read, runs_read, batches = _timed(lambda: read_batches(root, cfg0, sz.stage_rows), sz.reps)
    rows = sum(b.size for b in batches)
    flats = [b.keys[b.mask] for b in batches]
    t_uniq, runs_uniq, _ = _timed(lambda: [unique_inverse_counts(f) for f in flats], sz.reps)
    per = 1e6 / rows
    shared = {"read -> keys": (t_read - t_uniq) * per, "unique/inverse": t_uniq * per}
    out: dict[str, Any] = {
        "rows": rows,
        "batches": len(batches),
        "reps": sz.reps,
        "occurrences_per_sample": sum(f.size for f in flats) / rows,
        "unique_per_batch": float(np.mean([b.uniq.size for b in batches])),
        "models": {},
        "runs_read_s": runs_read,
        "runs_unique_s": runs_uniq,
    }
    for name in MODELS:
        _say(f"stages: {name}")
        out["models"][name] = _model_stages(_config(root, name), batches, sz.reps, per)
        out["models"][name]["us_per_sample"].update(shared)
        gc.collect()
    out["batches_obj"] = batches  # reused by later sections, dropped before JSON
    return out


def _model_stages(cfg: Config, batches: list, reps: int, per: float) -> dict[str, Any]:
    client = _prepared_client(cfg, batches)
    shard, worker, layout = client.shards[0], Worker(cfg), client.layout
    grads, min_pull, min_push, rows = [], 0, 0, 0
    for b in batches:  # one training pass: creates keys, measures bytes, keeps the gradients
        pulled = client.pull(b.uniq, create=True)
        req = push_request(
            b, pulled.level, forward_backward(worker.spec, worker._inputs(b, pulled))
        )
        client.push(req)
        grads.append(req)
        fac = 4 * sum(t.size for t in pulled.tables)  # sum_p D_p * rows_p * 4 bytes
        min_pull += 12 * b.uniq.size + fac  # key 8 + w 4 + active factors
        min_push += 16 * b.uniq.size + fac  # key 8 + count 4 + grad w 4 + active factors
        if req.has_sq:  # and a sum of squared gradients per coordinate
            min_push += 4 * b.uniq.size + fac
        rows += b.size
    bytes_ = {
        "pulled": client.bytes_pulled / rows,
        "min_pulled": min_pull / rows,
        "pushed": client.bytes_pushed / rows,
        "min_pushed": min_push / rows,
        "min_pulled_no_w": (min_pull - 4 * sum(b.uniq.size for b in batches)) / rows,
    }
    bytes_["ratio"] = (bytes_["pulled"] + bytes_["pushed"]) / (
        bytes_["min_pulled"] + bytes_["min_pushed"]
    )
    t_pull, r_pull, pulls = _timed(lambda: [shard.pull(b.uniq, create=True) for b in batches], reps)
    t_pk, _, _ = _timed(lambda: [pickle.loads(pickle.dumps(p, protocol=5)) for p in pulls], reps)
    args = grads  # the same keys and levels as these pulls
    t_pk2, _, _ = _timed(lambda: [pickle.loads(pickle.dumps(a, protocol=5)) for a in args], reps)
    parts = []
    for b, p in zip(batches, pulls):
        r = route(b.uniq, 2)
        parts.append(
            [
                PullResult(a.grad_w, a.level, a.grad_tables)
                for a in split_push(
                    r, PushRequest(b.uniq, b.counts, p.level, p.w, p.tables), layout
                )
            ]
        )

    def routing() -> None:
        for b, ps, req in zip(batches, parts, grads):
            r = route(b.uniq, 2)
            merge_pulls(r, ps, layout)
            split_push(r, req, layout)

    t_route, _, _ = _timed(routing, reps)
    inputs = [worker._inputs(b, p) for b, p in zip(batches, pulls)]
    t_fb, r_fb, _ = _timed(lambda: [forward_backward(worker.spec, x) for x in inputs], reps)
    t_push, _, _ = _timed(lambda: [shard.push(a) for a in args], reps)
    us = {
        "pull": t_pull * per,
        "forward/backward": t_fb * per,
        "push": t_push * per,
        "routing (2 shards)": t_route * per,
        "pickle pull answer": t_pk * per,
        "pickle push args": t_pk2 * per,
    }
    keep = {"pulls": pulls, "fb_runs_s": r_fb, "pull_runs_s": r_pull}
    return {"us_per_sample": us, "bytes_per_sample": bytes_, "_keep": keep}


# ---------------------------------------------------------------- 2 + 4: end to end, memory
def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median samples/s (of an odd count; the lower middle of an even one)."""
    return sorted(runs, key=lambda r: r["train"]["samples_per_s"])[(len(runs) - 1) // 2]


def start_local_ray() -> None:
    """The bench's local Ray, unless one is up: 4 logical CPUs on this machine's cores, with
    psfm's actor environment and system config (4 MB messages inline)."""
    import ray

    from psfm.ray_backend.driver import LOCAL_SYSTEM_CONFIG, actor_environment

    if not ray.is_initialized():
        with actor_environment():
            ray.init(
                address="local",
                num_cpus=4,
                include_dashboard=False,
                log_to_driver=False,
                _system_config=LOCAL_SYSTEM_CONFIG,
            )


def end_to_end(root: str, reps: int = 1) -> dict[str, Any]:
    """One training day, ``reps`` times each: in-process (1 shard), then local Ray 1+1, 1+2
    and 2+2 (async, defaults); the median run's figures, every run's samples/s. Then the
    cost of one worker-shard message on Ray's transport and on shared memory."""
    import ray

    from psfm.ray_backend.driver import train_ray

    out: dict[str, Any] = {}
    for name in MODELS:
        _say(f"end to end in-process: {name}")
        runs = [train_local(_config(root, name)) for _ in range(reps)]
        rep = _median_run(runs)
        out[name] = {
            "local": rep["train"]["samples_per_s"],
            "model": rep["model"],
            "local_bytes_per_sample": rep["train"]["bytes_per_sample"],
            "test_auc": rep["test"]["auc"],
            "local_runs": [r["train"]["samples_per_s"] for r in runs],
        }
    start_local_ray()
    try:
        for s, w in LAYOUTS:
            for name in MODELS:
                _say(f"end to end on Ray, {s} shard(s) + {w} worker(s): {name}")
                runs = [
                    train_ray(_config(root, name, f"ps.shards={s}", f"train.workers={w}"))
                    for _ in range(reps)
                ]
                rep, key = _median_run(runs), f"ray_{s}x{w}"
                out[name][key] = rep["train"]["samples_per_s"]
                out[name][f"{key}_bytes_per_sample"] = rep["train"]["bytes_per_sample"]
                out[name][f"{key}_auc"] = rep["test"]["auc"]
                out[name][f"{key}_cpu_us"] = {
                    who: rep["train"].get(f"{who}_cpu_us_per_sample") for who in ("worker", "shard")
                }
                out[name][f"{key}_runs"] = [r["train"]["samples_per_s"] for r in runs]
        out["defaults"] = {}
        for name in (FM, RAFM):
            _say(f"end to end on Ray, 1 shard + 2 workers, at the defaults: {name}")
            runs = [
                train_ray(_config(root, name, "train.workers=2", *DEFAULTS)) for _ in range(reps)
            ]
            rep = _median_run(runs)
            out["defaults"][name] = {
                "ray_1x2": rep["train"]["samples_per_s"],
                "ray_1x2_auc": rep["test"]["auc"],
                "ray_1x2_runs": [r["train"]["samples_per_s"] for r in runs],
                "batch_size": rep["config"]["data"]["batch_size"],
                "local_steps": rep["config"]["ps"]["local_steps"],
            }
        _say("message cost")
        out["messages"] = message_cost(root)
    finally:
        ray.shutdown()
    return out


def message_cost(root: str, n_batches: int = 32, reps: int = 3) -> dict[str, Any]:
    """CPU and wall time per FM(8) ``push_pull`` (push batch t, pull batch t + 1: the async
    worker's one call per batch) against one shard actor, on Ray's messages (inline up to
    4 MB) and on the shared-memory link; a call with no payload; and the shard's own work
    for the same calls in-process. Medians of ``reps`` passes over ``n_batches`` batches."""
    import ray

    from psfm.ray_backend.actors import ShardActor
    from psfm.ray_backend.client import RayClient

    cfg = _config(root, FM)
    batches = read_batches(root, cfg, 4096 * (n_batches + 1))
    rng = np.random.default_rng(0)

    def cpu(actor) -> float:
        return ray.get(actor.cpu_seconds.remote())

    def timed(actor, fn) -> dict[str, float]:
        runs = []
        for _ in range(reps):
            c0, s0, t0 = time.process_time(), cpu(actor), time.perf_counter()
            fn()
            t1, c1, s1 = time.perf_counter(), time.process_time(), cpu(actor)
            k = len(batches) - 1
            runs.append(
                {
                    "wall_ms": 1e3 * (t1 - t0) / k,
                    "caller_cpu_ms": 1e3 * (c1 - c0) / k,
                    "shard_cpu_ms": 1e3 * (s1 - s0) / k,
                }
            )
        return {key: statistics.median(r[key] for r in runs) for key in runs[0]}

    out: dict[str, Any] = {"batches": len(batches) - 1}
    for transport in ("ray", "auto"):
        actor = ShardActor.remote(cfg.model, cfg.ftrl, cfg.levels)
        client = RayClient([actor], False, ranks=cfg.model.ranks, transport=transport)
        levels = [client.pull(b.uniq, create=True).level for b in batches]
        grads = [
            _random_push(rng, cfg, b, lv, [(int((lv >= 1).sum()), 8)], 1e-3)
            for b, lv in zip(batches, levels)
        ]

        def calls(client=client, grads=grads) -> None:
            for t in range(len(batches) - 1):
                client.wait_pull(client.push_pull(grads[t], batches[t + 1].uniq, True))

        def bare(actor=actor) -> None:
            for _ in range(len(batches) - 1):
                ray.get(actor.__ray_call__.remote(lambda self: 0))

        calls()  # warm: the shared-memory file has grown to its size
        moved = client.bytes_pulled + client.bytes_pushed
        out[transport] = timed(actor, calls)
        moved = client.bytes_pulled + client.bytes_pushed - moved
        out["call_bytes"] = moved / (reps * (len(batches) - 1))  # pulled + pushed, a call
        if transport == "ray":
            out["bare"] = timed(actor, bare)
            nbytes = [g.nbytes for g in grads]
            out["message_mb"] = statistics.median(nbytes) / 1e6
        ray.kill(actor)
    shard = _prepared_client(cfg, batches).shards[0]
    for b in batches:
        shard.pull(b.uniq, create=True)
    work = []
    for _ in range(reps):
        t0 = time.process_time()
        for t in range(len(batches) - 1):
            b = batches[t]
            shard.push_pull(grads[t], batches[t + 1].uniq, True)
        work.append(1e3 * (time.process_time() - t0) / (len(batches) - 1))
    out["shard_work_ms"] = statistics.median(work)
    return out


def remote_byte_costs(m: dict[str, Any]) -> dict[str, float]:
    """From :func:`message_cost`'s figures, the extra CPU in ns per message byte when a worker
    and its shard are on different nodes, on the ``worker`` and on the ``shard``: a call on
    Ray's messages minus one on shared memory, over the bytes of a call. A difference of two
    noisy figures, so below 0 is noise and counts 0 (Ray's messages never cost less)."""
    return {
        side: max(
            0.0, (m["ray"][f"{who}_cpu_ms"] - m["auto"][f"{who}_cpu_ms"]) * 1e6 / m["call_bytes"]
        )
        for side, who in (("worker", "caller"), ("shard", "shard"))
    }


SIZING_GRID = ((4, 1), (8, 2), (16, 4), (32, 8), (64, 16), (128, 32))
SIZING_NODE = {"node_cpus": 16, "link_gbps": 10.0}
CHECK_JSON = Path(__file__).resolve().parents[1] / "tools" / "scaling_check.json"


def sizing(e2e: dict[str, Any]) -> dict[str, Any]:
    """:mod:`psfm.sizing`'s samples/s for ``SIZING_GRID`` (workers, shards) on nodes of
    ``SIZING_NODE``, from each model's Ray 1 + 1 run (its workers' and shard's CPU per
    sample, bytes per sample) and the measured extra cost of a message between nodes; and
    the last local-cluster check (``tools/scaling_check.py``), when there is one."""
    from psfm.sizing import Costs, layouts, predict

    remote = {f"remote_{k}_ns_per_byte": v for k, v in remote_byte_costs(e2e["messages"]).items()}
    out: dict[str, Any] = {"node": SIZING_NODE, "remote": remote, "models": {}}
    for name in MODELS:
        cpu = e2e[name].get("ray_1x1_cpu_us") or {}
        if cpu.get("worker") is None or cpu.get("shard") is None:
            continue
        costs = Costs(cpu["worker"], cpu["shard"], e2e[name]["ray_1x1_bytes_per_sample"], **remote)
        rows = []
        for w, s in SIZING_GRID:
            for separate in (False, True):
                lay = layouts(w, s, SIZING_NODE["node_cpus"], separate, SIZING_NODE["link_gbps"])
                p = predict(costs, lay)
                rows.append(
                    {
                        "workers": w,
                        "shards": s,
                        "separate": separate,
                        "nodes": lay.worker_nodes + lay.shard_nodes,
                        "samples_per_s": p.samples_per_s,
                        "bound": p.bound,
                    }
                )
        out["models"][name] = {"costs": asdict(costs), "rows": rows}
    if CHECK_JSON.exists():
        out["check"] = json.loads(CHECK_JSON.read_text())
    return out


def whole_machine(entry: dict[str, Any]) -> tuple[str, float]:
    """The faster of the layouts that use the whole machine (2+2 and 1 shard + 2 workers):
    its key (``ray_SxW``) and samples/s."""
    key = max(("ray_2x2", "ray_1x2"), key=lambda k: entry[k])
    return key, entry[key]


def _layout(key: str) -> str:
    s, w = key.removeprefix("ray_").split("x")
    return f"{s}+{w}"


def ps_memory(e2e: dict[str, Any]) -> dict[str, Any]:
    """PS bytes per stored key (after the in-process training day) vs raw and alphaFM."""
    out = {}
    for name in MODELS:
        m = e2e[name]["model"]
        keys = max(m["keys"], 1)
        coords = sum(d * n for d, n in zip(m["ranks"], m["factor_rows_per_level"])) / keys
        out[name] = {
            "keys": m["keys"],
            "ps_bytes": m["ps_bytes"],
            "raw_bytes": m["raw_bytes"],
            "ps_per_key": m["ps_bytes"] / keys,
            "raw_per_key": m["raw_bytes"] / keys,
            "state_per_key": 8 + 8 + 8 * coords,  # key, (z, n) per parameter
            "alphafm_per_key": 8 * (3 + 3 * coords),
            "factor_coords_per_key": coords,
        }
        out[name]["ps_over_raw"] = m["ps_bytes"] / max(m["raw_bytes"], 1)
        # The "raw parameter + FTRL state bytes (keys included)": key, and per
        # parameter its weight plus z and n (psfm stores no weight: it is derived from z, n).
        full = m["raw_bytes"] + 4 * (m["keys"] + coords * keys)
        out[name]["raw_full_per_key"] = full / keys
        out[name]["ps_over_raw_full"] = m["ps_bytes"] / max(full, 1)
    out["rafm_over_fm"] = out[RAFM]["ps_bytes"] / max(out[FM]["ps_bytes"], 1)
    return out


# ---------------------------------------------------------------- 2c: start-up
STARTUP_ROWS = 20_000  # a day that trains in a fraction of a second: the start is the run


def start_up(data_dir: str, reps: int = 3) -> dict[str, Any]:
    """What a user waits for before the first batch: ``psfm train`` in a process of its own
    on an embedded Ray (FM(8), 1 shard + 2 workers, a small generated day), ``reps`` times:
    the report's ``timing`` (``seconds_to_first_batch`` counts from the process's start) and
    the summed memory of the run's processes; and ``psfm --help``, median of 5."""
    root = os.path.join(data_dir, "startup")
    generate(root, days=2, rows_per_day=STARTUP_ROWS, seed=2, spec=GenSpec.small())
    runs = []
    argv = [sys.executable, "-m", "psfm.cli", "train", "--data", root, "--model", "fm"]
    argv += ["--train-days", "1", "--test-days", "2", "--shards", "1", "--workers", "2"]
    for i in range(reps):
        run_dir = os.path.join(data_dir, f"startup_run{i}")
        p = subprocess.run([*argv, "--run-dir", run_dir], capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"start-up run {i} exited {p.returncode}: {p.stderr[-2000:]}")
        rep = json.loads(Path(run_dir, "report.json").read_text())
        runs.append({**rep["timing"], "total_pss_bytes": rep["memory"]["total_pss_bytes"]})
    helps = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([*argv[:3], "--help"], check=True, capture_output=True)
        helps.append(time.perf_counter() - t)
    med = sorted(runs, key=lambda r: r["seconds_to_first_batch"])[len(runs) // 2]
    return {"median": med, "runs": runs, "help_seconds": statistics.median(helps)}


# ---------------------------------------------------------------- 5: scaling
def batch_scaling(root: str, sz: Sizes) -> dict[str, Any]:
    """Samples/s of the in-process step (pull + forward/backward + push) per batch size."""
    out: dict[str, Any] = {name: {} for name in MODELS}
    for bs in sz.batch_sizes:
        batches = read_batches(root, _config(root, FM), sz.scale_rows, bs)
        rows = sum(b.size for b in batches)
        for name in MODELS:
            _say(f"batch size {bs}: {name}")
            out[name][str(bs)] = rows / _step_seconds(_config(root, name), batches, sz.scale_reps)
        gc.collect()
    return out


def _step_seconds(cfg: Config, batches: list, reps: int) -> float:
    """Median seconds of ``Worker.step`` over ``batches`` on a shard that has their keys."""
    client, worker = _prepared_client(cfg, batches), Worker(cfg)
    for b in batches:
        client.pull(b.uniq, create=True)
    return _timed(lambda: [worker.step(b, client, True) for b in batches], reps)[0]


def _random_push(
    rng: np.random.Generator, cfg: Config, b, level: np.ndarray, shapes: list, scale: float
) -> PushRequest:
    """A push of random gradients (and sums of squares when the FTRL rule takes them)."""
    gw = rng.normal(0, scale, b.uniq.size).astype(np.float32)
    gt = [rng.normal(0, scale, sh).astype(np.float32) for sh in shapes]
    if cfg.ftrl.accumulate != "sum_of_squares":
        return PushRequest(b.uniq, b.counts, level, gw, gt)
    return PushRequest(b.uniq, b.counts, level, gw, gt, gw * gw, [g * g for g in gt])


def _pull_push_seconds(
    shard, batches: list, pulls: list, grads: list, reps: int
) -> tuple[float, float]:
    """Median seconds of pulling and of pushing every batch (after one untimed pass)."""
    t_pull = _timed(lambda: [shard.pull(b.uniq, create=True) for b in batches], reps + 1)[1]
    t_push = _timed(lambda: [shard.push(g) for g in grads], reps + 1)[1]
    return statistics.median(t_pull[1:]), statistics.median(t_push[1:])


def table_scaling(batches: list, sz: Sizes, root: str) -> dict[str, Any]:
    """FM(8) pull/push cost on the same batches while the shard holds 1M, 10M, 50M keys
    (random keys inserted with ``pull(create=True)``); stops where memory would not fit."""
    batches = batches[: max(1, sz.scale_rows // batches[0].size)]
    rows = sum(b.size for b in batches)
    shard_cfg = _config(root, FM)
    shard = make_shards(shard_cfg)[0]
    rng = np.random.default_rng(7)
    points, skipped, per_key = [], [], 200.0
    for size in sz.table_sizes:
        need = 2 * per_key * max(size - len(shard), 0)
        if need > 0.85 * _mem_available():
            skipped.append(
                {"keys": size, "need_gb": need / 1e9, "available_gb": _mem_available() / 1e9}
            )
            continue
        _say(f"table size {size:,}: filling")
        t0 = time.perf_counter()
        while len(shard) < size:
            n = min(1 << 20, size - len(shard))
            shard.pull(rng.integers(1, _U64_MAX, n, dtype=np.uint64, endpoint=True), True)
        fill = time.perf_counter() - t0
        pulls = [shard.pull(b.uniq, create=True) for b in batches]
        grads = [
            _random_push(rng, shard_cfg, b, p.level, [t.shape for t in p.tables], 1e-2)
            for b, p in zip(batches, pulls)
        ]
        t_pull, t_push = _pull_push_seconds(shard, batches, pulls, grads, sz.reps)
        st = shard.stats()
        per_key = st.ps_bytes / st.keys
        points.append(
            {
                "keys": st.keys,
                "ps_gb": st.ps_bytes / 1e9,
                "fill_s": fill,
                "rss_gb": _rss() / 1e9,
                "pull_us": t_pull * 1e6 / rows,
                "push_us": t_push * 1e6 / rows,
                "samples_per_s": rows / (t_pull + t_push),
            }
        )
    drop = 1 - points[-1]["samples_per_s"] / points[0]["samples_per_s"] if points else None
    return {"model": FM, "rows": rows, "points": points, "skipped": skipped, "drop": drop}


# ---------------------------------------------------------------- 6: bandwidth ceiling
def bandwidth_ceiling(
    occ_per_sample: float,
    unique_per_batch: float,
    batch: int = 4096,
    table_rows: int = 2_000_000,
    dim: int = 8,
    reps: int = 20,
) -> dict[str, Any]:
    """Random gather and scatter-add of FM(8)'s per-batch factor traffic (one thread): the
    naive ceiling is one gather plus the fastest scatter-add per occurrence. psfm's own floor
    (``design_ceiling``): the PS reads and writes the (z, n) row of each unique key once, and
    the worker sums rows per sample and per key with one ``embedding_bag`` each way over the
    batch's own small table."""
    rng = np.random.default_rng(0)
    n = int(round(occ_per_sample * batch))
    table = rng.standard_normal((table_rows, dim), dtype=np.float32)
    idx = rng.integers(0, table_rows, n)
    buf = np.empty((n, dim), np.float32)
    tt, ti, src = torch.from_numpy(table), torch.from_numpy(idx), torch.from_numpy(buf)
    small = torch.zeros(batch, dim)
    u = int(round(unique_per_batch))
    state = rng.standard_normal((table_rows, 2, dim), dtype=np.float32)  # (z, n) rows
    uidx = rng.choice(table_rows, u, replace=False)
    ubuf = np.empty((u, 2, dim), np.float32)
    local = torch.from_numpy(rng.standard_normal((u, dim), dtype=np.float32))
    occ = torch.from_numpy(rng.integers(0, u, n))
    offsets = torch.from_numpy((np.arange(batch) * n) // batch)
    ops: dict[str, tuple[Callable[[], Any], int]] = {
        "gather": (lambda: np.take(table, idx, axis=0, out=buf), reps),
        "scatter (assign)": (lambda: table.__setitem__(idx, buf), reps),
        "torch.index_add_": (lambda: tt.index_add_(0, ti, src), reps),
        "torch.index_put_(accumulate)": (lambda: tt.index_put_((ti,), src, True), reps),
        "np.add.at": (lambda: np.add.at(table, idx, buf), 3),
        f"torch.index_add_ into {batch} rows": (lambda: small.index_add_(0, ti % batch, src), reps),
        f"PS: gather {u:,} (z, n) rows": (lambda: np.take(state, uidx, axis=0, out=ubuf), reps),
        f"PS: scatter {u:,} (z, n) rows": (lambda: state.__setitem__(uidx, ubuf), reps),
        f"worker: embedding_bag of {n:,} rows of a {u:,}-row table": (
            lambda: torch.nn.functional.embedding_bag(occ, local, offsets, mode="sum"),
            reps,
        ),
    }
    row, out = 4 * dim, {}
    for name, (fn, r) in ops.items():
        t = _timed(fn, r)[0]
        if name.startswith("PS:"):
            moved = u * (8 + 2 * row)
        elif name.startswith("worker:"):
            moved = n * (8 + row) + batch * row
        else:
            moved = n * (8 + (2 if name in ("gather", "scatter (assign)") else 3) * row)
        out[name] = {"ms": t * 1e3, "gbs": moved / t / 1e9}
    big = np.ones(1 << 25, np.float32)
    dst = np.empty_like(big)
    t_c = _timed(lambda: np.copyto(dst, big), 5)[0]
    adds = [k for k in out if k.startswith(("torch.index_", "np.add")) and " into " not in k]
    ps = sum(v["ms"] for k, v in out.items() if k.startswith("PS:")) / 1e3
    bag = next(v["ms"] for k, v in out.items() if k.startswith("worker:")) / 1e3
    best = min(adds, key=lambda k: out[k]["ms"])
    g = out["gather"]["ms"] / 1e3
    return {
        "occurrences": n,
        "table_rows": table_rows,
        "dim": dim,
        "batch": batch,
        "ops": out,
        "copy_gbs": 2 * big.nbytes / t_c / 1e9,
        "best_scatter_add": best,
        "ceiling_samples_per_s": batch / (g + out[best]["ms"] / 1e3),
        "assign_ceiling_samples_per_s": batch / (g + out["scatter (assign)"]["ms"] / 1e3),
        "unique_per_batch": u,
        "design_ceiling_samples_per_s": batch / (ps + 2 * bag),
    }


# ---------------------------------------------------------------- 8: GPU
def gpu_forward_backward(
    cfg: Config, batches: list, pulls: list, reps: int, device: str = "cuda"
) -> float:
    """µs/sample of forward_backward on ``device``: each batch packed into one pinned host
    buffer, one host-to-device copy, gradients copied back."""
    dev = torch.device(device)
    pin = dev.type == "cuda"
    spec = Worker(cfg).spec
    packs = [
        [
            np.ascontiguousarray(a)
            for a in (b.occ_sample, b.occ_uniq, b.occ_value, b.labels, p.w, p.level, *p.tables)
        ]
        for b, p in zip(batches, pulls)
    ]
    cap = max(sum(-(-a.nbytes // 64) * 64 for a in arrs) for arrs in packs)
    host = torch.empty(cap, dtype=torch.uint8, pin_memory=pin)
    hnp = host.numpy()
    tdt = {
        np.dtype(np.int64): torch.int64,
        np.dtype(np.float32): torch.float32,
        np.dtype(np.int8): torch.int8,
    }

    def run() -> None:
        for arrs in packs:
            off, spans = 0, []
            for a in arrs:
                hnp[off : off + a.nbytes] = a.reshape(-1).view(np.uint8)
                spans.append((off, a))
                off += -(-a.nbytes // 64) * 64
            d = host[:off].to(dev, non_blocking=True)
            t = [d[o : o + a.nbytes].view(tdt[a.dtype]).view(a.shape) for o, a in spans]
            x = FamilyInputs(t[0], t[1], t[2], t[3], None, t[4], t[5].to(torch.int64), t[6:])
            out = forward_backward(spec, x)
            out.grad_w.cpu()
            [g.cpu() for g in out.grad_tables]
        if pin:
            torch.cuda.synchronize()

    run()  # warm up
    t, _, _ = _timed(run, reps)
    return t * 1e6 / sum(b.size for b in batches)


# ---------------------------------------------------------------- 7: targets
TARGETS_FILE = Path(__file__).with_name("targets.json")


def load_targets() -> dict[str, float]:
    """The goals the suite checks, from ``benchmarks/targets.json`` (kept out of the code)."""
    return {k: float(v) for k, v in json.loads(TARGETS_FILE.read_text()).items() if k[0] != "_"}


def targets(res: dict[str, Any], goals: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The targets of ``targets.json`` with the measured values."""
    g = load_targets() if goals is None else goals
    e2e, st, mem, tab = res["end_to_end"], res["stages"]["models"], res["memory"], res["table"]
    out = []

    def add(name: str, value: str, ok: bool | None) -> None:
        out.append(
            {
                "target": name,
                "measured": value,
                "result": "n/a" if ok is None else ("PASS" if ok else "FAIL"),
            }
        )

    for name, goal in ((FM, g["fm8_samples_per_s"]), ("LR", g["lr_samples_per_s"])):
        k, v = whole_machine(e2e[name])
        add(
            f"{name} end to end >= {goal:,.0f} samples/s (Ray, whole machine)",
            f"{v:,.0f} ({_layout(k)}"
            + ("" if k == "ray_2x2" else f"; 2+2: {e2e[name]['ray_2x2']:,.0f}")
            + ")",
            v >= goal,
        )
    (kr, r), (kf, f) = whole_machine(e2e[RAFM]), whole_machine(e2e[FM])
    br, bf = e2e[RAFM][f"{kr}_bytes_per_sample"], e2e[FM][f"{kf}_bytes_per_sample"]
    add(
        "RaFM >= FM(8) samples/s with fewer bytes/sample (Ray, whole machine)",
        f"{r:,.0f} ({_layout(kr)}) vs {f:,.0f} ({_layout(kf)}) samples/s; {br:,.0f} vs {bf:,.0f} B",
        r >= f and br < bf,
    )
    for name in MODELS:
        v = st[name]["bytes_per_sample"]["ratio"]
        lim = g["bytes_over_active_max"]
        add(f"{name} bytes pulled+pushed <= {lim}x active-factor minimum", f"{v:.3f}x", v <= lim)
    for name in MODELS:
        v = mem[name]["ps_over_raw_full"]
        add(
            f"{name} PS memory <= {g['ps_over_raw_max']}x raw parameter + FTRL state bytes"
            " (keys included)",
            f"{v:.3f}x ({mem[name]['ps_over_raw']:.3f}x the stored z, n and keys)",
            v <= g["ps_over_raw_max"],
        )
    v = mem["rafm_over_fm"]
    lim = g["rafm_over_fm_ps_bytes_max"]
    add(f"RaFM PS memory <= {100 * lim:.0f}% of FM(8)'s", f"{100 * v:.1f}%", v <= lim)
    if su := res.get("startup"):
        v, lim = su["median"]["seconds_to_first_batch"], g["first_batch_seconds_max"]
        add(f"seconds to the first batch <= {lim:g} (embedded Ray)", f"{v:.2f} s", v <= lim)
        v, lim = su["help_seconds"], g["help_seconds_max"]
        add(f"`psfm --help` < {lim:g} s", f"{v:.2f} s", v < lim)
    pts = tab["points"]
    drop_name = (
        f"FM(8) pull+push throughput falls <= {100 * g['table_drop_max']:.0f}% from 1M to 50M keys"
    )
    if len(pts) >= 2:
        largest = pts[-1]["keys"]
        note = "" if largest >= 50_000_000 else f" (largest that fit: {largest:,} keys)"
        add(
            drop_name,
            f"{100 * tab['drop']:.1f}% drop{note}",
            tab["drop"] <= g["table_drop_max"] if largest >= 50_000_000 else None,
        )
    else:
        add(
            drop_name,
            "only one table size measured",
            None,
        )
    return out


# ---------------------------------------------------------------- driver and markdown
def run_bench(sz: Sizes, data_dir: str | None = None, command: str = "") -> dict[str, Any]:
    """Every section; returns the JSON-ready results."""
    torch.set_num_threads(1)
    res: dict[str, Any] = {
        "machine": machine_info(),
        "command": command,
        "sizes": asdict(sz),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        root = os.path.join(tmp, "data")
        _say(f"generating {sz.rows:,} + {sz.test_rows:,} rows")
        make_data(root, sz)
        res["gen_seconds"] = time.perf_counter() - t0
        st = stage_costs(root, sz)
        batches = st.pop("batches_obj")
        _say("bandwidth ceiling")
        res["bandwidth"] = bandwidth_ceiling(st["occurrences_per_sample"], st["unique_per_batch"])
        if torch.cuda.is_available():
            _say("GPU forward/backward")
            res["gpu"] = {
                n: gpu_forward_backward(
                    _config(root, n), batches, st["models"][n]["_keep"]["pulls"], sz.reps
                )
                for n in MODELS
            }
        for m in st["models"].values():
            keep = m.pop("_keep")
            m["fb_runs_s"], m["pull_runs_s"] = keep["fb_runs_s"], keep["pull_runs_s"]
        res["stages"] = st
        gc.collect()
        res["table"] = table_scaling(batches, sz, root)
        del batches
        gc.collect()
        res["batch_scaling"] = batch_scaling(root, sz)
        res["end_to_end"] = end_to_end(root, sz.e2e_reps)
        _say("start-up")
        res["startup"] = start_up(tmp, sz.e2e_reps)
    res["memory"] = ps_memory(res["end_to_end"])
    res["sizing"] = sizing(res["end_to_end"])
    res["targets"] = targets(res)
    res["machine"]["load_end"] = list(os.getloadavg())
    res["seconds"] = time.perf_counter() - t0
    return res


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(res: dict[str, Any]) -> str:
    """BENCHMARKS.md from the results (never written by hand)."""
    m, sz, st = res["machine"], res["sizes"], res["stages"]
    names = list(MODELS)
    ls, le = m["load_start"], m["load_end"]
    busy = ls[0] > 0.25 * (m["cpus"] or 1)
    md = [
        "# psfm benchmarks\n",
        "Written by `psfm bench` (`benchmarks/bench.py`); do not edit by hand.\n",
        f"- machine: {m['cpus']} CPUs, {m['processor']}, {m['memory_gb']:.1f} GB available; "
        f"{m['platform']}",
        f"- versions: Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, "
        f"pyarrow {m['pyarrow']}, ray {m['ray']}",
        f"- load average (1/5/15 min): start {ls[0]:.2f} / {ls[1]:.2f} / {ls[2]:.2f}, end "
        f"{le[0]:.2f} / {le[1]:.2f} / {le[2]:.2f}"
        + (
            " — **the machine was busy when the run started; numbers are pessimistic**"
            if busy
            else " (quiet at the start)"
        ),
        f"- command: `{res['command']}`; date {res['date']}; {res['seconds']:.0f} s in all",
        f"- data: `GenSpec()` (13 numeric + 26 categorical fields, Zipf values), "
        f"{sz['rows']:,} training rows (day 1), {sz['test_rows']:,} test rows; batch 4096; "
        f"{st['occurrences_per_sample']:.1f} keys per sample, "
        f"{st['unique_per_batch']:,.0f} unique keys per batch\n",
    ]
    us = {n: st["models"][n]["us_per_sample"] for n in names}
    rows = [[s] + [f"{us[n][s]:.3f}" for n in names] for s in STAGES]
    core = STAGES[:6]
    rows.append(
        ["**sum of stages 1-6**"] + [f"**{sum(us[n][s] for s in core):.3f}**" for n in names]
    )
    rows.append(
        ["implied samples/s, one core"]
        + [f"{1e6 / sum(us[n][s] for s in core):,.0f}" for n in names]
    )
    md += [
        f"## 1. Stage costs (µs/sample, median of {st['reps']} runs over {st['rows']:,} "
        f"rows in {st['batches']} batches)\n",
        "One in-process shard (static levels from the statistics pass), pre-built batches, "
        "torch CPU with 1 thread. *read -> keys* is read_unit + build_batch minus "
        "*unique/inverse*; *routing* is route + merge_pulls + split_push for 2 shards; "
        "*pull* and *push* are `ParameterShard.pull(create=True)` / `.push`. The pickle "
        "rows (protocol 5, dumps + loads) are a proxy for crossing actors and are not in "
        "the sum.\n",
        _table(["stage"] + names, rows),
    ]
    e = res["end_to_end"]
    rows = [
        [n, f"{e[n]['local']:,.0f}"]
        + [f"{e[n][f'ray_{s}x{w}']:,.0f}" for s, w in LAYOUTS]
        + [
            " / ".join(f"{e[n][f'ray_{s}x{w}_bytes_per_sample']:,.0f}" for s, w in LAYOUTS),
            " / ".join(
                f"{x:.4f}"
                for x in [e[n]["test_auc"]] + [e[n][f"ray_{s}x{w}_auc"] for s, w in LAYOUTS]
            ),
        ]
        for n in names
    ]
    reps = sz.get("e2e_reps", 1)
    md += [
        "## 2. End-to-end training (samples/s of the training day)\n",
        f"`report['train']['samples_per_s']` over day 1 ({sz['rows']:,} rows) streamed from "
        f"Parquet, median of {reps} run(s) (every run is in `bench.json`); default config "
        "(async, batch 4096, pipeline overlap, shared-memory messages); the statistics "
        "pass and the test day are not in the figure. Ray: one local Ray, "
        "`ray.init(num_cpus=4)`, reused; in async mode each worker reads batches of 4096 "
        "rows, and one worker trains the first work unit alone (`ps.warmup_units`: on this "
        "one-day log, an eighth of the day with one core mostly idle). "
        "On two cores, 1 shard + 2 workers and 2 + 2 both use the whole machine; the "
        "targets take the faster. The test AUC is that of the median run; FM(8)'s moves "
        "by about ±0.003 with the init seed on this log (`train.seed` 0-6: 0.7676-0.7736).\n",
        _table(
            [
                "model",
                "in-process, 1 shard",
                "Ray 1 shard + 1 worker",
                "Ray 1 shard + 2 workers",
                "Ray 2 shards + 2 workers",
                "bytes/sample 1+1 / 1+2 / 2+2",
                "test AUC: in-process / 1+1 / 1+2 / 2+2",
            ],
            rows,
        ),
    ]
    dflt = e.get("defaults")
    if dflt:
        md += [
            "### At the defaults\n",
            "The same day and Ray 1 shard + 2 workers at what a user gets: `data.batch_size = "
            "0` (FTRL steps of the size the pass asks for, `psfm.steps`) and `ps.local_steps = "
            "0` (several steps to a pull and a push, `psfm.ps.local`); against the table above "
            "in the same run.\n",
            _table(
                [
                    "model",
                    "batch",
                    "steps a message",
                    "samples/s",
                    "vs 4096, one a message",
                    "test AUC",
                ],
                [
                    [
                        n,
                        str(d["batch_size"]),
                        str(d["local_steps"]),
                        f"{d['ray_1x2']:,.0f}",
                        f"{d['ray_1x2'] / e[n]['ray_1x2']:.2f}x",
                        f"{d['ray_1x2_auc']:.4f}",
                    ]
                    for n, d in dflt.items()
                ],
            ),
        ]
    msg = e.get("messages")
    if msg:
        rows = [
            [
                label,
                f"{msg[k]['wall_ms']:.2f}",
                f"{msg[k]['caller_cpu_ms']:.2f}",
                f"{msg[k]['shard_cpu_ms']:.2f}",
                f"{msg[k]['caller_cpu_ms'] + msg[k]['shard_cpu_ms']:.2f}",
            ]
            for label, k in (
                ("call with no payload", "bare"),
                ('push_pull on Ray\'s messages (`ps.transport = "ray"`)', "ray"),
                ('push_pull on shared memory (`"auto"`, the default)', "auto"),
            )
        ]
        rows.append(
            [
                "the shard's own work for the same push_pull, in-process",
                "",
                "",
                f"{msg['shard_work_ms']:.2f}",
                f"{msg['shard_work_ms']:.2f}",
            ]
        )
        md += [
            "### Worker-shard message cost\n",
            f"One FM(8) `push_pull` per batch (push batch t, pull batch t + 1: an async "
            f"worker's one call per batch and shard) against one shard actor, "
            f"{msg['batches']} batches of 4096 rows, median of 3 passes; the push "
            f"arguments are {msg['message_mb']:.2f} MB and the answer about half that. "
            "CPU is process time of the calling process and of the shard's.\n",
            _table(["per call", "wall ms", "caller CPU ms", "shard CPU ms", "CPU ms in all"], rows),
        ]
    if su := res.get("startup"):
        rows = [
            [
                i + 1,
                f"{r['seconds_to_first_batch']:.2f}",
                f"{r['startup_seconds']:.2f}",
                f"{r['seconds_before_training']:.2f}",
                f"{r['total_pss_bytes'] / 2**20:,.0f}",
            ]
            for i, r in enumerate(su["runs"])
        ]
        md += [
            "### Start-up\n",
            f"`psfm train` in a process of its own on the embedded Ray (FM(8), 1 shard + 2 "
            f"workers, a {STARTUP_ROWS:,}-row day of the small generator): the report's "
            "`timing`; *first batch* counts from the process's start (its imports and the "
            "run's plan), *Ray and actors* is starting the local Ray and the run's actors, "
            "*before training* adds the statistics pass or restore (none for FM). Memory: "
            "the run's processes at its end, summed by proportional set size. "
            f"`psfm --help`: {su['help_seconds']:.2f} s (median of 5).\n",
            _table(
                ["run", "first batch s", "Ray and actors s", "before training s", "memory MiB"],
                rows,
            ),
        ]
    rows = []
    for n in names:
        b = st["models"][n]["bytes_per_sample"]
        rows.append(
            [
                n,
                f"{b['pulled']:,.1f}",
                f"{b['min_pulled']:,.1f}",
                f"{b['pulled'] / b['min_pulled']:.3f}",
                f"{b['pushed']:,.1f}",
                f"{b['min_pushed']:,.1f}",
                f"{b['pushed'] / b['min_pushed']:.3f}",
                f"**{b['ratio']:.3f}**",
                f"{b['pulled'] / b['min_pulled_no_w']:.3f}",
            ]
        )
    md += [
        "## 3. Bytes per sample (LocalClient counters, batch 4096)\n",
        "Minimum per batch, pulled: 8 B per unique key + 4 B for its linear weight + "
        "4 B × D_p for each stored row at level p; pushed: the same plus a 4-B count. The "
        "last column leaves the linear weight out of the minimum (keys + factors only).\n",
        _table(
            [
                "model",
                "pulled",
                "min",
                "ratio",
                "pushed",
                "min",
                "ratio",
                "total ratio",
                "pull ratio, min without w",
            ],
            rows,
        ),
    ]
    mem = res["memory"]
    rows = [
        [
            n,
            f"{mem[n]['keys']:,}",
            f"{mem[n]['ps_per_key']:.1f}",
            f"{mem[n]['raw_full_per_key']:.1f}",
            f"{mem[n]['ps_over_raw_full']:.3f}",
            f"{mem[n]['raw_per_key']:.1f}",
            f"{mem[n]['ps_over_raw']:.3f}",
            f"{mem[n]['state_per_key']:.1f}",
            f"{mem[n]['alphafm_per_key']:.1f}",
            f"{mem[n]['ps_per_key'] / mem[n]['alphafm_per_key']:.3f}",
            f"{mem[n]['ps_bytes'] / 1e6:,.1f}",
        ]
        for n in names
    ]
    md += [
        "## 4. Parameter-server bytes per stored key (after the in-process day)\n",
        "*raw* is the issue's raw parameter + FTRL state: per key 8 B, and per parameter "
        "(linear and factor) its weight, z and n, 12 B in float32. *stored* is "
        "`ShardStats.raw_bytes`, what psfm keeps of it: keys and (z, n), since a weight is "
        "the FTRL closed form of its (z, n); *state* is the same computed here from "
        "the model's shape (they agree); *PS* adds the key index, counts, levels, last-seen "
        "days, row indices and growth slack; alphaFM stores "
        "8·(3 + 3k) bytes per feature, k = the model's factor coordinates per key "
        f"(RaFM: its own use). RaFM / FM(8) PS memory: **{100 * mem['rafm_over_fm']:.1f}%**."
        "\n",
        _table(
            [
                "model",
                "keys",
                "PS B/key",
                "raw B/key",
                "PS/raw",
                "stored B/key",
                "PS/stored",
                "state B/key",
                "alphaFM B/key",
                "PS/alphaFM",
                "PS MB",
            ],
            rows,
        ),
    ]
    bs = res["batch_scaling"]
    rows = [[k] + [f"{bs[n][k]:,.0f}" for n in names] for k in bs[names[0]]]
    md += [
        "## 5. Scaling\n",
        f"In-process training step (pull + forward/backward + push, "
        f"1 shard, 1 thread), samples/s over {sz['scale_rows']:,} rows, median of "
        f"{sz['scale_reps']}:\n",
        _table(["batch size"] + names, rows),
    ]
    tab = res["table"]
    p0 = tab["points"][0]["samples_per_s"] if tab["points"] else 1.0
    rows = [
        [
            f"{p['keys']:,}",
            f"{p['ps_gb']:.2f}",
            f"{p['rss_gb']:.2f}",
            f"{p['fill_s']:.0f}",
            f"{p['pull_us']:.3f}",
            f"{p['push_us']:.3f}",
            f"{p['samples_per_s']:,.0f}",
            f"{p['samples_per_s'] / p0:.3f}",
        ]
        for p in tab["points"]
    ]
    md += [
        f"{tab['model']} pull + push of {tab['rows']:,} rows of real batches while the "
        "shard holds N keys (random keys pre-filled with `pull(create=True)` in 1M-key "
        f"chunks), median of {sz['reps']}:\n",
        _table(
            [
                "keys stored",
                "PS GB",
                "process RSS GB",
                "fill s",
                "pull µs/sample",
                "push µs/sample",
                "samples/s",
                "vs first",
            ],
            rows,
        ),
    ]
    for s in tab["skipped"]:
        md.append(
            f"- {s['keys']:,} keys did not fit: about {s['need_gb']:.1f} GB more needed, "
            f"{s['available_gb']:.1f} GB available."
        )
    if tab["drop"] is not None and len(tab["points"]) > 1:
        md.append(
            f"- throughput drop from {tab['points'][0]['keys']:,} to "
            f"{tab['points'][-1]['keys']:,} keys: **{100 * tab['drop']:.1f}%**"
        )
    bw = res["bandwidth"]
    fm_key, fm_e2e = whole_machine(res["end_to_end"][FM])
    md += [
        "\n## 6. Memory-bandwidth ceiling (one thread)\n",
        f"float32 rows of {bw['dim']} over {bw['occurrences']:,} random indices "
        f"({st['occurrences_per_sample']:.1f} keys/sample × batch {bw['batch']}) into a "
        f"{bw['table_rows']:,}-row table; GB/s counts payload bytes (rows read and written, "
        "8-B indices).\n",
        _table(
            ["operation", "ms per batch", "GB/s"],
            [[f"`{k}`", f"{v['ms']:.2f}", f"{v['gbs']:.2f}"] for k, v in bw["ops"].items()]
            + [["sequential copy (128 MB)", "", f"{bw['copy_gbs']:.2f}"]],
        ),
        f"Ceiling for FM(8) (one gather + one `{bw['best_scatter_add']}` per batch, one "
        f"core): **{bw['ceiling_samples_per_s']:,.0f} samples/s** (with a plain scatter "
        f"instead of the scatter-add: {bw['assign_ceiling_samples_per_s']:,.0f}); the Ray "
        f"{_layout(fm_key)} end-to-end FM(8) figure ({fm_e2e:,.0f}) is "
        f"**{100 * fm_e2e / bw['ceiling_samples_per_s']:.1f}%** of it.\n",
        "psfm moves less than that: the PS reads and writes the (z, n) row of each of the "
        f"batch's {bw['unique_per_batch']:,} unique keys once, and the worker sums rows per "
        "sample and per key with one `embedding_bag` each way over the batch's own small "
        "table. Those four operations bound FM(8) at "
        f"**{bw['design_ceiling_samples_per_s']:,.0f} samples/s** on one core; the Ray "
        f"{_layout(fm_key)} figure is "
        f"**{100 * fm_e2e / bw['design_ceiling_samples_per_s']:.1f}%** of it, on "
        "two cores. The rest is parsing and hashing, the unique sort, FTRL arithmetic, "
        "the hash-table probes and Ray's messages (sections 1 and 2).\n",
    ]
    md += sizing_markdown(res)
    md.append("## 7. GPU\n")
    if "gpu" in res:
        rows = [[n, f"{res['gpu'][n]:.3f}", f"{us[n]['forward/backward']:.3f}"] for n in names]
        md += [
            f"{m['cuda']}: forward/backward with one pinned host buffer and one "
            "host-to-device copy per batch, gradients copied back (µs/sample):\n",
            _table(["model", "CUDA", "CPU, 1 thread"], rows),
        ]
    else:
        md.append("No GPU: torch sees no CUDA device on this machine.\n")
    md += [
        "## Targets\n",
        _table(
            ["target", "measured", "result"],
            [[t["target"], t["measured"], f"**{t['result']}**"] for t in res["targets"]],
        ),
    ]
    return "\n".join(md)


def sizing_markdown(res: dict[str, Any]) -> list[str]:
    """Section 6b: the sizing model's predictions and the local-cluster check."""
    sz = res.get("sizing") or {}
    if not sz.get("models"):
        return []
    node, rem = sz["node"], sz["remote"]
    names = list(sz["models"])
    md = [
        "\n## 6b. Sizing a cluster (`psfm.sizing`, `psfm sizing RUN_DIR`)\n",
        "Predicted samples/s on nodes of "
        f"{node['node_cpus']} cores and {node['link_gbps']:g} Gb/s, one core an actor, from "
        "each model's Ray 1 shard + 1 worker run of section 2 (batch 4096, one step a "
        "message): its workers' and shard's CPU per sample and its bytes per sample, plus "
        f"the extra CPU of a message between nodes ({rem['remote_worker_ns_per_byte']:.2f} ns "
        f"a byte on the worker, {rem['remote_shard_ns_per_byte']:.2f} on the shard: section "
        "2's message cost, Ray's messages minus shared memory). *packed*: shards on the "
        "workers' nodes; *own nodes*: shards on nodes of their own. The bound named is the "
        "tightest (module `psfm.sizing`).\n",
    ]
    rows = []
    grid = [(r["workers"], r["shards"], r["separate"]) for r in sz["models"][names[0]]["rows"]]
    for i, (w, s, sep) in enumerate(grid):
        cells = [str(w), str(s), "own nodes" if sep else "packed"]
        cells.append(str(sz["models"][names[0]]["rows"][i]["nodes"]))
        for n in names:
            r = sz["models"][n]["rows"][i]
            cells.append(f"{r['samples_per_s']:,.0f} ({r['bound']})")
        rows.append(cells)
    md.append(_table(["workers", "shards", "shards on", "nodes", *names], rows))
    chk = sz.get("check")
    if chk:
        md.append(
            "\nChecked on the local multi-node cluster (`cluster/local_cluster.sh`, a node "
            "per actor, every message between nodes, all nodes sharing this machine's "
            f"{chk['machine']['cpus']} cores) by `{chk['command']}` ({chk['date']}): "
            "in each of its rounds, calibrated on the embedded Ray with 1 shard + 1 worker "
            "(a one-machine probe run), then 1 shard + N workers on the cluster; samples/s "
            "of the second training day (the defaults), medians over the rounds:\n"
        )
        rows = []
        for model, m in chk["models"].items():
            for r in m["runs"]:
                rows.append(
                    [
                        {"fm": FM, "lr": "LR"}.get(model, model),
                        r["workers"],
                        f"{r['measured']:,.0f}",
                        f"{r['predicted']:,.0f}",
                        f"{100 * r['error']:+.1f}%",
                        r["bound"],
                        f"{r['measured_machine_us']:.2f}",
                    ]
                )
        md.append(
            _table(
                [
                    "model",
                    "workers",
                    "measured",
                    "predicted",
                    "error",
                    "bound",
                    "machine CPU µs/sample",
                ],
                rows,
            )
        )
    return md + [""]


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help="~300k rows, fewer repetitions, table sizes up to 1M keys",
    )
    p.add_argument("--rows", type=int, help="training rows (default 2,000,000; quick 300,000)")
    p.add_argument("--out-md", default="BENCHMARKS.md", help="markdown report")
    p.add_argument("--out-json", default="bench.json", help="the same numbers as JSON")
    p.add_argument("--data-dir", help="where the temporary data goes (default: system temp)")
    p.add_argument(
        "--render",
        metavar="JSON",
        help="measure nothing: write the markdown of a saved bench.json again, its derived "
        "sections (the sizing model) recomputed from its measurements",
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.render:
        res = json.loads(Path(args.render).read_text())
        res["sizing"] = sizing(res["end_to_end"])
    else:
        command = shlex.join([Path(sys.argv[0]).name] + sys.argv[1:])
        res = run_bench(sizes(args.quick, args.rows), args.data_dir, command)
    md = render_markdown(res)
    for out in (args.out_md, args.out_json):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_md).write_text(md)
    Path(args.out_json).write_text(
        json.dumps(res, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        + "\n"
    )
    print(md)
    _say(f"wrote {args.out_md} and {args.out_json}")
    return 0


def main(argv: list[str] | None = None, prog: str = "bench.py") -> int:
    """``python benchmarks/bench.py [--quick] ...`` (``psfm bench`` calls it too)."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    _options(ap)
    return _cmd_bench(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

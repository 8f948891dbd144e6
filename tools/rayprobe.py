"""Probe the local-Ray training day: samples/s, CPU seconds per process and per thread, and
(optionally) py-spy profiles of the shard and worker actors during the training day only.

    python tools/rayprobe.py --root DATA --model fm --shards 2 --workers 2 [--profile DIR]
        [--set key=value ...] [--runs N] [--json out.json]
    python tools/rayprobe_prof.py DIR        # stage shares from the --profile output

Everything is measured between the start and the end of ``RayBackend.train`` (the driver's
training day), by wrapping it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ray

import psfm.ray_backend.driver as drv
from psfm.config import load_config

TICK = os.sysconf("SC_CLK_TCK")
MODELS = {"lr": ['model.kind="lr"', "model.ranks=[]"], "fm": ['model.kind="fm"', "model.ranks=[8]"]}


def cpu_of(path: str) -> float:
    try:
        f = Path(path).read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK
    except (OSError, IndexError):
        return 0.0


def comm(pid: int, tid: int | None = None) -> str:
    p = f"/proc/{pid}/task/{tid}/comm" if tid else f"/proc/{pid}/cmdline"
    try:
        t = Path(p).read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return t
    except OSError:
        return "?"


def snapshot() -> dict:
    """CPU seconds of every process and every thread of the interesting ones."""
    procs, threads = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        procs[pid] = (comm(pid)[:80], cpu_of(f"/proc/{pid}/stat"))
    for pid, (name, _) in procs.items():
        if "ray::" in name or "raylet" in name or "gcs_server" in name or pid == os.getpid():
            try:
                for t in os.listdir(f"/proc/{pid}/task"):
                    threads[(pid, int(t))] = (
                        comm(pid, int(t)),
                        cpu_of(f"/proc/{pid}/task/{t}/stat"),
                    )
            except OSError:
                pass
    total = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return {
        "procs": procs,
        "threads": threads,
        "t": time.perf_counter(),
        "cpu_total": [int(x) / TICK for x in total],
    }


def role(name: str, pid: int) -> str:
    if pid == os.getpid():
        return "driver"
    for key, r in (
        ("ShardServer", "shard"),
        ("WorkerRunner", "worker"),
        ("raylet", "raylet"),
        ("gcs_server", "gcs"),
    ):
        if key in name:
            return r
    if "ray::" in name or "ray/" in name or "/ray" in name:
        return "ray-other"
    return "other"


STATE: dict = {}


def wrap(profile: str | None, rate: int, idle: bool):
    orig = drv.RayBackend.train

    def train(self, units, warmup, on_unit):
        spies = []
        if profile:
            os.makedirs(profile, exist_ok=True)
            snap = snapshot()
            for pid, (name, _) in snap["procs"].items():
                r = role(name, pid)
                if r in ("shard", "worker"):
                    out = f"{profile}/{r}-{pid}.txt"
                    cmd = [
                        "py-spy",
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(rate),
                        "--nonblocking",
                        "--format",
                        "raw",
                        "-o",
                        out,
                        "--threads",
                    ]
                    if idle:
                        cmd.append("--idle")
                    spies.append(
                        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    )
            time.sleep(1.0)
        rows = [0]

        def counted(r) -> None:
            rows[0] += r.rows
            on_unit(r)

        s0 = snapshot()
        orig(self, units, warmup, counted)
        s1 = snapshot()
        for p in spies:
            p.send_signal(signal.SIGINT)
        for p in spies:
            p.wait(timeout=60)
        STATE["day"] = (s0, s1, {"rows": rows[0]})

    drv.RayBackend.train = train


def breakdown(s0: dict, s1: dict) -> dict:
    dt = s1["t"] - s0["t"]
    per_role: dict[str, float] = {}
    per_proc = []
    for pid, (name, c1) in s1["procs"].items():
        c0 = s0["procs"].get(pid, (name, 0.0))[1]
        d = c1 - c0
        if d <= 0:
            continue
        r = role(name, pid)
        per_role[r] = per_role.get(r, 0.0) + d
        per_proc.append((r, pid, round(d, 2)))
    thr: dict[str, float] = {}
    for (pid, tid), (tname, c1) in s1["threads"].items():
        c0 = s0["threads"].get((pid, tid), (tname, 0.0))[1]
        name = s1["procs"].get(pid, ("?", 0))[0]
        key = f"{role(name, pid)}:{tname}"
        thr[key] = thr.get(key, 0.0) + (c1 - c0)
    tot = [b - a for a, b in zip(s0["cpu_total"], s1["cpu_total"])]
    # user nice system idle iowait irq softirq steal
    return {
        "wall_s": dt,
        "per_role": {k: round(v, 2) for k, v in sorted(per_role.items())},
        "per_proc": sorted(per_proc, key=lambda x: -x[2])[:12],
        "threads": {
            k: round(v, 2) for k, v in sorted(thr.items(), key=lambda x: -x[1]) if v > 0.05
        },
        "machine_busy_s": round(sum(tot[:3]) + sum(tot[5:8]), 2),
        "machine_idle_s": round(tot[3] + tot[4], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fm", choices=sorted(MODELS))
    ap.add_argument(
        "--root",
        required=True,
        help="data root with day=1 (train) and day=2 (test), e.g. from psfm gen",
    )
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--profile")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--idle", action="store_true")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    wrap(a.profile, a.rate, a.idle)
    cfg = load_config(
        None,
        [
            f"data.root={json.dumps(a.root)}",
            'data.train_days="1"',
            'data.test_days="2"',
            *MODELS[a.model],
            f"ps.shards={a.shards}",
            f"train.workers={a.workers}",
            *a.set,
        ],
    )
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.bench import start_local_ray

    start_local_ray()  # the bench's: 4 CPUs, psfm's actor environment and system config
    results = []
    try:
        for i in range(a.runs):
            rep = drv.train_ray(cfg)
            s0, s1, rec = STATE["day"]
            b = breakdown(s0, s1)
            sps = rep["train"]["samples_per_s"]
            b["samples_per_s"] = sps
            b["rows"] = rec["rows"]
            b["auc"] = rep["test"]["auc"]
            results.append(b)
            print(
                f"run {i}: {sps:,.0f} samples/s  wall {b['wall_s']:.2f}s  "
                f"roles {b['per_role']}  busy {b['machine_busy_s']} idle "
                f"{b['machine_idle_s']}  auc {b['auc']:.4f}",
                flush=True,
            )
    finally:
        ray.shutdown()
    sps = [r["samples_per_s"] for r in results]
    print(
        f"median {statistics.median(sps):,.0f} samples/s, runs {[round(x / 1e3, 1) for x in sps]}k",
        flush=True,
    )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Check psfm.sizing's predictions against runs on the local multi-node cluster.

    python tools/scaling_check.py --rows 500000 --workers 1,2,3 --reps 3

1. Generates a 3-day log (``GenSpec()``, the benchmark's) and measures the extra CPU per byte
   of a message between nodes (Ray's messages against the shared-memory link: ``psfm
   bench``'s worker-shard message cost).
2. Starts ``cluster/local_cluster.sh`` with one node per actor (1 CPU each: the shard alone on
   one node, each worker on its own, so every message crosses nodes).
3. In each of ``--reps`` rounds and for each model: measures what the idle cluster keeps busy
   (``/proc/stat``), trains days 1-2 on the embedded Ray with 1 shard + 1 worker (one node,
   shared-memory messages: the calibration, as a user's one-machine probe run) and takes the
   second day's worker, shard and driver CPU per sample and bytes per sample; then trains
   the same days on the cluster with 1 shard + N workers for each N and compares the second
   day's samples/s with ``psfm.sizing.predict`` for that layout on this machine's cores. It
   also predicts N >= 2 from the cluster's own 1-worker run (``error_from_1``).
   Medians over the rounds go to ``--out``.

Every node of the local cluster shares this machine's cores, so what it checks is the CPU
accounting (workers, shards, driver, messages between nodes, the cores they share), not a
network; and from 2 workers on, more processes are busy than there are cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "tests" / "integration"))

from psfm.sizing import Costs, Layout, predict  # noqa: E402

MODELS = {"fm": ["--model", "fm"], "lr": ["--model", "lr"]}


def _train(data: str, run: str, model: str, workers: int, env: dict | None, *extra: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "psfm.cli",
        "train",
        "--data",
        data,
        *MODELS[model],
        "--train-days",
        "1..2",
        "--test-days",
        "3",
        "--shards",
        "1",
        "--workers",
        str(workers),
        "--run-dir",
        run,
        *extra,
    ]
    t0 = time.perf_counter()
    with MachineCpu() as machine:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    rep = json.loads(Path(run, "report.json").read_text())
    day = rep["train"]["per_day"][-1]
    busy = machine.busy(day["started"], day["started"] + day["seconds"])
    return {
        "samples_per_s": day["samples_per_s"],
        "worker_us": day["worker_cpu_seconds"] * 1e6 / day["rows"],
        "shard_us": day["shard_cpu_seconds"] * 1e6 / day["rows"],
        "driver_us": day["driver_cpu_seconds"] * 1e6 / day["rows"],
        "machine_us": busy * 1e6 / day["rows"],
        "bytes_per_sample": day["bytes"] / day["rows"],
        "test_auc": rep["test"]["auc"],
        "wall_s": time.perf_counter() - t0,
    }


class MachineCpu:
    """This machine's busy CPU seconds (every process: ``/proc/stat``), sampled 20 times a
    second from a thread while in the ``with`` block; :meth:`busy` over a wall-clock window."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")

    def _read(self) -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]  # idle + iowait
        return (sum(v[:8]) - idle) / self._tick

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._read()))
            self._stop.wait(0.05)

    def __enter__(self) -> MachineCpu:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def idle_cores(seconds: float = 15.0) -> float:
        """Cores busy on average over ``seconds`` of waiting: what is running anyway."""
        with MachineCpu() as m:
            time.sleep(seconds)
            t1 = time.time()
        return m.busy(t1 - seconds + 0.2, t1) / (seconds - 0.2)

    def busy(self, t0: float, t1: float) -> float:
        ts = [t for t, _ in self.samples]
        cs = [c for _, c in self.samples]
        return float(np.interp(t1, ts, cs) - np.interp(t0, ts, cs))


def _remote_byte_costs(data: str) -> dict:
    """Extra CPU ns per message byte between nodes, worker and shard side (bench's cost of a
    push_pull on Ray's messages minus on shared memory, over the bytes of a call)."""
    import ray

    from benchmarks.bench import message_cost, remote_byte_costs, start_local_ray

    start_local_ray()
    try:
        time.sleep(5)  # Ray's start-up work done
        background = MachineCpu.idle_cores()
        m = message_cost(data)
    finally:
        ray.shutdown()
    return {
        "message": m,
        "background_cores": background,
        **{f"{k}_ns_per_byte": v for k, v in remote_byte_costs(m).items()},
    }


def _round(
    data: str,
    tmp: str,
    model: str,
    counts: list[int],
    env: dict,
    address: str,
    remote: dict,
    background: float,
) -> dict:
    """One calibration on the embedded Ray (1 + 1, the cluster idle beside it) and, right
    after it, a run of 1 shard + N workers on the cluster for each N, with the prediction."""
    c = _train(data, f"{tmp}-calib-{model}", model, 1, None)
    costs = Costs(
        c["worker_us"],
        c["shard_us"],
        c["bytes_per_sample"],
        remote["worker_ns_per_byte"],
        remote["shard_ns_per_byte"],
        c["driver_us"],  # Ray's processes at rest: the layout's background_cores
    )
    out: list[dict] = []
    on_cluster: Costs | None = None  # the same model's costs from the 1-worker cluster run
    for n in counts:
        r = _train(data, f"{tmp}-{model}-{n}", model, n, env, "--address", address)
        lay = Layout(n, 1, n, 1, 1, 1, 40.0, os.cpu_count() or 1, background)
        p = predict(costs, lay)
        row = {
            "workers": n,
            "measured": r["samples_per_s"],
            "predicted": p.samples_per_s,
            "error": p.samples_per_s / r["samples_per_s"] - 1,
            "bound": p.bound,
            "bounds": p.bounds,
            "worker_us": r["worker_us"],
            "shard_us": r["shard_us"],
            "machine_us": r["machine_us"],
            "driver_us": r["driver_us"],
        }
        if on_cluster is None:
            # messages already between nodes: no remote cost to add
            on_cluster = Costs(
                r["worker_us"], r["shard_us"], r["bytes_per_sample"], 0.0, 0.0, r["driver_us"]
            )
        else:
            q = predict(on_cluster, lay)
            row["predicted_from_1"] = q.samples_per_s
            row["error_from_1"] = q.samples_per_s / r["samples_per_s"] - 1
        out.append(row)
    return {"calibration": c, "costs": dataclasses.asdict(costs), "layouts": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=500_000, help="rows per day")
    ap.add_argument("--workers", default="1,2,3")
    ap.add_argument("--models", default="fm,lr")
    ap.add_argument("--reps", type=int, default=3, help="rounds (medians over them)")
    ap.add_argument("--out", default=str(HERE / "tools" / "scaling_check.json"))
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    # a kill (SIGTERM) unwinds like Ctrl-C: the cluster is stopped and the data removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cpus = os.cpu_count() or 1

    from local_cluster import local_cluster

    from psfm.datasets.gen import GenSpec, generate

    t_all = time.perf_counter()
    res: dict = {
        "command": "python tools/scaling_check.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": cpus, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "rows_per_day": args.rows,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="psfm-scaling-") as tmp:
        data = f"{tmp}/data"
        generate(data, days=3, rows_per_day=args.rows, seed=1, spec=GenSpec())
        print("measuring the cost of a message between nodes ...", flush=True)
        remote = _remote_byte_costs(data)
        res["remote"] = remote
        print(
            f"  worker {remote['worker_ns_per_byte']:.2f} ns/B, shard "
            f"{remote['shard_ns_per_byte']:.2f} ns/B",
            flush=True,
        )
        models = args.models.split(",")
        state = Path(tmp, "cluster")
        with local_cluster(state, workers=max(counts) + 1, cpus_per_node=1) as env:
            address = env.pop("RAY_ADDRESS")
            time.sleep(5)
            res["cluster_background_cores"] = []
            # rounds: in each, per model, the calibration and then every layout, so that a
            # prediction and its measurement come from the same minutes (this machine
            # drifts 10-25% between hours and more between runs)
            rounds: dict = {m: [] for m in models}
            for i in range(args.reps):
                for model in models:
                    background = MachineCpu.idle_cores(10.0)  # Ray at rest moves: each time
                    res["cluster_background_cores"].append(background)
                    print(f"the idle cluster keeps {background:.3f} cores busy", flush=True)
                    rounds[model].append(
                        _round(data, f"{tmp}/{i}", model, counts, env, address, remote, background)
                    )
                    for r in rounds[model][-1]["layouts"]:
                        print(
                            f"round {i + 1}, {model}, 1 shard + {r['workers']} worker(s) on "
                            f"separate nodes: measured {r['measured']:,.0f}, predicted "
                            f"{r['predicted']:,.0f} ({r['error']:+.1%}, {r['bound']})",
                            flush=True,
                        )
            for model in models:
                rows = []
                for j, n in enumerate(counts):
                    mine = [rd["layouts"][j] for rd in rounds[model]]
                    got = statistics.median(r["measured"] for r in mine)
                    pred = statistics.median(r["predicted"] for r in mine)
                    rows.append(
                        {
                            "workers": n,
                            "measured": got,
                            "predicted": pred,
                            "error": pred / got - 1,
                            "round_errors": [r["error"] for r in mine],
                            "bound": statistics.mode(r["bound"] for r in mine),
                            "error_from_1": (
                                statistics.median(r["predicted_from_1"] for r in mine) / got - 1
                                if "predicted_from_1" in mine[0]
                                else None
                            ),
                            "measured_machine_us": statistics.median(r["machine_us"] for r in mine),
                        }
                    )
                    print(
                        f"{model}, 1 shard + {n} worker(s), medians: measured {got:,.0f}, "
                        f"predicted {pred:,.0f} ({pred / got - 1:+.1%})",
                        flush=True,
                    )
                res["models"][model] = {"runs": rows, "rounds": rounds[model]}
    res["seconds"] = time.perf_counter() - t_all
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A/B start-up of two psfm source trees in the same hour: seconds from spawning ``psfm train``
to its first training unit (the driver's ``train days`` log line), interleaved.

    git worktree add /tmp/psfm-old <commit>
    python tools/ab_start.py --old /tmp/psfm-old --rounds 3

Each round runs, in fresh processes, the old tree then this one: FM(8) on the embedded Ray,
1 shard + 2 workers, day 1 of ``--data`` trained and day 2 tested (a small generated log when
none is given). Prints each run (first batch measured from outside, the report's own
``seconds_to_first_batch`` where the tree has it, Ray and actors, wall, the run's memory) and
the medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
RUN = "import sys; from psfm.cli import main; sys.exit(main(sys.argv[1:]))"


def one(tree: str, data: str, run_dir: str) -> dict[str, Any]:
    argv = ["train", "--data", data, "--model", "fm", "--train-days", "1", "--test-days", "2"]
    argv += ["--shards", "1", "--workers", "2", "--run-dir", run_dir, "--overwrite"]
    env = dict(os.environ, PYTHONPATH=tree)
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", RUN, *argv], capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if p.returncode:
        raise RuntimeError(f"{tree}: exit {p.returncode}: {p.stderr[-2000:]}")
    first = None
    for line in p.stderr.splitlines():
        if "psfm.runloop: train days" in line:
            at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            first = at - t0
    rep = json.loads(Path(run_dir, "report.json").read_text())
    mem = rep.get("memory") or {}
    return {
        "first_batch_s": first,
        "reported_s": rep["timing"].get("seconds_to_first_batch"),
        "ray_and_actors_s": rep["timing"]["startup_seconds"],
        "wall_s": wall,
        "memory_mib": mem["total_pss_bytes"] / 2**20 if mem else None,
        "test_auc": rep["test"]["auc"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the other tree (a git worktree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", help="a log with day=1 and day=2 (default: 2 x 200k rows made)")
    a = ap.parse_args()
    trees = {"old": str(Path(a.old).resolve()), "new": str(HERE)}
    res: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            data = os.path.join(tmp, "data")
            subprocess.run(
                [sys.executable, "-m", "psfm.cli", "gen", "--out", data, "--days", "2"]
                + ["--rows-per-day", "200000"],
                check=True,
                capture_output=True,
                env=dict(os.environ, PYTHONPATH=str(HERE)),
            )
        for r in range(a.rounds):
            for name, tree in trees.items():
                row = one(tree, data, os.path.join(tmp, f"run_{name}"))
                res[name].append(row)
                print(f"round {r + 1} {name}: {json.dumps(row)}", flush=True)
    for name, rows in res.items():
        med = {k: statistics.median(x[k] for x in rows) for k in ("first_batch_s", "wall_s")}
        print(
            f"{name}: median first batch {med['first_batch_s']:.2f} s, "
            f"Ray and actors {statistics.median(x['ray_and_actors_s'] for x in rows):.2f} s, "
            f"wall {med['wall_s']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

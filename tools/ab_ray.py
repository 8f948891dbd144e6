"""A/B end-to-end throughput of two psfm source trees in the same hour (this machine drifts
10-25% between hours, so before/after figures are only comparable when interleaved).

    git worktree add /tmp/psfm-old <commit>
    python tools/ab_ray.py --old /tmp/psfm-old --rounds 3

Each round trains, in fresh processes, the old tree then this one: one generated day of
``--rows`` rows (the benchmark's log), LR and FM(8), batch 4096, on a local Ray with 1 shard +
2 workers, and prints samples/s and test AUC per run and the means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
MODELS = {"LR": ['model.kind="lr"'], "FM(8)": ['model.kind="fm"', "model.ranks=[8]"]}


def _one(root: str) -> dict:
    """One process: both models on a fresh local Ray with whichever psfm is importable."""
    import importlib

    import psfm

    pkg = Path(psfm.__file__).parent
    driver = importlib.import_module(
        "psfm.ray_backend.driver" if (pkg / "ray_backend").is_dir() else "psfm.dist.driver"
    )
    import ray

    from psfm.config import load_config

    # trees before actor_environment gave the actors their threads in a runtime env
    env = getattr(driver, "actor_environment", None)
    with env() if env else contextlib.nullcontext():
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            _system_config=driver.LOCAL_SYSTEM_CONFIG,
            **({} if env else {"runtime_env": driver.ACTOR_ENV}),
        )
    out = {}
    for name, sets in MODELS.items():
        cfg = load_config(
            None,
            [
                f"data.root={json.dumps(root)}",
                'data.train_days="1"',
                'data.test_days="2"',
                "ps.shards=1",
                "train.workers=2",
                "data.batch_size=4096",
                *sets,
            ],
        )
        rep = driver.train_ray(cfg)
        out[name] = [rep["train"]["samples_per_s"], rep["test"]["auc"]]
    ray.shutdown()
    return out


def _make_data(root: str, rows: int) -> None:
    import pyarrow.parquet as pq

    from psfm.datasets.gen import GenSpec, generate, generate_day

    generate(root, days=1, rows_per_day=rows, seed=1, spec=GenSpec())
    os.makedirs(f"{root}/day=2", exist_ok=True)
    pq.write_table(
        generate_day(GenSpec(), 2, 65_536, 1),
        f"{root}/day=2/part-00000.parquet",
        row_group_size=65_536,
        compression="none",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the other source tree (its psfm/ is used)")
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", help="reuse this generated log")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one process on this root
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(_one(args.one)))
        return 0
    root = args.data or tempfile.mkdtemp(prefix="psfm-ab-")
    if not Path(root, "day=1").is_dir():
        _make_data(root, args.rows)
    runs: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for r in range(args.rounds):
        for side, tree in (("old", args.old), ("new", str(HERE))):
            env = {**os.environ, "PYTHONPATH": tree}
            out = subprocess.run(
                [sys.executable, __file__, "--old", args.old, "--one", root],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            res = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
            for name, (sps, auc) in res.items():
                runs[side].setdefault(name, []).append(sps)
                print(f"round {r + 1} {side} {name}: {sps:,.0f} samples/s, test AUC {auc:.4f}")
    for name in MODELS:
        o, n = runs["old"][name], runs["new"][name]
        print(
            f"{name}: old mean {statistics.mean(o):,.0f}, new mean {statistics.mean(n):,.0f} "
            f"samples/s ({statistics.mean(n) / statistics.mean(o):.3f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

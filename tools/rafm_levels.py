"""RaFM level study: how ``levels.count_per_dim`` (c in RaFM Eq. 17) trades AUC for size and speed.

Generates the benchmark's data (39-field Criteo-like day 1 for training, day 2 for test, the same
as ``psfm bench``), trains FM(8) and RaFM({1,2,4,8}) in-process for each c, and reports test AUC,
logloss, non-zero parameters, PS bytes, factor rows per level and training samples/s. With
c = 1 nearly every feature seen six times sits at rank 8 (RaFM then stores and computes more
than FM); larger c moves the rare majority to rank 1. ``jobs/configs/rafm.toml`` and the
benchmark's RaFM use the c this study picks.

    python tools/rafm_levels.py                       # 2M rows, c in 1 4 16 64, 3 seeds
    python tools/rafm_levels.py --rows 500000 --c 1 16 --seeds 0

Every model trains once per factor-init seed (``train.seed``; default 0, 1, 2): on this log
FM(8)'s test AUC moves by a few thousandths with the seed, as much as the differences between
the models, so the table gives the mean and the range over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ of this checkout
from benchmarks.bench import FM, RAFM, _config, make_data  # noqa: E402
from psfm.trainer import train_local  # noqa: E402


def run(root: str, name: str, seeds: list[int], *extra: str) -> dict:
    """One model trained once per seed: the first seed's size and speed, every seed's AUC."""
    reps = [train_local(_config(root, name, f"train.seed={s}", *extra)) for s in seeds]
    m = reps[0]["model"]
    return {
        "auc": statistics.mean(r["test"]["auc"] for r in reps),
        "auc_by_seed": {str(s): r["test"]["auc"] for s, r in zip(seeds, reps)},
        "logloss": statistics.mean(r["test"]["logloss"] for r in reps),
        "nonzero_params": m["nonzero_params"],
        "ps_bytes": m["ps_bytes"],
        "factor_rows_per_level": m["factor_rows_per_level"],
        "samples_per_s": statistics.median(r["train"]["samples_per_s"] for r in reps),
        "bytes_per_sample": reps[0]["train"]["bytes_per_sample"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--c", type=float, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"rows": args.rows, "seeds": args.seeds, "rafm": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "data")
        make_data(root, SimpleNamespace(rows=args.rows, test_rows=65_536))
        out["fm"] = run(root, FM, args.seeds)
        for c in args.c:
            out["rafm"][str(c)] = run(root, RAFM, args.seeds, f"levels.count_per_dim={c}")
    fm = out["fm"]
    print(
        f"{args.rows:,} training rows; test day 65,536 rows; in-process, 1 thread; "
        f"seeds {args.seeds}"
    )
    print(
        f"{'model':<14} {'AUC':>7} {'range':>15} {'logloss':>8} {'nonzero':>11} "
        f"{'PS MB':>7} {'vs FM':>6} {'samples/s':>10}  factor rows per level"
    )
    rows = [("FM(8)", fm)] + [(f"RaFM c={c:g}", r) for c, r in zip(args.c, out["rafm"].values())]
    for label, r in rows:
        a = r["auc_by_seed"].values()
        print(
            f"{label:<14} {r['auc']:>7.4f} {min(a):>7.4f}-{max(a):.4f} {r['logloss']:>8.4f} "
            f"{r['nonzero_params']:>11,} {r['ps_bytes'] / 1e6:>7.1f} "
            f"{r['ps_bytes'] / fm['ps_bytes']:>6.2f} {r['samples_per_s']:>10,.0f}  "
            f"{r['factor_rows_per_level']}"
        )
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

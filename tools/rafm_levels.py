"""RaFM level study: how ``levels.count_per_dim`` (c in RaFM Eq. 17) trades AUC for size and speed.

Generates the benchmark's data (39-field Criteo-like day 1 for training, day 2 for test, the same
as ``psfm bench``), trains FM(8) and RaFM({1,2,4,8}) in-process for each c, and reports test AUC,
logloss, non-zero parameters, PS bytes, factor rows per level and training samples/s. With
c = 1 nearly every feature seen six times sits at rank 8 (RaFM then stores and computes more
than FM); larger c moves the rare majority to rank 1. ``jobs/configs/rafm.toml`` and the
benchmark's RaFM use the c this study picks.

    python tools/rafm_levels.py                       # 2M rows, c in 1 4 16 64, ~5 minutes
    python tools/rafm_levels.py --rows 500000 --c 1 16
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from psfm.bench import FM, RAFM, _config, make_data
from psfm.trainer import train_local


def run(root: str, name: str, *extra: str) -> dict:
    rep = train_local(_config(root, name, *extra))
    m = rep["model"]
    return {"auc": rep["test"]["auc"], "logloss": rep["test"]["logloss"],
            "nonzero_params": m["nonzero_params"], "ps_bytes": m["ps_bytes"],
            "factor_rows_per_level": m["factor_rows_per_level"],
            "samples_per_s": rep["train"]["samples_per_s"],
            "bytes_per_sample": rep["train"]["bytes_per_sample"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--c", type=float, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"rows": args.rows, "rafm": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "data")
        make_data(root, SimpleNamespace(rows=args.rows, test_rows=65_536))
        out["fm"] = run(root, FM)
        for c in args.c:
            out["rafm"][str(c)] = run(root, RAFM, f"levels.count_per_dim={c}")
    fm = out["fm"]
    print(f"{args.rows:,} training rows; test day 65,536 rows; in-process, 1 thread")
    print(f"{'model':<14} {'AUC':>7} {'logloss':>8} {'nonzero':>11} {'PS MB':>7} "
          f"{'vs FM':>6} {'samples/s':>10}  factor rows per level")
    rows = [("FM(8)", fm)] + [(f"RaFM c={c:g}", r) for c, r in
                              zip(args.c, out["rafm"].values())]
    for label, r in rows:
        print(f"{label:<14} {r['auc']:>7.4f} {r['logloss']:>8.4f} {r['nonzero_params']:>11,} "
              f"{r['ps_bytes'] / 1e6:>7.1f} {r['ps_bytes'] / fm['ps_bytes']:>6.2f} "
              f"{r['samples_per_s']:>10,.0f}  {r['factor_rows_per_level']}")
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

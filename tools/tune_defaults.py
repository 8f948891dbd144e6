"""Holdout search for psfm's default FTRL hyperparameters on generated logs of several sizes.

For every log (``dense``: ``GenSpec.small()``, 10 fields; ``zipf39``: the Criteo-like
``GenSpec()``, 39 fields, vocabularies up to 1e6; each at several sizes), day 1 trains and
day 2 is the holdout: the search never sees day 3, which ``tools/compare_reference.py`` keeps
as the test day. Every setting of the grid trains FM(8) in-process at ``data.batch_size = 0``
(auto, :mod:`psfm.steps`) and scores the holdout; settings are ranked by the mean holdout
logloss over the logs (AUC beside it). Writes ``tools/tune_defaults.json`` (no machine paths)
and prints the best settings; the README's "Defaults" section quotes them.

    python tools/tune_defaults.py                                # about 30 minutes on 2 cores
    python tools/tune_defaults.py --sizes 20000,100000 --data-dir /tmp/logs
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from psfm.config import load_config  # noqa: E402
from psfm.datasets.gen import GenSpec, generate  # noqa: E402
from psfm.trainer import train_local  # noqa: E402

__all__ = ["GRID", "main"]

GRID: dict[str, list[Any]] = {
    "ftrl.accumulate": ['"square_of_sum"', '"sum_of_squares"'],
    "ftrl.linear.alpha": [0.05, 0.1, 0.2],
    "ftrl.linear.l1": [0.1, 1.0],
    "ftrl.factor.alpha": [0.03, 0.1],
    "ftrl.factor.l1": [0.0, 0.1],
}
SPECS = {"dense": GenSpec.small, "zipf39": GenSpec}


def _logs(parent: Path, specs: list[str], sizes: list[int], seed: int) -> dict[str, Path]:
    """3-day logs with ``size`` rows in days 1-2 (as compare_reference.py makes them)."""
    out = {}
    for spec, size in itertools.product(specs, sizes):
        root = parent / f"{spec}-{size}-s{seed}"
        if not (root / "day=3").exists():
            generate(root, days=3, rows_per_day=size // 2, spec=SPECS[spec](), seed=seed)
        out[f"{spec}/{size // 1000}k"] = root
    return out


def _case(root: Path, sets: list[str]) -> dict[str, float]:
    cfg = load_config(
        None,
        [
            f"data.root={json.dumps(str(root))}",
            'model.kind="fm"',
            'data.train_days="1"',
            'data.test_days="2"',
            *sets,
        ],
    )
    t0 = time.perf_counter()
    rep = train_local(cfg)
    return {
        "logloss": rep["test"]["logloss"],
        "auc": rep["test"]["auc"],
        "batch_size": rep["config"]["data"]["batch_size"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,100000,1000000", help="rows in days 1-2")
    ap.add_argument("--specs", default="dense,zipf39")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None, help="cache generated logs here")
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        logs = _logs(Path(args.data_dir or tmp), args.specs.split(","), sizes, args.seed)
        keys = list(GRID)
        results = []
        for values in itertools.product(*GRID.values()):
            sets = [f"{k}={v}" for k, v in zip(keys, values)]
            cases = {name: _case(root, sets) for name, root in logs.items()}
            row = {
                "params": dict(zip(keys, values)),
                "cases": cases,
                "mean_logloss": sum(c["logloss"] for c in cases.values()) / len(cases),
                "mean_auc": sum(c["auc"] for c in cases.values()) / len(cases),
            }
            results.append(row)
            print(
                json.dumps(
                    {
                        "params": row["params"],
                        "mean_logloss": round(row["mean_logloss"], 5),
                        "mean_auc": round(row["mean_auc"], 4),
                        "auc": {n: round(c["auc"], 4) for n, c in cases.items()},
                    }
                ),
                flush=True,
            )
    results.sort(key=lambda r: r["mean_logloss"])
    recorded = {**vars(args), "out": Path(args.out).name, "data_dir": None}
    Path(args.out).write_text(
        json.dumps({"args": recorded, "grid": GRID, "ranked": results}, indent=1)
    )
    print("\nbest settings (mean holdout logloss over the logs):")
    for r in results[:8]:
        print(f"  {r['mean_logloss']:.5f}  auc {r['mean_auc']:.4f}  {r['params']}")


if __name__ == "__main__":
    main()

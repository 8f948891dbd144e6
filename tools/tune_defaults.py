"""Holdout search for psfm's default FTRL hyperparameters on generated data.

Trains FM(8) and RaFM({1,2,4,8}) over a grid of (linear alpha, linear l1, factor alpha, factor
init std) on two generated logs — the compact ``GenSpec.small()`` and the Criteo-like default
(39 fields, vocabularies up to 1e6) — trains on all days but the last and scores the last
(holdout). Ranks settings by mean holdout logloss over the (data, model) cases and writes
``tools/tune_defaults.json`` plus a table. The README's defaults come from its best row.

    python tools/tune_defaults.py                # about 20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from psfm.config import load_config
from psfm.data.gen import GenSpec, generate
from psfm.trainer import train_local

GRID = {
    "ftrl.linear.alpha": [0.05, 0.1],
    "ftrl.linear.l1": [0.1, 1.0],
    "ftrl.factor.alpha": [0.01, 0.03, 0.1],
    "model.init_std": [0.05],
}
MODELS = {"fm8": ['model.kind="fm"'], "rafm1248": ['model.kind="rafm"']}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows-per-day", type=int, default=150_000)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = {}
        for name, spec in (("small", GenSpec.small()), ("criteo_like", GenSpec())):
            root = Path(tmp) / name
            generate(root, days=args.days, rows_per_day=args.rows_per_day, spec=spec, seed=7)
            data[name] = root
        keys = list(GRID)
        for values in itertools.product(*GRID.values()):
            sets = [f"{k}={v}" for k, v in zip(keys, values)]
            row = {"params": dict(zip(keys, values)), "cases": {}}
            for (dname, root), (mname, msets) in itertools.product(data.items(), MODELS.items()):
                cfg = load_config(None, [f"data.root={json.dumps(str(root))}", *msets, *sets])
                t0 = time.perf_counter()
                rep = train_local(cfg)
                row["cases"][f"{dname}/{mname}"] = {
                    "logloss": rep["test"]["logloss"], "auc": rep["test"]["auc"],
                    "nonzero_params": rep["model"]["nonzero_params"],
                    "seconds": time.perf_counter() - t0}
            cases = row["cases"].values()
            row["mean_logloss"] = sum(c["logloss"] for c in cases) / len(cases)
            row["mean_auc"] = sum(c["auc"] for c in cases) / len(cases)
            results.append(row)
            print(json.dumps({"params": row["params"], "mean_logloss": row["mean_logloss"],
                              "mean_auc": row["mean_auc"]}), flush=True)
    results.sort(key=lambda r: r["mean_logloss"])
    recorded = {**vars(args), "out": Path(args.out).name}  # no machine paths in the record
    Path(args.out).write_text(json.dumps({"args": recorded, "grid": GRID,
                                          "ranked": results}, indent=1))
    print("\nbest settings (mean holdout logloss over small/criteo_like x fm8/rafm1248):")
    for r in results[:5]:
        print(f"  {r['mean_logloss']:.5f}  auc {r['mean_auc']:.4f}  {r['params']}")


if __name__ == "__main__":
    main()

"""Per-sample forward/backward cost of LR, FM(8), DiFacto and RaFM({1,2,4,8}) on generated data.

Generates a Criteo-like log (39 fields by default), runs the statistics pass that sets RaFM and
DiFacto levels (RaFM Eq. 17), pulls every batch's weights once, then times only
``forward_backward`` on the same batches: median over repetitions of the per-sample time. Also
reports the active-factor work per sample, ``sum_p D_p |F_p ∩ sample|`` (what RaFM's cost should
scale with), and the floats pulled per sample.

    python tools/bench_model.py                      # 300k rows, batch 4096, 5 repetitions
    python tools/bench_model.py --rows 1000000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch

from psfm.config import load_config
from psfm.data.parquet import work_units
from psfm.datasets.gen import GenSpec, generate
from psfm.models.family import forward_backward
from psfm.ps.client import LocalClient
from psfm.trainer import make_shards, needs_stats_pass
from psfm.worker import Worker

MODELS = {
    "lr": ['model.kind="lr"'],
    "fm8": ['model.kind="fm"', "model.ranks=[8]"],
    "difacto1248": ['model.kind="difacto"', "model.ranks=[1,2,4,8]"],
    "rafm1248": ['model.kind="rafm"', "model.ranks=[1,2,4,8]"],
}


def bench_model(root: str, sets: list[str], batch: int, reps: int) -> dict:
    cfg = load_config(
        None, [f"data.root={json.dumps(root)}", f"data.batch_size={batch}", "ps.shards=1", *sets]
    )
    worker, client = Worker(cfg), LocalClient(make_shards(cfg))
    units = work_units(root, "1")
    batches = [b for u in units for b, _ in worker.batches(u)]
    if needs_stats_pass(cfg):
        for b in batches:
            client.add_counts(b.uniq, b.counts)
        client.finish_counts()
    inputs, work, floats = [], 0, 0
    for b in batches:
        pulled = client.pull(b.uniq, create=True)
        x = worker._inputs(b, pulled)
        inputs.append(x)
        occ_level = pulled.level[b.occ_uniq].astype(np.int64)
        work += sum(d * int((occ_level >= p).sum()) for p, d in enumerate(cfg.model.ranks, 1))
        floats += pulled.w.size + sum(t.size for t in pulled.tables)
    rows = sum(b.size for b in batches)
    forward_backward(worker.spec, inputs[0])  # warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for x in inputs:
            forward_backward(worker.spec, x)
        times.append((time.perf_counter() - t0) / rows)
    med = statistics.median(times)
    return {
        "us_per_sample": med * 1e6,
        "samples_per_s": 1 / med,
        "factor_work_per_sample": work / rows,
        "floats_pulled_per_sample": floats / rows,
        "runs": [t * 1e6 for t in times],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        generate(d, days=1, rows_per_day=args.rows, spec=GenSpec(), seed=0)
        res = {name: bench_model(d, sets, args.batch, args.reps) for name, sets in MODELS.items()}
    print(
        f"forward+backward, {args.rows:,} rows of 39 fields, batch {args.batch}, "
        f"{args.threads} torch thread(s), median of {args.reps}"
    )
    print(
        f"{'model':<12} {'us/sample':>10} {'samples/s':>12} {'factor work':>12} "
        f"{'floats pulled':>14}"
    )
    for name, r in res.items():
        print(
            f"{name:<12} {r['us_per_sample']:>10.2f} {r['samples_per_s']:>12,.0f} "
            f"{r['factor_work_per_sample']:>12.1f} {r['floats_pulled_per_sample']:>14.1f}"
        )
    ratio = res["rafm1248"]["us_per_sample"] / res["fm8"]["us_per_sample"]
    print(f"RaFM / FM(8) time per sample: {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": res, "rafm_over_fm": ratio}, f, indent=1)


if __name__ == "__main__":
    main()

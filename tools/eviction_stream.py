"""Keys, memory and test AUC of a long drifting stream with and without eviction.

Generates ``--days`` days of ``psfm gen`` logs whose tail vocabulary drifts (``--drift``: the
fraction of tail ids that are new each day), trains days 1..N-1 in-process with
``levels.ttl_days = 0`` (keep every key) and with each ``--ttl``, tests on day N, and prints
the stored keys after each day and the final PS bytes and test AUC. Writes the figures to
``--out`` (JSON).

    python tools/eviction_stream.py --root /tmp/stream --days 20 --rows 200000 --ttl 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from psfm.config import load_config
from psfm.datasets.gen import GenSpec, generate
from psfm.trainer import train_local


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="where the generated log goes (reused)")
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--rows", type=int, default=200_000, help="rows per day")
    ap.add_argument("--drift", type=float, default=0.05)
    ap.add_argument("--small", action="store_true", help="GenSpec.small() (10 fields)")
    ap.add_argument("--kind", default="fm")
    ap.add_argument("--ttl", type=int, nargs="+", default=[3])
    ap.add_argument("--out", default="eviction_stream.json")
    args = ap.parse_args()

    spec = dataclasses.replace(GenSpec.small() if args.small else GenSpec(), drift=args.drift)
    if not os.path.exists(os.path.join(args.root, "_gen.json")):
        generate(args.root, days=args.days, rows_per_day=args.rows, spec=spec, seed=3)
    train = ",".join(str(d) for d in range(1, args.days))
    runs = {}
    for ttl in [0, *args.ttl]:
        cfg = load_config(
            None,
            [
                f"data.root={json.dumps(args.root)}",
                f"model.kind={json.dumps(args.kind)}",
                f'data.train_days="{train}"',
                f'data.test_days="{args.days}"',
                f"levels.ttl_days={ttl}",
            ],
        )
        t0 = time.perf_counter()
        rep = train_local(cfg)
        runs[ttl] = {
            "keys": [d["keys"] for d in rep["train"]["per_day"]],
            "evicted": [d["evicted"] for d in rep["train"]["per_day"]],
            "ps_bytes": rep["model"]["ps_bytes"],
            "test_auc": rep["test"]["auc"],
            "test_logloss": rep["test"]["logloss"],
            "seconds": time.perf_counter() - t0,
        }
    ttls = list(runs)
    print("| day | " + " | ".join(f"keys, ttl {t or 'off'}" for t in ttls) + " |")
    print("| --- |" + " --- |" * len(ttls))
    for i in range(args.days - 1):
        print(f"| {i + 1} | " + " | ".join(f"{runs[t]['keys'][i]:,}" for t in ttls) + " |")
    for t in ttls:
        r = runs[t]
        print(
            f"ttl {t or 'off'}: test AUC {r['test_auc']:.4f}, logloss {r['test_logloss']:.4f}, "
            f"PS {r['ps_bytes'] / 2**20:.1f} MiB, {r['seconds']:.0f} s"
        )
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()

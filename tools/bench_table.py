"""Micro-benchmark of :class:`psfm.ps.table.KeyTable` on one core.

For each size N: build a table of N random uint64 keys by inserting batches (amortized rate,
growth included), then time batches of new keys and of existing keys (median of the
repetitions) and report the memory per key.

    PYTHONPATH=. python tools/bench_table.py --sizes 1e6,1e7 --batch 100000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from psfm.ps.table import KeyTable

U64_MAX = int(np.iinfo(np.uint64).max)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(part)) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--sizes must be numbers like 1e6,1e7: {text}") from exc
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes must be positive: {text}")
    return sizes


def _median_seconds(fn: Callable[[int], object], repeats: int) -> float:
    times = []
    for rep in range(repeats):
        start = time.perf_counter()
        fn(rep)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench(size: int, batch: int, repeats: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, U64_MAX, size=size, dtype=np.uint64, endpoint=True)
    fresh = rng.integers(0, U64_MAX, size=(repeats, batch), dtype=np.uint64, endpoint=True)
    probes = keys[rng.integers(0, size, size=(repeats, batch))]

    table = KeyTable()
    start = time.perf_counter()
    for lo in range(0, size, batch):
        table.insert(keys[lo : lo + batch])
    build_s = time.perf_counter() - start
    n = len(table)
    bytes_per_key = table.nbytes / n

    lookup_s = _median_seconds(lambda r: table.lookup(probes[r]), repeats)
    reinsert_s = _median_seconds(lambda r: table.insert(probes[r]), repeats)
    # New keys: each repetition inserts a fresh batch (the table grows by batch * repeats;
    # a repetition that crosses the load limit pays a rehash, the median ignores it).
    insert_s = _median_seconds(lambda r: table.insert(fresh[r]), repeats)
    return {
        "size": float(n),
        "build_rate": n / build_s,
        "insert_rate": batch / insert_s,
        "lookup_rate": batch / lookup_s,
        "reinsert_rate": batch / reinsert_s,
        "bytes_per_key": bytes_per_key,
        "build_s": build_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=_sizes("1e6,1e7"), help="table sizes")
    parser.add_argument("--batch", type=int, default=100_000, help="keys per timed call")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls (median, >= 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeats < 5 or args.batch < 1:
        parser.error("--repeats must be >= 5 and --batch >= 1")

    header = (
        f"{'size':>12} {'build keys/s':>14} {'insert new/s':>14} {'lookup/s':>14} "
        f"{'reinsert/s':>14} {'bytes/key':>10} {'build s':>8}"
    )
    print(f"KeyTable, batch={args.batch}, median of {args.repeats} calls, numpy {np.__version__}")
    print(header)
    for size in args.sizes:
        r = bench(size, args.batch, args.repeats, args.seed)
        print(
            f"{int(r['size']):>12,} {r['build_rate']:>14,.0f} {r['insert_rate']:>14,.0f} "
            f"{r['lookup_rate']:>14,.0f} {r['reinsert_rate']:>14,.0f} "
            f"{r['bytes_per_key']:>10.1f} {r['build_s']:>8.2f}"
        )


if __name__ == "__main__":
    main()

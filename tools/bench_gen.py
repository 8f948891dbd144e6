"""Benchmark of the synthetic log generator (psfm.datasets.gen).

Generates N rows of one day (default spec unless ``--small``) and reports rows/s for generation
alone (``generate_day``, in memory) and end to end (``generate``: generation, Bayes/linear AUC
and Parquet write), each the median of ``--repeat`` runs. Run it on an otherwise idle machine;
numpy/Arrow threads are not limited here, so pin it (``taskset -c 0``) for a one-core figure.

    python tools/bench_gen.py --rows 2000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from psfm.datasets.gen import GenSpec, generate, generate_day, true_model

__all__ = ["main"]


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.parquet"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows to generate (one day)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="use GenSpec.small()")
    ap.add_argument("--compression", default="none", help="Parquet codec for generate()")
    ap.add_argument("--dir", default=None, help="parent of the temp output dir (default: TMPDIR)")
    args = ap.parse_args(argv)
    spec = GenSpec.small() if args.small else GenSpec()
    n = args.rows

    build = _timed(lambda: true_model(spec, args.seed))
    print(
        f"spec: {spec.n_numeric} numeric + {spec.n_categorical} categorical fields, "
        f"rows={n:,}, true-model build {build:.2f}s (cached afterwards)"
    )

    gen_s = [_timed(lambda: generate_day(spec, 1, n, args.seed)) for _ in range(args.repeat)]
    med = statistics.median(gen_s)
    print(
        f"generate_day (in memory):  {n / med:>12,.0f} rows/s   (median {med:.3f}s of "
        f"{', '.join(f'{s:.3f}' for s in gen_s)})"
    )

    e2e: list[float] = []
    size = 0
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            e2e.append(
                _timed(
                    lambda d=d: generate(
                        d,
                        days=1,
                        rows_per_day=n,
                        seed=args.seed,
                        spec=spec,
                        compression=args.compression,
                    )
                )
            )
            size = _disk_bytes(Path(d))
    med = statistics.median(e2e)
    print(
        f"generate (+AUC, Parquet {args.compression}): {n / med:>12,.0f} rows/s   (median "
        f"{med:.3f}s of {', '.join(f'{s:.3f}' for s in e2e)}); {size / n:.1f} bytes/row on disk"
    )


if __name__ == "__main__":
    main()

"""Benchmark of the dataset converters (psfm.datasets.convert): rows/s for criteo, avazu and libfm.

Writes N generated rows per format in the real text layouts (Criteo TSV: label, 13 integers with
empties and negatives, 26 8-hex-digit categoricals with empties, ~245 bytes per line; Avazu CSV
with its 24-column header and YYMMDDHH hours over two days; libSVM text with 39 ``idx:val``
features per line), then times each converter end to end (CSV parsing, validation, Parquet
writing), the median of ``--repeat`` runs, with one parser thread and with threads. Run it
pinned to one core for the per-core figure::

    taskset -c 1 python tools/bench_convert.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from psfm.datasets.convert import (  # noqa: E402
    convert_avazu,
    convert_criteo,
    convert_libfm,
    count_lines,
)

__all__ = ["main", "write_criteo", "write_avazu", "write_libfm"]

_CHUNK = 250_000


def _hex_vocab(size: int, salt: int) -> pa.Array:
    v = (np.arange(size, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(salt)) % (1 << 32)
    return pa.array(np.char.mod("%08x", v.astype(np.int64)).astype(object), pa.string())


def _cats(rng: np.random.Generator, vocab: pa.Array, m: int, null_p: float) -> pa.Array:
    idx = (rng.zipf(1.2, m) - 1) % len(vocab)
    out = vocab.take(pa.array(idx))
    return pc.if_else(pa.array(rng.random(m) < null_p), pa.scalar(None, pa.string()), out)


def _write_csv(path: Path, chunks, header: bool, delimiter: str) -> None:
    with pa.OSFile(str(path), "wb") as f:
        first = True
        for t in chunks:
            pcsv.write_csv(
                t,
                f,
                pcsv.WriteOptions(
                    include_header=header and first, delimiter=delimiter, quoting_style="none"
                ),
            )
            first = False


def write_criteo(path: Path, n: int, seed: int = 0) -> None:
    """Criteo TSV: label, I1..I13 (integers, 20% empty, some negative), C1..C26 (8 hex digits,
    10% empty, Zipf-distributed over vocabularies of 100 to 1e6)."""
    rng = np.random.default_rng(seed)
    vocabs = [_hex_vocab(10 ** (2 + j % 5), j) for j in range(26)]

    def chunks():
        for s in range(0, n, _CHUNK):
            m = min(_CHUNK, n - s)
            cols: dict[str, pa.Array] = {}
            cols["label"] = pa.array((rng.random(m) < 0.25).astype(np.int8))
            for j in range(13):
                v = np.floor(rng.exponential(30, m)).astype(np.int64) - (j == 1) * 3
                cols[f"I{j + 1}"] = pa.array(v, mask=rng.random(m) < 0.2)
            for j in range(26):
                cols[f"C{j + 1}"] = _cats(rng, vocabs[j], m, 0.1)
            yield pa.table(cols)

    _write_csv(path, chunks(), header=False, delimiter="\t")


_AVAZU_STR = (
    "site_id",
    "site_domain",
    "site_category",
    "app_id",
    "app_domain",
    "app_category",
    "device_id",
    "device_ip",
    "device_model",
)


def write_avazu(path: Path, n: int, seed: int = 0) -> None:
    """Avazu CSV with its header; hours 14102100..14102223 in order (two days)."""
    rng = np.random.default_rng(seed)
    vocabs = {c: _hex_vocab(10 ** (1 + i % 5), 100 + i) for i, c in enumerate(_AVAZU_STR)}
    hours = np.array([f"1410{d}{h:02d}" for d in (21, 22) for h in range(24)], dtype=object)

    def chunks():
        for s in range(0, n, _CHUNK):
            m = min(_CHUNK, n - s)
            pos = (np.arange(s, s + m) * hours.size) // n
            t = {
                "id": pa.array(
                    (
                        np.arange(s, s + m, dtype=np.uint64) * np.uint64(1000003)
                        + np.uint64(10**18)
                    ).astype(np.uint64)
                ),
                "click": pa.array((rng.random(m) < 0.17).astype(np.int8)),
                "hour": pa.array(hours[pos], pa.string()),
                "C1": pa.array(1005 + rng.integers(0, 3, m)),
                "banner_pos": pa.array(rng.integers(0, 2, m)),
            }
            for c in _AVAZU_STR:
                t[c] = _cats(rng, vocabs[c], m, 0.0)
            t["device_type"] = pa.array(rng.integers(0, 5, m))
            t["device_conn_type"] = pa.array(rng.integers(0, 4, m))
            for j in range(14, 22):
                t[f"C{j}"] = pa.array(rng.integers(-1, 3000, m))
            yield pa.table(t)

    _write_csv(path, chunks(), header=True, delimiter=",")


def write_libfm(path: Path, n: int, seed: int = 0, features: int = 39) -> None:
    """libSVM text, ``label idx:val ...`` with labels -1/1 and ``features`` features per line."""
    rng = np.random.default_rng(seed)

    def chunks():
        for s in range(0, n, _CHUNK):
            m = min(_CHUNK, n - s)
            parts = [
                pa.array(np.where(rng.random(m) < 0.25, "1", "-1").astype(object), pa.string())
            ]
            for j in range(features):
                idx = j * 100_000 + (rng.zipf(1.3, m) % 100_000)
                val = "1" if j >= 13 else "0.5"
                parts.append(
                    pc.binary_join_element_wise(
                        pc.cast(pa.array(idx), pa.string()), pa.scalar(val), ":"
                    )
                )
            yield pa.table({"line": pc.binary_join_element_wise(*parts, " ")})

    _write_csv(path, chunks(), header=False, delimiter="\x1f")


def _median_rate(fn, rows: int, repeat: int) -> tuple[float, list[float]]:
    secs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        secs.append(time.perf_counter() - t0)
    return rows / statistics.median(secs), secs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per format")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--formats", default="criteo,avazu,libfm")
    ap.add_argument("--no-threads", action="store_true", help="skip the threaded runs")
    ap.add_argument("--dir", default=None, help="parent of the temp dir (default: TMPDIR)")
    args = ap.parse_args(argv)
    n = args.rows
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    print(
        f"rows per format {n:,}, median of {args.repeat}; pyarrow {pa.__version__}, "
        f"CPU affinity {cpus} of {os.cpu_count()} cores, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    work = Path(tempfile.mkdtemp(prefix="psfm-bench-convert-", dir=args.dir))
    try:
        src = work / "src"
        src.mkdir()
        out = str(work / "out")
        jobs = []
        if "criteo" in formats:
            write_criteo(src / "day_0", n)
            jobs.append(
                (
                    "criteo (1TB day_N file)",
                    lambda t: convert_criteo(
                        [str(src / "day_0")], out, use_threads=t, overwrite=True
                    ),
                )
            )
            jobs.append(
                (
                    "criteo (Kaggle, --days 7, lines counted)",
                    lambda t: convert_criteo(
                        [str(src / "day_0")], out, days=7, use_threads=t, overwrite=True
                    ),
                )
            )
        if "avazu" in formats:
            write_avazu(src / "train.csv", n)
            jobs.append(
                (
                    "avazu",
                    lambda t: convert_avazu(
                        [str(src / "train.csv")], out, use_threads=t, overwrite=True
                    ),
                )
            )
        if "libfm" in formats:
            write_libfm(src / "train.libfm", n)
            write_libfm(src / "test.libfm", 1000, seed=1)
            jobs.append(
                (
                    "libfm (39 features/line)",
                    lambda t: convert_libfm(
                        str(src / "train.libfm"),
                        str(src / "test.libfm"),
                        out,
                        use_threads=t,
                        overwrite=True,
                    ),
                )
            )
        for f in sorted(src.iterdir()):
            print(
                f"  input {f.name}: {f.stat().st_size / 2**20:,.0f} MiB, "
                f"{count_lines(str(f)):,} lines"
            )
        for name, fn in jobs:
            for threads in [False] if args.no_threads else [False, True]:
                rate, secs = _median_rate(lambda fn=fn, t=threads: fn(t), n, args.repeat)
                print(
                    f"{name:<44} threads={'yes' if threads else 'no ':<4} {rate:>10,.0f} rows/s"
                    f"   (runs {', '.join(f'{s:.2f}s' for s in secs)})"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

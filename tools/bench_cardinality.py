"""Stage costs against key diversity: per occurrence and per unique key.

``psfm bench`` measures one log (~24k unique keys per 4096-row batch). Real CTR logs have many
more distinct keys per batch, and the per-unique-key path (the shard's index lookup/insert,
its gathers and scatters, FTRL on the touched rows, the worker's table, message packing)
then dominates. This script generates logs that differ only in key diversity (Zipf exponent
and vocabulary sizes of the 26 categorical fields; the 13 numeric fields and the row count
are the same, so every log has ~38 occurrences per sample); it times reading the same rows
in the columns layout and in the hashed layout (the same keys as a list column), and every
stage alone on the same pre-built batches as ``psfm bench`` section 1 does (one in-process
shard, torch with one thread); it fits each stage's time per batch as ``a * occurrences +
b * unique keys`` over the logs (least squares): ``a`` in ns per occurrence, ``b`` in ns per
unique key. The per-unique-key floor: one gather and one scatter of FM(8)'s (z, n) rows per
unique key of a batch, from a table of every key of the log (as ``psfm bench`` section 6).

    python tools/bench_cardinality.py                 # FM(8), 4 logs x 262,144 rows; ~4 min
    python tools/bench_cardinality.py --models fm,lr --rows 524288

Results go to ``tools/bench_cardinality.json`` (``--out``) and a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.bench import (  # noqa: E402
    _config,
    _model_stages,
    _prepared_client,
    _timed,
    machine_info,
    read_batches,
)
from psfm.data.batch import unique_inverse_counts  # noqa: E402
from psfm.datasets.gen import GenSpec, generate  # noqa: E402

# name -> (Zipf exponent, smallest and largest vocabulary of the 26 categorical fields)
LOGS: dict[str, tuple[float, int, int]] = {
    "zipf 1.3, vocab 10..1M": (1.3, 10, 1_000_000),
    "zipf 1.1, vocab 10..1M (bench)": (1.1, 10, 1_000_000),
    "zipf 1.05, vocab 10..1M": (1.05, 10, 1_000_000),
    "zipf 1.05, vocab 1k..10M": (1.05, 1_000, 10_000_000),
}
MODEL_KEYS = {"fm": "FM(8)", "lr": "LR", "rafm": "RaFM({1,2,4,8})"}


def spec_of(s: float, lo: int, hi: int) -> GenSpec:
    vocab = tuple(int(v) for v in np.geomspace(lo, hi, 26).round())
    return GenSpec(zipf_s=s, vocab_sizes=vocab)


def floor_ns_per_key(batches: list) -> float:
    """One gather and one scatter of FM(8)'s (z, n) rows (9 coordinates x 2 float32) per
    unique key of a batch, from a table holding every key of the log: ns per unique key."""
    keys = np.unique(np.concatenate([b.uniq for b in batches]))
    table = np.zeros((keys.size, 18), np.float32)
    idx = [np.searchsorted(keys, b.uniq) for b in batches]
    n = sum(i.size for i in idx)

    def run() -> None:
        for i in idx:
            rows = table[i]
            rows += 1.0
            table[i] = rows

    t, _, _ = _timed(run, 3)
    return t / n * 1e9


MESSAGE_BATCHES = 4  # 4 x 4096 rows: about a default message (15 steps of 1,024 rows)


def message_path(cfg: Any, batches: list, reps: int) -> dict[str, float]:
    """The shard's side of a message at the defaults (worker-local steps): a state pull of
    the union of ``MESSAGE_BATCHES`` batches' keys, then its delta push (the push reuses the
    pull's slots, as in training), on one in-process shard that has seen the log once; ns per
    unique key of a message, and the unique keys of a message."""
    from psfm.ps.local import LocalSteps

    client = _prepared_client(cfg, batches)
    shard = client.shards[0]
    for b in batches:  # every key created, as after a first pass
        shard.pull(b.uniq, create=True)
    msgs = []
    for lo in range(0, len(batches) - MESSAGE_BATCHES + 1, MESSAGE_BATCHES):
        part = batches[lo : lo + MESSAGE_BATCHES]
        keys = np.unique(np.concatenate([b.uniq for b in part]))
        msgs.append((keys, np.ones(keys.size, np.float32)))
    # the deltas of no steps: the same shapes and the same additions as real ones
    deltas = [
        LocalSteps(k, shard.pull(k, create=True, state=True), shard.rule).delta(c) for k, c in msgs
    ]

    def run() -> None:
        for (k, _), d in zip(msgs, deltas):
            shard.pull(k, create=True, state=True)
            shard.push(d)

    t, _, _ = _timed(run, reps)
    n = sum(k.size for k, _ in msgs)
    return {"ns_per_unique_key": t / n * 1e9, "unique_per_message": n / len(msgs)}


def write_hashed(batches: list, out: str) -> None:
    """The same rows in the hashed layout: each row's keys (the columns layout's, bias left
    out) as a ``keys: list<uint64>`` column, so both layouts train the same model."""
    tabs = []
    for b in batches:
        m = b.mask.copy()
        m[:, 0] = False
        offsets = np.concatenate([[0], np.cumsum(m.sum(axis=1))]).astype(np.int32)
        keys = pa.ListArray.from_arrays(pa.array(offsets), pa.array(b.keys[m], pa.uint64()))
        tabs.append(pa.table({"label": pa.array(b.labels.astype(np.int8)), "keys": keys}))
    os.makedirs(f"{out}/day=1", exist_ok=True)
    pq.write_table(pa.concat_tables(tabs), f"{out}/day=1/part-00000.parquet", row_group_size=65_536)


def measure(root: str, models: list[str], rows: int, reps: int) -> dict[str, Any]:
    cfg0 = _config(root, "FM(8)")
    read_batches(root, cfg0, rows)  # warm: the file in the page cache, the code paths run
    t_read, _, batches = _timed(lambda: read_batches(root, cfg0, rows), reps)
    hashed = root.rstrip("/") + "-hashed"
    write_hashed(batches, hashed)
    cfg_h = _config(hashed, "FM(8)", 'data.layout="hashed"')
    read_batches(hashed, cfg_h, rows)
    t_read_h, _, hb = _timed(lambda: read_batches(hashed, cfg_h, rows), reps)
    assert all(np.array_equal(a.uniq, b.uniq) for a, b in zip(batches, hb)), "layouts differ"
    n_rows = sum(b.size for b in batches)
    flats = [b.keys[b.mask] for b in batches]
    t_uniq, _, _ = _timed(lambda: [unique_inverse_counts(f) for f in flats], reps)
    out: dict[str, Any] = {
        "rows": n_rows,
        "batches": len(batches),
        "occ_per_batch": float(np.mean([f.size for f in flats])),
        "unique_per_batch": float(np.mean([b.uniq.size for b in batches])),
        "keys_in_log": int(np.unique(np.concatenate([b.uniq for b in batches])).size),
        "ms_per_batch": {
            "read -> keys": (t_read - t_uniq) / len(batches) * 1e3,
            "unique/inverse": t_uniq / len(batches) * 1e3,
        },
        "floor_ns_per_unique_key": floor_ns_per_key(batches),
        "read_ms_per_batch": {"columns": t_read / len(batches) * 1e3},
        "models": {},
    }
    out["read_ms_per_batch"]["hashed"] = t_read_h / len(batches) * 1e3
    per = 1e6 / n_rows
    for m in models:
        st = _model_stages(_config(root, MODEL_KEYS[m]), batches, reps, per)
        us = st["us_per_sample"]
        out["models"][m] = {
            k: v * n_rows / len(batches) / 1e3  # µs/sample -> ms per batch
            for k, v in us.items()
            if not k.startswith("pickle")
        }
        out.setdefault("message_path", {})[m] = message_path(
            _config(root, MODEL_KEYS[m]), batches, reps
        )
        gc.collect()
    return out


def fit(cases: dict[str, dict[str, Any]], model: str) -> dict[str, dict[str, float]]:
    """Per stage: (ns per occurrence, ns per unique key, R^2) of ms per batch over the logs."""
    occ = np.array([c["occ_per_batch"] for c in cases.values()])
    uniq = np.array([c["unique_per_batch"] for c in cases.values()])
    a = np.stack([occ, uniq], axis=1)
    stages = list(next(iter(cases.values()))["ms_per_batch"]) + list(
        next(iter(cases.values()))["models"][model]
    )
    res = {}
    for s in stages:
        y = np.array(
            [c["ms_per_batch"].get(s, c["models"][model].get(s, 0.0)) for c in cases.values()]
        )
        coef, *_ = np.linalg.lstsq(a, y * 1e6, rcond=None)  # ns
        pred = a @ coef
        ss = float(np.sum((y * 1e6 - np.mean(y * 1e6)) ** 2))
        r2 = 1.0 - float(np.sum((y * 1e6 - pred) ** 2)) / ss if ss > 0 else 1.0
        res[s] = {
            "ns_per_occurrence": float(coef[0]),
            "ns_per_unique_key": float(coef[1]),
            "r2": r2,
        }
    return res


def render(res: dict[str, Any]) -> str:
    cases = res["cases"]
    lines = [
        "| log | occurrences / batch | unique keys / batch | keys in the log | floor ns / key |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, c in cases.items():
        lines.append(
            f"| {name} | {c['occ_per_batch']:,.0f} | {c['unique_per_batch']:,.0f} | "
            f"{c['keys_in_log']:,} | {c['floor_ns_per_unique_key']:.1f} |"
        )
    lines += [
        "",
        "Reading (read -> keys -> unique/inverse), ms per batch, the same rows in both layouts:",
        "",
        "| log | columns | hashed | hashed speed / columns |",
        "| --- | --- | --- | --- |",
    ]
    for name, c in cases.items():
        r = c["read_ms_per_batch"]
        lines.append(
            f"| {name} | {r['columns']:.2f} | {r['hashed']:.2f} | "
            f"{r['columns'] / r['hashed']:.2f}x |"
        )
    for m in res["models"]:
        lines += ["", f"{m}: ms per {res['batch_rows']}-row batch", ""]
        first = next(iter(cases.values()))
        stages = list(first["ms_per_batch"]) + list(first["models"][m])
        lines.append("| stage | " + " | ".join(cases) + " | ns / occurrence | ns / unique key |")
        lines.append("| --- " * (len(cases) + 3) + "|")
        f = res["fit"][m]
        for s in stages:
            vals = [c["ms_per_batch"].get(s, c["models"][m].get(s, 0.0)) for c in cases.values()]
            lines.append(
                f"| {s} | "
                + " | ".join(f"{v:.2f}" for v in vals)
                + f" | {f[s]['ns_per_occurrence']:.1f} | {f[s]['ns_per_unique_key']:.1f} |"
            )
        tot = [
            sum(c["ms_per_batch"].values()) + sum(c["models"][m].values()) for c in cases.values()
        ]
        per_key = sum(v["ns_per_unique_key"] for v in f.values())
        per_occ = sum(v["ns_per_occurrence"] for v in f.values())
        lines.append(
            "| **sum** | "
            + " | ".join(f"**{t:.2f}**" for t in tot)
            + f" | **{per_occ:.1f}** | **{per_key:.1f}** |"
        )
        floor = float(np.median([c["floor_ns_per_unique_key"] for c in cases.values()]))
        lines.append("")
        lines.append(
            f"{m}: {per_key:.0f} ns per unique key in all stages against a gather + scatter "
            f"floor of {floor:.1f} ns ({per_key / floor:.1f}x); {per_occ:.1f} ns per occurrence."
        )
        if all("message_path" in c for c in cases.values()):
            lines += [
                "",
                f"{m}: the shard's side of a message at the defaults (a state pull of the "
                f"keys of {MESSAGE_BATCHES} batches, then its delta push), ns per unique key "
                "of the message, against the floor of the same log:",
                "",
                "| log | unique keys / message | shard ns / key | floor ns / key | x floor |",
                "| --- | --- | --- | --- | --- |",
            ]
            for name, c in cases.items():
                mp, fl = c["message_path"][m], c["floor_ns_per_unique_key"]
                lines.append(
                    f"| {name} | {mp['unique_per_message']:,.0f} | "
                    f"{mp['ns_per_unique_key']:.1f} | {fl:.1f} | "
                    f"{mp['ns_per_unique_key'] / fl:.2f}x |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fm", help="comma list of lr, fm, rafm")
    ap.add_argument("--rows", type=int, default=262_144, help="rows of batches per log")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per stage (median)")
    ap.add_argument("--data-dir", help="where the logs go (kept; default: a temporary folder)")
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    t0 = time.perf_counter()
    cases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.data_dir or tmp
        for i, (name, (s, lo, hi)) in enumerate(LOGS.items()):
            root = os.path.join(base, f"log{i}")
            if not os.path.exists(os.path.join(root, "day=1")):
                generate(root, days=1, rows_per_day=args.rows, seed=1, spec=spec_of(s, lo, hi))
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            cases[name] = measure(root, models, args.rows, args.reps)
    res = {
        "command": "python tools/bench_cardinality.py "
        + " ".join(
            a for a in shlex.split(" ".join(argv or sys.argv[1:])) if a != args.data_dir
        ).replace("--data-dir", "--data-dir DIR"),
        "machine": {k: v for k, v in machine_info().items() if k != "load_average"},
        "batch_rows": 4096,
        "models": models,
        "cases": cases,
        "fit": {m: fit(cases, m) for m in models},
        "seconds": time.perf_counter() - t0,
    }
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Feature statistics of a day-partitioned log: occurrence counts, levels and model sizes.

One pass over the chosen days through psfm's own batch builder (:class:`psfm.worker.Worker`),
so the keys and their counts are exactly those training sees: ``n_i`` = occurrences of key ``i``
(rows in which the feature is present; the bias key is excluded). From the counts:

* the histogram of occurrences per feature on log2 bins (RaFM, Chen et al. 2019, Fig. 1):
  bin ``b`` holds the features with ``2^b <= n_i < 2^(b+1)`` (1, 2-3, 4-7, ...), with their
  number and their share of all occurrences;
* the levels of RaFM Eq. 17 (or explicit ``level_min_count``), exactly as the ``static`` level
  policy assigns them: ``k_i = #{k : n_i >= t_k}`` with ``t_1 = 1``,
  ``t_{k+1} = c sqrt(D_k D_{k+1})`` (:func:`psfm.ps.levels.level_thresholds`), and per level
  ``0..m`` the features and occurrences;
* the parameters each model would store for the admitted keys ``K`` (``n_i >=
  admit_min_count``) before FTRL's L1 sparsity, with ``F_p = {i : k_i >= p}`` and
  ``D_0 = 0``::

      LR          |K|
      FM(D)       |K| (1 + D)                         for every D in ranks
      DiFacto     sum_i (1 + D_{k_i})                 (one vector of the feature's rank)
      RaFM        |K| + sum_p D_p |F_p|               (a factor per level up to k_i)

Counts accumulate in a :class:`psfm.ps.table.KeyTable` (key -> slot) and a float64 array
indexed by slot: one vectorized insert and one scatter-add per batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from psfm.config import Config, DataConfig, ModelConfig, load_config
from psfm.data.parquet import (
    day_files,
    list_days,
    open_parquet,
    select_days,
    split_days,
    work_units,
)
from psfm.errors import ConfigError, PsfmError
from psfm.hashing import BIAS_KEY
from psfm.ps.levels import level_thresholds, levels_from_counts
from psfm.ps.table import KeyTable

__all__ = [
    "MissingDependency",
    "count_features",
    "feature_stats",
    "format_stats",
    "plot_stats",
    "add_cli",
]

log = logging.getLogger(__name__)


class MissingDependency(PsfmError, ImportError):
    """An optional dependency (an extra of the psfm package) is not installed."""


def _resolve_data(root: str, day: str, data: DataConfig | None) -> DataConfig:
    """``data`` with ``root``; the ``hashed`` layout is picked when the files have a list-typed
    ``keys`` column and the config names no layout-specific columns."""
    data = dataclasses.replace(data or DataConfig(), root=root)
    if data.layout == "columns" and not data.categorical and not data.numeric:
        schema = open_parquet(day_files(root, day)[0]).schema_arrow
        if "keys" in schema.names and pa.types.is_list(schema.field("keys").type):
            log.info("'%s' has a list column 'keys': reading it with data.layout = 'hashed'", root)
            data = dataclasses.replace(data, layout="hashed")
    return data


def _resolve_days(
    root: str, days: str | Sequence[str] | None, data: DataConfig | None
) -> list[str]:
    all_days = list_days(root)
    if days is None:
        if len(all_days) == 1:
            return all_days
        d = data or DataConfig()
        return split_days(all_days, d.train_days, d.test_days)[0]
    if isinstance(days, str):
        return select_days(all_days, days)
    return select_days(all_days, ",".join(str(d) for d in days))


def count_features(
    root: str,
    days: str | Sequence[str] | None = None,
    data: DataConfig | None = None,
    loss: str = "logistic",
    batch_rows: int = 65536,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(keys, counts, info)``: every key of the days (bias excluded) and its occurrences
    (float64), from :meth:`psfm.worker.Worker.batches`; ``info`` has days, rows, skipped rows
    and per-day rows and new keys. ``days``: a SPEC, a list, or None for the training days of
    the default split (every day but the last; the only day when there is one)."""
    from psfm.worker import Worker  # torch: imported only when counting

    chosen = _resolve_days(root, days, data)
    d = _resolve_data(root, chosen[0], data)
    cfg = Config(data=d, model=ModelConfig(kind="lr", loss=loss))
    worker = Worker(cfg, batch_rows=batch_rows)
    table = KeyTable()
    counts = np.zeros(1 << 16, dtype=np.float64)
    rows = skipped = 0
    per_day = []
    for day in chosen:
        day_rows, before = 0, len(table)
        for unit in work_units(root, day, d.rows_per_unit):
            for batch, _ in worker.batches(unit):
                slots = table.insert(batch.uniq)
                if len(table) > counts.size:
                    counts = np.concatenate(
                        [counts, np.zeros(max(len(table), 2 * counts.size) - counts.size)]
                    )
                counts[slots] += batch.counts  # uniq is unique: no repeated slot
                day_rows += batch.size
                skipped += batch.skipped
        rows += day_rows
        per_day.append({"day": day, "rows": day_rows, "new_keys": len(table) - before})
    keys = table.keys.copy()
    counts = counts[: keys.size]
    feat = keys != BIAS_KEY
    info = {
        "root": root,
        "days": chosen,
        "rows": rows,
        "skipped": skipped,
        "per_day": per_day,
        "layout": d.layout,
    }
    return keys[feat], counts[feat], info


def _log2_bins(n: np.ndarray) -> np.ndarray:
    """``floor(log2 n)`` for counts ``n >= 1`` (exact: frexp gives ``n = m 2^e``, 0.5 <= m < 1)."""
    return np.frexp(n)[1].astype(np.int64) - 1


def feature_stats(
    root: str,
    days: str | Sequence[str] | None = None,
    ranks: Sequence[int] = (1, 2, 4, 8),
    count_per_dim: float = 1.0,
    level_min_count: Sequence[float] = (),
    admit_min_count: int = 1,
    data: DataConfig | None = None,
    loss: str = "logistic",
    batch_rows: int = 65536,
) -> dict[str, Any]:
    """Counts, the log2 histogram, levels and implied parameter counts (module docstring).

    ``data`` configures how rows become keys (layout, columns, numeric transform, bad rows) as
    in training; None reads the defaults (and the ``hashed`` layout when the files have a
    ``keys`` list column). The result is JSON-serializable.
    """
    ranks = [int(r) for r in ranks]
    if any(r < 1 for r in ranks):
        raise ConfigError(
            f"The 'ranks' parameter of feature_stats must be ints >= 1. Got {ranks!r} instead."
        )
    if not count_per_dim > 0:
        raise ConfigError(
            f"The 'count_per_dim' parameter of feature_stats must be a number > 0. "
            f"Got {count_per_dim!r} instead."
        )
    if level_min_count and len(level_min_count) != len(ranks):
        raise ConfigError(
            f"The 'level_min_count' parameter of feature_stats must have one threshold per "
            f"rank ({len(ranks)}). Got {list(level_min_count)!r} instead."
        )
    t0 = time.perf_counter()
    keys, n, info = count_features(root, days, data, loss, batch_rows)

    bins = _log2_bins(n) if n.size else np.zeros(0, np.int64)
    nb = int(bins.max()) + 1 if n.size else 0
    f_bin = np.bincount(bins, minlength=nb)
    o_bin = np.bincount(bins, weights=n, minlength=nb)
    histogram = [
        {
            "lo": 1 << b,
            "hi": (1 << (b + 1)) - 1,
            "features": int(f_bin[b]),
            "occurrences": int(o_bin[b]),
        }
        for b in range(nb)
    ]

    thresholds = level_thresholds(ranks, count_per_dim, level_min_count)
    admitted = n >= admit_min_count
    lev = levels_from_counts(n[admitted], thresholds).astype(np.int64)
    na = n[admitted]
    m = len(ranks)
    f_lev = np.bincount(lev, minlength=m + 1)
    o_lev = np.bincount(lev, weights=na, minlength=m + 1)
    dims = np.concatenate([[0], np.asarray(ranks, dtype=np.int64)])  # D_0 = 0
    per_level = [
        {
            "level": k,
            "rank": int(dims[k]),
            "min_count": float(thresholds[k - 1]) if k else 0.0,
            "features": int(f_lev[k]),
            "occurrences": int(o_lev[k]),
        }
        for k in range(m + 1)
    ]
    k_count = int(admitted.sum())
    at_least = np.cumsum(f_lev[::-1])[::-1]  # |F_p| = #{k_i >= p}
    rafm_rows = [int(at_least[p]) for p in range(1, m + 1)]
    difacto_rows = [int(f_lev[p]) for p in range(1, m + 1)]
    params = {
        "lr": k_count,
        "fm": [{"rank": d, "params": k_count * (1 + d)} for d in ranks],
        "difacto": int(k_count + (dims[lev]).sum()),
        "rafm": int(k_count + sum(d * r for d, r in zip(ranks, rafm_rows))),
        "difacto_rows_per_level": difacto_rows,
        "rafm_rows_per_level": rafm_rows,
    }
    return {
        **info,
        "features": int(n.size),
        "occurrences": int(n.sum()),
        "admit_min_count": int(admit_min_count),
        "admitted_features": k_count,
        "histogram": histogram,
        "levels": {
            "ranks": ranks,
            "count_per_dim": float(count_per_dim),
            "level_min_count": [float(x) for x in level_min_count],
            "thresholds": thresholds.tolist(),
            "per_level": per_level,
        },
        "params": params,
        "seconds": time.perf_counter() - t0,
    }


def _pct(a: float, b: float) -> str:
    return f"{100.0 * a / b:6.2f}%" if b else "     -"


def format_stats(stats: dict[str, Any]) -> str:
    """A text report of :func:`feature_stats`: totals, the log2 histogram, levels, sizes."""
    s = stats
    nf, no = s["features"], s["occurrences"]
    lines = [
        f"data       {s['root']} days {', '.join(s['days'])}: {s['rows']:,} rows"
        + (f" ({s['skipped']:,} bad rows skipped)" if s["skipped"] else ""),
        f"features   {nf:,} distinct keys, {no:,} occurrences "
        f"({no / max(s['rows'], 1):.1f} per row; bias excluded)",
        "",
        "occurrences per feature (log2 bins)",
        f"  {'count':>17}  {'features':>12} {'% feat':>7}  {'occurrences':>15} {'% occ':>7}",
    ]
    for h in s["histogram"]:
        rng = f"{h['lo']:,}" if h["lo"] == h["hi"] else f"{h['lo']:,}-{h['hi']:,}"
        lines.append(
            f"  {rng:>17}  {h['features']:>12,} {_pct(h['features'], nf)}  "
            f"{h['occurrences']:>15,} {_pct(h['occurrences'], no)}"
        )
    lv = s["levels"]
    rule = (
        f"level_min_count {lv['level_min_count']}"
        if lv["level_min_count"]
        else f"RaFM Eq. 17, count_per_dim {lv['count_per_dim']:g}"
    )
    lines += [
        "",
        f"levels     ranks {lv['ranks']}, {rule}: thresholds "
        f"[{', '.join(f'{t:g}' for t in lv['thresholds'])}]"
        + (
            f"; admitted keys (count >= {s['admit_min_count']}): {s['admitted_features']:,}"
            if s["admit_min_count"] > 1
            else ""
        ),
        f"  {'level':>5} {'rank':>5} {'count >=':>9}  {'features':>12} {'% feat':>7}  "
        f"{'occurrences':>15} {'% occ':>7}",
    ]
    na = s["admitted_features"]
    for p in lv["per_level"]:
        t = "-" if p["level"] == 0 else f"{p['min_count']:g}"
        lines.append(
            f"  {p['level']:>5} {p['rank']:>5} {t:>9}  {p['features']:>12,} "
            f"{_pct(p['features'], na)}  {p['occurrences']:>15,} "
            f"{_pct(p['occurrences'], no)}"
        )
    pr = s["params"]
    ranks = lv["ranks"]
    lines += ["", "parameters (stored, before FTRL sparsity)", f"  {'LR':<22} {pr['lr']:>15,}"]
    for f in pr["fm"]:
        lines.append(f"  {'FM(' + str(f['rank']) + ')':<22} {f['params']:>15,}")
    if ranks:
        label = "{" + ",".join(str(r) for r in ranks) + "}"
        lines.append(
            f"  {'DiFacto' + label:<22} {pr['difacto']:>15,}   rows per level "
            f"{pr['difacto_rows_per_level']}"
        )
        lines.append(
            f"  {'RaFM' + label:<22} {pr['rafm']:>15,}   rows per level {pr['rafm_rows_per_level']}"
        )
    return "\n".join(lines)


def plot_stats(stats: dict[str, Any], path: str) -> None:
    """A PNG of the log2 histogram (features and occurrences per bin, log scale) with the level
    thresholds; needs matplotlib (``pip install 'psfm[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependency(
            "plot_stats needs matplotlib, which is not installed: pip install 'psfm[plot]' "
            "(or pip install matplotlib)."
        ) from e
    h = stats["histogram"]
    x = np.arange(len(h))
    labels = [str(b["lo"]) if b["lo"] == b["hi"] else f"{b['lo']}-{b['hi']}" for b in h]
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(h) + 2), 7), sharex=True)
    for ax, what, color in (
        (axes[0], "features", "tab:blue"),
        (axes[1], "occurrences", "tab:orange"),
    ):
        ax.bar(x, [b[what] for b in h], color=color)
        ax.set_yscale("log")
        ax.set_ylabel(what)
        ax.grid(axis="y", alpha=0.3)
        for k, t in enumerate(stats["levels"]["thresholds"], start=1):
            if t > 1:  # counts are integers: level k starts at ceil(t); bin b spans b +- 0.5
                pos = np.log2(np.ceil(t)) - 0.5
                ax.axvline(pos, color="k", ls="--", lw=0.8)
                if what == "features":
                    ax.text(pos + 0.05, ax.get_ylim()[1], f"level {k}", va="top", fontsize=8)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    axes[1].set_xlabel("occurrences per feature")
    axes[0].set_title(
        f"{stats['root']}: {stats['features']:,} features, {stats['occurrences']:,} occurrences"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def _floats_list(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"--{what} must be a comma list of numbers. Got {text!r}.") from e


def _cmd_stats(args: argparse.Namespace) -> int:
    data = load_config(None, list(args.set)).data if args.set else None
    ranks = [int(x) for x in _floats_list(args.ranks, "ranks")]
    stats = feature_stats(
        args.data,
        args.days,
        ranks=ranks,
        count_per_dim=args.count_per_dim,
        level_min_count=_floats_list(args.level_min_count or "", "level-min-count"),
        admit_min_count=args.admit_min_count,
        data=data,
    )
    print(format_stats(stats))
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=1) + "\n")
        print(f"statistics written to {args.json}")
    if args.plot:
        plot_stats(stats, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``stats`` on an ``argparse`` subparsers object; ``func(args)`` returns an
    exit code."""
    p = subparsers.add_parser(
        "stats",
        help="feature counts, log2 histogram, RaFM levels and model sizes of a log",
        description="Count every feature key of the chosen days (exactly as training builds "
        "them) and report the histogram, levels and implied parameter counts.",
    )
    p.add_argument("--data", required=True, help="data root with day=... partitions")
    p.add_argument("--days", help="day SPEC (default: the training days, all but the last)")
    p.add_argument("--ranks", default="1,2,4,8", help="comma list of ranks D_1..D_m")
    p.add_argument(
        "--count-per-dim", type=float, default=1.0, help="c in RaFM Eq. 17 (levels.count_per_dim)"
    )
    p.add_argument("--level-min-count", help="explicit thresholds t_1..t_m (comma list)")
    p.add_argument(
        "--admit-min-count",
        type=int,
        default=1,
        help="keys seen fewer times get no parameters (levels.admit_min_count)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="data.KEY=VALUE",
        help='data options as in training, e.g. data.layout="hashed"',
    )
    p.add_argument("--plot", metavar="FILE", help="write a PNG of the histogram (matplotlib)")
    p.add_argument("--json", metavar="FILE", help="write the statistics as JSON")
    p.set_defaults(func=_cmd_stats)

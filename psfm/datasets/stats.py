"""Feature statistics of a day-partitioned log: occurrence counts, levels and model sizes.

One pass over the chosen days through psfm's own batch builder (:mod:`psfm.data.batch`, fed
as the worker feeds it, without the worker and so without torch), so the keys and their counts
are exactly those training sees: ``n_i`` = occurrences of key ``i``
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psfm.config import Config, DataConfig, ModelConfig, load_config
from psfm.data.batch import (
    Batch,
    FeatureSchema,
    batch_of,
    decode_rows,
    resolve_layout,
    resolve_schema,
)
from psfm.data.parquet import (
    WorkUnit,
    day_files,
    list_days,
    open_parquet,
    read_unit,
    row_group_starts,
    select_days,
    split_days,
    work_units,
)
from psfm.datasets.stats_report import MissingDependency, format_stats, plot_stats
from psfm.errors import ConfigError
from psfm.hashing import BIAS_KEY
from psfm.models.loss import LOGISTIC
from psfm.progress import Progress
from psfm.ps.levels import level_thresholds, levels_from_counts
from psfm.ps.table import KeyTable
from psfm.steps import AUTO_MAX_BATCH

__all__ = [
    "MissingDependency",
    "count_features",
    "feature_stats",
    "format_stats",
    "plot_stats",
    "add_cli",
]

log = logging.getLogger(__name__)

_CHUNK_ROWS = 1 << 16  # rows decoded at once, as psfm.worker decodes them


def _resolve_data(root: str, day: str, data: DataConfig | None) -> DataConfig:
    """``data`` with ``root`` and the layout training would use: ``hashed`` when the files
    have a list-typed ``keys`` column and the config names no feature columns
    (:func:`psfm.data.batch.resolve_layout` on the day's first file)."""
    data = dataclasses.replace(data or DataConfig(), root=root)
    return resolve_layout(data, day_files(root, day)[0])


def _unit_batches(
    unit: WorkUnit, schema: FeatureSchema, cfg: Config, batch_rows: int
) -> Iterator[Batch]:
    """The batches :meth:`psfm.worker.Worker.batches` builds from ``unit`` (the same rows, keys
    and bad-row errors): chunks of whole batches decoded at once, then cut into batches."""
    where = f"File '{unit.file}'"
    pf = open_parquet(unit.file)
    starts = np.asarray(row_group_starts(pf))
    chunk_rows = batch_rows * max(1, _CHUNK_ROWS // batch_rows)
    for table, _, first in read_unit(unit, chunk_rows, schema.columns, None, pf):
        rows = decode_rows(table, schema, cfg.model.loss, cfg.data.bad_rows, where, first, starts)
        for lo in range(0, rows.num_rows, batch_rows):  # a loop over batches, not rows
            yield batch_of(rows, lo, min(lo + batch_rows, rows.num_rows))


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
    loss: str = LOGISTIC.name,
    batch_rows: int = 65536,
    log_every_s: float = 10.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(keys, counts, info)``: every key of the days (bias excluded) and its occurrences
    (float64), from the batches training builds; ``info`` has days, rows, skipped rows
    and per-day rows and new keys. ``days``: a SPEC, a list, or None for the training days of
    the default split (every day but the last; the only day when there is one). Progress
    over the rows: a bar on a terminal, else a log line every ``log_every_s`` seconds."""
    chosen = _resolve_days(root, days, data)
    d = _resolve_data(root, chosen[0], data)
    cfg = Config(data=d, model=ModelConfig(kind="lr", loss=loss))
    batch_rows = batch_rows or d.batch_size or AUTO_MAX_BATCH  # as a worker resolves it
    schemas: dict[str, FeatureSchema] = {}
    table = KeyTable()
    counts = np.zeros(1 << 16, dtype=np.float64)
    rows = skipped = 0
    per_day = []
    units = {day: work_units(root, day, d.rows_per_unit) for day in chosen}
    total = sum(u.rows for us in units.values() for u in us)
    with Progress("stats", total, log_every_s, logger=log) as progress:
        for day in chosen:
            day_rows, before = 0, len(table)
            for unit in units[day]:
                if unit.file not in schemas:
                    schemas[unit.file] = resolve_schema(
                        d, open_parquet(unit.file).schema_arrow, unit.file
                    )
                for batch in _unit_batches(unit, schemas[unit.file], cfg, batch_rows):
                    slots = table.insert(batch.uniq)
                    if len(table) > counts.size:
                        counts = np.concatenate(
                            [counts, np.zeros(max(len(table), 2 * counts.size) - counts.size)]
                        )
                    counts[slots] += batch.counts  # uniq is unique: no repeated slot
                    day_rows += batch.size
                    skipped += batch.skipped
                    progress.add(batch.size + batch.skipped)
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
    loss: str = LOGISTIC.name,
    batch_rows: int = 65536,
    log_every_s: float = 10.0,
) -> dict[str, Any]:
    """Counts, the log2 histogram, levels and implied parameter counts (module docstring).

    ``data`` configures how rows become keys (layout, columns, numeric transform, bad rows) as
    in training; None reads the defaults (and the ``hashed`` layout when the files have a
    ``keys`` list column). ``log_every_s``: progress lines when stderr is not a terminal (a
    bar when it is). The result is JSON-serializable.
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
    keys, n, info = count_features(root, days, data, loss, batch_rows, log_every_s)

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

"""Criteo display-advertising TSV -> day partitions (``psfm convert criteo``).

Lines are ``label \\t I1..I13 \\t C1..C26`` (no header; integers possibly negative or empty,
categoricals 8-hex-digit strings or empty); output columns ``label`` int8, ``I1..I13`` float32
(numeric; null = missing), ``C1..C26`` string (categorical; null = missing). Days: the 1TB
dataset's ``day_N`` files (``day_N.gz``, ...) become ``day=N``; Kaggle's ``train.txt`` (with
``days = D``) is split into D equal ranges of lines: line ``i`` (0-based, over all inputs read
as one sequence) goes to day ``d`` when ``floor(d N / D) <= i < floor((d + 1) N / D)``, ``N``
the line count (counted by a fast streaming pass unless ``rows`` is given). Reading, checks and
output: :mod:`psfm.datasets.convert_base`.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from psfm.datasets.convert_base import (
    ConvertProgress,
    Result,
    Transform,
    add_common_options,
    common_kwargs,
    convert_input,
    convert_options,
    finish,
    format_summary,
    input_paths,
    input_sink,
    prepare_out,
    require_rows,
)
from psfm.datasets.textcheck import RowErrors, binary_label, empty_lines, parse_ints
from psfm.datasets.textin import TextStream, count_lines
from psfm.errors import ConfigError

__all__ = ["CRITEO_COLUMNS", "convert_criteo", "add_cli"]

log = logging.getLogger("psfm.datasets.convert")

CRITEO_COLUMNS: tuple[str, ...] = (
    ("label",) + tuple(f"I{i}" for i in range(1, 14)) + tuple(f"C{i}" for i in range(1, 27))
)
_DAY_FILE_RE = re.compile(r"^day_(\d+)(\..*)?$")


def _criteo_transform(day: str | None, bounds: np.ndarray, offset: int) -> Transform:
    """Rows of one input to ``day`` or, when ``day`` is None, to the day of their line: the
    ``i``-th line over all inputs (``offset`` lines before this one) goes to
    ``#{d : bounds[d] <= i} - 1``."""
    int_rule = "integer fields must be integers (optionally negative) or empty"

    def transform(
        batch: pa.RecordBatch, errs: RowErrors, lines: Callable[[], np.ndarray]
    ) -> tuple[pa.Table, Any]:
        empty_lines(batch, errs, "label")
        cols: dict[str, pa.Array] = {"label": binary_label(batch.column(0), errs, "label")}
        for i in range(1, 14):
            name = CRITEO_COLUMNS[i]
            cols[name] = pc.cast(parse_ints(batch.column(i), errs, name, int_rule), pa.float32())
        for i in range(14, 40):
            cols[CRITEO_COLUMNS[i]] = batch.column(i)
        if day is not None:
            return pa.table(cols), day
        return pa.table(cols), np.searchsorted(bounds, offset + lines() - 1, side="right") - 1

    return transform


def convert_criteo(
    inputs: Sequence[str],
    out: str,
    days: int | None = None,
    rows: int | None = None,
    bad_rows: str = "fail",
    row_group_rows: int = 131072,
    rows_per_file: int = 1 << 22,
    use_threads: bool = False,
    block_size: int = 1 << 22,
    compression: str = "snappy",
    overwrite: bool = False,
    log_every_s: float = 10.0,
) -> dict[str, Any]:
    """Criteo TSV (``label, I1..I13, C1..C26``) -> ``out/day=D/*.parquet``.

    Without ``days`` every input must be named ``day_N`` (``day_N.gz``, ...; the 1TB dataset)
    and becomes ``day=N``. With ``days = D`` the inputs (Kaggle's ``train.txt``; several are
    read as one concatenated sequence) are split into D equal ranges of lines, ``day=0`` ..
    ``day=D-1``; ``rows`` (the total line count) skips the counting pass. Returns the summary:
    ``rows``, ``skipped`` (and ``skipped_by_rule``), ``days`` (rows per day), ``files``,
    ``seconds``, ``rows_per_s``, ``lines``.
    """
    opts = convert_options(
        "convert_criteo",
        bad_rows,
        row_group_rows,
        rows_per_file,
        use_threads,
        block_size,
        compression,
        log_every_s,
    )
    inputs = input_paths("convert_criteo", inputs)
    if days is None:
        names = [_DAY_FILE_RE.match(Path(p).name) for p in inputs]
        unnamed = [p for p, m in zip(inputs, names) if m is None]
        if unnamed:
            raise ConfigError(
                "The 'days' parameter of convert_criteo must be given (e.g. days=7 for Kaggle's "
                "train.txt) unless every input is named day_N like the 1TB dataset's files. "
                f"Got days=None with {', '.join(repr(p) for p in unnamed[:3])}."
            )
        day_of: list[str | None] = [str(int(m.group(1))) for m in names if m is not None]
    elif not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise ConfigError(
            f"The 'days' parameter of convert_criteo must be an int >= 1. Got {days!r} instead."
        )
    t0 = time.perf_counter()
    root = prepare_out(out, overwrite)
    extra: dict[str, Any] = {}
    bounds = np.zeros(0, np.int64)
    if days is not None:
        if rows is None:
            t1 = time.perf_counter()
            rows = sum(count_lines(p) for p in inputs)
            log.info("counted %d lines in %.1fs", rows, time.perf_counter() - t1)
        if not isinstance(rows, int) or rows < days:
            raise ConfigError(
                f"The 'rows' parameter of convert_criteo must be an int >= days "
                f"({days}). Got {rows!r} instead."
            )
        bounds = (np.arange(days, dtype=np.int64) * rows) // days
        extra = {"split": {"days": days, "lines": rows, "first_line_of_day": (bounds + 1).tolist()}}
    results: list[Result] = []
    offset = 0  # lines of the previous inputs (split mode)
    rule = "criteo lines have 40 tab-separated fields (label, I1..I13, C1..C26)"
    with ConvertProgress(inputs, opts) as progress:
        for idx, path in enumerate(inputs):
            transform = _criteo_transform(day_of[idx] if days is None else None, bounds, offset)

            def make(threads: bool, path: str = path) -> TextStream:
                return TextStream(
                    path,
                    CRITEO_COLUMNS,
                    delimiter="\t",
                    header_lines=0,
                    block_size=opts.block_size,
                    use_threads=threads,
                    columns_rule=rule,
                )

            res = convert_input(make, input_sink(root, idx, opts), transform, opts, progress)
            require_rows(path, res, opts)
            results.append(res)
            offset += res.lines
    if days is not None and offset != rows:
        log.warning(
            "the inputs have %d lines, not rows=%d: the day ranges were computed for "
            "%d lines (lines past them went to the last day)",
            offset,
            rows,
            rows,
        )
    return finish("criteo", root, inputs, results, t0, extra)


# ----------------------------------------------------------------------------- command line


def _cmd_criteo(args: argparse.Namespace) -> int:
    s = convert_criteo(args.inputs, args.out, days=args.days, rows=args.rows, **common_kwargs(args))
    print(format_summary(s))
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``criteo`` on the subparsers of ``psfm convert``."""
    c = subparsers.add_parser(
        "criteo", help="Criteo TSV: the 1TB day_N files or Kaggle's train.txt"
    )
    c.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="day_0 .. day_23 (optionally .gz), or train.txt with --days",
    )
    c.add_argument(
        "--days", type=int, help="split the inputs into this many equal line ranges (Kaggle: 7)"
    )
    c.add_argument("--rows", type=int, help="total line count, if known (skips counting)")
    add_common_options(c)
    c.set_defaults(func=_cmd_criteo)

"""Avazu CSV -> day partitions (``psfm convert avazu``).

The header is ``id,click,hour,C1,banner_pos,site_id,...,C21``. ``hour`` is ``YYMMDDHH``: the
partition is ``day=YYMMDD`` (an integer, e.g. ``day=141021``) and the hour of day (0-23) and
weekday (Monday = 0) become categorical int8 columns ``hour_of_day`` and ``weekday``; ``click``
becomes ``label`` (required: Avazu's test file has none and is refused), ``id`` and the raw
``hour`` are dropped, every other column is kept as a categorical column: int64 for
:data:`AVAZU_INT_COLUMNS`, string for the rest. Reading, checks and output:
:mod:`psfm.datasets.convert_base`.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Sequence
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
from psfm.datasets.textcheck import RowErrors, as_mask, binary_label, empty_lines, parse_ints
from psfm.datasets.textin import TextStream, read_header
from psfm.errors import DataError

__all__ = ["AVAZU_INT_COLUMNS", "convert_avazu", "add_cli"]

AVAZU_INT_COLUMNS: tuple[str, ...] = (
    "C1",
    "banner_pos",
    "device_type",
    "device_conn_type",
    *(f"C{i}" for i in range(14, 22)),
)


def _avazu_transform(out_names: list[str]) -> Transform:
    def transform(
        batch: pa.RecordBatch, errs: RowErrors, lines: Callable[[], np.ndarray]
    ) -> tuple[pa.Table, Any]:
        empty_lines(batch, errs, "click")
        label = binary_label(batch.column("click"), errs, "click")
        hour = batch.column("hour")
        ts = pc.strptime(hour, format="%y%m%d%H", unit="s", error_is_null=True)
        ok = as_mask(pc.and_(pc.is_valid(ts), pc.equal(pc.utf8_length(hour), 8)))
        errs.add(~ok, "hour", hour, "hour must be YYMMDDHH (a valid date and hour)")
        hour_int = pc.cast(pc.if_else(pa.array(ok), hour, "0"), pa.int64()).to_numpy(
            zero_copy_only=False
        )
        cols: dict[str, pa.Array] = {
            "label": label,
            "hour_of_day": pa.array((hour_int % 100).astype(np.int8)),
            "weekday": pc.cast(pc.fill_null(pc.day_of_week(ts), 0), pa.int8()),
        }
        for name in out_names:
            arr = batch.column(name)
            if name in AVAZU_INT_COLUMNS:
                arr = parse_ints(arr, errs, name, "integer fields must be integers")
            cols[name] = arr
        return pa.table(cols), hour_int // 100

    return transform


def convert_avazu(
    inputs: Sequence[str],
    out: str,
    bad_rows: str = "fail",
    row_group_rows: int = 131072,
    rows_per_file: int = 1 << 22,
    use_threads: bool = False,
    block_size: int = 1 << 22,
    compression: str = "snappy",
    overwrite: bool = False,
    log_every_s: float = 10.0,
) -> dict[str, Any]:
    """Avazu CSV (header ``id,click,hour,...``) -> ``out/day=YYMMDD/*.parquet``.

    Rows go to the day of their ``hour`` (any order); ``click`` -> ``label`` (a file without
    ``click``, like Avazu's test file, is refused), ``hour_of_day`` and ``weekday`` added,
    ``id`` and ``hour`` dropped, the rest kept (int64 for :data:`AVAZU_INT_COLUMNS`, string
    otherwise). Returns the summary (see :func:`convert_criteo`).
    """
    opts = convert_options(
        "convert_avazu",
        bad_rows,
        row_group_rows,
        rows_per_file,
        use_threads,
        block_size,
        compression,
        log_every_s,
    )
    inputs = input_paths("convert_avazu", inputs)
    headers = [read_header(p) for p in inputs]
    for path, names in zip(inputs, headers):
        for need, why in (
            (
                "click",
                "the label; Avazu's test file has no 'click' and cannot be "
                "used for training or evaluation",
            ),
            ("hour", "it gives the day partition"),
        ):
            if need not in names:
                raise DataError(
                    f"File '{path}', line 1 (header), column '{need}': missing (header: "
                    f"{','.join(names)[:300]}) breaks the rule: Avazu data needs '{need}' "
                    f"({why})."
                )
        dup = [c for c, k in Counter(names).items() if k > 1]
        if dup:
            raise DataError(f"File '{path}', line 1 (header): columns {dup} appear twice.")
    t0 = time.perf_counter()
    root = prepare_out(out, overwrite)
    results: list[Result] = []
    with ConvertProgress(inputs, opts) as progress:
        for idx, (path, names) in enumerate(zip(inputs, headers)):
            keep = [c for c in names if c not in ("id", "click", "hour")]
            if keep and idx and keep != [c for c in headers[0] if c not in ("id", "click", "hour")]:
                raise DataError(
                    f"File '{path}', line 1 (header): columns differ from those of '{inputs[0]}'."
                )
            rule = f"avazu lines have {len(names)} comma-separated fields (as the header)"

            def make(
                threads: bool,
                path: str = path,
                names: list[str] = names,
                keep: list[str] = keep,
                rule: str = rule,
            ) -> TextStream:
                return TextStream(
                    path,
                    names,
                    delimiter=",",
                    header_lines=1,
                    block_size=opts.block_size,
                    use_threads=threads,
                    include=["click", "hour", *keep],
                    quote=True,
                    columns_rule=rule,
                )

            sink = input_sink(root, idx, opts)
            res = convert_input(make, sink, _avazu_transform(keep), opts, progress)
            require_rows(path, res, opts)
            results.append(res)
    return finish("avazu", root, inputs, results, t0, {})


# ----------------------------------------------------------------------------- command line


def _cmd_avazu(args: argparse.Namespace) -> int:
    s = convert_avazu(args.inputs, args.out, **common_kwargs(args))
    print(format_summary(s))
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``avazu`` on the subparsers of ``psfm convert``."""
    a = subparsers.add_parser("avazu", help="Avazu CSV (id,click,hour,...): days from 'hour'")
    a.add_argument("inputs", nargs="+", metavar="INPUT", help="train (optionally .gz)")
    add_common_options(a)
    a.set_defaults(func=_cmd_avazu)

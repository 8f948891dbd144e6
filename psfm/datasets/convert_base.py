"""The converters' shared driver: options, the read-check-write loop of one input, the output
folder, the summary and the common command-line options.

A converter (:mod:`psfm.datasets.convert_criteo`, :mod:`psfm.datasets.convert_avazu`,
:mod:`psfm.datasets.convert_libfm`) supplies a :class:`~psfm.datasets.textin.TextStream`
factory and a :data:`Transform` (a block of text columns -> a table of output columns and the
day of each row, bad rows marked in a :class:`~psfm.datasets.textcheck.RowErrors`);
:func:`convert_input` runs them, raising the first bad line's error (file, line, column, value,
rule) under ``bad_rows="fail"`` or counting and dropping bad lines per rule under ``"skip"``,
and writes the rows through a :class:`~psfm.datasets.daywriter.DaySink`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from psfm.data.parquet import day_sort_key  # the reader's day order, for the summary
from psfm.datasets.daywriter import DaySink, WriteOptions
from psfm.datasets.textcheck import RowErrors
from psfm.datasets.textin import BAD_ROWS_HINT, NeedSerial, TextStream
from psfm.errors import ConfigError, DataError
from psfm.progress import Progress

__all__ = [
    "ConvertOptions",
    "ConvertProgress",
    "Result",
    "Transform",
    "convert_options",
    "input_sink",
    "convert_input",
    "require_rows",
    "prepare_out",
    "finish",
    "format_summary",
    "add_common_options",
    "common_kwargs",
]

log = logging.getLogger("psfm.datasets.convert")


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ConvertOptions:
    """How a converter reads (``bad_rows``, ``use_threads``, ``block_size``) and writes."""

    bad_rows: str
    use_threads: bool
    block_size: int
    write: WriteOptions
    log_every_s: float = 10.0  # progress lines when stderr is not a terminal


def convert_options(
    fn: str,
    bad_rows: str,
    row_group_rows: int,
    rows_per_file: int,
    use_threads: bool,
    block_size: int,
    compression: str,
    log_every_s: float = 10.0,
) -> ConvertOptions:
    """Checked options of converter ``fn``; ``rows_per_file`` is rounded up to whole row
    groups. Strings and lists get no Parquet statistics (long ids make large footers)."""

    def fail(name: str, rule: str, value: Any) -> None:
        raise ConfigError(f"The '{name}' parameter of {fn} must be {rule}. Got {value!r} instead.")

    if bad_rows not in ("fail", "skip"):
        fail("bad_rows", "one of 'fail', 'skip'", bad_rows)
    for name, v in (
        ("row_group_rows", row_group_rows),
        ("rows_per_file", rows_per_file),
        ("block_size", block_size),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            fail(name, "an int >= 1", v)
    number = isinstance(log_every_s, (int, float)) and not isinstance(log_every_s, bool)
    if not number or not log_every_s > 0:
        fail("log_every_s", "a number > 0", log_every_s)
    # whole row groups per file
    per_file = -(-rows_per_file // row_group_rows) * row_group_rows
    write = WriteOptions(row_group_rows, per_file, compression, string_statistics=False)
    return ConvertOptions(bad_rows, bool(use_threads), block_size, write, float(log_every_s))


def input_paths(fn: str, inputs: Sequence[Any]) -> list[str]:
    """Converter ``fn``'s input files as strings; at least one is required."""
    paths = [str(p) for p in inputs]
    if not paths:
        raise ConfigError(
            f"The 'inputs' parameter of {fn} must name at least one file. Got [] instead."
        )
    return paths


def input_sink(root: Path, index: int, opts: ConvertOptions) -> DaySink:
    """The day writers of input ``index``: ``root/day=D/part-IIII-KKKKK.parquet``."""
    return DaySink(root, f"part-{index:04d}", opts.write)


# ----------------------------------------------------------------------------- driver


@dataclass
class Result:
    """What one input gave: good rows per day, files written, skipped lines per rule and
    physical lines read."""

    rows: dict[str, int]
    files: list[str]
    skipped: Counter[str]
    lines: int


class ConvertProgress:
    """A conversion's progress over its inputs' bytes on disk (compressed bytes of a compressed
    input: a steady measure of the reading still ahead), with the good rows written so far: a
    :class:`~psfm.progress.Progress` bar on a terminal, else a log line every
    ``opts.log_every_s`` seconds. Use as a context manager (the bar's line ends on exit)."""

    def __init__(self, paths: Sequence[str], opts: ConvertOptions) -> None:
        total = sum(os.path.getsize(p) if os.path.isfile(p) else 0 for p in paths)
        self.rows = 0
        self.bar = Progress(
            "convert",
            total,
            opts.log_every_s,
            detail=lambda: f", {self.rows:,} rows",
            unit="bytes",
            logger=log,
            end_at_total=False,  # the reader reads ahead: the bytes end before the rows
        )

    def add(self, nbytes: int, rows: int) -> None:
        self.rows += rows
        self.bar.add(nbytes)

    def mark(self) -> tuple[int, float]:
        return self.rows, self.bar.rows

    def rewind(self, mark: tuple[int, float]) -> None:
        """Back to ``mark``: an input is converted again (the serial parser)."""
        self.add(int(mark[1] - self.bar.rows), mark[0] - self.rows)

    def __enter__(self) -> ConvertProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


Transform = Callable[
    [pa.RecordBatch, RowErrors, Callable[[], np.ndarray]], tuple[pa.Table, "str | np.ndarray"]
]


def _run_stream(
    stream: TextStream,
    sink: DaySink,
    transform: Transform,
    bad_rows: str,
    progress: ConvertProgress | None,
) -> Result:
    """Read, validate, transform and write one input; bad rows raise or are skipped."""
    skipped: Counter[str] = Counter()
    fail = bad_rows == "fail"
    seen = 0  # bytes of the input counted in ``progress``
    for batch, g0 in stream.batches():
        n = batch.num_rows
        cache: list[np.ndarray] = []

        def lines(g0: int = g0, n: int = n, cache: list[np.ndarray] = cache) -> np.ndarray:
            if not cache:
                cache.append(stream.lines(np.arange(g0, g0 + n)))
            return cache[0]

        errs = RowErrors(n)
        table, day = transform(batch, errs, lines)
        last = int(stream.lines(np.array([g0 + n - 1]))[0]) if n else None
        k, first_invalid = stream.take_invalid(last)
        if fail and (k or errs.first is not None):
            row_line = int(lines()[errs.first[0]]) if errs.first is not None else None
            if row_line is None or (k and first_invalid < row_line):
                raise stream.invalid_error(first_invalid)
            assert errs.first is not None
            _, col, value, rule = errs.first
            raise DataError(
                f"File '{stream.path}', line {row_line}, column '{col}': value {value!r} breaks "
                f"the rule: {rule} ({int(errs.bad.sum())} bad lines in this block; "
                f"{BAD_ROWS_HINT})."
            )
        skipped["wrong number of fields"] += k
        skipped.update(errs.by_rule)
        if errs.bad.any():
            keep = ~errs.bad
            table = table.filter(pa.array(keep))
            if isinstance(day, np.ndarray):
                day = day[keep]
        if isinstance(day, str):
            sink.write(day, table)
        else:
            sink.write_by_day(day, table)
        if progress is not None:
            progress.add(stream.bytes_read - seen, table.num_rows)
            seen = stream.bytes_read
    if progress is not None:
        progress.add(stream.bytes_read - seen, 0)
    k, first_invalid = stream.take_invalid(None)
    if fail and k:
        raise stream.invalid_error(first_invalid)
    skipped["wrong number of fields"] += k
    sink.close()
    return Result(sink.rows(), sink.files(), +skipped, stream.physical_lines)


def convert_input(
    make: Callable[[bool], TextStream],
    sink: DaySink,
    transform: Transform,
    opts: ConvertOptions,
    progress: ConvertProgress | None = None,
) -> Result:
    """One input; with threads, a malformed line restarts it on the serial parser.
    ``progress`` counts its bytes and rows."""
    stream = make(opts.use_threads)
    mark = progress.mark() if progress is not None else (0, 0.0)
    try:
        return _run_stream(stream, sink, transform, opts.bad_rows, progress)
    except NeedSerial:
        sink.abort()
        if progress is not None:
            progress.rewind(mark)
        log.info(
            "File '%s' has malformed lines: converting it again with the serial parser "
            "for exact line numbers.",
            stream.path,
        )
        try:
            return _run_stream(make(False), sink, transform, opts.bad_rows, progress)
        except BaseException:
            sink.abort()
            raise
    except BaseException:
        sink.abort()
        raise


def require_rows(path: str, res: Result, opts: ConvertOptions, empty_ok: bool = True) -> None:
    """An input left with no good rows is an error, not an empty success: every line skipped
    (a wrong format or wrong options, not bad data), or -- unless ``empty_ok`` -- no lines."""
    if sum(res.rows.values()):
        return
    if res.skipped:
        why = "; ".join(f"{k}: {v:,}" for k, v in res.skipped.items())
        raise DataError(
            f"File '{path}': all {sum(res.skipped.values()):,} data lines were skipped as bad "
            f"(bad_rows={opts.bad_rows!r}; by rule: {why}), so it gives no rows. Check the "
            "file's format against the converter's (run without --bad-rows skip to see the "
            "first bad line)."
        )
    if not empty_ok:
        raise DataError(
            f"File '{path}' has no data lines; every input must give rows (an "
            "empty input would leave its day out and move the test day)."
        )


def prepare_out(out: str, overwrite: bool) -> Path:
    """The output root, created; existing ``day=*`` partitions are an error unless
    ``overwrite`` (then they are removed)."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise DataError(f"Output '{out}' exists and is not a directory.")
    old = sorted(p for p in root.glob("day=*")) if root.exists() else []
    if old:
        if not overwrite:
            raise DataError(
                f"Output '{out}' already has day partitions ({', '.join(p.name for p in old[:5])}"
                f"{', ...' if len(old) > 5 else ''}); choose an empty directory or pass "
                "overwrite=True (--overwrite) to replace them."
            )
        for p in old:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    root.mkdir(parents=True, exist_ok=True)
    return root


def finish(
    fmt: str,
    root: Path,
    inputs: Sequence[str],
    results: list[Result],
    t0: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The summary of a conversion (also written to ``root/_convert.json``): rows and skipped
    lines (per rule) over all inputs, rows per day in the reader's day order, files, time."""
    rows: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    files: list[str] = []
    for r in results:
        rows.update(r.rows)
        skipped.update(r.skipped)
        files += r.files
    seconds = time.perf_counter() - t0
    total = sum(rows.values())
    summary = {
        "format": fmt,
        "out": str(root),
        "inputs": [str(i) for i in inputs],
        "rows": total,
        "skipped": sum(skipped.values()),
        "skipped_by_rule": dict(skipped),
        "lines": sum(r.lines for r in results),
        "days": {d: rows[d] for d in sorted(rows, key=day_sort_key)},
        "files": sorted(files),
        "seconds": seconds,
        "rows_per_s": total / seconds if seconds > 0 else 0.0,
        **extra,
    }
    (root / "_convert.json").write_text(json.dumps(summary, indent=1) + "\n")
    log.info(
        "converted %d rows (%d skipped) of %s into %d days under %s in %.1fs",
        total,
        summary["skipped"],
        fmt,
        len(rows),
        root,
        seconds,
    )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short human summary of a converter's result."""
    s = summary
    lines = [
        f"converted {s['rows']:,} rows of {s['format']} into {len(s['days'])} day(s) under "
        f"{s['out']} ({len(s['files'])} files) in {s['seconds']:.1f}s "
        f"({s['rows_per_s']:,.0f} rows/s)",
    ]
    if s["skipped"]:
        why = ", ".join(f"{k}: {v:,}" for k, v in s["skipped_by_rule"].items())
        lines.append(f"skipped    {s['skipped']:,} bad lines ({why})")
    for d, n in s["days"].items():
        lines.append(f"  day={d:<8} {n:>14,} rows")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The options every ``psfm convert FORMAT`` takes (:func:`common_kwargs` reads them)."""
    p.add_argument("--out", required=True, help="output root (gets day=... partitions)")
    p.add_argument(
        "--bad-rows",
        choices=["fail", "skip"],
        default="fail",
        help="malformed lines: stop with an error (default) or count and skip",
    )
    p.add_argument(
        "--row-group-rows",
        type=int,
        default=131072,
        help="rows per Parquet row group (default 131072)",
    )
    p.add_argument(
        "--rows-per-file", type=int, default=1 << 22, help="rows per Parquet file (default 4194304)"
    )
    p.add_argument(
        "--threads", action="store_true", help="multi-threaded CSV parsing (default: one thread)"
    )
    p.add_argument(
        "--block-size", type=int, default=1 << 22, help="bytes per CSV block (default 4 MiB)"
    )
    p.add_argument("--compression", default="snappy", help="Parquet codec (default snappy)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing day=... partitions under --out"
    )


def common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The converter keyword arguments of :func:`add_common_options`' options."""
    return {
        "bad_rows": args.bad_rows,
        "row_group_rows": args.row_group_rows,
        "rows_per_file": args.rows_per_file,
        "use_threads": args.threads,
        "block_size": args.block_size,
        "compression": args.compression,
        "overwrite": args.overwrite,
    }

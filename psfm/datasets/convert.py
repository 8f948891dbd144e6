"""Converters from public CTR datasets' text formats to psfm's day-partitioned Parquet.

Three layouts, each streamed with ``pyarrow.csv.open_csv`` (bounded memory: one block of
``block_size`` bytes plus one row group per open day) and validated vectorized, block by block:

* **criteo** — the Criteo display-advertising TSV, ``label \\t I1..I13 \\t C1..C26`` (no
  header; integers possibly negative or empty, categoricals 8-hex-digit strings or empty).
  Either the 1TB dataset's ``day_0 .. day_23`` files (``day_N`` or ``day_N.gz`` becomes
  partition ``day=N``) or Kaggle's ``train.txt`` (7 days in time order, no day column) split
  into ``days`` equal ranges of lines: line ``i`` (0-based) goes to day ``d`` when
  ``floor(d N / D) <= i < floor((d + 1) N / D)``, ``N`` the line count (counted by a fast
  streaming pass unless ``rows`` is given), partitions ``day=0 .. day=D-1``. Output columns:
  ``label`` int8, ``I1..I13`` float32 (numeric; null = missing), ``C1..C26`` string
  (categorical; null = missing).
* **avazu** — the Avazu CSV with header ``id,click,hour,C1,banner_pos,site_id,...,C21``.
  ``hour`` is ``YYMMDDHH``: the partition is ``day=YYMMDD`` (an integer, e.g. ``day=141021``)
  and the hour of day (0-23) and weekday (Monday = 0) become categorical int8 columns
  ``hour_of_day`` and ``weekday``; ``click`` becomes ``label`` (required: Avazu's test file has
  none and is refused), ``id`` and the raw ``hour`` are dropped, every other column is kept as
  a categorical column: int64 for the integer columns (``C1``, ``banner_pos``,
  ``device_type``, ``device_conn_type``, ``C14..C21``), string for the rest.
* **libfm** — libFM/libSVM text, ``label idx[:val] idx[:val] ...`` (a bare ``idx`` has value
  1; labels -1/0/1, -1 -> 0), in :mod:`psfm.datasets.convert_libfm` (which uses this module's
  reader and writers; its public names are re-exported here). Any number of inputs: the
  ``i``-th (0-based) becomes ``day=i+1`` unless ``days`` gives one day per input (several may
  share one); ``train``, ``valid``, ``test`` stay ``day=1, 2, 3``. Output: the pre-hashed
  layout (``label`` int8, ``keys: list<uint64>`` = ``field_keys("libfm", idx)``, ``values:
  list<float32>``) or, with a field map (``idx field`` per line) or field ranges
  (``"user:0-999,item:1000-1999"``), the columns layout: ``label`` and one categorical int64
  column per field holding the row's index of that field (null when none; values must be 1).

Output: ``OUT/day=D/part-IIII-KKKKK.parquet`` (``IIII`` the input file's index, ``KKKKK`` the
file's sequence number), row groups of exactly ``row_group_rows`` rows (the last of a file may
be shorter) and at most ``rows_per_file`` rows per file (rounded up to whole row groups). A file
is written as ``_part-....inprogress`` (names starting with ``_`` are ignored by the reader) and
renamed when complete; ``OUT/_convert.json`` records the summary.

Bad input: a line with the wrong number of fields, an integer field that is not an integer, a
label that is not 0/1, ... raises a :class:`~psfm.errors.DataError` naming the file, the
1-based line (the header counts as line 1), the column, the value and the rule; with
``bad_rows="skip"`` such lines are dropped and counted per rule, but an input left with no good
rows (every line skipped; for libFM also an input with no lines) is a ``DataError`` naming the
file and the skipped lines per rule, not an empty success. Line numbers come from the
serial CSV parser (``InvalidRow.number``) and, for good rows, from the count of rows delivered:
the ``g``-th good row (0-based) is on line ``L = h + g + 1 + #{j : c_j <= g}`` where ``h`` is
the number of header lines and ``c_j = b_j - 1 - j - h`` the number of good rows before the
``j``-th malformed line ``b_j``. The threaded parser (``use_threads=True``) does not number
malformed lines, so an input in which it meets one is converted again serially.
"""

from __future__ import annotations

import argparse
import bisect
import importlib
import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from psfm.errors import ConfigError, DataError

if TYPE_CHECKING:  # at run time from __getattr__ below: convert_libfm imports this module
    from psfm.datasets.convert_libfm import LIBFM_FIELD, convert_libfm, convert_libfm_files

__all__ = [
    "CRITEO_COLUMNS",
    "AVAZU_INT_COLUMNS",
    "LIBFM_FIELD",
    "convert_criteo",
    "convert_avazu",
    "convert_libfm",
    "convert_libfm_files",
    "count_lines",
    "format_summary",
    "add_cli",
]

log = logging.getLogger(__name__)

CRITEO_COLUMNS: tuple[str, ...] = (
    ("label",) + tuple(f"I{i}" for i in range(1, 14)) + tuple(f"C{i}" for i in range(1, 27))
)
AVAZU_INT_COLUMNS: tuple[str, ...] = (
    "C1",
    "banner_pos",
    "device_type",
    "device_conn_type",
    *(f"C{i}" for i in range(14, 22)),
)
_LIBFM_NAMES = ("LIBFM_FIELD", "convert_libfm", "convert_libfm_files")

_INT_RE = r"^-?[0-9]{1,18}$"  # what pc.cast(string -> int64) accepts, without overflow
_FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_UNIT_SEP = "\x1f"  # libfm lines are read as one CSV column with this (absent) delimiter
_DAY_FILE_RE = re.compile(r"^day_(\d+)(\..*)?$")
_HINT = 'set bad_rows="skip" (--bad-rows skip) to count and skip such lines'


def __getattr__(name: str) -> Any:
    """The libFM names, from :mod:`psfm.datasets.convert_libfm` on first use (that module imports
    this one, so a plain import here would be circular)."""
    if name in _LIBFM_NAMES:
        return getattr(importlib.import_module("psfm.datasets.convert_libfm"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Options:
    bad_rows: str
    row_group_rows: int
    rows_per_file: int
    use_threads: bool
    block_size: int
    compression: str


def _options(
    fn: str,
    bad_rows: str,
    row_group_rows: int,
    rows_per_file: int,
    use_threads: bool,
    block_size: int,
    compression: str,
) -> _Options:
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
    # whole row groups per file
    per_file = -(-rows_per_file // row_group_rows) * row_group_rows
    return _Options(bad_rows, row_group_rows, per_file, bool(use_threads), block_size, compression)


class _NeedSerial(Exception):
    """The threaded parser met a malformed line it cannot number: convert again serially."""


# ----------------------------------------------------------------------------- input


def _open_input(path: str) -> pa.NativeFile:
    """A decompressing stream (gzip, bz2, zstd, lz4 by file extension)."""
    try:
        return pa.input_stream(path, compression="detect")
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"File '{path}' cannot be opened: {e}") from e


def count_lines(path: str, chunk: int = 1 << 24) -> int:
    """Lines in a text file (a last line without a newline counts), streamed in ``chunk``-byte
    pieces through the decompressor; about 1-2 GB/s on an uncompressed file."""
    n, last = 0, b"\n"
    with _open_input(path) as f:
        while True:
            buf = f.read(chunk)
            if not buf:
                break
            n += buf.count(b"\n")
            last = buf[-1:]
    return n + (last != b"\n")


def _read_header(path: str) -> list[str]:
    """The first line of a CSV file, split on commas (quotes and CR stripped)."""
    head = b""
    with _open_input(path) as f:
        while b"\n" not in head:
            buf = f.read(1 << 16)
            if not buf:
                break
            head += buf
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    return [c.strip().strip('"') for c in line.split(",")] if line else []


class _TextStream:
    """One delimited text file as record batches of good rows, with exact line numbers."""

    def __init__(
        self,
        path: str,
        names: Sequence[str],
        *,
        delimiter: str,
        header_lines: int,
        opts: _Options,
        use_threads: bool,
        include: Sequence[str] | None = None,
        quote: bool = False,
        strings_can_be_null: bool = True,
        columns_rule: str = "",
    ) -> None:
        self.path = path
        self.names = list(names)
        self.delimiter = delimiter
        self.header_lines = header_lines
        self.opts = opts
        self.use_threads = use_threads
        self.include = list(include) if include is not None else self.names
        self.quote = quote
        self.strings_can_be_null = strings_can_be_null
        self.columns_rule = columns_rule
        self.rows = 0  # good rows delivered so far
        self._invalid: list[int] = []  # physical line numbers of malformed lines, ascending
        self._j0 = 0  # malformed lines before the current batch (see lines())
        self._texts: dict[int, tuple[int, str]] = {}  # first few: line -> (fields, text)
        self._unknown = 0  # malformed lines the threaded parser did not number
        self._reported = 0  # malformed lines already handed to the converter

    def _on_invalid(self, row: Any) -> str:
        if row.number is None or row.number < 0:
            self._unknown += 1
        else:
            self._invalid.append(int(row.number))
            if len(self._texts) < 16:
                self._texts[int(row.number)] = (int(row.actual_columns), str(row.text))
        return "skip"

    @property
    def physical_lines(self) -> int:
        """Lines consumed so far: header, good rows and malformed lines."""
        return self.header_lines + self.rows + len(self._invalid)

    def batches(self) -> Iterator[tuple[pa.RecordBatch, int]]:
        """``(batch, g0)``: a batch of good rows and the index of its first good row."""
        read = pcsv.ReadOptions(
            column_names=self.names,
            skip_rows=self.header_lines,
            block_size=self.opts.block_size,
            use_threads=self.use_threads,
        )
        parse = pcsv.ParseOptions(
            delimiter=self.delimiter,
            quote_char='"' if self.quote else False,
            double_quote=self.quote,
            escape_char=False,
            newlines_in_values=False,
            ignore_empty_lines=False,
            invalid_row_handler=self._on_invalid,
        )
        convert = pcsv.ConvertOptions(
            column_types={c: pa.string() for c in self.names},
            include_columns=self.include,
            strings_can_be_null=self.strings_can_be_null,
            null_values=[""],
            quoted_strings_can_be_null=False,
        )
        stream = _open_input(self.path)
        try:
            try:
                reader = pcsv.open_csv(
                    stream, read_options=read, parse_options=parse, convert_options=convert
                )
            except pa.ArrowInvalid as e:
                if "Empty CSV file" in str(e):
                    log.warning("File '%s' has no data lines.", self.path)
                    return
                raise DataError(f"File '{self.path}' cannot be read as text: {e}") from e
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except (pa.ArrowInvalid, OSError) as e:
                    raise DataError(
                        f"File '{self.path}', after line {self.physical_lines}: cannot be read: {e}"
                    ) from e
                if self._unknown:
                    raise _NeedSerial()
                g0 = self.rows
                self.rows += batch.num_rows
                self._advance(g0)
                yield batch, g0
            if self._unknown:
                raise _NeedSerial()
        finally:
            stream.close()

    def _advance(self, g0: int) -> None:
        """Skip the malformed lines with fewer than ``g0`` good rows before them (each once):
        they add a constant to the line number of every later good row."""
        h = self.header_lines
        while self._j0 < len(self._invalid) and self._invalid[self._j0] - 1 - self._j0 - h < g0:
            self._j0 += 1

    def lines(self, g: np.ndarray) -> np.ndarray:
        """1-based physical line numbers of good rows ``g`` (0-based, none before the current
        batch): ``L = h + g + 1 + #{j : c_j <= g}``, ``c_j = b_j - 1 - j - h``."""
        h, j0 = self.header_lines, self._j0
        b = np.asarray(self._invalid[j0:], dtype=np.int64)
        c = b - 1 - (j0 + np.arange(b.size)) - h
        g = np.asarray(g, dtype=np.int64)
        return g + 1 + h + j0 + np.searchsorted(c, g, side="right")

    def take_invalid(self, upto: int | None) -> tuple[int, int]:
        """Malformed lines ``<= upto`` (all with None) not yet taken: (count, first line)."""
        end = (
            len(self._invalid)
            if upto is None
            else bisect.bisect_right(self._invalid, upto, lo=self._reported)
        )
        k = end - self._reported
        first = self._invalid[self._reported] if k else 0
        self._reported = end
        return k, first

    def invalid_error(self, line: int) -> DataError:
        fields, text = self._texts.get(line, (-1, ""))
        shown = text if len(text) <= 200 else text[:200] + "..."
        got = f"{fields} fields" if fields >= 0 else "a malformed line"
        return DataError(
            f"File '{self.path}', line {line}: {got} ({shown!r}) breaks the rule: "
            f"{self.columns_rule}; {_HINT}."
        )


# ----------------------------------------------------------------------------- validation


class _RowErrors:
    """Rows of one batch that break a rule; remembers the first (by row) for the message."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.first: tuple[int, str, Any, str] | None = None  # (row, column, value, rule)
        self.by_rule: Counter[str] = Counter()

    def add(
        self, bad: np.ndarray, column: str, values: pa.Array | pa.ChunkedArray, rule: str
    ) -> None:
        if not bad.any():
            return
        rows = np.flatnonzero(bad)
        self.note(int(rows[0]), column, values[int(rows[0])].as_py(), rule, bad)

    def note(self, row: int, column: str, value: Any, rule: str, bad: np.ndarray) -> None:
        """Record rows ``bad`` (bool mask) under ``rule``; ``row`` is the first of them."""
        if self.first is None or row < self.first[0]:
            self.first = (row, column, value, rule)
        self.by_rule[rule] += int((bad & ~self.bad).sum())
        self.bad |= bad


def _mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls -> False."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def _empty_lines(batch: pa.RecordBatch, errs: _RowErrors, label: str) -> None:
    """Empty lines (the parser gives them as rows of nulls) are bad rows of their own rule;
    only looked for when the label has nulls."""
    col = batch.column(label)
    if not col.null_count:
        return
    empty = _mask(pc.is_null(col))
    for arr in batch.columns:
        empty &= _mask(pc.is_null(arr))
    errs.add(empty, label, col, "lines must not be empty (empty line)")


def _binary_label(arr: pa.Array, errs: _RowErrors, column: str) -> pa.Array:
    """``"0"``/``"1"`` strings -> int8; anything else is a bad row."""
    one = pc.equal(arr, "1")
    ok = pc.or_(pc.equal(arr, "0"), one)
    errs.add(~_mask(ok), column, arr, "labels must be 0 or 1")
    return pc.cast(pc.fill_null(one, False), pa.int8())


def _ints(arr: pa.Array, errs: _RowErrors, column: str, rule: str) -> pa.Array:
    """Strings -> int64 (null stays null). One vectorized cast; only when it fails are the
    values matched against ``-?[0-9]{1,18}`` to find the bad rows (which become null)."""
    try:
        return pc.cast(arr, pa.int64())
    except pa.ArrowInvalid:
        pass
    ok = pc.match_substring_regex(arr, _INT_RE)
    bad = ~_mask(ok) & ~_mask(pc.is_null(arr))
    errs.add(bad, column, arr, rule)
    return pc.cast(pc.if_else(ok, arr, pa.scalar(None, pa.string())), pa.int64())


def _floats(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (float64 values, bad mask): bad = not a number or not finite."""
    try:
        x = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        ok = pc.match_substring_regex(arr, _FLOAT_RE)
        x = pc.cast(pc.if_else(ok, arr, "nan"), pa.float64()).to_numpy(zero_copy_only=False)
    return x, ~np.isfinite(x)


# ----------------------------------------------------------------------------- output


class _DayWriter:
    """Row groups of exactly ``row_group_rows`` rows into files of ``rows_per_file`` rows."""

    def __init__(self, folder: Path, prefix: str, opts: _Options) -> None:
        self.folder = folder
        self.prefix = prefix
        self.opts = opts
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.tmp: Path | None = None
        self.file_rows = 0
        self.part = 0
        self.rows = 0
        self.files: list[Path] = []

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if self.pending_rows >= self.opts.row_group_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        rg = self.opts.row_group_rows
        table = pa.concat_tables(self.pending) if len(self.pending) > 1 else self.pending[0]
        pos = 0
        while table.num_rows - pos >= rg or (final and pos < table.num_rows):
            take = min(rg, table.num_rows - pos)
            self._write(table.slice(pos, take))
            pos += take
        rest = table.slice(pos)
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows

    def _write(self, part: pa.Table) -> None:
        if self.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.tmp = self.folder / f"_{self._name()}.inprogress"
            stats = [
                f.name
                for f in part.schema
                if not (pa.types.is_string(f.type) or pa.types.is_list(f.type))
            ]
            self.writer = pq.ParquetWriter(
                self.tmp,
                part.schema,
                compression=self.opts.compression,
                write_statistics=stats or False,
            )
        self.writer.write_table(part, row_group_size=part.num_rows)
        self.file_rows += part.num_rows
        if self.file_rows >= self.opts.rows_per_file:
            self._close_file()

    def _name(self) -> str:
        return f"{self.prefix}-{self.part:05d}.parquet"

    def _close_file(self) -> None:
        assert self.writer is not None and self.tmp is not None
        self.writer.close()
        final = self.folder / self._name()
        self.tmp.replace(final)
        self.files.append(final)
        self.writer, self.tmp, self.file_rows = None, None, 0
        self.part += 1

    def close(self) -> None:
        if self.pending_rows:
            self._flush(final=True)
        if self.writer is not None:
            self._close_file()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for f in [*self.files, *([self.tmp] if self.tmp else [])]:
            f.unlink(missing_ok=True)
        self.files, self.writer, self.tmp = [], None, None


class _Sink:
    """The day writers of one input file."""

    def __init__(self, out: Path, index: int, opts: _Options) -> None:
        self.out = out
        self.prefix = f"part-{index:04d}"
        self.opts = opts
        self.days: dict[str, _DayWriter] = {}

    def write(self, day: str, table: pa.Table) -> None:
        w = self.days.get(day)
        if w is None:
            w = self.days[day] = _DayWriter(self.out / f"day={day}", self.prefix, self.opts)
        w.add(table)

    def write_by_day(self, days: np.ndarray, table: pa.Table) -> None:
        """Rows to their days (``days``: one integer per row)."""
        if days.size == 0:
            return
        lo, hi = int(days.min()), int(days.max())
        if lo == hi:
            self.write(str(lo), table)
            return
        for d in np.unique(days):
            self.write(str(int(d)), table.filter(pa.array(days == d)))

    def close(self) -> None:
        for w in self.days.values():
            w.close()

    def abort(self) -> None:
        for w in self.days.values():
            w.abort()
        self.days = {}

    def rows(self) -> dict[str, int]:
        return {d: w.rows for d, w in self.days.items()}

    def files(self) -> list[str]:
        return [str(f) for w in self.days.values() for f in w.files]


# ----------------------------------------------------------------------------- driver


@dataclass
class _Result:
    rows: dict[str, int]
    files: list[str]
    skipped: Counter[str]
    lines: int


Transform = Callable[
    [pa.RecordBatch, _RowErrors, Callable[[], np.ndarray]], tuple[pa.Table, "str | np.ndarray"]
]


def _run_stream(stream: _TextStream, sink: _Sink, transform: Transform) -> _Result:
    """Read, validate, transform and write one input; bad rows raise or are skipped."""
    skipped: Counter[str] = Counter()
    fail = stream.opts.bad_rows == "fail"
    for batch, g0 in stream.batches():
        n = batch.num_rows
        cache: list[np.ndarray] = []

        def lines(g0: int = g0, n: int = n, cache: list[np.ndarray] = cache) -> np.ndarray:
            if not cache:
                cache.append(stream.lines(np.arange(g0, g0 + n)))
            return cache[0]

        errs = _RowErrors(n)
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
                f"the rule: {rule} ({int(errs.bad.sum())} bad lines in this block; {_HINT})."
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
    k, first_invalid = stream.take_invalid(None)
    if fail and k:
        raise stream.invalid_error(first_invalid)
    skipped["wrong number of fields"] += k
    sink.close()
    return _Result(sink.rows(), sink.files(), +skipped, stream.physical_lines)


def _convert_input(
    make: Callable[[bool], _TextStream], sink: _Sink, transform: Transform
) -> _Result:
    """One input; with threads, a malformed line restarts it on the serial parser."""
    stream = make(sink.opts.use_threads)
    try:
        return _run_stream(stream, sink, transform)
    except _NeedSerial:
        sink.abort()
        log.info(
            "File '%s' has malformed lines: converting it again with the serial parser "
            "for exact line numbers.",
            stream.path,
        )
        try:
            return _run_stream(make(False), sink, transform)
        except BaseException:
            sink.abort()
            raise
    except BaseException:
        sink.abort()
        raise


def _require_rows(path: str, res: _Result, opts: _Options, empty_ok: bool = True) -> None:
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


def _prepare_out(out: str, overwrite: bool) -> Path:
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


def _day_key(day: str) -> tuple[int, int | str]:
    return (0, int(day)) if re.fullmatch(r"-?\d+", day) else (1, day)


def _finish(
    fmt: str,
    root: Path,
    inputs: Sequence[str],
    results: list[_Result],
    t0: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
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
        "days": {d: rows[d] for d in sorted(rows, key=_day_key)},
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


# ----------------------------------------------------------------------------- criteo


def _criteo_transform(day: str | None, bounds: np.ndarray, offset: int) -> Transform:
    """Rows of one input to ``day`` or, when ``day`` is None, to the day of their line: the
    ``i``-th line over all inputs (``offset`` lines before this one) goes to
    ``#{d : bounds[d] <= i} - 1``."""
    int_rule = "integer fields must be integers (optionally negative) or empty"

    def transform(
        batch: pa.RecordBatch, errs: _RowErrors, lines: Callable[[], np.ndarray]
    ) -> tuple[pa.Table, Any]:
        _empty_lines(batch, errs, "label")
        cols: dict[str, pa.Array] = {"label": _binary_label(batch.column(0), errs, "label")}
        for i in range(1, 14):
            name = CRITEO_COLUMNS[i]
            cols[name] = pc.cast(_ints(batch.column(i), errs, name, int_rule), pa.float32())
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
) -> dict[str, Any]:
    """Criteo TSV (``label, I1..I13, C1..C26``) -> ``out/day=D/*.parquet``.

    Without ``days`` every input must be named ``day_N`` (``day_N.gz``, ...; the 1TB dataset)
    and becomes ``day=N``. With ``days = D`` the inputs (Kaggle's ``train.txt``; several are
    read as one concatenated sequence) are split into D equal ranges of lines, ``day=0`` ..
    ``day=D-1``; ``rows`` (the total line count) skips the counting pass. Returns the summary:
    ``rows``, ``skipped`` (and ``skipped_by_rule``), ``days`` (rows per day), ``files``,
    ``seconds``, ``rows_per_s``, ``lines``.
    """
    opts = _options(
        "convert_criteo",
        bad_rows,
        row_group_rows,
        rows_per_file,
        use_threads,
        block_size,
        compression,
    )
    inputs = [str(p) for p in inputs]
    if not inputs:
        raise ConfigError(
            "The 'inputs' parameter of convert_criteo must name at least one file. Got [] instead."
        )
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
    root = _prepare_out(out, overwrite)
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
    results: list[_Result] = []
    offset = 0  # lines of the previous inputs (split mode)
    rule = "criteo lines have 40 tab-separated fields (label, I1..I13, C1..C26)"
    for idx, path in enumerate(inputs):
        transform = _criteo_transform(day_of[idx] if days is None else None, bounds, offset)

        def make(threads: bool, path: str = path) -> _TextStream:
            return _TextStream(
                path,
                CRITEO_COLUMNS,
                delimiter="\t",
                header_lines=0,
                opts=opts,
                use_threads=threads,
                columns_rule=rule,
            )

        res = _convert_input(make, _Sink(root, idx, opts), transform)
        _require_rows(path, res, opts)
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
    return _finish("criteo", root, inputs, results, t0, extra)


# ----------------------------------------------------------------------------- avazu


def _avazu_transform(out_names: list[str]) -> Transform:
    def transform(
        batch: pa.RecordBatch, errs: _RowErrors, lines: Callable[[], np.ndarray]
    ) -> tuple[pa.Table, Any]:
        _empty_lines(batch, errs, "click")
        label = _binary_label(batch.column("click"), errs, "click")
        hour = batch.column("hour")
        ts = pc.strptime(hour, format="%y%m%d%H", unit="s", error_is_null=True)
        ok = _mask(pc.and_(pc.is_valid(ts), pc.equal(pc.utf8_length(hour), 8)))
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
                arr = _ints(arr, errs, name, "integer fields must be integers")
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
) -> dict[str, Any]:
    """Avazu CSV (header ``id,click,hour,...``) -> ``out/day=YYMMDD/*.parquet``.

    Rows go to the day of their ``hour`` (any order); ``click`` -> ``label`` (a file without
    ``click``, like Avazu's test file, is refused), ``hour_of_day`` and ``weekday`` added,
    ``id`` and ``hour`` dropped, the rest kept (int64 for :data:`AVAZU_INT_COLUMNS`, string
    otherwise). Returns the summary (see :func:`convert_criteo`).
    """
    opts = _options(
        "convert_avazu",
        bad_rows,
        row_group_rows,
        rows_per_file,
        use_threads,
        block_size,
        compression,
    )
    inputs = [str(p) for p in inputs]
    if not inputs:
        raise ConfigError(
            "The 'inputs' parameter of convert_avazu must name at least one file. Got [] instead."
        )
    headers = [_read_header(p) for p in inputs]
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
    root = _prepare_out(out, overwrite)
    results = []
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
        ) -> _TextStream:
            return _TextStream(
                path,
                names,
                delimiter=",",
                header_lines=1,
                opts=opts,
                use_threads=threads,
                include=["click", "hour", *keep],
                quote=True,
                columns_rule=rule,
            )

        res = _convert_input(make, _Sink(root, idx, opts), _avazu_transform(keep))
        _require_rows(path, res, opts)
        results.append(res)
    return _finish("avazu", root, inputs, results, t0, {})


# ----------------------------------------------------------------------------- command line


def _common_options(p: argparse.ArgumentParser) -> None:
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


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "bad_rows": args.bad_rows,
        "row_group_rows": args.row_group_rows,
        "rows_per_file": args.rows_per_file,
        "use_threads": args.threads,
        "block_size": args.block_size,
        "compression": args.compression,
        "overwrite": args.overwrite,
    }


def _cmd_criteo(args: argparse.Namespace) -> int:
    s = convert_criteo(
        args.inputs, args.out, days=args.days, rows=args.rows, **_common_kwargs(args)
    )
    print(format_summary(s))
    return 0


def _cmd_avazu(args: argparse.Namespace) -> int:
    s = convert_avazu(args.inputs, args.out, **_common_kwargs(args))
    print(format_summary(s))
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``convert criteo|avazu|libfm`` on an ``argparse`` subparsers object; each
    command's ``func(args)`` returns an exit code."""
    p = subparsers.add_parser(
        "convert",
        help="convert Criteo / Avazu / libFM text logs into day-partitioned Parquet",
        description="Convert public CTR datasets into psfm's day=... Parquet layout.",
    )
    sub = p.add_subparsers(dest="convert_format", required=True, metavar="FORMAT")

    c = sub.add_parser("criteo", help="Criteo TSV: the 1TB day_N files or Kaggle's train.txt")
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
    _common_options(c)
    c.set_defaults(func=_cmd_criteo)

    a = sub.add_parser("avazu", help="Avazu CSV (id,click,hour,...): days from 'hour'")
    a.add_argument("inputs", nargs="+", metavar="INPUT", help="train (optionally .gz)")
    _common_options(a)
    a.set_defaults(func=_cmd_avazu)

    importlib.import_module("psfm.datasets.convert_libfm").add_cli(sub)  # convert libfm

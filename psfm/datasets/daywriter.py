"""The one Parquet writer of the offline tools: day partitions ``ROOT/day=D/PREFIX-KKKKK.parquet``.

:func:`psfm.datasets.gen.generate` and every converter (:mod:`psfm.datasets.convert`) write
through :class:`DayWriter` (one day) or :class:`DaySink` (the days of one input). The layout is
what :mod:`psfm.data.parquet` reads:

* a day's folder is ``day=D`` (:func:`day_dir`); a file is ``PREFIX-KKKKK.parquet`` with
  ``KKKKK`` its sequence number within the writer (``part-00000.parquet`` for the generator,
  ``part-IIII-KKKKK.parquet`` for converter input ``IIII``);
* a file holds ``rows_per_file`` rows (the last file of a day fewer) in row groups of exactly
  ``row_group_rows`` rows, only the last row group of a file shorter: a stream of tables cut
  at file boundaries every ``rows_per_file`` rows and at row-group boundaries every
  ``row_group_rows`` rows within a file, whatever the sizes of the tables handed in;
* a file is written as ``_PREFIX-KKKKK.parquet.inprogress`` (the reader skips names starting
  with ``_``) and renamed when complete, so a reader never sees half a file;
* values are dictionary-encoded; ``compression`` is any Parquet codec; min/max statistics are
  written for every column, or (``string_statistics=False``) only for columns that are neither
  strings nor lists (long categorical strings make large, useless footers).

Example::

    w = DayWriter(day_dir(root, 3), "part", WriteOptions(row_group_rows=4, rows_per_file=10))
    w.add(table_of_25_rows)
    [p.name for p in w.close()]  # row groups 4+4+2, 4+4+2, 4+1
    # -> ['part-00000.parquet', 'part-00001.parquet', 'part-00002.parquet']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["WriteOptions", "DayWriter", "DaySink", "day_dir"]


def day_dir(root: Path, day: str | int) -> Path:
    """The folder of partition ``day`` under ``root``."""
    return root / f"day={day}"


@dataclass(frozen=True)
class WriteOptions:
    """How a :class:`DayWriter` cuts and encodes its files (module docstring)."""

    row_group_rows: int
    rows_per_file: int
    compression: str = "none"
    string_statistics: bool = True


class DayWriter:
    """A stream of tables of one day into ``folder/PREFIX-KKKKK.parquet`` files."""

    def __init__(
        self, folder: Path, prefix: str, opts: WriteOptions, schema: pa.Schema | None = None
    ) -> None:
        self.folder = folder
        self.prefix = prefix
        self.opts = opts
        self.schema = schema  # None: the schema of the first table
        self.pending: list[pa.Table] = []  # rows of the current file not yet written
        self.pending_rows = 0
        self.file_rows = 0  # rows handed to the current file (written or pending)
        self.writer: pq.ParquetWriter | None = None
        self.tmp: Path | None = None
        self.part = 0
        self.rows = 0
        self.files: list[Path] = []

    def add(self, table: pa.Table) -> None:
        """Append rows (any number: they are buffered to whole row groups)."""
        self.rows += table.num_rows
        per_file, rg = self.opts.rows_per_file, self.opts.row_group_rows
        while table.num_rows:
            take = min(table.num_rows, per_file - self.file_rows)
            self.pending.append(table.slice(0, take))
            self.pending_rows += take
            self.file_rows += take
            table = table.slice(take)
            if self.file_rows == per_file:
                self._close_file()
            elif self.pending_rows >= rg:
                self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write the pending rows' whole row groups (``final``: and the short rest)."""
        if not self.pending_rows:
            return
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

    def _write(self, group: pa.Table) -> None:
        """One row group into the current file (opened on first use)."""
        if self.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.tmp = self.folder / f"_{self._name()}.inprogress"
            schema = self.schema if self.schema is not None else group.schema
            stats: bool | list[str] = True
            if not self.opts.string_statistics:
                stats = [
                    f.name
                    for f in schema
                    if not (pa.types.is_string(f.type) or pa.types.is_list(f.type))
                ] or False
            self.writer = pq.ParquetWriter(
                self.tmp,
                schema,
                compression=self.opts.compression,
                use_dictionary=True,
                write_statistics=stats,
            )
        self.writer.write_table(group, row_group_size=group.num_rows)

    def _name(self) -> str:
        return f"{self.prefix}-{self.part:05d}.parquet"

    def _close_file(self) -> None:
        self._flush(final=True)
        self.file_rows = 0
        if self.writer is None:
            return
        assert self.tmp is not None
        self.writer.close()
        final = self.folder / self._name()
        self.tmp.replace(final)
        self.files.append(final)
        self.writer, self.tmp = None, None
        self.part += 1

    def close(self) -> list[Path]:
        """Write what is pending and close the last file; returns every file written."""
        self._close_file()
        return self.files

    def abort(self) -> None:
        """Remove every file of this writer (complete or in progress)."""
        if self.writer is not None:
            self.writer.close()
        for f in [*self.files, *([self.tmp] if self.tmp else [])]:
            f.unlink(missing_ok=True)
        self.files, self.writer, self.tmp = [], None, None
        self.pending, self.pending_rows, self.file_rows = [], 0, 0


class DaySink:
    """The day writers of one input: rows go to ``day_dir(root, day)/PREFIX-KKKKK.parquet``,
    one :class:`DayWriter` per day, opened on the day's first rows."""

    def __init__(self, root: Path, prefix: str, opts: WriteOptions) -> None:
        self.root = root
        self.prefix = prefix
        self.opts = opts
        self.days: dict[str, DayWriter] = {}

    def write(self, day: str, table: pa.Table) -> None:
        w = self.days.get(day)
        if w is None:
            w = self.days[day] = DayWriter(day_dir(self.root, day), self.prefix, self.opts)
        w.add(table)

    def write_by_day(self, days: np.ndarray, table: pa.Table) -> None:
        """Rows to their days (``days``: one integer per row)."""
        if days.size == 0:
            return
        lo, hi = int(days.min()), int(days.max())
        if lo == hi:
            self.write(str(lo), table)
            return
        for d in np.unique(days):  # a loop over the days of a block, not over rows
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

"""Delimited text input of the converters: decompressing streams, line counts and
:class:`TextStream`, one file as record batches of good rows with exact physical line numbers.

A file is parsed with ``pyarrow.csv.open_csv`` (every column as a string; validation is the
converters' job, :mod:`psfm.datasets.textcheck`), one block of ``block_size`` bytes at a time.
Malformed lines (a wrong number of fields) are reported by the parser's invalid-row handler
with their line number, and the line of the ``g``-th good row (0-based) is
``L = h + g + 1 + #{j : c_j <= g}``, ``h`` the header lines and ``c_j = b_j - 1 - j - h`` the
good rows before the ``j``-th malformed line ``b_j`` (:meth:`TextStream.lines`). The threaded
parser does not number malformed lines: meeting one raises :class:`NeedSerial` and the input
is converted again serially.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from psfm.errors import DataError

__all__ = [
    "BAD_ROWS_HINT",
    "UNIT_SEP",
    "NeedSerial",
    "TextStream",
    "count_lines",
    "open_input",
    "read_header",
]

log = logging.getLogger("psfm.datasets.convert")

UNIT_SEP = "\x1f"  # libfm lines are read as one CSV column with this (absent) delimiter
BAD_ROWS_HINT = 'set bad_rows="skip" (--bad-rows skip) to count and skip such lines'


class NeedSerial(Exception):
    """The threaded parser met a malformed line it cannot number: convert again serially."""


def open_input(path: str) -> pa.NativeFile:
    """A decompressing stream (gzip, bz2, zstd, lz4 by file extension)."""
    try:
        return pa.input_stream(path, compression="detect")
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"File '{path}' cannot be opened: {e}") from e


_CODECS = ((".bz2", "bz2"), (".gz", "gzip"), (".lz4", "lz4"), (".zst", "zstd"))  # as "detect"


def _open_counted(path: str) -> tuple[pa.NativeFile, pa.NativeFile]:
    """:func:`open_input`'s stream and the file under it, whose ``tell()`` is the position on
    disk (compressed bytes of a compressed file): the converters' progress."""
    codec = next((c for ext, c in _CODECS if path.endswith(ext)), None)
    try:
        raw = pa.OSFile(path)
        return (pa.CompressedInputStream(raw, codec) if codec else raw), raw
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"File '{path}' cannot be opened: {e}") from e


def count_lines(path: str, chunk: int = 1 << 24) -> int:
    """Lines in a text file (a last line without a newline counts), streamed in ``chunk``-byte
    pieces through the decompressor; about 1-2 GB/s on an uncompressed file."""
    n, last = 0, b"\n"
    with open_input(path) as f:
        while True:
            buf = f.read(chunk)
            if not buf:
                break
            n += buf.count(b"\n")
            last = buf[-1:]
    return n + (last != b"\n")


def read_header(path: str) -> list[str]:
    """The first line of a CSV file, split on commas (quotes and CR stripped)."""
    head = b""
    with open_input(path) as f:
        while b"\n" not in head:
            buf = f.read(1 << 16)
            if not buf:
                break
            head += buf
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    return [c.strip().strip('"') for c in line.split(",")] if line else []


class TextStream:
    """One delimited text file as record batches of good rows, with exact line numbers."""

    def __init__(
        self,
        path: str,
        names: Sequence[str],
        *,
        delimiter: str,
        header_lines: int,
        block_size: int,
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
        self.block_size = block_size
        self.use_threads = use_threads
        self.include = list(include) if include is not None else self.names
        self.quote = quote
        self.strings_can_be_null = strings_can_be_null
        self.columns_rule = columns_rule
        self.rows = 0  # good rows delivered so far
        self.bytes_read = 0  # bytes of the file on disk read so far (progress)
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
            block_size=self.block_size,
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
        stream, raw = _open_counted(self.path)
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
                    raise NeedSerial()
                self.bytes_read = raw.tell()
                g0 = self.rows
                self.rows += batch.num_rows
                self._advance(g0)
                yield batch, g0
            if self._unknown:
                raise NeedSerial()
            self.bytes_read = raw.tell()
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
            f"{self.columns_rule}; {BAD_ROWS_HINT}."
        )

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
  1; labels -1/0/1, -1 -> 0), in :mod:`psfm.datasets.convert_libfm`. Any number of inputs: the
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
renamed when complete; ``OUT/_convert.json`` records the summary. Progress runs over the
inputs' bytes on disk with the rows written so far
(:class:`~psfm.datasets.convert_base.ConvertProgress`): a live bar when stderr is a terminal,
else a log line every ``log_every_s`` seconds (10 by default).

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

This module is the converters' public face (their functions, re-exported, and ``psfm
convert``); the code is split by concern: :mod:`~psfm.datasets.textin` (text input and line
numbers), :mod:`~psfm.datasets.textcheck` (vectorized column checks),
:mod:`~psfm.datasets.convert_base` (options, the per-input driver, the summary),
:mod:`~psfm.datasets.daywriter` (the Parquet day writer, shared with the generator) and one
module per format: :mod:`~psfm.datasets.convert_criteo`, :mod:`~psfm.datasets.convert_avazu`,
:mod:`~psfm.datasets.convert_libfm`. All of them log to the ``psfm.datasets.convert`` logger.
"""

from __future__ import annotations

from typing import Any

from psfm.datasets import convert_avazu as _avazu
from psfm.datasets import convert_criteo as _criteo
from psfm.datasets import convert_libfm as _libfm
from psfm.datasets.convert_avazu import AVAZU_INT_COLUMNS, convert_avazu
from psfm.datasets.convert_base import format_summary
from psfm.datasets.convert_criteo import CRITEO_COLUMNS, convert_criteo
from psfm.datasets.convert_libfm import LIBFM_FIELD, convert_libfm, convert_libfm_files
from psfm.datasets.textin import count_lines

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


def add_cli(subparsers: Any) -> None:
    """Register ``convert criteo|avazu|libfm`` on an ``argparse`` subparsers object; each
    command's ``func(args)`` returns an exit code."""
    p = subparsers.add_parser(
        "convert",
        help="convert Criteo / Avazu / libFM text logs into day-partitioned Parquet",
        description="Convert public CTR datasets into psfm's day=... Parquet layout.",
    )
    sub = p.add_subparsers(dest="convert_format", required=True, metavar="FORMAT")
    _criteo.add_cli(sub)  # convert criteo
    _avazu.add_cli(sub)  # convert avazu
    _libfm.add_cli(sub)  # convert libfm

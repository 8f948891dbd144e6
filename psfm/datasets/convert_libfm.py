"""libFM / libSVM text -> psfm's day-partitioned Parquet (``psfm convert libfm``).

A line is ``label feature feature ...``, blank-separated (runs of spaces and tabs, CRLF line
ends tolerated), the label -1/0/1 (-1 -> 0; ``+1`` and ``1.0`` read as 1). A feature is
``idx:value`` or a bare ``idx`` (value 1: the RaFM authors' Frappe and MovieLens-Tag files are
``label idx idx idx``); both forms may be mixed in one line. ``idx`` is an integer >= 0 (below
2^53; ``3.0`` reads as 3) and ``value`` a number finite as a float32. The field-aware libFFM
form ``field:idx:value`` is refused. Example::

    1 3:0.5 17 204:1     ->  label 1, features (3, 0.5), (17, 1.0), (204, 1.0)
    -1 9                 ->  label 0, feature (9, 1.0)

Days: the ``i``-th input (0-based) becomes ``day=i+1`` unless ``days`` gives one day (an int
>= 0) per input; several inputs may share a day (each writes its own ``part-IIII-*`` files).
``convert_libfm(train, test, out, valid=...)`` is ``inputs = [train, valid, test]`` with the
default days, so psfm's default split (train on all days but the last) tests on the test file.

Two output layouts:

* **hashed** (no field map; ``data.layout = "hashed"``, detected from the list-typed ``keys``):
  ``label`` int8, ``keys: list<uint64>`` with ``key = field_keys("libfm", idx)``
  (:mod:`psfm.hashing`; a bare ``idx`` gives the key of ``idx:1``), ``values:
  list<float32>``.
* **columns** (with a field map): ``label`` int8 and one categorical ``int64`` column per field,
  in order of the fields' first appearance in the map, holding the row's index of that field
  (null when the row has none). psfm's reader hashes it like any categorical column,
  ``key = field_keys(field, idx)``, so ``psfm stats`` and RaFM's levels see real fields.
  Worked example with fields ``user: 0-999``, ``item: 1000-1999``::

      1 7 1003        ->  label 1, user 7,    item 1003
      0 1500          ->  label 0, user null, item 1500

  Rules (each a bad line under ``bad_rows``, error or counted skip): every index must be in the
  map (there is no catch-all field: an index the map misses is more often a wrong map than a
  feature to keep); a line has at most one index per field (a second one is an error naming
  the line and field, never silently dropped); every value must be 1 (per-field columns are
  categorical and cannot carry a value).

A field map (``field_map``, ``--field-map FILE``) has one ``idx field`` pair per line, the two
separated by blanks or a tab (so a two-column TSV works as is); empty lines and lines starting
with ``#`` are ignored; an index listed twice must name the same field. libFM's own ``--meta``
file (line ``i`` holds the group of feature ``i - 1``) becomes one with
``awk '{print NR-1, "g"$1}' meta.txt``. ``field_ranges`` (``--field-ranges``) is the compact
form: ``"user:0-999,item:1000-1999,tag:2000"`` (inclusive ranges or single indices, one field
may have several, ranges must not overlap). A field name is a column name: letters, digits and
``_``, not starting with a digit, and not ``label``, ``keys`` or ``values``.

Reading, validation and output are those of :mod:`psfm.datasets.convert_base` (streamed in
blocks, validated vectorized: no Python loop over lines or tokens; the parsing is
:mod:`psfm.datasets.libfm_parse`, the field maps :mod:`psfm.datasets.libfm_fields`); a bad
line names the file, the 1-based line, the feature (``feature j`` is the j-th blank-separated
token after the label), its text and the rule. An input with no good rows -- no lines at
all, or every line skipped under ``bad_rows="skip"`` -- is a :class:`~psfm.errors.DataError`
naming the file and the skipped lines per rule: a missing day would silently move the test
day.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from psfm.datasets.convert_base import (
    ConvertProgress,
    Result,
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
from psfm.datasets.libfm_fields import FieldMap, parse_field_ranges, read_field_map
from psfm.datasets.libfm_parse import LIBFM_FIELD, libfm_transform
from psfm.datasets.textin import UNIT_SEP, TextStream
from psfm.errors import ConfigError

__all__ = [
    "LIBFM_FIELD",
    "FieldMap",
    "read_field_map",
    "parse_field_ranges",
    "convert_libfm",
    "convert_libfm_files",
    "add_cli",
]


def _day_labels(days: Sequence[int] | None, n: int) -> list[str]:
    if days is None:
        return [str(i + 1) for i in range(n)]
    days = list(days)
    if len(days) != n or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in days
    ):
        raise ConfigError(
            f"The 'days' parameter of convert_libfm must be one int >= 0 per "
            f"input ({n} inputs). Got {days!r} instead."
        )
    return [str(int(d)) for d in days]


def convert_libfm_files(
    inputs: Sequence[str],
    out: str,
    days: Sequence[int] | None = None,
    field_map: str | None = None,
    field_ranges: str | None = None,
    bad_rows: str = "fail",
    row_group_rows: int = 131072,
    rows_per_file: int = 1 << 22,
    use_threads: bool = False,
    block_size: int = 1 << 22,
    compression: str = "snappy",
    overwrite: bool = False,
    log_every_s: float = 10.0,
) -> dict[str, Any]:
    """libFM text files -> ``out/day=D/*.parquet``: input ``i`` to ``day=i+1`` or ``days[i]``;
    the hashed layout, or per-field columns with ``field_map`` (a file) or ``field_ranges``
    (module docstring). Returns the summary of :func:`psfm.datasets.convert.convert_criteo` with
    ``input_days`` (one per input), ``day_of_input``, ``layout``, ``key`` and, with a map,
    ``fields`` and ``field_map``."""
    opts = convert_options(
        "convert_libfm",
        bad_rows,
        row_group_rows,
        rows_per_file,
        use_threads,
        block_size,
        compression,
        log_every_s,
    )
    inputs = input_paths("convert_libfm", inputs)
    labels = _day_labels(days, len(inputs))
    if field_map is not None and field_ranges is not None:
        raise ConfigError(
            "The 'field_ranges' parameter of convert_libfm must be None when "
            f"'field_map' is given. Got {field_ranges!r} instead."
        )
    fmap = (
        read_field_map(field_map)
        if field_map is not None
        else parse_field_ranges(field_ranges)
        if field_ranges is not None
        else None
    )
    t0 = time.perf_counter()
    root = prepare_out(out, overwrite)
    results: list[Result] = []
    rule = "a libFM line is 'label idx[:value] ...' and holds no \\x1f byte"
    with ConvertProgress(inputs, opts) as progress:
        for i, (path, day) in enumerate(zip(inputs, labels)):

            def make(threads: bool, path: str = path) -> TextStream:
                return TextStream(
                    path,
                    ["line"],
                    delimiter=UNIT_SEP,
                    header_lines=0,
                    block_size=opts.block_size,
                    use_threads=threads,
                    strings_can_be_null=False,
                    columns_rule=rule,
                )

            sink = input_sink(root, i, opts)
            res = convert_input(make, sink, libfm_transform(day, fmap), opts, progress)
            require_rows(path, res, opts, empty_ok=False)
            results.append(res)
    extra: dict[str, Any] = {"input_days": labels, "day_of_input": dict(zip(inputs, labels))}
    if fmap is None:
        extra.update(layout="hashed", key=f"field_keys({LIBFM_FIELD!r}, idx)")
    else:
        extra.update(
            layout="columns",
            key="field_keys(field, idx)",
            fields=list(fmap.names),
            field_map=fmap.source,
        )
    return finish("libfm", root, inputs, results, t0, extra)


def convert_libfm(
    train: str,
    test: str,
    out: str,
    valid: str | None = None,
    bad_rows: str = "fail",
    row_group_rows: int = 131072,
    rows_per_file: int = 1 << 22,
    use_threads: bool = False,
    block_size: int = 1 << 22,
    compression: str = "snappy",
    overwrite: bool = False,
    field_map: str | None = None,
    field_ranges: str | None = None,
    log_every_s: float = 10.0,
) -> dict[str, Any]:
    """``train`` -> ``day=1``, ``valid`` -> ``day=2``, ``test`` -> the last day (``day=3``, or
    ``day=2`` without ``valid``): :func:`convert_libfm_files` on ``[train, valid, test]``."""
    inputs = [str(train)] + ([str(valid)] if valid else []) + [str(test)]
    return convert_libfm_files(
        inputs,
        out,
        field_map=field_map,
        field_ranges=field_ranges,
        bad_rows=bad_rows,
        row_group_rows=row_group_rows,
        rows_per_file=rows_per_file,
        use_threads=use_threads,
        block_size=block_size,
        compression=compression,
        overwrite=overwrite,
        log_every_s=log_every_s,
    )


# ----------------------------------------------------------------------------- command line


def _days_arg(text: str) -> list[int]:
    try:
        days = [int(d) for d in text.split(",")]
    except ValueError:
        days = [-1]
    if any(d < 0 for d in days):
        raise argparse.ArgumentTypeError(
            f"--days must be comma-separated integers >= 0, one per input; got {text!r}"
        )
    return days


def _cmd(args: argparse.Namespace) -> int:
    legacy = [args.train, args.valid, args.test]
    if any(legacy):
        if args.inputs or not (args.train and args.test):
            raise ConfigError(
                "psfm convert libfm takes either INPUT files or --train and --test (with an "
                f"optional --valid). Got INPUT={args.inputs}, --train={args.train!r}, "
                f"--valid={args.valid!r}, --test={args.test!r}."
            )
        inputs = [p for p in legacy if p]
    elif args.inputs:
        inputs = args.inputs
    else:
        raise ConfigError("psfm convert libfm needs INPUT files (or --train and --test).")
    s = convert_libfm_files(
        inputs,
        args.out,
        days=args.days,
        field_map=args.field_map,
        field_ranges=args.field_ranges,
        **common_kwargs(args),
    )
    print(format_summary(s))
    if s["layout"] == "hashed":
        print(f'train with: psfm train --data {args.out} --set data.layout="hashed"')
    else:
        print(f"fields: {', '.join(s['fields'])} (categorical int64 columns)")
        print(
            f"train with: psfm train --data {args.out}   (per-field stats: psfm stats "
            f"--data {args.out})"
        )
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``libfm`` on the subparsers of ``psfm convert``."""
    f = subparsers.add_parser(
        "libfm",
        help="libFM/libSVM text -> hashed keys/values, or per-field columns with a map",
        description="libFM/libSVM text ('label idx[:value] ...'; a bare idx has value 1) -> "
        "day=... Parquet. The i-th INPUT becomes day=i+1 unless --days says "
        "otherwise; --train/--valid/--test are days 1/2/3.",
    )
    f.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="libFM files in day order (optionally .gz): the i-th becomes day=i+1",
    )
    f.add_argument(
        "--days",
        type=_days_arg,
        metavar="D,D,...",
        help="one day per INPUT, e.g. 1,1,2,3 (several files may share a day)",
    )
    f.add_argument("--train", help="training file (day=1); instead of INPUT")
    f.add_argument("--valid", help="validation file (day=2)")
    f.add_argument("--test", help="test file (the last day: 3, or 2 without --valid)")
    m = f.add_mutually_exclusive_group()
    m.add_argument(
        "--field-map",
        metavar="FILE",
        help="one 'idx field' pair per line (blank- or tab-separated; '#' comments): "
        "write one categorical int64 column per field instead of hashed keys; "
        "every index must be mapped, at most one per field and line, values 1",
    )
    m.add_argument(
        "--field-ranges",
        metavar="SPEC",
        help="the field map as ranges, e.g. 'user:0-999,item:1000-1999,tag:2000'",
    )
    add_common_options(f)
    f.set_defaults(func=_cmd)

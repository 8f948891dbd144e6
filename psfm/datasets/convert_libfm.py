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

Reading, validation and output are those of :mod:`psfm.datasets.convert` (streamed in blocks,
validated vectorized: no Python loop over lines or tokens); a bad line names the file, the
1-based line, the feature (``feature j`` is the j-th blank-separated token after the label),
its text and the rule. An input with no good rows -- no lines at all, or every line skipped
under ``bad_rows="skip"`` -- is a :class:`~psfm.errors.DataError` naming the file and the
skipped lines per rule: a missing day would silently move the test day.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from psfm.datasets.convert import (
    _UNIT_SEP,
    Transform,
    _common_kwargs,
    _common_options,
    _convert_input,
    _finish,
    _floats,
    _open_input,
    _options,
    _prepare_out,
    _require_rows,
    _RowErrors,
    _Sink,
    _TextStream,
    format_summary,
)
from psfm.errors import ConfigError, DataError
from psfm.hashing import field_keys

__all__ = [
    "LIBFM_FIELD",
    "FieldMap",
    "read_field_map",
    "parse_field_ranges",
    "convert_libfm",
    "convert_libfm_files",
    "add_cli",
]

LIBFM_FIELD = "libfm"  # the field name whose salt hashes a libFM feature index (hashed layout)

_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BLANKS = re.compile(r"[ \t\n\v\f\r]+")  # what pc.ascii_split_whitespace splits on
_RESERVED = ("label", "keys", "values")
_MAX_IDX = 2**53  # indices are parsed as float64: exact below this
_F32_MAX = float(np.finfo(np.float32).max)
_FIELD_RULE = (
    "a field name is a column name (letters, digits and '_', not starting with a "
    f"digit) and not one of {', '.join(_RESERVED)}"
)


# ----------------------------------------------------------------------------- field maps


@dataclass(frozen=True, eq=False)  # arrays: compared by identity
class FieldMap:
    """Feature index -> field: the sorted, disjoint inclusive ranges ``[lo[k], hi[k]]`` belong
    to ``names[fid[k]]`` (a field map file gives one-index ranges)."""

    names: tuple[str, ...]
    lo: np.ndarray  # (R,) int64, ascending
    hi: np.ndarray  # (R,) int64, hi[k] < lo[k + 1]
    fid: np.ndarray  # (R,) int64 into names
    source: str

    def lookup(self, idx: np.ndarray) -> np.ndarray:
        """The field number of every index, -1 where the map has none."""
        k = np.searchsorted(self.lo, idx, side="right") - 1
        kk = np.maximum(k, 0)
        hit = (k >= 0) & (idx <= self.hi[kk])
        return np.where(hit, self.fid[kk], -1)


def _check_names(names: Sequence[str], where: str) -> None:
    for name in names:
        if not _FIELD_RE.match(name) or name in _RESERVED:
            raise DataError(f"{where}: field name {name!r} breaks the rule: {_FIELD_RULE}.")


def read_field_map(path: str) -> FieldMap:
    """A field map file (module docstring), read and checked vectorized."""
    with _open_input(str(path)) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"Field map '{path}' is not UTF-8 text: {e}.") from e
    lines = pa.array(text.split("\n"), pa.string())
    s = pc.ascii_trim_whitespace(lines)
    keep = ~(
        pc.equal(pc.utf8_length(s), 0).to_numpy(zero_copy_only=False)
        | pc.starts_with(s, "#").to_numpy(zero_copy_only=False)
    )
    line_no = np.flatnonzero(keep) + 1
    s = s.filter(pa.array(keep))
    if len(s) == 0:
        raise DataError(f"Field map '{path}' has no 'idx field' lines.")
    tok = pc.ascii_split_whitespace(s)
    two = pc.list_value_length(tok).to_numpy(zero_copy_only=False) == 2
    idx_s = pc.list_element(tok.filter(pa.array(two)), 0)
    ok_idx = np.zeros(len(s), dtype=bool)
    ok_idx[two] = pc.match_substring_regex(idx_s, r"^[0-9]{1,16}$").to_numpy(zero_copy_only=False)
    if not ok_idx.all():
        k = int(np.flatnonzero(~ok_idx)[0])
        raise DataError(
            f"Field map '{path}', line {line_no[k]}: {s[k].as_py()[:200]!r} breaks the rule: a "
            "field-map line is 'idx field' (blank- or tab-separated, idx an integer >= 0 below "
            "2^53; '#' starts a comment line)."
        )
    idx = pc.cast(pc.list_element(tok, 0), pa.int64()).to_numpy(zero_copy_only=False)
    enc = pc.dictionary_encode(pc.list_element(tok, 1))  # fields in order of first appearance
    names = tuple(enc.dictionary.to_pylist())
    _check_names(names, f"Field map '{path}'")
    fid = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    big = idx >= _MAX_IDX
    if big.any():
        k = int(np.flatnonzero(big)[0])
        raise DataError(
            f"Field map '{path}', line {line_no[k]}: index {idx[k]} breaks the rule: "
            "indices must be below 2^53."
        )
    order = np.argsort(idx, kind="stable")
    idx, fid, line_no = idx[order], fid[order], line_no[order]
    same = idx[1:] == idx[:-1]
    clash = same & (fid[1:] != fid[:-1])
    if clash.any():
        k = int(np.flatnonzero(clash)[0])
        raise DataError(
            f"Field map '{path}', lines {line_no[k]} and {line_no[k + 1]}: index {idx[k]} is "
            f"given to fields {names[fid[k]]!r} and {names[fid[k + 1]]!r}; an index belongs to "
            "one field."
        )
    first = np.concatenate([[True], ~same])
    return FieldMap(names, idx[first], idx[first], fid[first], str(path))


def parse_field_ranges(spec: str) -> FieldMap:
    """``"user:0-999,item:1000-1999,tag:2000"`` -> :class:`FieldMap` (a short CLI spec)."""

    def fail(rule: str) -> ConfigError:
        return ConfigError(
            f"The 'field_ranges' parameter of convert_libfm must be {rule}. Got {spec!r} instead."
        )

    names: list[str] = []
    rows: list[tuple[int, int, int]] = []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        m = re.fullmatch(r"([^:\s]+)\s*:\s*([0-9]{1,16})(?:\s*-\s*([0-9]{1,16}))?", part)
        if m is None:
            raise fail(f"comma-separated 'field:lo-hi' or 'field:idx' entries (not {part!r})")
        name, lo = m.group(1), int(m.group(2))
        hi = int(m.group(3)) if m.group(3) is not None else lo
        if not _FIELD_RE.match(name) or name in _RESERVED:
            raise fail(f"made of valid field names ({name!r} is not: {_FIELD_RULE})")
        if hi < lo or hi >= _MAX_IDX:
            raise fail(f"made of ranges lo <= hi < 2^53 (not {part!r})")
        if name not in names:
            names.append(name)
        rows.append((lo, hi, names.index(name)))
    if not rows:
        raise fail("at least one 'field:lo-hi' entry")
    arr = np.array(sorted(rows), dtype=np.int64)  # (R, 3) lo, hi, fid
    over = arr[1:, 0] <= arr[:-1, 1]
    if over.any():
        k = int(np.flatnonzero(over)[0])
        a, b = arr[k], arr[k + 1]
        raise fail(
            f"made of disjoint ranges ({names[a[2]]}:{a[0]}-{a[1]} and "
            f"{names[b[2]]}:{b[0]}-{b[1]} overlap)"
        )
    return FieldMap(
        tuple(names), arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), f"field_ranges={spec!r}"
    )


# ----------------------------------------------------------------------------- parsing


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets relative to the first string) of a ``string`` array, zero-copy."""
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1 + arr.offset)
    offsets = offsets[arr.offset :].astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    data = (
        np.frombuffer(arr.buffers()[2], dtype=np.uint8, count=end)[start:]
        if end
        else (np.zeros(0, np.uint8))
    )
    return data, offsets - start


def _layout_checks(text: pa.Array, ntok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bad lines, colon per separator run) for lines split into ``ntok`` tokens on blanks and
    colons. A separator run is a maximal run of blanks and colons within a line; a line has
    ``ntok - 1`` of them, in order, so run ``k`` of the block precedes the ``k``-th token that
    is not a line's first. Every colon must be a lone ``:`` between two token bytes (a one-byte
    run; the token after it is a value); a line's first run must not be one (the label has no
    value) and no colon run may follow another (``idx:v:w``). Vectorized over the bytes."""
    n = len(text)
    d, off = _string_buffers(text)
    bad = np.zeros(n, dtype=bool)
    nruns = ntok - 1
    if d.size == 0:
        return bad, np.zeros(0, dtype=bool)
    colon = d == 58
    sep = colon | (d == 32) | ((d >= 9) & (d <= 13))
    after_sep = np.zeros_like(sep)  # the previous byte of the same line is a separator
    after_sep[1:] = sep[:-1]
    before_sep = np.zeros_like(sep)  # the next byte of the same line is a separator
    before_sep[:-1] = sep[1:]
    nonempty = np.diff(off) > 0
    starts, ends = off[:-1][nonempty], off[1:][nonempty] - 1
    after_sep[starts] = False
    before_sep[ends] = False
    lone = colon & ~after_sep & ~before_sep
    lone[starts] = False  # a colon at the edge of a line has an empty side
    lone[ends] = False
    stray = np.flatnonzero(colon & ~lone)  # in a longer run or at an edge
    if stray.size:
        bad[np.searchsorted(off, stray, side="right") - 1] = True
    runs = np.flatnonzero(sep & ~after_sep)  # first byte of every separator run
    if runs.size != int(nruns.sum()):  # cannot happen: splitting counts the same runs
        raise AssertionError("libfm: separator runs and tokens disagree")
    is_colon = lone[runs]
    first_run = np.cumsum(nruns) - nruns
    line_first = first_run[nruns > 0]
    wrong = np.zeros_like(is_colon)
    wrong[1:] = is_colon[1:] & is_colon[:-1]  # idx:v:w (across two lines: the 2nd is first)
    wrong[line_first] = is_colon[line_first]  # label:v
    if wrong.any():
        bad[np.searchsorted(first_run, np.flatnonzero(wrong), side="right") - 1] = True
    return bad, is_colon


@dataclass
class _Features:
    """The features of a block's lines that are still good: ``row`` ascending."""

    y: np.ndarray  # (n,) float64 labels
    row: np.ndarray  # (P,) int64
    idx: np.ndarray  # (P,) int64
    val: np.ndarray  # (P,) float64
    text: pa.Array  # (n,) the trimmed lines, for messages


def _note_feature(errs: _RowErrors, f: _Features, bad: np.ndarray, rule: str) -> None:
    """Lines with a feature ``bad`` (P,) break ``rule``; name the first one's token."""
    if not bad.any():
        return
    n = len(f.text)
    t = int(np.flatnonzero(bad)[0])
    r = int(f.row[t])
    j = t - int(np.searchsorted(f.row, r, side="left")) + 1  # the j-th feature of line r
    mask = np.zeros(n, dtype=bool)
    mask[f.row[bad]] = True
    errs.note(r, f"feature {j}", _BLANKS.split(f.text[r].as_py())[j], rule, mask)


def _drop_bad(f: _Features, errs: _RowErrors) -> _Features:
    good = ~errs.bad[f.row]
    return _Features(f.y, f.row[good], f.idx[good], f.val[good], f.text)


def _parse(column: pa.Array, errs: _RowErrors) -> _Features:
    """Labels and ``(row, idx, value)`` of every feature; bad lines go to ``errs``."""
    n = len(column)
    text = pc.ascii_trim_whitespace(column)
    tokens = pc.ascii_split_whitespace(pc.replace_substring(text, ":", " "))
    ntok = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(tokens)
    x, bad_x = _floats(flat)  # every token is a number: label, idx, [value], idx, ...
    first = np.cumsum(ntok) - ntok
    errs.add(
        np.diff(_string_buffers(text)[1]) == 0,
        "label",
        text,
        "lines must not be empty (empty line)",
    )
    y = x[first]
    errs.add(
        ~((y == 1) | (y == 0) | (y == -1)),
        "label",
        flat.take(pa.array(first)),
        "labels must be -1, 0 or 1",
    )
    bad_layout, run_colon = _layout_checks(text, ntok)
    errs.add(
        bad_layout,
        "features",
        text,
        "a line is 'label idx[:value] idx[:value] ...' (blank-separated, at most one ':' "
        "per feature)",
    )
    is_val = np.zeros(x.size, dtype=bool)  # the token follows a colon: a value
    is_idx = np.ones(x.size, dtype=bool)
    is_idx[first] = False
    is_val[is_idx] = run_colon
    is_idx &= ~is_val
    ncolon = np.zeros(n, dtype=np.int64)  # values per line
    if run_colon.size:
        cs = np.concatenate([[0], np.cumsum(run_colon)])
        ncolon = cs[first - np.arange(n) + ntok - 1] - cs[first - np.arange(n)]
    nfeat = ntok - 1 - ncolon
    if errs.bad.any():
        is_idx &= ~np.repeat(errs.bad, ntok)
        nfeat[errs.bad] = 0
    pos = np.flatnonzero(is_idx)  # the idx tokens, ascending
    has_val = np.zeros(pos.size, dtype=bool)
    nxt = pos + 1 < x.size
    has_val[nxt] = is_val[pos[nxt] + 1]
    vpos = np.where(has_val, pos + 1, pos)
    ix = x[pos]
    val = np.where(has_val, x[vpos], 1.0)
    bad = (
        bad_x[pos]
        | bad_x[vpos]
        | ~(ix >= 0)
        | (ix != np.floor(ix))
        | (ix >= _MAX_IDX)
        | (np.abs(val) > _F32_MAX)
    )  # values are written as float32
    row = np.repeat(np.arange(n), nfeat)
    f = _Features(y, row, np.where(bad, 0, ix).astype(np.int64), val, text)
    _note_feature(errs, f, bad, "idx must be an integer >= 0 and value a finite (float32) number")
    return _drop_bad(f, errs) if bad.any() else f


def _field_columns(f: _Features, fmap: FieldMap, errs: _RowErrors) -> dict[str, pa.Array]:
    """One nullable int64 column per field (module docstring: the rules)."""
    n = len(f.text)
    fid = fmap.lookup(f.idx)
    _note_feature(errs, f, fid < 0, "with a field map every index must be in the map")
    _note_feature(
        errs,
        f,
        f.val != 1,
        "with a field map every value must be 1 (per-field columns are categorical)",
    )
    good = ~errs.bad[f.row]
    row, idx, fid = f.row[good], f.idx[good], fid[good]
    nf = len(fmap.names)
    code = row * nf + fid  # (row, field) pairs; row ascending
    order = np.argsort(code, kind="stable")
    dup = code[order][1:] == code[order][:-1]
    if dup.any():
        at = order[1:][dup]  # the second (or later) feature of a field in a line
        r = int(row[at].min())
        k = int(fid[at][row[at] == r][0])
        mask = np.zeros(n, dtype=bool)
        mask[row[at]] = True
        same = idx[(row == r) & (fid == k)]
        both = f"{same[0]} and {same[1]}" + (
            f" (and {same.size - 2} more)" if same.size > 2 else ""
        )
        errs.note(
            r, fmap.names[k], both, "with a field map a line has at most one index per field", mask
        )
    by_field = np.argsort(fid, kind="stable")
    bounds = np.searchsorted(fid[by_field], np.arange(nf + 1))
    cols: dict[str, pa.Array] = {}
    for k, name in enumerate(fmap.names):  # a loop over fields, not rows
        sel = by_field[bounds[k] : bounds[k + 1]]
        col = np.zeros(n, dtype=np.int64)
        present = np.zeros(n, dtype=bool)
        col[row[sel]] = idx[sel]
        present[row[sel]] = True
        cols[name] = pa.array(col, pa.int64(), mask=~present)
    return cols


def _libfm_transform(day: str, fmap: FieldMap | None) -> Transform:
    def transform(
        batch: pa.RecordBatch, errs: _RowErrors, lines: Callable[[], np.ndarray]
    ) -> tuple[pa.Table, Any]:
        f = _parse(batch.column(0), errs)
        label = pa.array((f.y == 1).astype(np.int8))
        if fmap is not None:
            return pa.table({"label": label, **_field_columns(f, fmap, errs)}), day
        npair = np.bincount(f.row, minlength=len(f.text))
        offsets = pa.array(np.concatenate([[0], np.cumsum(npair)]).astype(np.int32))
        keys = pa.ListArray.from_arrays(offsets, pa.array(field_keys(LIBFM_FIELD, f.idx)))
        values = pa.ListArray.from_arrays(offsets, pa.array(f.val.astype(np.float32)))
        return pa.table({"label": label, "keys": keys, "values": values}), day

    return transform


# ----------------------------------------------------------------------------- converters


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
) -> dict[str, Any]:
    """libFM text files -> ``out/day=D/*.parquet``: input ``i`` to ``day=i+1`` or ``days[i]``;
    the hashed layout, or per-field columns with ``field_map`` (a file) or ``field_ranges``
    (module docstring). Returns the summary of :func:`psfm.datasets.convert.convert_criteo` with
    ``input_days`` (one per input), ``day_of_input``, ``layout``, ``key`` and, with a map,
    ``fields`` and ``field_map``."""
    opts = _options(
        "convert_libfm",
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
            "The 'inputs' parameter of convert_libfm must name at least one file. Got [] instead."
        )
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
    root = _prepare_out(out, overwrite)
    results = []
    rule = "a libFM line is 'label idx[:value] ...' and holds no \\x1f byte"
    for i, (path, day) in enumerate(zip(inputs, labels)):

        def make(threads: bool, path: str = path) -> _TextStream:
            return _TextStream(
                path,
                ["line"],
                delimiter=_UNIT_SEP,
                header_lines=0,
                opts=opts,
                use_threads=threads,
                strings_can_be_null=False,
                columns_rule=rule,
            )

        res = _convert_input(make, _Sink(root, i, opts), _libfm_transform(day, fmap))
        _require_rows(path, res, opts, empty_ok=False)
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
    return _finish("libfm", root, inputs, results, t0, extra)


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
        **_common_kwargs(args),
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
    _common_options(f)
    f.set_defaults(func=_cmd)

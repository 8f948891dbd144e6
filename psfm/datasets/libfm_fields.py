"""Field maps of the libFM converter: feature index -> field (``--field-map``, ``--field-ranges``).

A field map file has one ``idx field`` pair per line, the two separated by blanks or a tab (so
a two-column TSV works as is); empty lines and lines starting with ``#`` are ignored; an index
listed twice must name the same field. ``field_ranges`` is the compact form
``"user:0-999,item:1000-1999,tag:2000"`` (inclusive ranges or single indices, one field may
have several, ranges must not overlap). A field name is a column name: letters, digits and
``_``, not starting with a digit, and not ``label``, ``keys`` or ``values``. Both are read
into a :class:`FieldMap` (sorted disjoint ranges), looked up vectorized.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from psfm.datasets.textin import open_input
from psfm.errors import ConfigError, DataError

__all__ = ["FieldMap", "read_field_map", "parse_field_ranges", "MAX_IDX"]

_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = ("label", "keys", "values")
MAX_IDX = 2**53  # indices are parsed as float64: exact below this
_FIELD_RULE = (
    "a field name is a column name (letters, digits and '_', not starting with a "
    f"digit) and not one of {', '.join(_RESERVED)}"
)


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
    with open_input(str(path)) as f:
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
    big = idx >= MAX_IDX
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
        if hi < lo or hi >= MAX_IDX:
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

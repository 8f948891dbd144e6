"""Vectorized checks of the converters' text columns: :class:`RowErrors` and the parsers.

Every check runs on whole Arrow columns of one block (no loop over rows); a row that breaks a
rule is marked in :class:`RowErrors`, which keeps the first such row of the block (row,
column, value, rule) for the error message and counts the bad rows per rule for
``bad_rows="skip"``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["RowErrors", "as_mask", "empty_lines", "binary_label", "parse_ints", "parse_floats"]

_INT_RE = r"^-?[0-9]{1,18}$"  # what pc.cast(string -> int64) accepts, without overflow
_FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


class RowErrors:
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


def as_mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls -> False."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def empty_lines(batch: pa.RecordBatch, errs: RowErrors, label: str) -> None:
    """Empty lines (the parser gives them as rows of nulls) are bad rows of their own rule;
    only looked for when the label has nulls."""
    col = batch.column(label)
    if not col.null_count:
        return
    empty = as_mask(pc.is_null(col))
    for arr in batch.columns:
        empty &= as_mask(pc.is_null(arr))
    errs.add(empty, label, col, "lines must not be empty (empty line)")


def binary_label(arr: pa.Array, errs: RowErrors, column: str) -> pa.Array:
    """``"0"``/``"1"`` strings -> int8; anything else is a bad row."""
    one = pc.equal(arr, "1")
    ok = pc.or_(pc.equal(arr, "0"), one)
    errs.add(~as_mask(ok), column, arr, "labels must be 0 or 1")
    return pc.cast(pc.fill_null(one, False), pa.int8())


def parse_ints(arr: pa.Array, errs: RowErrors, column: str, rule: str) -> pa.Array:
    """Strings -> int64 (null stays null). One vectorized cast; only when it fails are the
    values matched against ``-?[0-9]{1,18}`` to find the bad rows (which become null)."""
    try:
        return pc.cast(arr, pa.int64())
    except pa.ArrowInvalid:
        pass
    ok = pc.match_substring_regex(arr, _INT_RE)
    bad = ~as_mask(ok) & ~as_mask(pc.is_null(arr))
    errs.add(bad, column, arr, rule)
    return pc.cast(pc.if_else(ok, arr, pa.scalar(None, pa.string())), pa.int64())


def parse_floats(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (float64 values, bad mask): bad = not a number or not finite."""
    try:
        x = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        ok = pc.match_substring_regex(arr, _FLOAT_RE)
        x = pc.cast(pc.if_else(ok, arr, "nan"), pa.float64()).to_numpy(zero_copy_only=False)
    return x, ~np.isfinite(x)

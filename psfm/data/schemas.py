"""The feature schema a run trains on, and the check that every file of a run has it.

Keys are a hash of (column, value), and an integer and a string value hash differently: a
column that is int in one file and string in another would silently train two unrelated sets of
keys, and a file missing some feature columns would silently train fewer features. So the
schema of the first training file (:func:`schema_record`) is recorded in every checkpoint and
exported model, and :func:`check_files` refuses, before anything trains, a file of the run
whose schema differs from it, naming the file, the column and both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from psfm.config import DataConfig
from psfm.data.batch import resolve_schema
from psfm.data.parquet import open_parquet
from psfm.errors import DataError

__all__ = ["schema_record", "check_files", "left_out", "value_kind"]


def value_kind(t: pa.DataType) -> str:
    """How a categorical column's values are hashed: ``int`` (integers and booleans hash
    alike) or ``string``; any other type by its name."""
    if pa.types.is_dictionary(t):
        return value_kind(t.value_type)
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return str(t)


def schema_record(data: DataConfig, file: str) -> dict[str, Any]:
    """The feature schema a run trains on, resolved from ``file`` (a training file) under
    ``data``: ``{"layout": "hashed"}``, or ``{"layout": "columns", "categorical": [columns],
    "value_kinds": {column: "int" | "string"}, "numeric": [columns], "numeric_transform":
    ...}`` (columns in file order). Keys are a hash of (column, value), and an int and a string
    value hash differently, so the kind of each categorical column is part of the schema.
    Checkpoints carry it (``schema`` in their manifest), the exported model too; predictions
    and warm starts check against it."""
    arrow = open_parquet(file).schema_arrow
    fs = resolve_schema(data, arrow, file)
    if fs.layout == "hashed":
        return {"layout": "hashed"}
    return {
        "layout": "columns",
        "categorical": list(fs.categorical),
        "value_kinds": {c: value_kind(arrow.field(c).type) for c in fs.categorical},
        "numeric": list(fs.numeric),
        "numeric_transform": fs.numeric_transform,
    }


def left_out(data: DataConfig, file: str, record: dict[str, Any]) -> list[str]:
    """Columns of ``file`` that a run with inferred features leaves out because their type is
    no feature type (timestamps, binary, decimal, ...), as ``'name' (type)``; none when the
    features are named (``data.categorical`` / ``data.numeric``) or the layout is hashed.
    Columns in ``data.ignore``, the label and the weight are left out on purpose."""
    if record.get("layout") != "columns" or data.categorical or data.numeric:
        return []
    used = {*record["categorical"], *record["numeric"], data.label, data.weight, *data.ignore}
    return [f"{f.name!r} ({f.type})" for f in open_parquet(file).schema_arrow if f.name not in used]


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    """What differs between two schema records, in words (first differences only)."""
    if a.get("layout") != b.get("layout"):
        return f"layout {b.get('layout')!r} instead of {a.get('layout')!r}"
    out = []
    for key, what in (("categorical", "categorical"), ("numeric", "numeric")):
        gone = [c for c in a.get(key, []) if c not in b.get(key, [])]
        extra = [c for c in b.get(key, []) if c not in a.get(key, [])]
        if gone:
            out.append(f"{what} column(s) {', '.join(map(repr, gone))} missing")
        if extra:
            out.append(f"{what} column(s) {', '.join(map(repr, extra))} not in the first file")
    ka, kb = a.get("value_kinds", {}), b.get("value_kinds", {})
    for c in ka:
        if c in kb and ka[c] != kb[c]:
            out.append(f"column {c!r} holds {kb[c]} values, {ka[c]} in the first file")
    return "; ".join(out[:3])


def check_files(data: DataConfig, files: Sequence[str], first: dict[str, Any]) -> None:
    """Refuse any of ``files`` whose feature schema differs from ``first`` (the record of
    the run's first training file): one footer read per file, before any worker starts."""
    for f in files:
        rec = schema_record(data, f)
        if rec != first:
            raise DataError(
                f"File '{f}' does not have the feature schema of the run's first training file: "
                f"{_differences(first, rec) or 'the feature columns differ'}. Every file of a "
                "run must hash the same features the same way (an int column that is a string "
                "elsewhere would train different keys): fix the file, or name the columns with "
                "data.categorical / data.numeric / data.ignore."
            )

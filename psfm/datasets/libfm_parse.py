"""Parsing of libFM / libSVM lines, vectorized over a block: labels, features and the checks.

A line is ``label feature feature ...``, blank-separated, a feature ``idx:value`` or a bare
``idx`` (value 1); :mod:`psfm.datasets.convert_libfm` tells the rules. :func:`libfm_transform`
turns a block of lines into the hashed layout (``keys`` = ``field_keys(LIBFM_FIELD, idx)``,
``values``) or, with a :class:`~psfm.datasets.libfm_fields.FieldMap`, one int64 column per
field. There is no Python loop over lines or tokens: lines are split with Arrow string
kernels and the separators checked on the raw bytes (:func:`psfm.hashing.string_buffers`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from psfm.datasets.convert_base import Transform
from psfm.datasets.libfm_fields import MAX_IDX, FieldMap
from psfm.datasets.textcheck import RowErrors, parse_floats
from psfm.hashing import field_keys, string_buffers

__all__ = ["LIBFM_FIELD", "libfm_transform"]

LIBFM_FIELD = "libfm"  # the field name whose salt hashes a libFM feature index (hashed layout)

_BLANKS = re.compile(r"[ \t\n\v\f\r]+")  # what pc.ascii_split_whitespace splits on
_F32_MAX = float(np.finfo(np.float32).max)


def _layout_checks(text: pa.Array, ntok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bad lines, colon per separator run) for lines split into ``ntok`` tokens on blanks and
    colons. A separator run is a maximal run of blanks and colons within a line; a line has
    ``ntok - 1`` of them, in order, so run ``k`` of the block precedes the ``k``-th token that
    is not a line's first. Every colon must be a lone ``:`` between two token bytes (a one-byte
    run; the token after it is a value); a line's first run must not be one (the label has no
    value) and no colon run may follow another (``idx:v:w``). Vectorized over the bytes."""
    n = len(text)
    d, off = string_buffers(text)
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


def _note_feature(errs: RowErrors, f: _Features, bad: np.ndarray, rule: str) -> None:
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


def _drop_bad(f: _Features, errs: RowErrors) -> _Features:
    good = ~errs.bad[f.row]
    return _Features(f.y, f.row[good], f.idx[good], f.val[good], f.text)


def _parse(column: pa.Array, errs: RowErrors) -> _Features:
    """Labels and ``(row, idx, value)`` of every feature; bad lines go to ``errs``."""
    n = len(column)
    text = pc.ascii_trim_whitespace(column)
    tokens = pc.ascii_split_whitespace(pc.replace_substring(text, ":", " "))
    ntok = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(tokens)
    x, bad_x = parse_floats(flat)  # every token is a number: label, idx, [value], idx, ...
    first = np.cumsum(ntok) - ntok
    errs.add(
        np.diff(string_buffers(text)[1]) == 0,
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
        | (ix >= MAX_IDX)
        | (np.abs(val) > _F32_MAX)
    )  # values are written as float32
    row = np.repeat(np.arange(n), nfeat)
    f = _Features(y, row, np.where(bad, 0, ix).astype(np.int64), val, text)
    _note_feature(errs, f, bad, "idx must be an integer >= 0 and value a finite (float32) number")
    return _drop_bad(f, errs) if bad.any() else f


def _field_columns(f: _Features, fmap: FieldMap, errs: RowErrors) -> dict[str, pa.Array]:
    """One nullable int64 column per field (the rules: :mod:`psfm.datasets.convert_libfm`)."""
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


def libfm_transform(day: str, fmap: FieldMap | None) -> Transform:
    def transform(
        batch: pa.RecordBatch, errs: RowErrors, lines: Callable[[], np.ndarray]
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

"""The versioned snapshot format of a shard's state: plain arrays by name (saved with
``np.savez``, read with ``allow_pickle=False``: :mod:`psfm.checkpoint`), independent of how the
store links its rows.

Format 1 (:data:`SNAPSHOT_FORMAT`)::

    table.*             the key table (:meth:`KeyTable.snapshot`)
    z_w, n_w, level,    the per-key arrays the shard keeps, for slots 0..n-1 (no row/row0:
    count, last_day     rows are stored by level below)
    row{p}              per level p, each slot's row in z{p}/n{p} (int32, -1 none; rows are
    z{p}, n{p}          compact, in slot order) and the rows' FTRL state (rows, D_p) float32
    meta                int64 [shard_id, n_shards, m, day]
    ranks               int64 [D_1..D_m]
    sketch              the admission sketch's counters, when there is one

Format 1 carries no version entry of its own; a later format writes ``format`` (an int64
scalar) and :func:`read` refuses a format it does not know.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from psfm.errors import CheckpointError
from psfm.ps.admission import CountMinSketch
from psfm.ps.routing import route
from psfm.ps.store import KeyStore
from psfm.ps.table import KeyTable

__all__ = ["SNAPSHOT_FORMAT", "Restored", "write", "read", "resplit"]

SNAPSHOT_FORMAT = 1
_ROW_LINKS = ("row", "row0")  # per-key arrays of the store's own linking, never saved
_NOT_PER_KEY = re.compile(r"(table\..*|meta|ranks|sketch|format|(row|z|n)\d+)")


def write(
    store: KeyStore, shard_id: int, n_shards: int, day: int, sketch: CountMinSketch | None
) -> dict[str, np.ndarray]:
    """The state as plain arrays (copies)."""
    n = len(store)
    out = {f"table.{k}": v for k, v in store.table.snapshot().items()}
    for name in store.per_key:
        if name not in _ROW_LINKS:
            out[name] = getattr(store, name)[:n].copy()
    for p, (f, r) in enumerate(zip(store.fac, store.slot_rows()), start=1):
        has = r >= 0
        rows = np.full(n, -1, np.int32)
        rows[has] = np.arange(int(has.sum()))  # compact, in slot order
        out[f"row{p}"] = rows
        st = f.s[r[has]]
        out[f"z{p}"] = st[:, 0].copy()
        out[f"n{p}"] = st[:, 1].copy()
    out["meta"] = np.array([shard_id, n_shards, store.m, day], dtype=np.int64)
    out["ranks"] = np.array(store.layout.ranks, dtype=np.int64)
    if sketch is not None:
        out["sketch"] = sketch.table.copy()
    return out


@dataclass
class Restored:
    """What :func:`read` gives back besides the store it fills."""

    day: int
    sketch: CountMinSketch | None  # None: the state has none


def read(
    state: dict[str, np.ndarray], store: KeyStore, shard_id: int, n_shards: int, seed: int
) -> Restored:
    """Fill ``store`` from a :func:`write` state of a shard of the same model and shard
    layout. Per-key arrays the store does not keep are ignored; those it keeps but the state
    lacks start fresh (counts 0, last seen on the state's day)."""
    fmt = int(state["format"]) if "format" in state else 1
    if fmt != SNAPSHOT_FORMAT:
        raise CheckpointError(
            f"Shard state of format {fmt}: this version reads format {SNAPSHOT_FORMAT}."
        )
    meta = state["meta"]
    ranks = tuple(store.layout.ranks)
    if [int(meta[0]), int(meta[1])] != [shard_id, n_shards] or tuple(
        int(r) for r in state["ranks"]
    ) != ranks:
        raise CheckpointError(
            f"Checkpoint of shard {int(meta[0])}/{int(meta[1])} with ranks "
            f"{[int(r) for r in state['ranks']]} cannot restore shard "
            f"{shard_id}/{n_shards} with ranks {list(ranks)}."
        )
    store.reset(
        KeyTable.restore(
            {k[len("table.") :]: v for k, v in state.items() if k.startswith("table.")}
        )
    )
    n = len(store)
    day = int(meta[3])
    store.ensure_capacity(max(n, 1))
    store.init_slots(np.arange(n), day)
    for name in store.per_key:
        if name in state:
            getattr(store, name)[:n] = state[name]
    store.load_rows(
        [np.asarray(state[f"row{p}"], dtype=np.int64) for p in range(1, store.m + 1)],
        [state[f"z{p}"] for p in range(1, store.m + 1)],
        [state[f"n{p}"] for p in range(1, store.m + 1)],
    )
    sketch = None
    if "sketch" in state:
        sk = state["sketch"]
        sketch = CountMinSketch(width=sk.shape[1], depth=sk.shape[0], seed=seed)
        sketch.table[:] = sk
    return Restored(day, sketch)


def resplit(
    states: Sequence[dict[str, np.ndarray]], n_shards: int, tied: bool = False
) -> list[dict[str, np.ndarray]]:
    """Shard states of one model (any number of shards, format 1) as the states of
    ``n_shards`` shards: every key goes to ``shard_of(key, n_shards)``
    (:func:`psfm.ps.routing.shard_of`) with its per-key arrays and its factor rows, in the
    order of ``states`` and of their slots. Vectorized (a few passes over the keys).

    Per-key arrays, levels and factor rows belong to their key, so they split exactly; the
    re-split model's weights are the original's. The admission sketch (online policy with
    ``admit_min_count > 1``) counts keys not yet stored and cannot be split by key: every new
    shard gets the cell-wise sum of the old shards' sketches (one seed and size for all),
    which is a count-min sketch of all their occurrences; its estimates stay upper bounds of
    the true counts (with more collisions than a shard's own).

    A key held by several states (a warm start's init state, then the statistics pass of the
    new run: :mod:`psfm.runloop`) keeps the per-key arrays (FTRL state, count, last day) of
    the first state that holds it and the highest level any gives it: its rows up to the
    first state's level are that state's, the rows above come from the state with the higher
    level (fresh factors of the new run); ``tied`` (DiFacto, one vector per key) takes the
    higher level's vector with the first state's trained prefix, as a promotion does
    (:meth:`psfm.ps.store.KeyStore.raise_levels`).
    """
    if not states:
        raise CheckpointError("No shard states to re-split.")
    for st in states:
        fmt = int(st["format"]) if "format" in st else 1
        if fmt != SNAPSHOT_FORMAT:
            raise CheckpointError(
                f"Shard state of format {fmt}: this version re-splits format {SNAPSHOT_FORMAT}."
            )
    ranks = [int(r) for r in states[0]["ranks"]]
    for st in states[1:]:
        if [int(r) for r in st["ranks"]] != ranks:
            raise CheckpointError(
                f"Cannot re-split shard states of ranks {ranks} and "
                f"{[int(r) for r in st['ranks']]} together."
            )
    m = len(ranks)
    keys = np.concatenate([np.asarray(st["table.keys"], np.uint64) for st in states])
    per_key = _per_key_arrays(states)
    rows, z, nn = _global_rows(states, m)
    keep = _merge_duplicates(keys, per_key, rows, z, nn, tied, m)
    if keep is not None:
        keys = keys[keep]
        per_key = {k: v[keep] for k, v in per_key.items()}
        rows = [r[keep] for r in rows]
    day = max(int(st["meta"][3]) for st in states)
    sketch = _summed_sketch(states)
    out = []
    for s, idx in enumerate(route(keys, n_shards).index):  # stable: slot order kept
        st = {"table.keys": keys[idx]}
        st.update({k: v[idx] for k, v in per_key.items()})
        for p in range(1, m + 1):
            r = rows[p - 1][idx]
            has = r >= 0
            compact = np.full(idx.size, -1, np.int32)
            compact[has] = np.arange(int(has.sum()))
            st[f"row{p}"] = compact
            st[f"z{p}"] = z[p - 1][r[has]]
            st[f"n{p}"] = nn[p - 1][r[has]]
        st["meta"] = np.array([s, n_shards, m, day], dtype=np.int64)
        st["ranks"] = np.array(ranks, dtype=np.int64)
        if sketch is not None:
            st["sketch"] = sketch.copy()
        out.append(st)
    return out


def _per_key_arrays(states: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every per-key array, concatenated over ``states``; where a state lacks one, its keys
    start as :func:`read` starts them (last seen on the state's day, anything else 0)."""
    names = sorted({k for st in states for k in st if not _NOT_PER_KEY.fullmatch(k)})
    out = {}
    for name in names:
        dtype = next(st[name].dtype for st in states if name in st)
        parts = []
        for st in states:
            fill = int(st["meta"][3]) if name == "last_day" else 0
            n = st["table.keys"].size
            parts.append(np.asarray(st[name], dtype) if name in st else np.full(n, fill, dtype))
        out[name] = np.concatenate(parts)
    return out


def _global_rows(
    states: Sequence[dict[str, np.ndarray]], m: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per level p: every key's row into the concatenated ``z{p}``/``n{p}`` (-1 none)."""
    rows, z, nn = [], [], []
    for p in range(1, m + 1):
        off, parts = 0, []
        for st in states:
            r = np.asarray(st[f"row{p}"], np.int64)
            parts.append(np.where(r >= 0, r + off, -1))
            off += st[f"z{p}"].shape[0]
        rows.append(np.concatenate(parts))
        z.append(np.concatenate([st[f"z{p}"] for st in states]))
        nn.append(np.concatenate([st[f"n{p}"] for st in states]))
    return rows, z, nn


def _merge_duplicates(
    keys: np.ndarray,
    per_key: dict[str, np.ndarray],
    rows: list[np.ndarray],
    z: list[np.ndarray],
    nn: list[np.ndarray],
    tied: bool,
    m: int,
) -> np.ndarray | None:
    """Fold each later copy of a key into its first (:func:`resplit`'s rule), in place;
    returns the mask of first copies, or None when every key is held once. One round per
    copy rank (the second copies of all keys, then the third, ...), not per key."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    dup = np.zeros(ks.size, bool)
    np.equal(ks[1:], ks[:-1], out=dup[1:])
    if not dup.any():
        return None
    start = np.maximum.accumulate(np.where(dup, 0, np.arange(ks.size)))  # each group's first
    first = order[start]
    later = np.flatnonzero(dup)
    rank = later - start[later]
    level = per_key.get("level")
    for k in range(1, int(rank.max()) + 1):
        at = later[rank == k]
        win, lose = first[at], order[at]
        if level is None or m == 0:
            continue
        old, new = level[win].astype(np.int64), level[lose].astype(np.int64)
        up = new > old
        win, lose, old, new = win[up], lose[up], old[up], new[up]
        for p in range(1, m + 1):
            if not tied:  # rows above the first copy's level come from the later copy
                gets = (old < p) & (new >= p)
                rows[p - 1][win[gets]] = rows[p - 1][lose[gets]]
                continue
            at_p = new == p  # one vector, at the new level, with the trained prefix
            for j in range(1, p):
                was = at_p & (old == j)
                src, dst, d = rows[j - 1][win[was]], rows[p - 1][lose[was]], z[j - 1].shape[1]
                z[p - 1][dst, :d] = z[j - 1][src]
                nn[p - 1][dst, :d] = nn[j - 1][src]
                rows[j - 1][win[was]] = -1
            rows[p - 1][win[at_p]] = rows[p - 1][lose[at_p]]
        level[win] = new.astype(level.dtype)
    keep = np.ones(keys.size, bool)
    keep[order[dup]] = False
    return keep


def _summed_sketch(states: Sequence[dict[str, np.ndarray]]) -> np.ndarray | None:
    """The cell-wise sum of the states' admission sketches (None when none has one)."""
    sketches = [np.asarray(st["sketch"]) for st in states if "sketch" in st]
    if not sketches:
        return None
    if len({sk.shape for sk in sketches}) > 1:
        raise CheckpointError(
            f"Cannot re-split shard states whose admission sketches differ in size: "
            f"{sorted({sk.shape for sk in sketches})}."
        )
    return np.sum(sketches, axis=0, dtype=sketches[0].dtype)

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

from dataclasses import dataclass

import numpy as np

from psfm.errors import CheckpointError
from psfm.ps.admission import CountMinSketch
from psfm.ps.store import KeyStore
from psfm.ps.table import KeyTable

__all__ = ["SNAPSHOT_FORMAT", "Restored", "write", "read"]

SNAPSHOT_FORMAT = 1
_ROW_LINKS = ("row", "row0")  # per-key arrays of the store's own linking, never saved


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

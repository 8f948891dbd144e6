"""The serving model: export the non-zero parameters to Parquet, score with numpy alone.

``export_model`` restores the run's latest checkpoint into plain shards, gathers every key's
weights, drops keys whose parameters are all zero, and writes one Parquet file::

    key: uint64 (sorted)   w: float32   level: int8   v1 .. vm: list<float32> (null = no row)

with the model (kind, ranks, loss) and the feature schema in the file's metadata. A
:class:`Predictor` reads it with pyarrow and scores Parquet logs with numpy only (no Ray, no
torch): the same batch builder, then :class:`psfm.models.serving.ServingModel` (a sorted-key
lookup and the forward of DESIGN §2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from psfm.checkpoint import latest_checkpoint, load_checkpoint, resolve
from psfm.config import Config, DataConfig, ModelConfig, config_from_dict, to_dict
from psfm.data.batch import Batch, build_batch, resolve_schema
from psfm.data.parquet import list_days, open_parquet, read_unit, row_group_starts, work_units
from psfm.errors import CheckpointError, DataError
from psfm.models.layout import FactorLayout
from psfm.models.loss import loss_by_name
from psfm.models.serving import ServingModel
from psfm.ps.shard import ParameterShard

__all__ = ["gather_model", "export_model", "Predictor"]

_META = b"psfm"


def gather_model(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Merge :meth:`ParameterShard.weights` outputs of all shards, sorted by key.

    Returns ``keys`` (n,) uint64 sorted, ``w``, ``level`` and for each level p ``rows{p}`` —
    ascending indices into ``keys`` of the keys with a stored row at level p — with ``v{p}``:
    (len(rows{p}), D_p) their factors."""
    keys = np.concatenate([p["keys"] for p in parts])
    order = np.argsort(keys, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    out = {
        "keys": keys[order],
        "w": np.concatenate([p["w"] for p in parts])[order],
        "level": np.concatenate([p["level"] for p in parts])[order],
    }
    offsets = np.cumsum([0] + [p["keys"].size for p in parts])
    lev = 1
    while f"rows{lev}" in parts[0]:
        glob = np.concatenate([rank[offsets[i] + p[f"rows{lev}"]] for i, p in enumerate(parts)])
        vals = np.concatenate([p[f"v{lev}"] for p in parts])
        o = np.argsort(glob, kind="stable")
        out[f"rows{lev}"] = glob[o]
        out[f"v{lev}"] = vals[o]
        lev += 1
    return out


def restore_model(run_dir: str) -> tuple[Config, dict[str, np.ndarray], dict[str, Any]]:
    """The model of a run's latest complete checkpoint, gathered by key."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"Run directory '{run_dir}' has no complete checkpoint.")
    states, manifest = load_checkpoint(ckpt)
    cfg = config_from_dict(manifest["config"])
    parts = []
    for i, st in enumerate(states):
        s = ParameterShard(cfg.model, cfg.ftrl, cfg.levels, cfg.train.seed, i, len(states))
        s.restore(st)
        parts.append(s.weights())
    return cfg, gather_model(parts), manifest


def export_model(run_dir: str, out: str) -> dict[str, Any]:
    """Write the non-zero parameters of a run's latest checkpoint; returns a summary."""
    cfg, m, manifest = restore_model(run_dir)
    n = m["keys"].size
    ranks = cfg.model.ranks
    nonzero = m["w"] != 0
    rows_v = []
    for p in range(1, len(ranks) + 1):
        rows, v = m[f"rows{p}"], m[f"v{p}"]
        nonzero[rows[np.any(v != 0, axis=1)]] = True
        rows_v.append((rows, v))
    nonzero[m["keys"] == 0] = True  # the bias
    keep = np.flatnonzero(nonzero)
    new_index = np.full(n, -1, dtype=np.int64)
    new_index[keep] = np.arange(keep.size)
    cols = {
        "key": pa.array(m["keys"][keep]),
        "w": pa.array(m["w"][keep]),
        "level": pa.array(m["level"][keep]),
    }
    for p, (rows, v) in enumerate(rows_v, start=1):
        has = new_index[rows] >= 0
        d = ranks[p - 1]
        flat = np.zeros((keep.size, d), dtype=np.float32)
        valid = np.zeros(keep.size, dtype=bool)
        flat[new_index[rows[has]]] = v[has]
        valid[new_index[rows[has]]] = True
        offsets = pa.array(np.arange(keep.size + 1, dtype=np.int32) * d)
        cols[f"v{p}"] = pa.ListArray.from_arrays(
            offsets, pa.array(flat.reshape(-1)), mask=pa.array(~valid)
        )
    meta = {
        "model": to_dict(cfg.model),
        "data": to_dict(cfg.data),
        "day": manifest.get("day"),
        "keys": int(keep.size),
    }
    table = pa.table(cols).replace_schema_metadata({_META: json.dumps(meta).encode()})
    fs, path = resolve(out)
    with fs.open_output_stream(path) as f:
        pq.write_table(table, f)
    return {
        "keys": int(keep.size),
        "dropped_zero_keys": int(n - keep.size),
        "file": out,
        "day": manifest.get("day"),
    }


class Predictor:
    """Scores Parquet logs with an exported model; numpy and pyarrow only."""

    def __init__(self, path: str) -> None:
        fs, p = resolve(path)
        with fs.open_input_file(p) as f:
            table = pq.read_table(f)
        raw = (table.schema.metadata or {}).get(_META)
        if raw is None:
            raise DataError(f"'{path}' is not a psfm model (no psfm metadata).")
        meta = json.loads(raw)
        model = ModelConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items()}
        )
        self.kind, self.ranks = model.kind, model.ranks
        self.loss = loss_by_name(model.loss)
        self.data = DataConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["data"].items()}
        )
        tables = []  # level p: (n, D_p) float64, zeros where a key has no row
        for p, d in enumerate(self.ranks, start=1):
            col = table[f"v{p}"].combine_chunks()
            dense = np.zeros((len(col), d))
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            if valid.any():
                vals = col.filter(col.is_valid()).flatten().to_numpy()
                dense[valid] = vals.reshape(-1, d)
            tables.append(dense)
        self.model = ServingModel(
            FactorLayout(self.ranks, model.tied),
            self.loss,
            keys=table["key"].to_numpy(),
            w=table["w"].to_numpy().astype(np.float64),
            level=table["level"].to_numpy().astype(np.int64),
            tables=tables,
        )

    def score_batch(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, RaFM-low probabilities) of a batch (logits for squared loss)."""
        return self.model.predict(
            batch.uniq, batch.occ_sample, batch.occ_uniq, batch.occ_value, batch.size
        )

    def iter_scores(
        self, root: str, days: Sequence[str] | None = None, batch_size: int = 65536
    ) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(day, file, first_row, probabilities, labels)`` per batch."""
        for day in days or list_days(root):
            for u in work_units(root, day):
                pf = open_parquet(u.file)
                schema = resolve_schema(self.data, pf.schema_arrow, u.file)
                starts = np.asarray(row_group_starts(pf))
                for t, _, first in read_unit(u, batch_size, schema.columns):
                    b = build_batch(
                        t, schema, self.loss, self.data.bad_rows, f"File '{u.file}'", first, starts
                    )
                    if b.skipped:
                        raise DataError(
                            f"File '{u.file}': {b.skipped} bad rows; predict "
                            "needs every row scored."
                        )
                    probs, _ = self.score_batch(b)
                    yield day, u.file, np.arange(first, first + b.size), probs, b.labels

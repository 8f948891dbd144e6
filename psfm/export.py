"""The serving model: export the non-zero parameters to Parquet, score with numpy alone.

``export_model`` restores the run's latest checkpoint into plain shards, gathers every key's
weights, drops keys whose parameters are all zero, and writes one Parquet file::

    key: uint64 (sorted)   w: float32   level: int8   v1 .. vm: list<float32> (null = no row)

with the model (kind, ranks, loss), the levels config, the data config and the feature
schema the run trained on (:func:`schema_record`: the layout, each feature column and whether
its values were hashed as ints or strings) in the file's metadata. A :class:`Predictor` reads
it with pyarrow and scores Parquet logs with numpy only (no Ray, no torch): every file is first
checked against the recorded schema (another layout, a missing feature column, or a column
whose values would hash differently is refused), then the same batch builder, then
:class:`psfm.models.serving.ServingModel` (a sorted-key lookup and the forward of DESIGN §2).

:func:`model_states` turns an exported model back into shard states for a warm start
(``train.init_from = MODEL.parquet``): weights only, see its docstring.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from psfm.checkpoint import latest_checkpoint, load_checkpoint, resolve
from psfm.config import Config, DataConfig, ModelConfig, config_from_dict, to_dict
from psfm.data.batch import Batch, FeatureSchema, build_batch, resolve_schema
from psfm.data.parquet import list_days, open_parquet, read_unit, row_group_starts, work_units
from psfm.data.schemas import schema_record, value_kind
from psfm.errors import CheckpointError, DataError
from psfm.hashing import BIAS_KEY
from psfm.models.layout import FactorLayout
from psfm.models.loss import loss_by_name
from psfm.models.serving import ServingModel
from psfm.optim.ftrl import ftrl_init_z
from psfm.ps.shard import ParameterShard
from psfm.ps.snapshot import resplit
from psfm.ps.update import FtrlRule
from psfm.steps import resolve_ftrl

__all__ = [
    "gather_model",
    "export_model",
    "restore_model",
    "Predictor",
    "Scored",
    "schema_record",
    "read_model_meta",
    "model_states",
]

_META = b"psfm"

log = logging.getLogger(__name__)


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
        "levels": to_dict(cfg.levels),
        "data": to_dict(cfg.data),
        "day": manifest.get("day"),
        "keys": int(keep.size),
    }
    if manifest.get("schema"):
        meta["schema"] = manifest["schema"]
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


def read_model_meta(path: str) -> dict[str, Any]:
    """The psfm metadata of an exported model (the file's footer only)."""
    fs, p = resolve(path)
    try:
        with fs.open_input_file(p) as f:
            schema = pq.read_schema(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"'{path}' is not a readable Parquet file: {e}") from e
    raw = (schema.metadata or {}).get(_META)
    if raw is None:
        raise DataError(f"'{path}' is not a psfm model (no psfm metadata).")
    meta: dict[str, Any] = json.loads(raw)
    return meta


def _section(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """A config section of a model file's metadata, lists as tuples (the dataclasses' form)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in meta[name].items()}


def _model_config(meta: dict[str, Any]) -> ModelConfig:
    return ModelConfig(**_section(meta, "model"))


def _factor_columns(
    table: pa.Table, ranks: Sequence[int], path: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per level p: (which keys have a row, their rows (rows, D_p) float32) of ``v{p}``."""
    out = []
    for p, d in enumerate(ranks, start=1):
        col = table[f"v{p}"].combine_chunks()
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        vals = np.zeros((0, d), np.float32)
        if valid.any():
            flat = col.filter(col.is_valid()).flatten().to_numpy().astype(np.float32)
            if flat.size != int(valid.sum()) * d:
                raise DataError(
                    f"'{path}': column 'v{p}' holds lists of {flat.size / valid.sum():g} floats "
                    f"on average; every row must have D_{p} = {d}."
                )
            vals = flat.reshape(-1, d)
        out.append((valid, vals))
    return out


def model_states(path: str, cfg: Config) -> list[dict[str, np.ndarray]]:
    """Shard states (:mod:`psfm.ps.snapshot` format, ``cfg.ps.shards`` shards) holding the
    weights of an exported model, for a warm start from ``MODEL.parquet``.

    An export keeps weights, not FTRL state: no ``n``, and no ``z`` of the run that trained
    it. Every coordinate starts as a fresh one whose weight is the exported value: ``n = 0``
    and ``z = -(w (beta/alpha + l2) + sgn(w) l1)`` under *this* run's FTRL parameters
    (``cfg.ftrl``; the bias without l1/l2), the encoding new factors use
    (:func:`psfm.optim.ftrl.ftrl_init_z`). The first pull returns the exported weights up to
    float32 rounding of ``z``; the first updates then take the large steps of a new
    coordinate (their rate falls as ``n`` grows again). Keys keep their exported levels and
    rows; keys the export dropped (all parameters zero) are new keys to the run."""
    meta = read_model_meta(path)
    model = _model_config(meta)
    fs, p = resolve(path)
    with fs.open_input_file(p) as f:
        table = pq.read_table(f)
    keys = table["key"].to_numpy().astype(np.uint64)
    w = table["w"].to_numpy().astype(np.float32)
    level = table["level"].to_numpy().astype(np.int8)
    m = len(model.ranks)
    bad = ~np.isfinite(w) | (level < 0) | (level > m)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"'{path}', row {i}: w = {w[i]}, level = {level[i]}; weights must be finite and "
            f"levels in 0..{m}."
        )
    layout = FactorLayout(model.ranks, model.tied)
    ftrl = resolve_ftrl(cfg.ftrl, cfg.data.batch_size)
    bias = keys == BIAS_KEY
    z_w = ftrl_init_z(w, ftrl.linear)
    z_w[bias] = ftrl_init_z(w[bias], FtrlRule(ftrl, layout).bias)
    state: dict[str, np.ndarray] = {
        "table.keys": keys,
        "z_w": z_w,
        "n_w": np.zeros_like(w),
        "meta": np.array([0, 1, m, 0], dtype=np.int64),
        "ranks": np.array(model.ranks, dtype=np.int64),
    }
    if m:
        state["level"] = level
    for q, (valid, vals) in enumerate(_factor_columns(table, model.ranks, path), start=1):
        wrong = valid != layout.members(level, q)
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise DataError(
                f"'{path}', row {i} (key {keys[i]}, level {level[i]}): column 'v{q}' is "
                f"{'set' if valid[i] else 'null'}; a {model.kind} key of level k has a row in "
                f"v{q} exactly when {'k == ' if model.tied else 'k >= '}{q}."
            )
        rows = np.full(keys.size, -1, np.int32)
        rows[valid] = np.arange(int(valid.sum()))
        state[f"row{q}"] = rows
        state[f"z{q}"] = ftrl_init_z(vals, ftrl.factor)
        state[f"n{q}"] = np.zeros_like(vals)
    return resplit([state], cfg.ps.shards, tied=model.tied)


@dataclass
class Scored:
    """One scored batch of :meth:`Predictor.iter_batches`: the file's rows ``rows``, their
    predictions, labels, ``coverage`` (:meth:`ServingModel.coverage`) and the ``keep``
    columns of the same rows (None when none were asked for)."""

    day: str
    file: str
    rows: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    coverage: np.ndarray
    kept: pa.Table | None


class Predictor:
    """Scores Parquet logs with an exported model; numpy and pyarrow only."""

    def __init__(self, path: str) -> None:
        self.path = path
        meta = read_model_meta(path)  # a file that is not a psfm model: one line, not a traceback
        fs, p = resolve(path)
        with fs.open_input_file(p) as f:
            table = pq.read_table(f)
        model = _model_config(meta)
        self.kind, self.ranks = model.kind, model.ranks
        self.loss = loss_by_name(model.loss)
        self.data = DataConfig(**_section(meta, "data"))
        self.schema: dict[str, Any] | None = meta.get("schema")
        if self.schema is None:
            log.warning(
                "'%s' records no feature schema (exported by an older psfm): feature columns "
                "are inferred from each file and data of another layout is not refused",
                path,
            )
        tables = []  # level p: (n, D_p) float64, zeros where a key has no row
        for valid, vals in _factor_columns(table, self.ranks, path):
            dense = np.zeros((valid.size, vals.shape[1]))
            dense[valid] = vals
            tables.append(dense)
        self.model = ServingModel(
            FactorLayout(self.ranks, model.tied),
            self.loss,
            keys=table["key"].to_numpy(),
            w=table["w"].to_numpy().astype(np.float64),
            level=table["level"].to_numpy().astype(np.int64),
            tables=tables,
        )

    def feature_schema(
        self, arrow: pa.Schema, file: str, label_optional: bool = False
    ) -> FeatureSchema:
        """The feature columns to read from ``file`` (its Arrow schema ``arrow``): the
        model's recorded ones, after checking that the file has them with values that hash
        alike; a file of another layout or schema is a DataError naming both sides. With
        ``label_optional`` a file without the label column is scored without labels."""
        rec = self.schema
        opt = label_optional
        if rec is None:
            return resolve_schema(self.data, arrow, file, opt)
        names = arrow.names
        keys_type = arrow.field("keys").type if "keys" in names else None
        hashed = keys_type is not None and (
            pa.types.is_list(keys_type) or pa.types.is_large_list(keys_type)
        )
        if rec["layout"] == "hashed":
            if not hashed:
                raise DataError(
                    f"File '{file}' has the columns layout (no list column 'keys'; columns: "
                    f"{', '.join(names)}) but the model '{self.path}' was trained on the hashed "
                    "layout (keys: list<uint64>)."
                )
            hashed_data = dataclasses.replace(self.data, layout="hashed")
            return resolve_schema(hashed_data, arrow, file, opt)
        cat, num = list(rec["categorical"]), list(rec["numeric"])
        missing = [c for c in [*cat, *num] if c not in names]
        if missing:
            has = (
                "the hashed layout (a list column 'keys')"
                if hashed
                else "columns " + ", ".join(names)
            )
            raise DataError(
                f"File '{file}' lacks the feature column(s) {', '.join(missing)} of the model "
                f"'{self.path}', which was trained on the columns layout with "
                f"{len(cat) + len(num)} feature columns ({', '.join([*cat, *num])}); the file "
                f"has {has}."
            )
        for c, kind in rec["value_kinds"].items():
            got = value_kind(arrow.field(c).type)
            if got != kind:
                raise DataError(
                    f"File '{file}': column '{c}' has type {arrow.field(c).type} ({got} values) "
                    f"but the model '{self.path}' hashed it as {kind} values; its keys would "
                    "not be the model's."
                )
        data = dataclasses.replace(
            self.data,
            layout="columns",
            categorical=tuple(cat),
            numeric=tuple(num),
            numeric_transform=rec["numeric_transform"],
        )
        return resolve_schema(data, arrow, file, opt)

    def score_batch(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, RaFM-low probabilities) of a batch (logits for squared loss)."""
        return self.model.predict(
            batch.uniq, batch.occ_sample, batch.occ_uniq, batch.occ_value, batch.size
        )

    def iter_batches(
        self,
        root: str,
        days: Sequence[str] | None = None,
        batch_size: int = 65536,
        keep: Sequence[str] = (),
        label_optional: bool = False,
    ) -> Iterator[Scored]:
        """Score every row of ``days`` (default: all) of ``root``, a batch at a time, with the
        ``keep`` columns of the same rows passed through. With ``label_optional`` files
        without the label column are scored too, their labels NaN."""
        for day in days or list_days(root):
            for u in work_units(root, day):
                pf = open_parquet(u.file)
                schema = self.feature_schema(pf.schema_arrow, u.file, label_optional)
                absent = [c for c in keep if c not in pf.schema_arrow.names]
                if absent:
                    raise DataError(
                        f"File '{u.file}' has no column {', '.join(map(repr, absent))} to keep "
                        f"(columns: {', '.join(pf.schema_arrow.names)})."
                    )
                columns = list(dict.fromkeys([*schema.columns, *keep]))
                starts = np.asarray(row_group_starts(pf))
                for t, _, first in read_unit(u, batch_size, columns, pf=pf):
                    b = build_batch(
                        t, schema, self.loss, self.data.bad_rows, f"File '{u.file}'", first, starts
                    )
                    if b.skipped:
                        raise DataError(
                            f"File '{u.file}': {b.skipped} bad rows; predict "
                            "needs every row scored."
                        )
                    idx = self.model.lookup(b.uniq)
                    probs, _ = self.model.predict(
                        b.uniq, b.occ_sample, b.occ_uniq, b.occ_value, b.size, idx
                    )
                    cov = self.model.coverage(idx, b.uniq, b.occ_sample, b.occ_uniq, b.size)
                    yield Scored(
                        day,
                        u.file,
                        np.arange(first, first + b.size),
                        probs,
                        b.labels,
                        cov,
                        t.select(list(keep)) if keep else None,
                    )

    def iter_scores(
        self, root: str, days: Sequence[str] | None = None, batch_size: int = 65536
    ) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(day, file, first_row, probabilities, labels)`` per batch."""
        for s in self.iter_batches(root, days, batch_size):
            yield s.day, s.file, s.rows, s.probs, s.labels

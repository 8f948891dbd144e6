"""Warm start (``train.init_from``): a new run starts from another run's state or from an
exported model instead of empty shards (alphaFM ``-im``, VW ``-i``: the daily incremental loop).

A warm start is checked against its source before the run directory is touched or a backend
starts (:func:`check_init_config`). It then restores the source's state
(:func:`load_init_states`); when the levels need a statistics pass, the pass
counts this run's training days on empty shards and its keys are folded into the source's
state (:func:`psfm.ps.snapshot.resplit`: known keys keep their state and rise to the level of
their new count, new keys come in as counted). The state is checkpointed as ``day=init``, so a
replayed first day or a resumed run never reads the source again. Shards continue the source's
day count (``day_base``, in every manifest), so eviction by ``levels.ttl_days`` sees the days
since a key was last seen across the two runs; no warm-up unit is trained alone (the model is
not empty). A run on days 1..3 and a run on days 1..2 followed by a warm start on day 3 train
the same model bit for bit when nothing in between depends on the days a run sees: a fixed
``data.batch_size`` and FTRL rates (the automatic ones follow the size of a pass), and
no statistics pass (static RaFM/DiFacto levels, or static admission, count the training days
of their own run).
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from psfm.checkpoint import latest_checkpoint, load_checkpoint, read_manifest, resolve
from psfm.config import Config, to_dict
from psfm.errors import CheckpointError, ConfigError
from psfm.export import model_states, read_model_meta
from psfm.ps.snapshot import resplit

__all__ = ["InitSource", "open_init", "check_init_config", "load_init_states"]

log = logging.getLogger("psfm.runloop")


@dataclass(frozen=True)
class InitSource:
    """What a warm start starts from: a run's model checkpoint (``checkpoint``, the folder
    :func:`psfm.checkpoint.latest_checkpoint` names; ``config`` its manifest's) or an
    exported model file (``checkpoint`` ``""``; ``config`` the file's ``model``, ``levels``
    and ``data`` sections). ``schema``: the feature schema it was trained on
    (:func:`psfm.export.schema_record`), None when it predates the record."""

    path: str
    checkpoint: str
    config: dict[str, Any]
    schema: dict[str, Any] | None

    @property
    def what(self) -> str:
        return f"train.init_from '{self.path}'" + (
            f" (checkpoint {posixpath.basename(self.checkpoint)})" if self.checkpoint else ""
        )


def open_init(path: str) -> InitSource:
    """The warm-start source at ``path``: a model file, or a run directory's model
    checkpoint (its manifest only; the arrays are read by :func:`load_init_states`)."""
    fs, p = resolve(path)
    kind = fs.get_file_info(p).type
    if kind == pafs.FileType.NotFound:
        raise ConfigError(f"train.init_from '{path}': no such run directory or model file.")
    if kind == pafs.FileType.File:
        meta = read_model_meta(path)
        return InitSource(path, "", meta, meta.get("schema"))
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(
            f"train.init_from '{path}': the run directory has no complete checkpoint."
        )
    manifest = read_manifest(ckpt)
    return InitSource(path, ckpt, dict(manifest.get("config") or {}), manifest.get("schema"))


def _difference(there: Any, here: Any) -> str:
    """Both values of a setting, or for feature columns only the columns that differ."""
    if isinstance(there, dict) and isinstance(here, dict):
        parts = [
            f"{c!r} {there.get(c, 'absent')} there, {here.get(c, 'absent')} here"
            for c in sorted(set(there) | set(here))
            if there.get(c) != here.get(c)
        ]
        return "; ".join(parts)
    if isinstance(there, list) and isinstance(here, list):
        gone, new = sorted(set(there) - set(here)), sorted(set(here) - set(there))
        return f"only there {gone}, only here {new}"
    return f"{there!r} there, {here!r} here"


_SCHEMA_KEYS = {
    "layout": "data.layout",
    "categorical": "data.categorical",
    "value_kinds": "the value kinds (int or string) of data.categorical",
    "numeric": "data.numeric",
    "numeric_transform": "data.numeric_transform",
}


def check_init_config(cfg: Config, schema: dict[str, Any] | None, init: InitSource) -> None:
    """A warm start continues the source's model: the same model kind, ranks and loss, the
    same ``levels.policy``, and the same feature schema (layout, feature columns and how
    their values hash), so that every key means what it meant there. FTRL rates, the shard
    count, the seed and the days may change. The first difference is a CheckpointError
    naming the setting and both values."""
    now = to_dict(cfg)
    for section, key in (
        ("model", "kind"),
        ("model", "ranks"),
        ("model", "loss"),
        ("levels", "policy"),
    ):
        sec = init.config.get(section)
        if isinstance(sec, dict) and sec.get(key) != now[section][key]:
            raise CheckpointError(
                f"{init.what} has {section}.{key} = {sec.get(key)!r} but this run "
                f"{now[section][key]!r}; a warm start continues the same model."
            )
    if init.schema is not None and schema is not None:
        there, here, name = init.schema, schema, "feature schema"
    else:  # a source that predates the schema record: its data config
        there, here, name = init.config.get("data") or {}, now["data"], "data config"
    for key in _SCHEMA_KEYS:
        a, b = there.get(key), here.get(key)
        if isinstance(a, list) and isinstance(b, list) and set(a) == set(b):
            continue  # column order does not change a key
        if a != b:
            raise CheckpointError(
                f"{init.what} was trained with {_SCHEMA_KEYS[key]} ({name}) different from "
                f"this run's: {_difference(a, b)}; a warm start needs the same features hashed "
                "to the same keys."
            )


def load_init_states(cfg: Config, init: InitSource) -> tuple[list[dict[str, np.ndarray]], int]:
    """The source's state as ``cfg.ps.shards`` shard states, and the day index its shards
    had reached (0 for a model file): the checkpoint's arrays, re-split by key when its
    shard count differs (:func:`psfm.ps.snapshot.resplit`), or an exported model's weights
    (:func:`psfm.export.model_states`)."""
    if not init.checkpoint:
        return model_states(init.path, cfg), 0
    states, _ = load_checkpoint(init.checkpoint)
    day = max(int(st["meta"][3]) for st in states)
    if len(states) != cfg.ps.shards:
        log.info(
            "re-splitting %d shard states of %s over %d shards",
            len(states),
            init.checkpoint,
            cfg.ps.shards,
        )
        states = resplit(states, cfg.ps.shards, tied=cfg.model.tied)
    return states, day

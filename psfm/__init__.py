"""psfm: FTRL-Proximal training of LR, FM, DiFacto and Rank-Aware FM on a parameter server.

The public surface::

    from psfm import load_config, train_local
    report = train_local(load_config("jobs/configs/rafm.toml", ["data.root='/data/logs'"]))
    print(report["test"]["auc"])

``import psfm`` is light: it imports neither torch nor Ray; each name below is imported from its
module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Config": "psfm.config",
    "load_config": "psfm.config",
    "train_local": "psfm.trainer",
    "evaluate": "psfm.trainer",
    "ParameterShard": "psfm.ps.shard",
    "Worker": "psfm.worker",
    "GenSpec": "psfm.datasets.gen",
    "generate": "psfm.datasets.gen",
    "auc_exact": "psfm.metrics",
    "PsfmError": "psfm.errors",
    "ConfigError": "psfm.errors",
    "DataError": "psfm.errors",
    "CheckpointError": "psfm.errors",
}
__all__ = [
    "Config",
    "load_config",
    "train_local",
    "evaluate",
    "ParameterShard",
    "Worker",
    "GenSpec",
    "generate",
    "auc_exact",
    "PsfmError",
    "ConfigError",
    "DataError",
    "CheckpointError",
]
assert set(__all__) == set(_WHERE)

if TYPE_CHECKING:
    from psfm.config import Config, load_config
    from psfm.datasets.gen import GenSpec, generate
    from psfm.errors import CheckpointError, ConfigError, DataError, PsfmError
    from psfm.metrics import auc_exact
    from psfm.ps.shard import ParameterShard
    from psfm.trainer import evaluate, train_local
    from psfm.worker import Worker


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'psfm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value

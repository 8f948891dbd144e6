"""psfm: FTRL-Proximal training of LR, FM, DiFacto and Rank-Aware FM on a parameter server.

The public surface::

    from psfm import load_config, train_local
    report = train_local(load_config("jobs/configs/rafm.toml", ["data.root='/data/logs'"]))
    print(report["test"]["auc"])
"""

from __future__ import annotations

from psfm.config import Config, load_config
from psfm.data.gen import GenSpec, generate
from psfm.errors import CheckpointError, ConfigError, DataError, PsfmError
from psfm.metrics import auc_exact
from psfm.ps.shard import ParameterShard
from psfm.trainer import evaluate, train_local
from psfm.worker import Worker

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

__version__ = "0.1.0"

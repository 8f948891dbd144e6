"""``psfm train``'s options: the named flags, the hyper-parameters listed under ``--help``
with their defaults, and how the flags become config assignments (``--set`` syntax)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from psfm.config import Config, load_config, to_dict

__all__ = [
    "build_config",
    "option_sets",
    "train_options",
    "set_option",
    "dashboard_option",
    "dashboard_sets",
    "knobs_epilog",
]


def set_option(p: argparse.ArgumentParser, what: str = "one config value") -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable): the override every command that builds a
    config takes (train, quickstart, study)."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override {what} (repeatable)",
    )


def train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (jobs/configs/*.toml)")
    set_option(p)
    p.add_argument("--data", help="data root with day=... partitions (data.root)")
    p.add_argument("--model", choices=["lr", "fm", "difacto", "rafm"], help="model.kind")
    p.add_argument("--ranks", help="comma list of ranks, e.g. 1,2,4,8 (model.ranks)")
    p.add_argument("--train-days", help="days to train on: '1..7' or '1,2,3' (data.train_days)")
    p.add_argument("--test-days", help="days to test on (data.test_days)")
    p.add_argument(
        "--passes",
        type=int,
        metavar="N",
        help="epochs over the training days (train.passes; later passes shuffle "
        "each day's work units)",
    )
    p.add_argument(
        "--valid-days",
        metavar="SPEC",
        help="days scored after each pass, disjoint from the train and test days (data.valid_days)",
    )
    p.add_argument(
        "--early-stop",
        choices=["logloss", "auc"],
        help="stop when this validation metric has not improved for "
        "train.patience passes; test the best pass (train.early_stop)",
    )
    p.add_argument("--run-dir", help="where config, metrics, checkpoints, report go")
    p.add_argument("--shards", type=int, help="parameter shards (ps.shards)")
    p.add_argument("--workers", type=int, help="workers (train.workers)")
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="ROWS",
        help="rows per FTRL step (data.batch_size; 0 = auto from the pass size)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its newest checkpoint that verifies (its "
        "stored config, with the options given here applied on top)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a --run-dir that holds a run (deletes its checkpoints)",
    )
    p.add_argument(
        "--init-from",
        metavar="RUN_DIR|MODEL.parquet",
        help="warm start: begin from another run's model checkpoint or an exported model "
        "instead of empty shards (train.init_from)",
    )
    p.add_argument(
        "--address",
        help="Ray cluster to join ('auto', host:port); default: "
        "RAY_ADDRESS, else a local Ray started by psfm",
    )
    dashboard_option(p)
    p.add_argument(
        "--in-process", action="store_true", help="no Ray: shards and one worker in this process"
    )


def dashboard_option(p: argparse.ArgumentParser) -> None:
    """``--dashboard`` (``ray.dashboard = true``), for every command that starts a local Ray."""
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="the local Ray psfm starts serves its dashboard on 127.0.0.1 and exports psfm's "
        "live metrics (Prometheus; cluster/grafana_psfm.json); its URL is logged (ray.dashboard)",
    )


def dashboard_sets(args: argparse.Namespace) -> list[str]:
    """``--dashboard`` as a ``--set`` assignment (none when not given)."""
    return ["ray.dashboard=true"] if getattr(args, "dashboard", False) else []


# The hyper-parameters a user tunes first, listed under `psfm train --help` with their defaults.
_KNOBS = [
    ("data.batch_size", "rows per FTRL step; 0 = auto: enough steps per pass (psfm.steps)"),
    (
        "ftrl.accumulate",
        "how a batch grows FTRL's n: square_of_sum | sum_of_squares | count_scaled",
    ),
    ("ftrl.linear.alpha", "learning rate of the linear weights; 0 = auto from the batch size"),
    ("ftrl.linear.l1", "L1 of the linear weights (sparsity)"),
    ("ftrl.linear.l2", "L2 of the linear weights"),
    ("ftrl.factor.alpha", "learning rate of the factors; 0 = auto from the batch size"),
    ("ftrl.factor.l1", "L1 of the factors"),
    ("ftrl.factor.l2", "L2 of the factors"),
    ("model.init_std", "standard deviation of new factors"),
    ("levels.count_per_dim", "RaFM/DiFacto levels: occurrences per factor dimension (Eq. 17)"),
    ("ps.mode", "async | sync (reproducible)"),
    ("ps.local_steps", "batches a worker steps on its own copy per pull/push; 0 = auto"),
    ("train.seed", "seed of the factor initialisation (and of the unit order of passes >= 2)"),
    ("train.passes", "epochs over the training days"),
    ("data.valid_days", "days (a SPEC) scored after each pass, for early stopping"),
    ("train.early_stop", 'off ("") | logloss | auc: the validation metric to stop on'),
    ("train.patience", "passes without improvement before early stopping stops"),
]


def knobs_epilog() -> str:
    """The common hyper-parameters with their ``--set`` keys and defaults (from the config)."""
    defaults = to_dict(Config())
    lines = ["common hyper-parameters (--set KEY=VALUE; defaults in brackets):"]
    for key, what in _KNOBS:
        section, *rest = key.split(".")
        value: Any = defaults[section]
        for part in rest:
            value = value[part]
        lines.append(f"  {key:22s} [{json.dumps(value)}] {what}")
    lines.append("every key: README, configuration reference")
    return "\n".join(lines)


def build_config(args: argparse.Namespace) -> Config:
    """Config file, then the named options, then ``--set`` overrides (last wins)."""
    return load_config(args.config, option_sets(args) + list(args.set))


def option_sets(args: argparse.Namespace) -> list[str]:
    """The named options as ``--set`` assignments (only those given)."""
    sets: list[str] = []
    if args.data:
        sets.append(f"data.root={json.dumps(args.data)}")
    if args.model:
        sets.append(f'model.kind="{args.model}"')
        if not args.ranks:
            sets.append("model.ranks=[]")  # the kind's default ranks
    if args.ranks:
        sets.append(f"model.ranks=[{args.ranks}]")
    if args.train_days:
        sets.append(f"data.train_days={json.dumps(args.train_days)}")
    if args.test_days:
        sets.append(f"data.test_days={json.dumps(args.test_days)}")
    if args.passes is not None:
        sets.append(f"train.passes={args.passes}")
    if args.valid_days:
        sets.append(f"data.valid_days={json.dumps(args.valid_days)}")
    if args.early_stop:
        sets.append(f'train.early_stop="{args.early_stop}"')
    if args.run_dir:
        sets.append(f"train.run_dir={json.dumps(args.run_dir)}")
    if args.shards is not None:
        sets.append(f"ps.shards={args.shards}")
    if args.workers is not None:
        sets.append(f"train.workers={args.workers}")
    if args.batch_size is not None:
        sets.append(f"data.batch_size={args.batch_size}")
    if args.overwrite:
        sets.append("train.overwrite=true")
    if args.init_from:
        sets.append(f"train.init_from={json.dumps(args.init_from)}")
    return sets + dashboard_sets(args)

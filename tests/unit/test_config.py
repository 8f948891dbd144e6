"""The config tree: TOML, overrides, validation messages, round trip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psfm.config import (
    Config,
    FtrlConfig,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    to_dict,
)
from psfm.errors import ConfigError
from psfm.optim.ftrl import FtrlParams


def test_toml_with_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[model]\nkind = "rafm"\nranks = [1, 2, 4]\n[ftrl.factor]\nalpha = 0.2\n')
    cfg = load_config(
        f, ["ps.shards=3", "ftrl.factor.l1=0", 'data.root="/x"', "model.dependent_lr_coef=[0.5, 1]"]
    )
    assert cfg.model.ranks == (1, 2, 4) and cfg.ps.shards == 3
    assert cfg.ftrl.factor.alpha == 0.2 and cfg.ftrl.factor.l1 == 0.0
    assert cfg.model.dependent_lr_coef == (0.5, 1.0) and cfg.data.root == "/x"


def test_kind_defaults_and_rank_rules():
    assert ModelConfig(kind="fm").ranks == (8,)
    assert ModelConfig(kind="lr").ranks == ()
    assert ModelConfig(kind="rafm").dependent_lr_coef == (1.0, 1.0, 1.0)
    with pytest.raises(
        ConfigError,
        match="'ranks' parameter of ModelConfig must be a list of 1..1 ranks for kind 'fm'. Got",
    ):
        ModelConfig(kind="fm", ranks=(2, 4))
    with pytest.raises(ConfigError, match="strictly increasing"):
        ModelConfig(kind="rafm", ranks=(4, 2))


@pytest.mark.parametrize(
    "override,needle",
    [
        ("ps.shards=0", "'shards' parameter of PsConfig must be an int >= 1. Got 0 instead."),
        ("ps.warmup_units=-1", "'warmup_units' parameter of PsConfig must be an int >= 0. Got -1"),
        ("ftrl.linear.l1=-0.1", "'l1' parameter of FtrlParams must be a float >= 0. Got -0.1"),
        ('model.kind="svm"', "'kind' parameter of ModelConfig must be one of"),
        ("levels.level_min_count=[1, 5]", "one threshold per level"),
        ("data.batch_size=0.5", "'data.batch_size' parameter must be of type int. Got 0.5"),
        ("model.nonsense=1", "Unknown parameter 'model.nonsense'"),
        ("ps=3", "'ps' section must be a table"),
    ],
)
def test_errors_name_the_parameter_rule_and_value(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)
    assert isinstance(e.value, ValueError)


def test_resolved_config_round_trips():
    cfg = load_config(None, ['model.kind="difacto"', "levels.ttl_days=3"])
    again = config_from_dict(to_dict(cfg))
    assert again == cfg and isinstance(again, Config)
    with pytest.raises(AttributeError):
        cfg.model.kind = "fm"  # frozen


# The documented defaults of FtrlConfig (README, "Defaults"), written out here on purpose: a
# test that read them from FtrlConfig() would pass whatever the defaults were.
LINEAR = FtrlParams(alpha=0.0, beta=1.0, l1=1.0, l2=1.0)  # alpha 0: auto from the batch size
FACTOR = FtrlParams(alpha=0.0, beta=1.0, l1=0.1, l2=1.0)


@pytest.mark.parametrize("group,documented", [("linear", LINEAR), ("factor", FACTOR)])
def test_partial_ftrl_table_keeps_the_documented_defaults(tmp_path, group, documented):
    assert getattr(FtrlConfig(), group) == documented
    assert documented != FtrlParams(l1=0.2)  # else a lost default would go unnoticed
    f = tmp_path / "c.toml"
    f.write_text(f"[ftrl.{group}]\nl1 = 0.2\n")
    expected = FtrlParams(documented.alpha, documented.beta, 0.2, documented.l2)
    assert getattr(load_config(f).ftrl, group) == expected  # a TOML table
    assert getattr(load_config(None, [f"ftrl.{group}.l1=0.2"]).ftrl, group) == expected  # --set
    assert getattr(config_from_dict({"ftrl": {group: {"l1": 0.2}}}).ftrl, group) == expected
    # the other group keeps its documented defaults too
    other = "factor" if group == "linear" else "linear"
    assert getattr(load_config(f).ftrl, other) == (FACTOR if other == "factor" else LINEAR)


@dataclass(frozen=True)
class _Inner:
    a: int = 1
    b: int = 2


@dataclass(frozen=True)
class _Middle:
    inner: _Inner = field(default_factory=lambda: _Inner(a=10))
    c: int = 3


@dataclass(frozen=True)
class _Outer:
    middle: _Middle = field(default_factory=lambda: _Middle(inner=_Inner(a=100, b=200), c=30))
    plain: _Inner = _Inner(b=20)  # a plain default value, not a factory


def test_partial_tables_are_merged_over_the_default_value_at_every_depth():
    from psfm.config import _build

    out = _build(_Outer, {"middle": {"inner": {"b": 5}}, "plain": {"a": 7}}, "")
    assert out == _Outer(_Middle(_Inner(100, 5), 30), _Inner(7, 20))
    assert _build(_Outer, {"middle": {"c": 4}}, "") == _Outer(_Middle(_Inner(100, 200), 4))
    assert _build(_Middle, {"inner": {"b": 5}}, "") == _Middle(_Inner(10, 5))


def test_fields_a_section_derives_are_derived_again_from_the_new_values():
    # ModelConfig() resolves ranks from kind; a partial [model] table must not carry the
    # default kind's resolved ranks over to another kind.
    assert load_config(None, ['model.kind="fm"']).model.ranks == (8,)
    assert load_config(None, ['model.kind="lr"']).model.ranks == ()


def test_full_round_trip_after_partial_tables():
    cfg = load_config(None, ["ftrl.factor.l1=0.2", "ftrl.linear.alpha=0.5", 'model.kind="fm"'])
    assert config_from_dict(to_dict(cfg)) == cfg
    assert config_from_dict(apply_overrides(to_dict(cfg), ["ftrl.factor.l2=2"])).ftrl.factor == (
        FtrlParams(0.0, 1.0, 0.2, 2.0)
    )


def test_squared_loss_is_refused_until_the_metrics_support_regression():
    with pytest.raises(ConfigError) as e:
        ModelConfig(loss="squared")
    assert str(e.value) == (
        "The 'loss' parameter of ModelConfig must be 'logistic' (regression with squared loss "
        "is not supported yet). Got 'squared' instead."
    )
    assert isinstance(e.value, ValueError)
    with pytest.raises(
        ConfigError,
        match="'loss' parameter of ModelConfig must be one of 'logistic'. Got 'hinge' instead.",
    ):
        ModelConfig(loss="hinge")
    assert ModelConfig(loss="logistic").loss == "logistic"


def _hashed_days(root, days=2, rows=64):
    """A tiny dataset in the pre-hashed layout (``psfm convert libfm``'s output)."""
    rng = np.random.default_rng(0)
    for d in range(1, days + 1):
        (root / f"day={d}").mkdir(parents=True)
        keys = [list(rng.integers(1, 1000, size=3).astype(np.uint64)) for _ in range(rows)]
        t = pa.table(
            {
                "label": pa.array(rng.integers(0, 2, size=rows), pa.int8()),
                "keys": pa.array(keys, pa.list_(pa.uint64())),
            }
        )
        pq.write_table(t, root / f"day={d}" / "part-0.parquet")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("sets", [[], ['--set=data.layout="hashed"']])
def test_run_dir_config_records_the_layout_really_used(tmp_path, sets, monkeypatch):
    # Files with a list-typed 'keys' column are read with the hashed layout even when the
    # config says "columns" (the default); the config.json the run writes must say so. The
    # run stops right after the trainer has written config.json (before any training).
    import psfm.runloop
    from psfm.cli import main

    def stop(cfg):
        raise _Stop

    monkeypatch.setattr(psfm.runloop, "needs_stats_pass", stop)
    _hashed_days(tmp_path / "data")
    run = tmp_path / "run"
    with pytest.raises(_Stop):
        main(
            [
                "train",
                "--in-process",
                "--data",
                str(tmp_path / "data"),
                "--model",
                "lr",
                "--run-dir",
                str(run),
                *sets,
            ]
        )
    assert json.loads((run / "config.json").read_text())["data"]["layout"] == "hashed"


def test_train_help_lists_the_common_knobs_with_their_defaults(capsys):
    """`psfm train --help` names the hyper-parameters a user tunes first, their --set keys and
    the defaults the config really has."""
    from psfm.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    cfg = Config()
    assert "--batch-size" in out
    out = out.split("common hyper-parameters", 1)[1]
    for key, value in (
        ("data.batch_size", cfg.data.batch_size),
        ("ftrl.linear.alpha", cfg.ftrl.linear.alpha),
        ("ftrl.factor.alpha", cfg.ftrl.factor.alpha),
        ("ftrl.factor.l1", cfg.ftrl.factor.l1),
        ("model.init_std", cfg.model.init_std),
    ):
        assert f"{key}" in out and f"[{value}]" in out.split(key, 1)[1].splitlines()[0]


@pytest.mark.parametrize(
    "name, value",
    [
        ("passes", 0),
        ("passes", -1),
        ("passes", 1.5),
        ("passes", True),
        ("patience", 0),
        ("patience", "2"),
    ],
)
def test_passes_and_patience_must_be_ints_of_at_least_one(name, value):
    from psfm.config import TrainConfig

    with pytest.raises(
        ConfigError,
        match=rf"The '{name}' parameter of TrainConfig must be an "
        rf"int >= 1. Got {value!r} instead.",
    ):
        TrainConfig(**{name: value})


def test_early_stopping_names_a_metric_and_needs_validation_days():
    from psfm.config import TrainConfig

    with pytest.raises(
        ConfigError,
        match="The 'early_stop' parameter of TrainConfig must be "
        "one of '', 'logloss', 'auc'. Got 'loss' instead.",
    ):
        TrainConfig(early_stop="loss")
    with pytest.raises(
        ConfigError,
        match=r"The 'early_stop' parameter of TrainConfig must be "
        r"'' \(off\) while data.valid_days is empty.*Got "
        r"'auc' instead.",
    ):
        load_config(None, ['train.early_stop="auc"'])
    cfg = load_config(
        None,
        ['train.early_stop="auc"', 'data.valid_days="5"', "train.passes=4", "train.patience=2"],
    )
    assert (cfg.train.passes, cfg.train.early_stop, cfg.train.patience) == (4, "auc", 2)
    assert cfg.data.valid_days == "5" and Config().train.passes == 1


def test_train_options_set_passes_validation_and_early_stopping():
    from psfm.cli import _parser, build_config

    args = _parser().parse_args(
        ["train", "--passes", "3", "--valid-days", "6..7", "--early-stop", "logloss"]
    )
    cfg = build_config(args)
    assert (cfg.train.passes, cfg.data.valid_days, cfg.train.early_stop) == (3, "6..7", "logloss")
    assert build_config(_parser().parse_args(["train"])).train.passes == 1

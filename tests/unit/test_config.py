"""The config tree: TOML, overrides, validation messages, round trip."""

from __future__ import annotations

import pytest

from psfm.config import Config, ModelConfig, config_from_dict, load_config, to_dict
from psfm.errors import ConfigError


def test_toml_with_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[model]\nkind = "rafm"\nranks = [1, 2, 4]\n[ftrl.factor]\nalpha = 0.2\n')
    cfg = load_config(f, ["ps.shards=3", "ftrl.factor.l1=0", 'data.root="/x"',
                          "model.dependent_lr_coef=[0.5, 1]"])
    assert cfg.model.ranks == (1, 2, 4) and cfg.ps.shards == 3
    assert cfg.ftrl.factor.alpha == 0.2 and cfg.ftrl.factor.l1 == 0.0
    assert cfg.model.dependent_lr_coef == (0.5, 1.0) and cfg.data.root == "/x"


def test_kind_defaults_and_rank_rules():
    assert ModelConfig(kind="fm").ranks == (8,)
    assert ModelConfig(kind="lr").ranks == ()
    assert ModelConfig(kind="rafm").dependent_lr_coef == (1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="'ranks' parameter of ModelConfig must be a list of "
                                          "1..1 ranks for kind 'fm'. Got"):
        ModelConfig(kind="fm", ranks=(2, 4))
    with pytest.raises(ConfigError, match="strictly increasing"):
        ModelConfig(kind="rafm", ranks=(4, 2))


@pytest.mark.parametrize("override,needle", [
    ("ps.shards=0", "'shards' parameter of PsConfig must be an int >= 1. Got 0 instead."),
    ("ps.warmup_units=-1", "'warmup_units' parameter of PsConfig must be an int >= 0. Got -1"),
    ("ftrl.linear.l1=-0.1", "'l1' parameter of FtrlParams must be a float >= 0. Got -0.1"),
    ('model.kind="svm"', "'kind' parameter of ModelConfig must be one of"),
    ("levels.level_min_count=[1, 5]", "one threshold per level"),
    ("data.batch_size=0.5", "'data.batch_size' parameter must be of type int. Got 0.5"),
    ("model.nonsense=1", "Unknown parameter 'model.nonsense'"),
    ("ps=3", "'ps' section must be a table"),
])
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

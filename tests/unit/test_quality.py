"""psfm at its defaults learns as well as per-sample FTRL (issue: quality at defaults).

Users judge a trainer by what it does at its defaults on their data. The per-sample FTRL-FM of
``tests/reference`` (one row at a time, the alphaFM update order) with the same
hyper-parameters is the bar: after one pass, psfm FM(8) at its defaults must be within 0.005
test AUC of it, on a compact 10-field log and on the 39-field Zipf log, from 20k rows (the
default run) to 1M rows (``slow``). The logs are the ones ``tools/compare_reference.py``
measures (2 training days + 1 test day, generator seed 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.reference

from psfm.config import config_from_dict, load_config  # noqa: E402
from psfm.datasets.gen import GenSpec, generate  # noqa: E402
from psfm.trainer import train_local  # noqa: E402
from tests.reference.ftrl_fm import run_reference  # noqa: E402

SPECS = {"dense": GenSpec.small, "zipf39": GenSpec}
CASES = [
    ("dense", 20_000),
    ("zipf39", 20_000),
    pytest.param("dense", 100_000, marks=pytest.mark.slow),
    pytest.param("zipf39", 100_000, marks=pytest.mark.slow),
    pytest.param("dense", 1_000_000, marks=pytest.mark.slow),
    pytest.param("zipf39", 1_000_000, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("spec,rows", CASES)
def test_fm_at_defaults_is_within_0_005_auc_of_per_sample_ftrl(tmp_path, spec, rows):
    root = tmp_path / "logs"
    generate(root, days=3, rows_per_day=rows // 2, spec=SPECS[spec](), seed=0)
    cfg = load_config(None, [f"data.root={json.dumps(str(root))}", 'model.kind="fm"'])
    rep = train_local(cfg)  # days 1-2, tests day 3 (the defaults' split)
    # the reference takes the hyper-parameters psfm resolved (rates chosen for its batch size)
    resolved = config_from_dict(rep["config"])
    assert resolved.ftrl.linear.alpha > 0 and resolved.ftrl.factor.alpha > 0
    ref = run_reference(str(root), ["1", "2"], ["3"], dim=8, config=resolved)
    assert rep["train"]["rows"] == ref["train_rows"] == rows
    assert rep["test"]["auc"] >= ref["auc"] - 0.005, (rep["test"]["auc"], ref["auc"])
    assert rep["test"]["logloss"] <= ref["logloss"] + 0.005, (
        rep["test"]["logloss"],
        ref["logloss"],
    )

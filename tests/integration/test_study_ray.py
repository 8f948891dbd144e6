"""psfm study on a real local Ray: the tiny study's grid points run one after another through
psfm.ray_backend.driver.train_ray, then a rerun skips them."""

from __future__ import annotations

import csv
import json

import pytest

from psfm.datasets.gen import GenSpec, generate
from psfm.study.runner import run_study
from psfm.study.spec import study_from_dict


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_ray_data")
    generate(root, days=3, rows_per_day=5000, spec=GenSpec.small(), seed=1)
    return root


def test_a_tiny_study_on_a_local_ray(ray_local, data, tmp_path):
    study = study_from_dict(
        {
            "name": "tiny-ray",
            "base": {
                "data": {"root": str(data), "train_days": "1..2", "test_days": "3"},
                "ps": {"shards": 1},
                "train": {"workers": 1},
            },
            "grid": {"seeds": [0], "l1": [1.0, 4.0]},
            "models": [
                {"kind": "lr"},
                {"kind": "fm", "ranks": [4]},
                {"kind": "rafm", "label": "bad", "count_per_dim": [-1.0], "l1": [1.0]},
            ],
        }
    )
    out = tmp_path / "study"
    res = run_study(study, str(out), echo=lambda s: None)
    ok = ["lr_l1-1_s0", "lr_l1-4_s0", "fm-4_l1-1_s0", "fm-4_l1-4_s0"]
    assert res["actions"] == {**dict.fromkeys(ok, "trained"), "bad_c-1_l1-1_s0": "failed"}
    with open(out / "results.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    for name in ok:
        report = json.loads((out / "runs" / name / "report.json").read_text())
        r = rows[name]
        assert r["status"] == "ok" and float(r["test_auc"]) == report["test"]["auc"]
        assert int(r["nonzero_params"]) == report["model"]["nonzero_params"] > 0
        # the rescored test pass (in the driver, from the checkpoint) agrees with the run's
        record = json.loads((out / "runs" / name / "study_run.json").read_text())
        assert record["test_auc_rescored"] == pytest.approx(report["test"]["auc"], abs=1e-9)
    assert float(rows["fm-4_l1-1_s0"]["test_auc"]) > float(rows["lr_l1-1_s0"]["test_auc"])
    assert "count_per_dim" in rows["bad_c-1_l1-1_s0"]["error"]
    assert (out / "summary.csv").exists() and (out / "results.parquet").exists()

    again = run_study(study, str(out), echo=lambda s: None)
    assert again["actions"] == {**dict.fromkeys(ok, "skipped"), "bad_c-1_l1-1_s0": "failed"}

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


def test_runs_go_at_once_on_ray_and_train_what_they_train_one_by_one(ray_local, data, tmp_path):
    """--concurrency 2: two runs' actors at a time (placement groups), each run the same
    model as alone (one worker: deterministic, the in-process run's model)."""
    study = study_from_dict(
        {
            "name": "tiny-concurrent",
            "concurrency": 2,
            "measure_test_seconds": False,
            "base": {
                "data": {"root": str(data), "train_days": "1..2", "test_days": "3"},
                "ps": {"shards": 1},
                "train": {"workers": 1},
            },
            "grid": {"seeds": [0], "l1": [1.0, 4.0]},
            "models": [{"kind": "lr"}, {"kind": "fm", "ranks": [4]}],
        }
    )
    lines: list[str] = []
    res = run_study(study, str(tmp_path / "ray"), echo=lines.append)
    assert "4 runs on Ray (local or RAY_ADDRESS), 2 at once" in lines[0]
    assert set(res["actions"].values()) == {"trained"}
    alone = run_study(study, str(tmp_path / "local"), in_process=True, echo=lambda s: None)
    assert set(alone["actions"].values()) == {"trained"}
    spans = []
    for name in res["actions"]:
        a = json.loads((tmp_path / "ray" / "runs" / name / "report.json").read_text())
        b = json.loads((tmp_path / "local" / "runs" / name / "report.json").read_text())
        assert a["test"]["auc"] == b["test"]["auc"], name
        rec = json.loads((tmp_path / "ray" / "runs" / name / "study_run.json").read_text())
        spans.append((rec["started_at"], rec["finished_at"]))
    spans.sort()
    assert any(s2 < e1 for (_, e1), (s2, _) in zip(spans, spans[1:]))  # some ran together

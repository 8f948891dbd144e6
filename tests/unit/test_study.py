"""psfm study: a grid of real in-process runs on generated data, its tables (CSV, Parquet,
summary, Table 4), skipping finished runs, resuming interrupted ones, recording failed ones;
the Pareto front on hand-made points; study config errors."""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
import sys
import time

import pyarrow.parquet as pq
import pytest

from psfm.cli import main
from psfm.datasets.gen import GenSpec, generate
from psfm.errors import ConfigError
from psfm.study.report import pareto_front, plot_auc_vs_size, write_outputs
from psfm.study.runner import run_study
from psfm.study.spec import load_study, study_from_dict


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_data")
    generate(root, days=3, rows_per_day=5000, spec=GenSpec.small(), seed=1)
    return root


def _tiny(root, **extra):
    """lr and fm(4) at two l1 values, and one grid point whose config is bad (count_per_dim
    below 0: the run's config refuses it)."""
    values = {
        "name": "tiny",
        "base": {
            "data": {"root": str(root), "train_days": "1..2", "test_days": "3"},
            "ps": {"shards": 1},
        },
        "grid": {"seeds": [0], "l1": [1.0, 4.0]},
        "models": [
            {"kind": "lr"},
            {"kind": "fm", "ranks": [4]},
            {"kind": "rafm", "label": "bad", "count_per_dim": [-1.0], "l1": [1.0]},
        ],
    }
    values.update(extra)
    return study_from_dict(values)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def done(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "tiny"
    study = _tiny(data)
    lines: list[str] = []
    t0 = time.perf_counter()
    res = run_study(study, str(out), in_process=True, echo=lines.append)
    return study, out, res, time.perf_counter() - t0, lines


def test_the_grid_runs_and_writes_results_parquet_and_summary(done):
    study, out, res, _, lines = done
    assert [p.name for p in study.points] == [
        "lr_l1-1_s0",
        "lr_l1-4_s0",
        "fm-4_l1-1_s0",
        "fm-4_l1-4_s0",
        "bad_c-1_l1-1_s0",
    ]
    assert res["actions"] == {
        "lr_l1-1_s0": "trained",
        "lr_l1-4_s0": "trained",
        "fm-4_l1-1_s0": "trained",
        "fm-4_l1-4_s0": "trained",
        "bad_c-1_l1-1_s0": "failed",
    }
    rows = {r["name"]: r for r in _csv(out / "results.csv")}
    assert len(rows) == 5
    for name in ("lr_l1-1_s0", "lr_l1-4_s0", "fm-4_l1-1_s0", "fm-4_l1-4_s0"):
        r = rows[name]
        report = json.loads((out / "runs" / name / "report.json").read_text())
        assert r["status"] == "ok" and r["error"] == ""
        assert float(r["test_auc"]) == report["test"]["auc"] and 0.5 < float(r["test_auc"]) < 1
        assert int(r["nonzero_params"]) == report["model"]["nonzero_params"] > 0
        assert int(r["ps_bytes"]) == report["model"]["ps_bytes"] > 0
        assert float(r["train_samples_per_s"]) > 0 and float(r["train_seconds"]) > 0
        assert float(r["test_seconds"]) > 0 and int(r["test_rows"]) == 5000
        assert int(r["train_rows"]) == 10_000
    # LR's own ratio is 1; FM's is against the LR run with the same seed and linear l1
    assert float(rows["lr_l1-1_s0"]["nonzero_vs_lr"]) == 1.0
    fm, lr = rows["fm-4_l1-4_s0"], rows["lr_l1-4_s0"]
    assert float(fm["nonzero_vs_lr"]) == pytest.approx(
        int(fm["nonzero_params"]) / int(lr["nonzero_params"])
    )
    assert float(fm["nonzero_vs_lr"]) > 5  # FM(4) stores factors for every seen feature
    # a larger l1 keeps fewer linear weights: LR's size falls
    assert int(rows["lr_l1-4_s0"]["nonzero_params"]) < int(rows["lr_l1-1_s0"]["nonzero_params"])
    # FM beats LR on data with interactions
    assert float(rows["fm-4_l1-1_s0"]["test_auc"]) > float(rows["lr_l1-1_s0"]["test_auc"]) + 0.02

    bad = rows["bad_c-1_l1-1_s0"]
    assert bad["status"] == "failed" and bad["test_auc"] == ""
    assert "count_per_dim" in bad["error"] and "-1.0" in bad["error"]
    assert any("bad_c-1_l1-1_s0: failed: The 'count_per_dim'" in line for line in lines)

    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == 5
    assert table.schema.field("test_auc").type == "double"
    assert table.schema.field("nonzero_params").type == "int64"
    got = table.to_pylist()
    assert [g["name"] for g in got] == list(rows)
    assert [g["status"] for g in got] == [r["status"] for r in rows.values()]
    assert got[4]["test_auc"] is None and "count_per_dim" in got[4]["error"]
    assert got[2]["test_auc"] == float(rows["fm-4_l1-1_s0"]["test_auc"])

    summary = {s["label"]: s for s in _csv(out / "summary.csv")}
    assert list(summary) == ["lr_l1-1", "lr_l1-4", "fm-4_l1-1", "fm-4_l1-4", "bad_c-1_l1-1"]
    s = summary["fm-4_l1-1"]
    assert (s["runs"], s["ok"], s["failed"]) == ("1", "1", "0")
    assert float(s["test_auc_mean"]) == float(rows["fm-4_l1-1_s0"]["test_auc"])
    assert s["test_auc_std"] == ""  # one seed: no sample std
    assert summary["bad_c-1_l1-1"]["ok"] == "0" and summary["bad_c-1_l1-1"]["pareto"] == "False"
    # the smallest model is always on the front
    assert summary["lr_l1-4"]["pareto"] == "True"


def test_the_png_is_written_when_matplotlib_is_there(done):
    _, out, res, _, _ = done
    pytest.importorskip("matplotlib")
    assert res["plot_error"] is None and "auc_vs_size.png" in res["files"]
    assert (out / "auc_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_far_below_the_rest_adds_a_panel_at_the_others_scale():
    pytest.importorskip("matplotlib")

    def point(model, auc, nz):
        return {
            "model": model,
            "title": model,
            "ranks": "",
            "test_auc_mean": auc,
            "test_auc_std": 0.001,
            "nonzero_params_mean": nz,
            "nonzero_params_std": 0.0,
            "pareto": False,
        }

    def width(png):  # the PNG header's IHDR width
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        return int.from_bytes(png[16:20], "big")

    close = [point("fm", 0.762, 1.6e7), point("difacto", 0.763, 3e6), point("rafm", 0.762, 3.7e6)]
    one = width(plot_auc_vs_size(close))
    two = width(plot_auc_vs_size([point("lr", 0.684, 4e5), *close]))  # LR: 0.08 below
    assert two > 1.5 * one


def test_without_matplotlib_the_tables_are_written_and_the_extra_named(done, tmp_path, monkeypatch):
    study, out, _, _, _ = done
    copy_dir = tmp_path / "copy"
    shutil.copytree(out, copy_dir)
    for f in ("results.csv", "summary.csv", "auc_vs_size.png"):
        (copy_dir / f).unlink(missing_ok=True)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    res = write_outputs(str(copy_dir), study)
    assert "pip install 'psfm[plot]'" in res["plot_error"]
    assert (copy_dir / "results.csv").exists() and (copy_dir / "summary.csv").exists()
    assert not (copy_dir / "auc_vs_size.png").exists()


def test_a_rerun_skips_finished_runs_and_retries_failed_ones(done):
    study, out, _, first_s, _ = done
    ok = ["lr_l1-1_s0", "lr_l1-4_s0", "fm-4_l1-1_s0", "fm-4_l1-4_s0"]
    stamps = {
        n: [(out / "runs" / n / f).stat().st_mtime_ns for f in ("report.json", "metrics.jsonl")]
        for n in ok
    }
    t0 = time.perf_counter()
    res = run_study(study, str(out), in_process=True, echo=lambda s: None)
    took = time.perf_counter() - t0
    assert res["actions"] == {**dict.fromkeys(ok, "skipped"), "bad_c-1_l1-1_s0": "failed"}
    assert {
        n: [(out / "runs" / n / f).stat().st_mtime_ns for f in ("report.json", "metrics.jsonl")]
        for n in ok
    } == stamps
    assert took < first_s and took < 10
    assert [r["status"] for r in _csv(out / "results.csv")] == ["ok"] * 4 + ["failed"]


def test_an_interrupted_run_is_resumed_from_its_checkpoints(done, tmp_path):
    study, out, _, _, _ = done
    copy_dir = tmp_path / "copy"
    shutil.copytree(out, copy_dir)
    run = copy_dir / "runs" / "fm-4_l1-1_s0"
    before = json.loads((run / "report.json").read_text())
    # interrupted during day 2: day 1's checkpoint, no day 2, no report
    (run / "report.json").unlink()
    shutil.rmtree(run / "checkpoints" / "day=2")
    day1 = (run / "checkpoints" / "day=1" / "MANIFEST.json").stat().st_mtime_ns
    res = run_study(study, str(copy_dir), in_process=True, echo=lambda s: None)
    assert res["actions"]["fm-4_l1-1_s0"] == "resumed"
    assert res["actions"]["lr_l1-1_s0"] == "skipped"
    after = json.loads((run / "report.json").read_text())
    assert (run / "checkpoints" / "day=2" / "MANIFEST.json").exists()
    assert (run / "checkpoints" / "day=1" / "MANIFEST.json").stat().st_mtime_ns == day1
    assert [d["day"] for d in after["train"]["per_day"]] == ["1", "2"]
    # day 1 restored, day 2 trained again in one process: the model of the uninterrupted run
    assert after["test"]["auc"] == pytest.approx(before["test"]["auc"], abs=1e-9)
    assert after["model"]["nonzero_params"] == before["model"]["nonzero_params"]
    row = next(r for r in _csv(copy_dir / "results.csv") if r["name"] == "fm-4_l1-1_s0")
    assert row["status"] == "ok" and row["resumed"] == "True"


def test_a_finished_run_of_another_config_is_not_reused(done, data, tmp_path):
    _, out, _, _, _ = done
    copy_dir = tmp_path / "copy"
    shutil.copytree(out, copy_dir)
    other = _tiny(data, models=[{"kind": "lr"}])
    other.base["data"]["train_days"] = "1"
    res = run_study(other, str(copy_dir), in_process=True, echo=lambda s: None)
    assert res["actions"] == {"lr_l1-1_s0": "failed", "lr_l1-4_s0": "failed"}
    err = res["rows"][0]["error"]
    assert "another config" in err and "data.train_days: '1..2' there, '1' here" in err


def test_study_report_rerenders_from_the_runs(done, tmp_path, capsys):
    _, out, _, _, _ = done
    copy_dir = tmp_path / "copy"
    shutil.copytree(out, copy_dir)
    (copy_dir / "results.csv").unlink()
    (copy_dir / "summary.csv").unlink()
    assert main(["study", "report", str(copy_dir), "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "fm-4_l1-1" in text and "on the Pareto front" in text
    assert [r["status"] for r in _csv(copy_dir / "results.csv")] == ["ok"] * 4 + ["failed"]
    assert len(_csv(copy_dir / "summary.csv")) == 5
    assert main(["study", "report", str(tmp_path)]) == 2  # not a study directory


def test_the_cli_runs_a_study_config_and_exits_1_when_a_run_failed(data, tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[base]\ndata.train_days = "1..2"\ndata.test_days = "3"\nps.shards = 1\n'
        '[[models]]\nkind = "lr"\n'
        '[[models]]\nkind = "fm"\nranks = [4]\nset = { "ftrl.factor.l2" = -1.0 }\n'
    )
    out = tmp_path / "out"
    rc = main(
        ["study", "--config", str(cfg), "--data", str(data), "--out", str(out), "--in-process"]
    )
    assert rc == 1
    rows = _csv(out / "results.csv")
    assert [(r["name"], r["status"]) for r in rows] == [("lr_s0", "ok"), ("fm-4_s0", "failed")]
    assert "l2" in rows[1]["error"]
    assert "1 of 2 runs finished (1 failed)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- Table 4


def test_table4_protocol_epochs_early_stopping_seeds(data, tmp_path):
    study = study_from_dict(
        {
            "protocol": "table4",
            "name": "t4",
            "base": {
                "data": {
                    "root": str(data),
                    "train_days": "1",
                    "valid_days": "2",
                    "test_days": "3",
                },
                "ps": {"shards": 1},
                "train": {"passes": 3},
            },
            "grid": {"seeds": [0, 1, 2]},
            "models": [{"kind": "fm", "ranks": [4]}, {"kind": "rafm"}],
        }
    )
    assert study.base["train"]["early_stop"] == "logloss"  # the protocol's default
    out = tmp_path / "t4"
    res = run_study(study, str(out), in_process=True, echo=lambda s: None)
    assert set(res["actions"].values()) == {"trained"}
    rows = _csv(out / "results.csv")
    assert len(rows) == 6
    for r in rows:
        assert 1 <= int(r["best_pass"]) <= int(r["passes"]) <= 3
        assert float(r["valid_logloss"]) > 0
    t4 = _csv(out / "table4.csv")
    assert [r["model"] for r in t4] == ["FM(4)", "RaFM({1,2,4,8})"]
    for r in t4:
        assert r["seeds"] == "3"
        assert float(r["test_logloss_std"]) >= 0 and 0.5 < float(r["test_auc_mean"]) < 1
        assert float(r["train_seconds_mean"]) > 0 and float(r["test_seconds_mean"]) > 0
        aucs = [float(x["test_auc"]) for x in rows if x["label"] == r["label"]]
        assert float(r["test_auc_mean"]) == pytest.approx(sum(aucs) / 3)
    md = (out / "table4.md").read_text()
    assert "| FM(4) | 3 |" in md and "±" in md and "| test logloss | test AUC |" in md


@pytest.mark.parametrize(
    "change, words",
    [
        ({"grid": {"seeds": [0, 1]}}, ["grid.seeds", "at least 3 seeds", "[0, 1]"]),
        ({"valid_days": ""}, ["data.valid_days", "table4"]),
        ({"passes": 1}, ["train.passes", ">= 2", "Got 1"]),
    ],
)
def test_table4_protocol_rules(data, change, words):
    base = {
        "data": {"root": str(data), "train_days": "1", "valid_days": "2", "test_days": "3"},
        "train": {"passes": 2},
    }
    if "valid_days" in change:
        base["data"]["valid_days"] = change["valid_days"]
    if "passes" in change:
        base["train"]["passes"] = change["passes"]
    values = {
        "protocol": "table4",
        "base": base,
        "grid": change.get("grid", {"seeds": [0, 1, 2]}),
        "models": [{"kind": "fm"}],
    }
    with pytest.raises(ConfigError) as e:
        study_from_dict(values)
    for w in words:
        assert w in str(e.value)


# ----------------------------------------------------------------------------- the grid


def test_the_grid_expands_models_ranks_count_per_dim_l1_and_seeds(data):
    study = study_from_dict(
        {
            "base": {"data": {"root": str(data)}, "train": {"seed": 7}},
            "grid": {"count_per_dim": [1, 16], "l1": [1.0, {"linear": 2.0, "factor": 0.5}]},
            "models": [
                {"kind": "lr"},
                {"kind": "fm", "ranks": [[8], [32]]},
                {"kind": "rafm", "label": "rafm-c", "count_per_dim": [4.0], "l1": [0.1]},
                {"kind": "difacto"},
            ],
        }
    )
    names = [p.name for p in study.points]
    assert names == [
        "lr_l1-1_s7",
        "lr_l1-2_s7",  # LR: one run per linear l1
        "fm-8_l1-1_s7",
        "fm-8_l1-2+0.5_s7",
        "fm-32_l1-1_s7",
        "fm-32_l1-2+0.5_s7",
        "rafm-c_c4_l1-0.1_s7",  # its own lists replace the grid's
        "difacto_c1_l1-1_s7",
        "difacto_c1_l1-2+0.5_s7",
        "difacto_c16_l1-1_s7",
        "difacto_c16_l1-2+0.5_s7",
    ]
    p = {x.name: x for x in study.points}
    assert p["lr_l1-2_s7"].l1_factor is None and p["lr_l1-2_s7"].count_per_dim is None
    assert p["fm-8_l1-2+0.5_s7"].count_per_dim is None  # one level: c does not apply
    cfg = study.run_config(p["fm-32_l1-2+0.5_s7"], "/tmp/x")
    assert cfg.model.kind == "fm" and cfg.model.ranks == (32,)
    assert (cfg.ftrl.linear.l1, cfg.ftrl.factor.l1) == (2.0, 0.5)
    assert cfg.train.seed == 7 and cfg.train.run_dir == "/tmp/x" and not cfg.train.overwrite
    cfg = study.run_config(p["difacto_c16_l1-1_s7"], "/tmp/y")
    assert cfg.levels.count_per_dim == 16.0 and cfg.model.ranks == (1, 2, 4, 8)
    assert p["difacto_c16_l1-1_s7"].title == "DiFacto({1,2,4,8}), c = 16, l1 = 1"


def test_a_base_run_config_file_and_set_overrides(data, tmp_path):
    (tmp_path / "run.toml").write_text(
        '[model]\nkind = "fm"\n[ps]\nshards = 1\n[train]\nrun_dir = "runs/x"\nseed = 3\n'
    )
    (tmp_path / "s.toml").write_text('base = "run.toml"\n[[models]]\nkind = "fm"\n')
    study = load_study(tmp_path / "s.toml", data=str(data), sets=["ps.shards=2"])
    assert study.name == "s" and [p.name for p in study.points] == ["fm_s3"]
    cfg = study.run_config(study.points[0], "/r")
    assert cfg.data.root == str(data) and cfg.ps.shards == 2 and cfg.train.run_dir == "/r"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"protocol": "grid2"}, ["'protocol'", "'grid', 'table4'", "'grid2'"]),
        ({"modles": []}, ["Unknown study config key 'modles'"]),
        ({"grid": {"seed": [1]}}, ["Unknown study config key 'grid.seed'"]),
        ({"grid": {"seeds": [0, 0]}}, ["'grid.seeds'", "distinct ints", "[0, 0]"]),
        ({"grid": {"seeds": []}}, ["'grid.seeds'", "non-empty", "[]"]),
        ({"grid": {"count_per_dim": "16"}}, ["'grid.count_per_dim'", "numbers", "'16'"]),
        ({"grid": {"l1": [-1]}}, ["'grid.l1'", ">= 0", "[-1]"]),
        ({"grid": {"l1": [{"linear": 1}]}}, ["'grid.l1'", "{linear = x, factor = y}"]),
        ({"models": []}, ["'models'", "non-empty array", "[]"]),
        ({"models": [{"kind": "ffm"}]}, ["'models[0].kind'", "'lr', 'fm'", "'ffm'"]),
        ({"models": [{"kind": "fm", "ranks": "8"}]}, ["'models[0].ranks'", "'8'"]),
        ({"models": [{"kind": "fm", "rank": [8]}]}, ["'models[0].rank'", "Known keys"]),
        ({"models": [{"kind": "fm", "label": "a/b"}]}, ["'models[0].label'", "'a/b'"]),
        (
            {"models": [{"kind": "fm", "ranks": [8]}, {"kind": "fm", "ranks": [[4], [8]]}]},
            ["both named 'fm-8_s0'", "label"],
        ),
        ({"base": 3}, ["'base'", "a path to a run config", "3"]),
        ({"base": {"ps": {"shards": 0}}}, ["'shards'", "PsConfig", "0"]),
        ({"base": {"model": {"kind": "rafm"}}, "_no_root": True}, ["no data", "--data DIR"]),
        ({"base": "missing.toml"}, ["Cannot read base run config", "missing.toml"]),
        ({"concurrency": 0}, ["'concurrency'", "an int >= 1", "0"]),
        ({"concurrency": "2"}, ["'concurrency'", "'2'"]),
    ],
)
def test_bad_study_configs_name_the_key_the_rule_and_the_value(data, change, words):
    values: dict = {"base": {"data": {"root": str(data)}}, "models": [{"kind": "lr"}]}
    change = copy.deepcopy(change)
    no_root = change.pop("_no_root", False)
    values.update(change)
    with pytest.raises(ConfigError) as e:
        study_from_dict(values, data=None if no_root or "base" not in change else str(data))
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


# ----------------------------------------------------------------------------- Pareto front


def test_pareto_front_on_hand_made_points():
    pts = [
        (100, 0.70),  # 0: on the front (smallest)
        (200, 0.69),  # 1: dominated by 0
        (300, 0.75),  # 2: on it
        (300, 0.74),  # 3: same size, lower AUC: dominated by 2
        (1000, 0.75),  # 4: same AUC, larger: dominated by 2
        (5000, 0.80),  # 5: on it
        (50, math.nan),  # 6: no AUC: never on it
        (5000, 0.80),  # 7: identical to 5: both on it
    ]
    assert pareto_front(pts) == [0, 2, 5, 7]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]
    # front sorted by size whatever the input order
    assert pareto_front([(10, 0.9), (1, 0.5), (5, 0.7)]) == [1, 2, 0]
    # a point smaller and better than all others is the whole front
    assert pareto_front([(10, 0.6), (1, 0.99), (5, 0.7)]) == [1]

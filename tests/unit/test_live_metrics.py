"""The live metrics' pure parts (no Ray started): the run tag, the current day's gauges from
unit reports, the metric table, and ``--dashboard`` as a config value."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

from psfm.backend import UnitReport
from psfm.cli_options import build_config, train_options
from psfm.metrics import MetricAccumulator
from psfm.ray_backend.metrics import METRICS, RUN_TAG, DayTally, new_run_tag, run_tag


@pytest.mark.parametrize(
    ("run_dir", "tag"),
    [
        ("/data/runs/rafm-8", "rafm-8"),
        ("/data/runs/rafm-8/", "rafm-8"),
        ("runs/fm", "fm"),
        ("s3://bucket/runs/fm-l1", "fm-l1"),
        ("gs://bucket/study/runs/rafm.c16.s0/", "rafm.c16.s0"),
        ("", ""),
    ],
)
def test_the_run_tag_is_the_run_directory_name(run_dir, tag):
    assert run_tag(run_dir) == tag


def test_a_run_without_a_directory_gets_a_random_tag():
    a, b = new_run_tag(), new_run_tag()
    assert a != b and a.startswith("run-") and len(a) == len("run-") + 8


def _report(rng: np.random.Generator, rows: int, seconds: float) -> tuple[UnitReport, tuple]:
    labels = (rng.random(rows) < 0.3).astype(np.float32)
    probs = np.clip(0.3 + 0.4 * (labels - 0.3) + 0.2 * rng.standard_normal(rows), 0.01, 0.99)
    acc = MetricAccumulator()
    acc.update(labels, probs)
    rep = UnitReport("u", rows, 0, 0.0, seconds, acc_state=acc.state())
    return rep, (labels, probs)


def test_the_day_gauges_are_the_merged_units_metrics_and_rate():
    rng = np.random.default_rng(0)
    now = [100.0]
    day = DayTally(clock=lambda: now[0])
    (r1, b1), (r2, b2) = _report(rng, 1000, 2.0), _report(rng, 3000, 1.0)
    one = MetricAccumulator()
    one.update(np.concatenate([b1[0], b2[0]]), np.concatenate([b1[1], b2[1]]))
    day.add(r1)  # its unit started 2 s before it was heard
    now[0] += 6.0
    got = day.add(r2)
    want = one.result()
    assert got["psfm_train_auc"] == pytest.approx(want["auc"], abs=1e-12)
    assert got["psfm_train_logloss"] == pytest.approx(want["logloss"], rel=1e-12)
    assert got["psfm_samples_per_s"] == pytest.approx(4000 / 8.0)


def test_the_day_gauges_are_computed_at_most_every_interval():
    rng = np.random.default_rng(2)
    now = [0.0]
    day = DayTally(clock=lambda: now[0], every_s=1.0)
    assert day.values() == {}  # nothing heard yet
    assert set(day.add(_report(rng, 100, 0.0)[0])) == {
        "psfm_samples_per_s",
        "psfm_train_auc",
        "psfm_train_logloss",
    }
    now[0] += 0.5
    assert day.add(_report(rng, 100, 0.0)[0]) == {}  # within the interval: not computed
    assert day.values()["psfm_samples_per_s"] == pytest.approx(200 / 0.5)  # the day's end
    now[0] += 1.0
    assert day.add(_report(rng, 100, 0.0)[0])["psfm_samples_per_s"] == pytest.approx(300 / 1.5)


def test_a_new_day_starts_over_and_undefined_metrics_are_left_out():
    rng = np.random.default_rng(1)
    day = DayTally()
    day.add(_report(rng, 500, 0.5)[0])
    day.reset()
    assert day.rows == 0 and day.t0 is None
    got = day.add(UnitReport("u", 10, 0, 0.0, 0.1))  # no metric state: only the rate
    assert set(got) == {"psfm_samples_per_s"}


def test_every_metric_is_psfm_named_once_and_tagged_with_the_run():
    names = [m.name for m in METRICS]
    assert len(set(names)) == len(names) and all(n.startswith("psfm_") for n in names)
    assert {m.kind for m in METRICS} == {"counter", "gauge"}
    for spec in METRICS:
        metric = spec.make("r1")  # made without Ray: records nothing
        assert metric.info["tag_keys"] == (RUN_TAG, *spec.tags)
        assert metric.info["default_tags"] == {RUN_TAG: "r1"}


def test_the_dashboard_flag_sets_ray_dashboard():
    p = argparse.ArgumentParser()
    train_options(p)
    assert build_config(p.parse_args(["--dashboard"])).ray.dashboard is True
    assert build_config(p.parse_args([])).ray.dashboard is False


def test_the_grafana_dashboard_queries_the_exported_names_by_run():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "cluster" / "grafana_psfm.json"
    dash = json.loads(path.read_text())
    assert "run" in [v["name"] for v in dash["templating"]["list"]]
    exported = {f"ray_{m.name}" for m in METRICS}
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\bray_psfm_\w+", e)}
    assert used == exported  # every metric has a panel, every panel a metric psfm exports
    assert all('run=~"$run"' in e for e in exprs)

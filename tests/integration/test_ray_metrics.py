"""Live metrics on a real local Ray: a run with ``ray.metrics = true`` publishes its run-tagged
counters and gauges on the node's metrics endpoint, with the values the report holds; psfm's
embedded Ray with metrics, or with its dashboard, listens on 127.0.0.1 only.

Each test starts psfm's own embedded Ray (metrics must be on at ``ray.init``), one at a time:
none is running before, and it is shut down after."""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.request
from collections.abc import Callable

import pytest

from psfm.config import load_config
from psfm.datasets.gen import GenSpec, generate
from tests.integration.sockets import assert_loopback_only, listening

RUN = "ctr-metrics-7"  # the run directory's name: the run tag
EXPORT_WAIT_S = 60.0  # Ray exports metrics every 10 s; a loaded machine can take longer
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Sample = tuple[str, dict[str, str], float]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    generate(root, days=3, rows_per_day=20_000, spec=GenSpec.small(), seed=7, row_group_rows=4096)
    return root


@pytest.fixture
def own_ray():
    """No Ray before the test (psfm starts its own), none after."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield ray
    ray.shutdown()


def _scrape(port: int) -> list[Sample]:
    """The psfm samples of a Prometheus text endpoint as (name, labels, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if not line.startswith("ray_psfm_"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        out.append((name, dict(LABEL.findall(labels)), float(value)))
    return out


def _poll(port: int, ready: Callable[[list[Sample]], bool]) -> list[Sample]:
    """Scrape until ``ready`` holds (the export is asynchronous) or the deadline passes."""
    deadline = time.monotonic() + EXPORT_WAIT_S
    while True:
        samples = _scrape(port)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def _of(samples: list[Sample], name: str, **labels: str) -> list[float]:
    return [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]


def test_a_run_publishes_its_metrics_tagged_with_its_run(own_ray, data, tmp_path):
    from psfm.ray_backend.driver import train_ray

    cfg = load_config(
        None,
        [
            f"data.root={json.dumps(str(data))}",
            f"train.run_dir={json.dumps(str(tmp_path / RUN))}",
            'model.kind="fm"',
            "model.ranks=[4]",
            "ps.shards=1",
            "train.workers=2",
            "data.batch_size=1024",
            "data.rows_per_unit=4096",  # units of one row group: both workers get some
            "ray.metrics=true",
        ],
    )
    report = train_ray(cfg)
    port = own_ray._private.worker.global_worker.node.metrics_export_port
    assert port > 0
    rows, test_rows = report["train"]["rows"], report["test"]["rows"]

    def ready(s: list[Sample]) -> bool:
        return (
            sum(_of(s, "ray_psfm_rows_total", run=RUN, phase="train")) == rows
            and sum(_of(s, "ray_psfm_rows_total", run=RUN, phase="eval")) == test_rows
            and all(
                _of(s, name, run=RUN)
                for name in (
                    "ray_psfm_train_auc",
                    "ray_psfm_test_auc",
                    "ray_psfm_shard_keys",
                    "ray_psfm_days_done",
                )
            )
        )

    s = _poll(port, ready)
    assert ready(s), sorted({(n, lab.get("run", "")) for n, lab, _ in s})
    # counters: every row once, bytes both ways, and from both workers
    workers = {lab["worker"] for n, lab, _ in s if n == "ray_psfm_rows_total"}
    assert workers == {"0", "1"}
    assert sum(_of(s, "ray_psfm_bytes_total", run=RUN, direction="pull")) > 0
    assert sum(_of(s, "ray_psfm_bytes_total", run=RUN, direction="push")) > 0
    # gauges: the last training day's progressive metrics, the test day's, the model's size
    last = report["train"]["per_day"][-1]
    (auc,) = _of(s, "ray_psfm_train_auc", run=RUN)
    assert 0.5 < auc <= 1.0
    assert auc == pytest.approx(last["progressive_auc"], abs=1e-9)
    assert _of(s, "ray_psfm_train_logloss", run=RUN) == [pytest.approx(last["logloss"], abs=1e-9)]
    assert _of(s, "ray_psfm_samples_per_s", run=RUN)[0] > 0
    assert _of(s, "ray_psfm_days_done", run=RUN) == [2.0]
    (test_auc,) = _of(s, "ray_psfm_test_auc", run=RUN, day="3")
    assert 0.5 < test_auc <= 1.0
    assert test_auc == pytest.approx(report["test"]["auc_hist"], abs=1e-9)
    assert _of(s, "ray_psfm_shard_keys", run=RUN, shard="0") == [report["model"]["keys"]]
    assert _of(s, "ray_psfm_shard_ps_bytes", run=RUN, shard="0")[0] > 0
    # the exporter (and the rest of this Ray) serves this machine only
    assert_loopback_only(listening())


def test_the_dashboard_is_served_on_127_0_0_1_and_its_url_logged_once(own_ray, caplog):
    from psfm.ray_backend.driver import connect

    with caplog.at_level(logging.INFO, logger="psfm.ray_backend.driver"):
        connect(num_cpus=1, dashboard=True)
    said = [r.getMessage() for r in caplog.records if "Ray dashboard:" in r.getMessage()]
    assert len(said) == 1, said
    url = re.search(r"http://\S+", said[0]).group(0)
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as r:  # the page; its API wants the token
        assert r.status == 200
    node = own_ray._private.worker.global_worker.node
    assert node.metrics_export_port > 0  # metrics on with the dashboard
    assert_loopback_only(listening())

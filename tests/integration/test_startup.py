"""What an embedded run spends before its first batch: the driver imports no torch, the local
Ray starts without the processes a local run never calls (the dashboard's API server, the
autoscaler's monitor), its actors take one thread each from the environment they inherit (no
runtime env), and the report says how long the first batch took from the process's start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from psfm.datasets.gen import GenSpec, generate

# a whole `psfm train` on the embedded Ray, in a process of its own; what it imported after
RUN = (
    "import sys; from psfm.cli import main; rc = main(sys.argv[1:]); "
    "print('TORCH', 'torch' in sys.modules); sys.exit(rc)"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    generate(root, days=2, rows_per_day=20_000, spec=GenSpec.small(), seed=7)
    return root


def test_an_embedded_run_imports_no_torch_in_its_driver_and_times_its_first_batch(data, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--model", "fm", "--train-days", "1", "--test-days"]
    argv += ["2", "--shards", "1", "--workers", "1", "--run-dir", str(run)]
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", RUN, *argv], capture_output=True, text=True, timeout=300
    )
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    assert "TORCH False" in p.stdout  # the workers compute; the driver never needs torch
    timing = json.loads((run / "report.json").read_text())["timing"]
    # counted from the process's start: its imports and the plan come before Ray's start,
    # training and testing after
    assert timing["seconds_before_training"] < timing["seconds_to_first_batch"] < wall
    assert timing["seconds_before_training"] >= timing["startup_seconds"] > 0
    assert "time       first batch" in p.stdout  # the summary's line


def test_the_embedded_ray_starts_lean_and_its_actors_inherit_one_thread(monkeypatch):
    import ray
    from ray._private import ray_constants

    from psfm.ray_backend.driver import ACTOR_ENV_VARS, connect

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the driver's own, kept
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    try:
        connect(num_cpus=2)
        started = ray._private.worker._global_node.all_processes
        assert ray_constants.PROCESS_TYPE_RAYLET in started
        assert ray_constants.PROCESS_TYPE_DASHBOARD not in started
        assert ray_constants.PROCESS_TYPE_MONITOR not in started
        assert os.environ["OMP_NUM_THREADS"] == "3" and "MKL_NUM_THREADS" not in os.environ

        @ray.remote(num_cpus=1)
        class Probe:
            def env(self) -> dict[str, str | None]:
                return {k: os.environ.get(k) for k in ACTOR_ENV_VARS}

        assert ray.get(Probe.remote().env.remote()) == ACTOR_ENV_VARS
    finally:
        ray.shutdown()

"""Faults of a run on the embedded Ray: its raylet killed mid-run ends the run within seconds
with one line that names the resume command (it used to wait for a restart that could not
come), and the resumed run finishes from the newest checkpoint; SIGTERM (``ray job stop``)
ends it with the same one line and exit 130 (Ray's own handler used to abort it, exit 134); a
driver killed with SIGKILL takes every process of its local Ray along within seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from psfm.cli import main
from psfm.datasets.gen import GenSpec, generate
from tests.integration.sockets import descendants


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    generate(root, days=4, rows_per_day=8_000, spec=GenSpec.small(), seed=5, row_group_rows=2048)
    return root


def _raylet_of(pid: int) -> int | None:
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if b"raylet/raylet" in f.read().split(b"\0")[0]:
                    return p
        except OSError:
            continue
    return None


def _start(data, run) -> subprocess.Popen:
    """``psfm train`` on the embedded Ray, returned once its day-1 checkpoint is written."""
    # FM at 16-row batches: each day takes seconds on Ray, so what follows lands mid-run
    cmd = [sys.executable, "-m", "psfm.cli", "train", "--data", str(data), "--run-dir", str(run),
           "--shards", "1", "--workers", "1", "--set", 'model.kind="fm"',
           "--set", "model.ranks=[4]", "--set", "data.batch_size=16"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "day=1" / "MANIFEST.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no day-1 checkpoint: {proc.communicate()[1]}")
        time.sleep(0.1)
    return proc


def test_sigterm_on_ray_ends_the_run_in_one_line_with_exit_130(data, tmp_path):
    run = tmp_path / "run"
    proc = _start(data, run)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("psfm: interrupted.") and f"--run-dir {run} --resume" in last, err
    assert "SIGTERM received" not in err and "Traceback" not in err


def test_a_killed_raylet_ends_the_run_in_one_line_and_resume_finishes_it(data, tmp_path):
    run = tmp_path / "run"
    proc = _start(data, run)
    try:
        raylet = _raylet_of(proc.pid)
        assert raylet is not None
        killed = time.monotonic()
        os.kill(raylet, signal.SIGKILL)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - killed < 60, err
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("psfm: The local Ray stopped: its raylet"), err
    assert f"--run-dir {run} --resume" in last and "Traceback" not in err
    assert not (run / "report.json").exists()
    assert main(["train", "--run-dir", str(run), "--resume", "--in-process"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert [d["day"] for d in report["train"]["per_day"]] == ["1", "2", "3"]
    assert report["test"]["auc"] > 0.6


def _of_raylet(raylet: int) -> list[int]:
    """Live processes that belong to the raylet (``RAY_RAYLET_PID`` in their environment)."""
    want, out = f"RAY_RAYLET_PID={raylet}".encode(), []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{d}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            continue
        if want in env and not zombie:
            out.append(int(d))
    return out


def test_a_driver_killed_with_sigkill_takes_its_local_ray_along(data, tmp_path):
    """kill -9 of the driver alone (not its process group): Ray's GCS and raylet die with it,
    and the raylet's children (agents, actors) follow within seconds (psfm's reaper; without
    it the agents stayed 40-60 s)."""
    proc = _start(data, tmp_path / "run")
    raylet = _raylet_of(proc.pid)
    assert raylet is not None
    left = _of_raylet(raylet)
    assert len(left) >= 2, left  # the shard and the worker at least (and the agents)
    proc.kill()
    proc.communicate()
    t0 = time.monotonic()
    while (_of_raylet(raylet) or _raylet_of_alive(raylet)) and time.monotonic() - t0 < 10:
        time.sleep(0.2)
    assert not _raylet_of_alive(raylet)
    assert not _of_raylet(raylet), f"still there {time.monotonic() - t0:.0f} s after the driver"


def _raylet_of_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False

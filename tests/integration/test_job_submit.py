"""End to end on a real multi-node cluster: cluster/local_cluster.sh starts a head and two
worker nodes (token auth on), ``ray job submit`` runs jobs/train.py, the job succeeds and its
report beats the best possible logistic regression of the generator's true model."""

from __future__ import annotations

import json
import subprocess

from psfm.datasets.gen import GenSpec, generate
from tests.integration.local_cluster import REPO, local_cluster


def test_ray_job_submit_trains_on_a_head_and_two_worker_nodes(tmp_path):
    data, run, state = tmp_path / "logs", tmp_path / "run", tmp_path / "cluster"
    generate(data, days=3, rows_per_day=50_000, spec=GenSpec.small(), seed=11)
    gen = json.loads((data / "_gen.json").read_text())
    with local_cluster(state, workers=2) as env:
        cmd = [
            "ray",
            "job",
            "submit",
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps({"excludes": [".git", "tests", "*.parquet"]}),
            "--",
            "python",
            "jobs/train.py",
            "--config",
            "jobs/configs/rafm.toml",
            "--set",
            f"data.root={json.dumps(str(data))}",
            "--set",
            f"train.run_dir={json.dumps(str(run))}",
            "--set",
            "ps.shards=2",
            "--set",
            "train.workers=2",
            "--set",
            "ftrl.factor.alpha=0.1",
        ]
        job = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
        out = job.stdout + job.stderr
        assert job.returncode == 0, out[-4000:]
        assert "succeeded" in out.lower(), out[-4000:]
        assert "test AUC" in out
    report = json.loads((run / "report.json").read_text())
    floor = gen["per_day"][-1]["linear_auc"] + 0.05  # better than any LR on the true model
    assert report["test"]["auc"] > floor, (report["test"]["auc"], floor)
    assert report["train"]["days"] == ["1", "2"] and report["test"]["rows"] == 50_000

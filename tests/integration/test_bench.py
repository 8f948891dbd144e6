"""``psfm bench`` end to end on a small generated log (slow: about two minutes on 2 cores)."""

from __future__ import annotations

import dataclasses

import pytest


@pytest.mark.slow
def test_bench_measures_every_section_and_shared_memory_beats_ray_messages(tmp_path):
    import ray

    from benchmarks.bench import render_markdown, run_bench, sizes

    if ray.is_initialized():
        ray.shutdown()
    sz = dataclasses.replace(sizes(True, rows=120_000), table_sizes=(300_000,))
    res = run_bench(sz, data_dir=str(tmp_path), command="test")
    md = render_markdown(res)
    for head in (
        "## 1. Stage costs",
        "## 2. End-to-end",
        "### Worker-shard message cost",
        "### Start-up",
        "## 3. Bytes per sample",
        "## 4. Parameter-server bytes",
        "## 5. Scaling",
        "## 6. Memory-bandwidth ceiling",
        "## 6b. Sizing a cluster",
        "## Targets",
    ):
        assert head in md, head
    e2e = res["end_to_end"]
    for name in ("LR", "FM(8)", "RaFM({1,2,4,8})"):
        for key in ("local", "ray_1x1", "ray_1x2", "ray_2x2"):
            assert e2e[name][key] > 0, (name, key)
    # the defaults: smaller FTRL steps than the table's 4096, several to a message
    assert "### At the defaults" in md
    for name in ("FM(8)", "RaFM({1,2,4,8})"):
        d = e2e["defaults"][name]
        assert d["batch_size"] < 4096 and d["local_steps"] > 1 and d["ray_1x2"] > 0, d
    msg = e2e["messages"]
    # the shared-memory link takes the payload off Ray: the caller's CPU per call drops
    assert msg["auto"]["caller_cpu_ms"] < msg["ray"]["caller_cpu_ms"]
    assert msg["bare"]["caller_cpu_ms"] < msg["auto"]["caller_cpu_ms"]
    # the sizing model, from each model's 1 + 1 run: no shape is predicted faster than its
    # workers' measured CPU allows
    for name in ("LR", "FM(8)", "RaFM({1,2,4,8})"):
        costs = res["sizing"]["models"][name]["costs"]
        assert costs["worker_us"] > 0 and costs["shard_us"] > 0, name
        rows = [r for r in res["sizing"]["models"][name]["rows"] if not r["separate"]]
        assert all(r["samples_per_s"] <= r["workers"] * 1e6 / costs["worker_us"] for r in rows)
    # start-up, from the process's start: its imports and plan come before Ray's start
    for r in res["startup"]["runs"]:
        assert r["seconds_to_first_batch"] > r["startup_seconds"] > 0 and r["total_pss_bytes"] > 0
    assert res["startup"]["help_seconds"] > 0
    assert {t["result"] for t in res["targets"]} <= {"PASS", "FAIL", "n/a"}
    assert len(res["targets"]) == 13

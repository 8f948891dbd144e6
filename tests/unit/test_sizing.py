"""psfm.sizing: each bound by hand, the tightest one named, and ``psfm sizing`` on a report."""

from __future__ import annotations

import json
import math

import pytest

from psfm.cli import main
from psfm.sizing import PUSH_SHARE, Costs, Layout, layouts, predict

# one worker 8 µs, shards 2 µs per sample, 800 bytes/sample; messages between nodes cost
# 1 ns a byte on the worker and 0.5 on the shard
C = Costs(8.0, 2.0, 800.0, 1.0, 0.5)


def test_one_worker_beside_its_shard_is_its_own_cpu():
    p = predict(C, Layout(1, 1))
    assert p.remote_share == 0.0
    assert p.bound == "workers' CPU"
    assert p.samples_per_s == pytest.approx(1e6 / 8.0)


def test_messages_between_nodes_add_their_cpu_per_byte_on_both_sides():
    p = predict(C, Layout(1, 1, shard_nodes=1))
    assert p.remote_share == 1.0
    assert p.bounds["workers' CPU"] == pytest.approx(1e6 / (8.0 + 0.8))
    assert p.bounds["shards' CPU"] == pytest.approx(1e6 / (2.0 + 0.4))


def test_workers_scale_until_the_shards_bind_and_more_shards_lift_it():
    packed = [predict(C, layouts(w, 1, 16, False, 100.0)) for w in (1, 2, 4, 8, 16)]
    rates = [p.samples_per_s for p in packed]
    assert rates[:4] == sorted(rates[:4])  # one node: faster with each worker ...
    assert packed[3].bound == "shards' CPU"
    assert rates[4] < rates[3]  # ... a second node: the shard now pays for remote messages
    # 16 workers + 1 shard on 2 nodes of 16: half the bytes cross nodes
    assert packed[-1].remote_share == pytest.approx(0.5)
    assert packed[-1].bound == "shards' CPU"
    assert packed[-1].samples_per_s == pytest.approx(1e6 / (2.0 + 0.5 * 800 * 0.5e-3))
    four = predict(C, layouts(16, 4, 16, False, 100.0))
    assert four.samples_per_s > 3 * packed[-1].samples_per_s


def test_a_slow_link_binds_with_the_pushes_of_the_busiest_node():
    lay = Layout(8, 4, worker_nodes=2, worker_node_cpus=16, shard_nodes=1, link_gbps=1.0)
    p = predict(C, lay)
    link = 1e9 / 8
    assert p.bounds["worker nodes' links"] == pytest.approx(link / (4 / 8 * PUSH_SHARE * 800))
    assert p.bounds["shard nodes' links"] == pytest.approx(link / (PUSH_SHARE * 800))
    assert p.bound == "shard nodes' links"
    assert p.samples_per_s == min(p.bounds.values())


def test_nodes_share_their_cores_and_one_machine_shares_all():
    # 3 workers + 3 shards packed on 2-core nodes: 3 nodes, each a worker and a shard
    lay = Layout(3, 3, worker_nodes=3, worker_node_cpus=1)
    p = predict(C, lay)
    rho = 1 - 1 / 3
    w, s = 8.0 + rho * 800 * 1e-3, 2.0 + rho * 800 * 0.5e-3
    assert p.bounds["worker nodes' cores"] == pytest.approx(1e6 / (w / 3 + s / 3))
    assert p.bound == "worker nodes' cores"
    one = predict(dataclass_replace(C, other_us=1.0), Layout(4, 1, 4, 1, 1, 1, machine_cpus=2))
    assert one.bounds["the machine's cores"] == pytest.approx(2e6 / (8.8 + 2.4 + 1.0))
    assert one.bound == "the machine's cores"


def dataclass_replace(c: Costs, **kw: float) -> Costs:
    import dataclasses

    return dataclasses.replace(c, **kw)


def test_layouts_pack_actors_a_core_each():
    assert layouts(30, 2, 16, False, 10.0).worker_nodes == 2
    sep = layouts(30, 2, 16, True, 10.0)
    assert (sep.worker_nodes, sep.shard_nodes) == (2, 1)
    with pytest.raises(ValueError, match="workers"):
        predict(C, Layout(0, 1))


def _report(tmp_path, **train):
    rep = {"train": {"bytes_per_sample": 800.0, **train}}
    (tmp_path / "report.json").write_text(json.dumps(rep))
    return tmp_path


def test_psfm_sizing_prints_a_row_per_shape_from_a_run(tmp_path, capsys):
    run = _report(tmp_path, worker_cpu_us_per_sample=8.0, shard_cpu_us_per_sample=2.0)
    assert main(["sizing", str(run), "--workers", "1,4,16", "--shards", "1,2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["costs"]["worker_us"] == 8.0
    got = [(r["workers"], r["shards"]) for r in out["predictions"]]
    assert got == [(1, 1), (4, 1), (16, 1), (1, 2), (4, 2), (16, 2)]
    one = out["predictions"][0]
    assert one["samples_per_s"] == pytest.approx(1e6 / 8.0) and one["nodes"] == 1
    assert main(["sizing", str(run / "report.json"), "--workers", "2", "--shards", "1"]) == 0
    text = capsys.readouterr().out
    assert "worker 8.00 µs CPU/sample" in text and "workers' CPU" in text
    assert f"{math.floor(2e6 / 8.0):,}" in text


def test_psfm_sizing_refuses_an_in_process_run_and_a_missing_report(tmp_path, capsys):
    from psfm.config import load_config
    from psfm.datasets.gen import GenSpec, generate
    from psfm.trainer import train_local

    generate(tmp_path / "d", days=2, rows_per_day=3000, spec=GenSpec.small(), seed=3)
    run = tmp_path / "run"
    sets = [f"data.root={json.dumps(str(tmp_path / 'd'))}", f"train.run_dir={json.dumps(str(run))}"]
    tr = train_local(load_config(None, sets))["train"]
    # in process: the worker's CPU is the whole process's; shards and driver are in it
    assert tr["worker_cpu_us_per_sample"] > 0
    assert tr["shard_cpu_us_per_sample"] is None and tr["driver_cpu_us_per_sample"] is None
    capsys.readouterr()
    assert main(["sizing", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not --in-process" in err[0] and "report.json" in err[0]
    assert main(["sizing", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such report" in err[0]

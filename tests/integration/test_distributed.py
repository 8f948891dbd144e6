"""Training on a real local Ray: distribution invariance, consistency modes, crash and resume,
export/predict, and evaluation that creates no keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from psfm.config import load_config
from psfm.datasets.gen import GenSpec, generate
from psfm.export import Predictor, export_model, restore_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    generate(root, days=5, rows_per_day=25_000, spec=GenSpec.small(), seed=3, row_group_rows=8192)
    return root


@pytest.fixture(scope="module")
def data_big(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs_big")
    generate(root, days=4, rows_per_day=100_000, spec=GenSpec.small(), seed=5, row_group_rows=8192)
    return root


def _cfg(root, run_dir, *sets):
    return load_config(
        None,
        [
            f"data.root={json.dumps(str(root))}",
            f"train.run_dir={json.dumps(str(run_dir))}",
            'model.kind="rafm"',
            "model.ranks=[1,2,4]",
            "ftrl.factor.alpha=0.1",  # the compact log's best rate
            # these tests check distribution, not defaults: few, large
            # steps keep them fast (the automatic size would take 64 rows)
            "data.batch_size=4096",
            *sets,
        ],
    )


def _train(root, run_dir, *sets, resume=False):
    from psfm.ray_backend.driver import train_ray

    return train_ray(_cfg(root, run_dir, *sets), resume=resume)


def test_one_and_three_shards_sync_one_worker_are_bitwise_identical(ray_local, data, tmp_path):
    for n in (1, 3):
        _train(data, tmp_path / f"s{n}", 'ps.mode="sync"', "train.workers=1", f"ps.shards={n}")
    a, b = restore_model(str(tmp_path / "s1"))[1], restore_model(str(tmp_path / "s3"))[1]
    assert a["keys"].size > 1000
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_two_sync_workers_equal_one_up_to_summation_order(ray_local, data, tmp_path):
    reps = {}
    for k in (1, 2):
        reps[k] = _train(
            data, tmp_path / f"w{k}", 'ps.mode="sync"', f"train.workers={k}", "ps.shards=2"
        )
    a, b = restore_model(str(tmp_path / "w1"))[1], restore_model(str(tmp_path / "w2"))[1]
    assert np.array_equal(a["keys"], b["keys"]) and np.array_equal(a["level"], b["level"])
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a if k.startswith(("w", "v")))
    assert diff <= 1e-5, diff
    assert reps[1]["train"]["rows"] == reps[2]["train"]["rows"] == 100_000


def test_async_auc_is_within_0_005_of_sync(ray_local, data_big, tmp_path):
    units = "data.rows_per_unit=16384"  # many units a day: both workers take some
    sync = _train(data_big, tmp_path / "sync", 'ps.mode="sync"', "train.workers=2", units)
    asyn = _train(
        data_big,
        tmp_path / "async",
        'ps.mode="async"',
        "train.workers=2",
        "ps.max_in_flight=2",
        units,
    )
    assert abs(sync["test"]["auc"] - asyn["test"]["auc"]) <= 0.005
    assert asyn["test"]["auc"] > 0.80


def test_a_small_day_is_shared_after_a_one_worker_warm_up(ray_local, data, tmp_path, caplog):
    """A day of one work unit (25k rows, 4 row groups) is cut into row groups: the warm-up's
    ``ps.warmup_units`` of them go to one worker, in order, while the other decodes the unit
    it takes next (prefetch), and the rest and the next day go to both (before, the lone unit
    went whole to one worker and the other had nothing to do)."""
    import re

    caplog.set_level("DEBUG", logger="psfm.ray_backend.driver")
    rep = _train(
        data,
        tmp_path / "run",
        'data.train_days="1..2"',
        'data.test_days="3"',
        "train.workers=2",
        "ps.warmup_units=2",
        'model.kind="fm"',  # no statistics pass: nobody has read day 1 before its training
        "model.ranks=[4]",
    )
    sent = [
        (uid.split(":")[0], int(a), int(w))
        for uid, a, w in re.findall(r"run_unit (\S+):(\d+)-\d+ -> worker (\d+)", caplog.text)
    ]
    day1 = [(a, w) for d, a, w in sent if d == "1"]
    assert day1[:2] == [(0, 0), (1, 0)], sent  # the warm-up: one worker, in order
    assert sorted(a for a, _ in day1) == [0, 1, 2, 3], sent  # every row group once
    assert {w for d, _, w in sent if d == "2"} == {0, 1}, sent
    assert {w for d, _, w in sent if d == "3"} == {0, 1}, sent  # the test day too
    assert rep["train"]["rows"] == 50_000 and rep["test"]["rows"] == 25_000
    # meanwhile the other worker decoded the first unit it then took: replayed, not read
    assert "prefetch 1:" in caplog.text and re.search(
        r"prefetch 1:\S+:2-3 -> worker 1", caplog.text
    )
    assert rep["train"]["per_day"][0]["cached_rows"] == 8192


def test_evaluation_creates_no_keys_and_export_predict_agree(ray_local, data, tmp_path):
    from psfm.checkpoint import latest_checkpoint, load_checkpoint
    from psfm.data.parquet import work_units
    from psfm.ps.client import LocalClient
    from psfm.trainer import make_shards
    from psfm.worker import Worker

    run = tmp_path / "run"
    rep = _train(data, run, "ps.shards=2", "train.workers=2")
    # the CPU psfm.sizing scales from, per day: both kinds of actor measured, and no more
    # than this machine's cores could give in the day's seconds
    days = rep["train"]["per_day"]
    for d in days:
        assert d["worker_cpu_seconds"] > 0 and d["shard_cpu_seconds"] > 0, d
        assert d["driver_cpu_seconds"] > 0, d
        spent = d["worker_cpu_seconds"] + d["shard_cpu_seconds"] + d["driver_cpu_seconds"]
        assert spent <= (os.cpu_count() or 1) * d["seconds"] * 1.02 + 0.05, d
    worker_us = 1e6 * sum(d["worker_cpu_seconds"] for d in days) / rep["train"]["rows"]
    assert rep["train"]["worker_cpu_us_per_sample"] == pytest.approx(worker_us)
    assert rep["train"]["shard_cpu_us_per_sample"] > 0
    # what the run's processes hold: every one counted, Ray's own beside them
    mem = rep["memory"]
    assert mem["processes"] == {"driver": 1, "workers": 2, "shards": 2}
    parts = mem["pss_bytes"]
    assert all(parts[k] > 10 * 2**20 for k in ("driver", "workers", "shards", "ray")), parts
    assert mem["total_pss_bytes"] == sum(parts.values())
    assert parts["workers"] / 2 <= mem["peak_rss_bytes"]["workers"]
    ckpt_keys = restore_model(str(run))[1]["keys"].size
    assert rep["model"]["keys"] == ckpt_keys  # the test pass ran after the checkpoint
    model = tmp_path / "model.parquet"
    info = export_model(str(run), str(model))
    assert info["keys"] <= ckpt_keys
    # The trained model's own test-day predictions (restored shards, torch forward) ...
    cfg = _cfg(data, run)
    client = LocalClient(make_shards(cfg))
    client.restore(load_checkpoint(latest_checkpoint(str(run)))[0])
    worker = Worker(cfg)
    mine = np.concatenate(
        [
            np.concatenate(
                worker.run_unit(u, client, train=False, keep_predictions=True).predictions, axis=1
            )[0]
            for u in work_units(str(data), "5")
        ]
    )
    # ... and the exported model's, with numpy alone.
    theirs = np.concatenate(
        [p for _, _, _, p, _ in Predictor(str(model)).iter_scores(str(data), ["5"])]
    )
    assert mine.shape == theirs.shape == (25_000,)
    assert np.max(np.abs(mine - theirs)) <= 1e-6
    from psfm.metrics import auc_exact

    labels = np.concatenate([y for *_, y in Predictor(str(model)).iter_scores(str(data), ["5"])])
    assert abs(auc_exact(labels, theirs) - rep["test"]["auc"]) <= 1e-4


def test_driver_crash_after_day_2_then_resume_gives_the_uninterrupted_model(
    ray_local, data, tmp_path
):
    sets = ['ps.mode="sync"', "train.workers=1", "ps.shards=2"]
    _train(data, tmp_path / "full", *sets)
    run = tmp_path / "crashed"
    cmd = [
        sys.executable,
        "-m",
        "psfm.cli",
        "train",
        "--data",
        str(data),
        "--run-dir",
        str(run),
        "--model",
        "rafm",
        "--ranks",
        "1,2,4",
        *[a for s in sets for a in ("--set", s)],
        "--set",
        "train.log_every_s=1",
        "--set",
        "ftrl.factor.alpha=0.1",
        "--batch-size",
        "4096",
    ]  # as _cfg: the resumed days train with it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    manifest = run / "checkpoints" / "day=2" / "MANIFEST.json"
    try:
        deadline = time.time() + 120
        while not manifest.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert manifest.exists(), "the run never finished day 2"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    assert not (run / "report.json").exists()
    rep = _train(data, run, *sets, resume=True)
    assert [d["day"] for d in rep["train"]["per_day"]] == ["1", "2", "3", "4"]
    a, b = restore_model(str(tmp_path / "full"))[1], restore_model(str(run))[1]
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def _train_and_kill(data, run, sets, after: str, actor: str) -> dict:
    """Train in a thread; once checkpoint ``after`` is written, kill the run's actor named
    ``...-{actor}``; return the report of the run (which must recover)."""
    import threading

    import ray

    result: dict = {}

    def target():
        try:
            result["report"] = _train(data, run, *sets)
        except Exception as e:  # noqa: BLE001 - surfaced by the assertion below
            result["error"] = e

    t = threading.Thread(target=target)
    t.start()
    manifest = run / "checkpoints" / after / "MANIFEST.json"
    deadline = time.time() + 120
    while not manifest.exists() and time.time() < deadline:
        time.sleep(0.02)
    names = [n for n in ray.util.list_named_actors() if n.endswith(f"-{actor}")]
    assert names, f"no {actor} actor found"
    ray.kill(ray.get_actor(names[-1]), no_restart=True)
    t.join(timeout=300)
    assert "error" not in result, result.get("error")
    return result["report"]


def test_a_shard_killed_mid_day_is_restored_and_the_day_replayed(ray_local, data, tmp_path, caplog):
    import logging

    sets = ['ps.mode="sync"', "train.workers=1", "ps.shards=2"]
    _train(data, tmp_path / "full", *sets)
    run = tmp_path / "killed"
    caplog.set_level(logging.WARNING, logger="psfm.runloop")
    rep = _train_and_kill(data, run, sets, after="day=1", actor="shard-0")  # during day 2
    assert "an actor died" in caplog.text and "running it again" in caplog.text
    assert [d["day"] for d in rep["train"]["per_day"]] == ["1", "2", "3", "4"]
    a, b = restore_model(str(tmp_path / "full"))[1], restore_model(str(run))[1]
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_a_worker_killed_after_a_checkpoint_within_the_day_resumes_after_its_units(
    ray_local, data, tmp_path, caplog
):
    """train.checkpoint_every_rows on Ray: a worker killed during day 2 costs the units after
    the newest checkpoint within the day, not the day; the model is the uninterrupted one."""
    import logging

    sets = [
        'ps.mode="sync"',
        "train.workers=1",
        "ps.shards=2",
        "data.batch_size=512",  # small steps: the kill lands while day 2 trains
        "data.rows_per_unit=8192",  # 4 units a day
        "train.checkpoint_every_rows=8192",
        "train.keep_checkpoints=0",
    ]
    _train(data, tmp_path / "full", *sets)
    run = tmp_path / "killed"
    caplog.set_level(logging.INFO, logger="psfm.runloop")
    rep = _train_and_kill(data, run, sets, after="day=2.units=000001", actor="worker-0")
    assert "an actor died" in caplog.text and "work units of the next" in caplog.text
    assert [d["day"] for d in rep["train"]["per_day"]] == ["1", "2", "3", "4"]
    day2 = rep["train"]["per_day"][1]
    assert day2["resumed_at_unit"] in (1, 2, 3) and day2["rows"] < 25_000
    a, b = restore_model(str(tmp_path / "full"))[1], restore_model(str(run))[1]
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_shared_memory_and_ray_messages_train_the_same_model(ray_local, data, tmp_path):
    """ps.transport: shared-memory messages (the default on one node) and Ray's messages give a
    bitwise equal model (sync, one worker, 2 shards)."""
    for t in ("auto", "ray"):
        _train(
            data,
            tmp_path / t,
            'ps.mode="sync"',
            "train.workers=1",
            "ps.shards=2",
            f'ps.transport="{t}"',
        )
    a, b = restore_model(str(tmp_path / "auto"))[1], restore_model(str(tmp_path / "ray"))[1]
    assert a["keys"].size > 1000
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_shm_link_grows_its_file_with_calls_in_flight(ray_local):
    """A message larger than a slot moves the link to a bigger file while pushes and a pull are
    in flight in the old one; every answer and the final state match an in-process shard."""
    import ray

    from psfm.config import FtrlConfig, LevelConfig, ModelConfig
    from psfm.ps.messages import PullResult, PushRequest
    from psfm.ps.shard import ParameterShard
    from psfm.ray_backend.actors import ShardActor
    from psfm.ray_backend.client import ShmLink, _answer_bound

    model, levels = ModelConfig(kind="fm", ranks=(8,)), LevelConfig()
    ftrl = FtrlConfig(accumulate="square_of_sum")  # raw pushes carry no sums of squares
    ref, actor = ParameterShard(model, ftrl, levels), ShardActor.remote(model, ftrl, levels)
    link = ShmLink(actor, "grow-test", slots=5)
    assert link.open(1 << 12) and link.gen == 1
    rng = np.random.default_rng(0)
    one = np.array([1], np.int8)
    for n in (50, 200, 4000, 30_000, 120):  # 4000 and 30,000 keys outgrow the slots
        keys = np.unique(rng.integers(1, 2**63, n, dtype=np.int64).astype(np.uint64))
        ref_call, where = link.call("pull", [keys, one], _answer_bound(keys.size, (8,)))
        got = PullResult.unpack(link.answer(where, ray.get(ref_call)))
        want = ref.pull(keys, create=True)
        assert all(np.array_equal(x, y) for x, y in zip(got.arrays, want.arrays))
        g = rng.normal(size=want.tables[0].shape).astype(np.float32)
        gw = rng.normal(size=keys.size).astype(np.float32)
        counts = np.ones(keys.size, np.float32)
        for _ in range(2):  # two pushes in flight, the next pull may move the file
            link.push([keys, counts, want.level, gw, g])
            ref.push(PushRequest(keys, counts, want.level, gw, [g]))
    link.reap()
    assert link.gen >= 3 and not link.retired and not link.busy
    state = ray.get(actor.snapshot.remote())
    for k, v in ref.snapshot().items():
        assert np.array_equal(state[k], v), k


def test_messages_that_outgrow_the_shared_memory_go_through_ray(ray_local, tmp_path):
    """When a bigger message file cannot be made (no room, here no directory), the client sends
    that push or pull through Ray and gets the same answers; smaller ones stay on the file."""
    import ray

    from psfm.config import FtrlConfig, LevelConfig, ModelConfig
    from psfm.ps.messages import PushRequest
    from psfm.ps.shard import ParameterShard
    from psfm.ray_backend.actors import ShardActor
    from psfm.ray_backend.client import RayClient

    model, levels = ModelConfig(kind="fm", ranks=(8,)), LevelConfig()
    ftrl = FtrlConfig(accumulate="square_of_sum")  # raw pushes carry no sums of squares
    ref, actor = ParameterShard(model, ftrl, levels), ShardActor.remote(model, ftrl, levels)
    client = RayClient([actor], False, ranks=(8,), transport="auto")
    link = client.links[0]
    assert link is not None and link.gen == 1
    link.dir = str(tmp_path / "gone")  # every new file fails from here on
    rng = np.random.default_rng(1)
    for n in (100, 60_000, 200):  # 60,000 keys need more than the first 1 MB slots
        keys = np.unique(rng.integers(1, 2**63, n, dtype=np.int64).astype(np.uint64))
        got, want = client.pull(keys, create=True), ref.pull(keys, create=True)
        assert all(np.array_equal(x, y) for x, y in zip(got.arrays, want.arrays))
        g = rng.normal(size=want.tables[0].shape).astype(np.float32)
        gw = rng.normal(size=keys.size).astype(np.float32)
        counts = np.ones(keys.size, np.float32)
        client.push(PushRequest(keys, counts, want.level, gw, [g]))
        ref.push(PushRequest(keys, counts, want.level, gw, [g]))
    client.flush()
    assert link.gen == 1 and not link.busy  # never grew; the big messages went through Ray
    state = ray.get(actor.snapshot.remote())
    for k, v in ref.snapshot().items():
        assert np.array_equal(state[k], v), k


def _structure(x):
    """The key structure of a JSON value: dicts by their keys, lists of dicts by every item."""
    if isinstance(x, dict):
        return {k: _structure(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_structure(v) for v in x if isinstance(v, dict | list)]
    return None


def test_in_process_and_ray_with_one_worker_write_the_same_lines_and_report(
    ray_local, data, tmp_path
):
    """One run loop: ``--in-process`` trains the same work units as Ray with one worker
    (``data.rows_per_unit`` honoured, the same shuffled order in pass 2) and writes the same
    metrics.jsonl events with the same keys and a report.json of the same shape; a run with
    early stopping and no run directory keeps the best pass in memory on both backends."""
    from psfm.trainer import train_local

    sets = [
        "train.workers=1",
        "ps.shards=2",
        "data.rows_per_unit=8192",
        "train.eval_next_day=true",
        'data.train_days="1..3"',
        'data.valid_days="4"',
        "train.passes=2",
        'train.early_stop="logloss"',
        "train.patience=2",
    ]
    reps = {
        "local": train_local(_cfg(data, tmp_path / "local", *sets)),
        "ray": _train(data, tmp_path / "ray", *sets),
    }
    lines = {
        k: [json.loads(x) for x in (tmp_path / k / "metrics.jsonl").read_text().splitlines()]
        for k in reps
    }
    assert [x["event"] for x in lines["local"]] == (["train_day"] * 3 + ["valid"]) * 2 + ["test"]
    assert [x["event"] for x in lines["ray"]] == [x["event"] for x in lines["local"]]
    assert [_structure(x) for x in lines["ray"]] == [_structure(x) for x in lines["local"]]
    on_disk = {k: json.loads((tmp_path / k / "report.json").read_text()) for k in reps}
    assert _structure(on_disk["ray"]) == _structure(on_disk["local"]) == _structure(reps["local"])
    assert reps["local"]["train"]["rows"] == reps["ray"]["train"]["rows"] == 150_000
    assert reps["local"]["valid"] == reps["ray"]["valid"]
    # pass 2 replays every unit from the worker's pass cache, on Ray as in-process
    for k in reps:
        again = [x for x in lines[k] if x["event"] == "train_day" and x["pass"] == 2]
        assert len(again) == 3 and all(x["cached_rows"] == x["rows"] > 0 for x in again), k
    a, b = restore_model(str(tmp_path / "local"))[1], restore_model(str(tmp_path / "ray"))[1]
    assert a["keys"].size > 1000
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # Large rates on one day: pass 2 validates worse, and the test scores pass 1's state,
    # kept by RayBackend.snapshot() / LocalBackend.snapshot() (no run directory).
    sets = [
        "train.workers=1",
        "ps.shards=2",
        'train.run_dir=""',
        'data.train_days="1"',
        'data.valid_days="4"',
        "train.passes=2",
        'train.early_stop="logloss"',
        "ftrl.linear.alpha=1.0",
        "ftrl.factor.alpha=1.0",
        "data.batch_size=128",
    ]
    mem = {
        "local": train_local(_cfg(data, tmp_path / "unused", *sets)),
        "ray": _train(data, tmp_path / "unused", *sets),
    }
    assert mem["local"]["train"]["best_pass"] == mem["ray"]["train"]["best_pass"] == 1
    assert mem["ray"]["valid"][1]["logloss"] > mem["ray"]["valid"][0]["logloss"]
    assert mem["ray"]["test"] == mem["local"]["test"]
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize("transport", ["auto", "ray"])
def test_local_steps_on_ray_train_the_in_process_model(ray_local, data, tmp_path, transport):
    """Worker-local steps (``ps.local_steps``): the state pulls and delta pushes crossing to two
    shard actors, through shared memory or Ray's messages, train bit for bit the in-process
    model (async, one worker), and several steps to a message move fewer bytes a sample."""
    from psfm.trainer import train_local

    sets = [
        "train.workers=1",
        "ps.shards=2",
        "data.batch_size=512",
        "ps.local_steps=6",
        f'ps.transport="{transport}"',
        'data.train_days="1..2"',
        'data.test_days="3"',
    ]
    local = train_local(_cfg(data, tmp_path / "local", *sets))
    ray_rep = _train(data, tmp_path / "ray", *sets)
    a, b = restore_model(str(tmp_path / "local"))[1], restore_model(str(tmp_path / "ray"))[1]
    assert a["keys"].size > 1000
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert local["test"]["auc"] == ray_rep["test"]["auc"]
    per_batch = train_local(_cfg(data, tmp_path / "k1", *sets, "ps.local_steps=1"))
    assert abs(per_batch["test"]["auc"] - local["test"]["auc"]) < 1e-4
    assert ray_rep["train"]["bytes_per_sample"] < 0.7 * per_batch["train"]["bytes_per_sample"]

"""The run loop over a scripted backend (no Ray, no model): work units, warm-up, the statistics
pass, checkpoints and metrics lines, and the failure policy's per-day retries."""

from __future__ import annotations

import ast
import itertools
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from psfm.backend import UnitReport
from psfm.checkpoint import load_checkpoint, save_checkpoint
from psfm.config import load_config
from psfm.datasets.gen import GenSpec, generate
from psfm.errors import DataError
from psfm.failure import Decision, FailurePolicy
from psfm.local_backend import LocalBackend
from psfm.memory import process_age
from psfm.metrics import MetricAccumulator
from psfm.ps.messages import ShardStats
from psfm.runloop import run

ROWS_PER_DAY = 5000


class Lost(RuntimeError):
    """Stands for a dead actor."""


def _lost(error: BaseException) -> str | None:
    return "an actor died" if isinstance(error, Lost) else None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("runloop")
    # 3 days of 5 row groups of 1000 rows: train on days 1-2, test on day 3
    generate(
        root, days=3, rows_per_day=ROWS_PER_DAY, spec=GenSpec.small(), seed=2, row_group_rows=1000
    )
    return root


def _cfg(root, *sets, run_dir=None):
    extra = [f"train.run_dir={json.dumps(str(run_dir))}"] if run_dir else []
    return load_config(
        None, [f"data.root={json.dumps(str(root))}", 'model.kind="fm"', *sets, *extra]
    )


def _report(unit, keep: bool = False) -> UnitReport:
    labels = np.array([0, 1, 1, 0], np.float32)
    probs = np.array([0.2, 0.7, 0.4, 0.3])
    acc = MetricAccumulator()
    acc.update(labels, probs)
    return UnitReport(
        unit=unit.uid,
        rows=unit.rows,
        skipped=0,
        loss=1.0,
        seconds=0.01,
        acc_state=acc.state(),
        acc_low_state=acc.state(),
        bytes_pulled=10,
        bytes_pushed=20,
        predictions=np.stack([probs, probs, labels]) if keep else None,
    )


class ScriptedBackend:
    """A backend whose "model" is the number of rows trained into it; ``fail[day]`` lists the
    errors its next trainings of that day raise halfway through the day."""

    workers = 1

    def __init__(self, cfg, fail: dict[str, list[BaseException]] | None = None) -> None:
        self.cfg, self.fail = cfg, {d: list(e) for d, e in (fail or {}).items()}
        self.calls: list[tuple] = []
        self.reuse: list[tuple] = []  # (call, day, the reuse flag it was given)
        self.rows = 0
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.rows = 0  # fresh, empty shards

    def close(self) -> None:
        self.calls.append(("close",))

    def lost(self, error):
        return _lost(error)

    def count(self, units, reuse=False, on_rows=None):
        self.calls.append(("count", len(units)))
        self.reuse.append(("count", None, reuse))
        if self.fail.get("count"):
            raise self.fail["count"].pop(0)
        return sum(u.rows for u in units)

    def finish_counts(self):
        return {"keys": 7, "not_admitted": 0}

    def train(self, units, warmup, on_unit, reuse=False):
        day = units[0].day
        self.reuse.append(("train", day, reuse))
        self.calls.append(("train", day, [u.rows for u in units], warmup))
        for i, u in enumerate(units):
            if i == len(units) // 2 and self.fail.get(day):
                raise self.fail[day].pop(0)
            self.rows += u.rows
            on_unit(_report(u))

    def evaluate(self, units, keep_predictions, on_unit, reuse=False):
        self.reuse.append(("evaluate", units[0].day, reuse))
        self.calls.append(("evaluate", units[0].day, len(units), keep_predictions))
        if self.fail.get("evaluate"):
            raise self.fail["evaluate"].pop(0)
        for u in units:
            on_unit(_report(u, keep_predictions))

    def end_day(self, days_done):
        self.calls.append(("end_day", days_done))
        return {"keys": 0, "evicted": 0}

    def checkpoint(self, ckpt_dir, meta):
        states = [{"rows": np.array([self.rows])} for _ in range(self.cfg.ps.shards)]
        save_checkpoint(ckpt_dir, states, meta)

    def restore(self, states):
        self.calls.append(("restore", int(states[0]["rows"][0])))
        self.rows = int(states[0]["rows"][0])

    def train_cpu(self):
        return None

    def memory(self):
        return None

    def stats(self):
        return ShardStats(
            keys=7,
            nonzero_w=5,
            factor_rows_per_level=[3],
            nonzero_factors=9,
            ps_bytes=100,
            raw_bytes=80,
        )


def _run(cfg, fail=None, resume=False):
    made: list[ScriptedBackend] = []

    def make(c):
        made.append(ScriptedBackend(c, fail))
        return made[-1]

    return run(cfg, make, resume=resume), made[0]


def _events(run_dir: Path) -> list[str]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["event"] for x in lines]


def _trained(backend) -> list[tuple]:
    return [c for c in backend.calls if c[0] == "train"]


def test_units_follow_rows_per_unit_and_only_day_one_warms_up(data):
    rep, b = _run(_cfg(data, "data.rows_per_unit=2000", "ps.warmup_units=2"))
    # Whole row groups of 1000 rows, about 2000 rows a unit: 2000, 2000, 1000.
    assert _trained(b) == [
        ("train", "1", [2000, 2000, 1000], 2),
        ("train", "2", [2000, 2000, 1000], 0),
    ]
    assert ("evaluate", "3", 3, True) in b.calls
    assert rep["train"]["rows"] == 2 * ROWS_PER_DAY and rep["test"]["rows"] == ROWS_PER_DAY
    _, b = _run(_cfg(data))  # the default: one unit a day
    assert [c[2] for c in _trained(b)] == [[ROWS_PER_DAY]] * 2


def test_report_metrics_lines_and_checkpoints(data, tmp_path, monkeypatch):
    import psfm.runloop

    monkeypatch.setattr(psfm.runloop, "_RUNS", itertools.count())  # this process's first run
    run_dir = tmp_path / "run"
    rep, b = _run(_cfg(data, "train.eval_next_day=true", run_dir=run_dir))
    age = process_age()
    assert set(rep) == {"test", "model", "train", "valid", "timing", "memory", "config"}
    t = rep["timing"]  # start-up, statistics pass or restore, test pass
    assert 0 <= t["startup_seconds"] <= t["seconds_before_training"] and t["test_seconds"] > 0
    # the first run of a process counts from its start (the test session's here); later
    # runs of the same process say nothing
    assert t["seconds_before_training"] < t["seconds_to_first_batch"] < age
    later = _run(_cfg(data, run_dir=tmp_path / "again"))[0]["timing"]["seconds_to_first_batch"]
    assert later is None
    assert {
        "days",
        "rows",
        "samples_per_s",
        "bytes_per_sample",
        "per_day",
        "wall_seconds",
        "passes",
        "best_pass",
        "early_stopped",
        "worker_cpu_us_per_sample",
        "shard_cpu_us_per_sample",
        "driver_cpu_us_per_sample",
    } == set(rep["train"])
    assert rep["valid"] == [] and rep["train"]["passes"] == rep["train"]["best_pass"] == 1
    assert rep["model"]["nonzero_params"] == 14 and rep["train"]["bytes_per_sample"] > 0
    assert [d["next_day"]["day"] for d in rep["train"]["per_day"]] == ["2", "3"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["train_day", "train_day", "test"]
    assert "next_day" in lines[0]  # the line holds the whole per-day record
    assert ("end_day", 1) in b.calls and ("end_day", 2) in b.calls
    states, manifest = load_checkpoint(run_dir / "checkpoints" / "day=2")
    assert manifest["day_index"] == 1 and int(states[0]["rows"][0]) == 2 * ROWS_PER_DAY
    assert json.loads((run_dir / "report.json").read_text())["test"] == rep["test"]


def test_long_phases_log_progress_lines(data, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cfg = _cfg(data, 'model.kind="rafm"', "model.ranks=[1,2]", "train.log_every_s=1e-9")
    run(cfg, lambda c: LocalBackend(c))
    text = caplog.text
    assert re.search(r"statistics pass: [\d,]+/10,000 rows, [\d,]+ rows/s, ETA \d+s", text)
    assert re.search(r"day 1: [\d,]+/5,000 rows, [\d,]+ samples/s", text)
    assert re.search(r"test: [\d,]+/5,000 rows", text)


def test_statistics_pass_is_checkpointed(data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(data, 'model.kind="rafm"', "model.ranks=[1,2]", run_dir=run_dir)
    rep, b = _run(cfg)
    assert [c for c in b.calls if c[0] == "count"] == [("count", 2)]
    _, manifest = load_checkpoint(run_dir / "checkpoints" / "day=stats")
    assert manifest["day_index"] == -1 and manifest["per_day"] == []
    assert rep["train"]["rows"] == 2 * ROWS_PER_DAY


def test_a_replayed_first_day_restores_the_statistics_checkpoint(data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(data, 'model.kind="rafm"', "model.ranks=[1,2]", run_dir=run_dir)
    rep, b = _run(cfg, fail={"1": [Lost()]})
    assert b.rows == 2 * ROWS_PER_DAY and rep["train"]["rows"] == 2 * ROWS_PER_DAY
    assert [c for c in b.calls if c[0] == "count"] == [("count", 2)]
    assert ("restore", 0) in b.calls


def test_lost_actors_are_retried_per_day_and_each_row_is_applied_once(data, tmp_path, caplog):
    run_dir = tmp_path / "run"
    caplog.set_level(logging.WARNING, logger="psfm.runloop")
    # Two losses on each day: within the bound of two retries per day (a per-run bound of
    # two would have ended the run on day 2).
    rep, b = _run(_cfg(data, run_dir=run_dir), fail={"1": [Lost(), Lost()], "2": [Lost(), Lost()]})
    assert [c[1] for c in _trained(b)] == ["1", "1", "1", "2", "2", "2"]
    assert b.starts == 5  # the first start and one per retry
    assert [c for c in b.calls if c[0] == "restore"] == [("restore", ROWS_PER_DAY)] * 2
    assert b.rows == 2 * ROWS_PER_DAY  # each replay started from the last checkpoint
    assert [d["day"] for d in rep["train"]["per_day"]] == ["1", "2"]
    assert _events(run_dir) == ["train_day", "train_day", "test"]  # no line twice
    assert caplog.text.count("running it again") == 4
    assert "retry 2 of 2)" in caplog.text


class LateLoss(ScriptedBackend):
    """Loses an actor after one unit of the second group of units of day 2."""

    def train(self, units, warmup, on_unit, reuse=False):
        day = units[0].day
        self.groups = getattr(self, "groups", 0) + (day == "2")
        if day == "2" and self.groups == 2:
            self.calls.append(("train", day, [u.rows for u in units], warmup))
            self.rows += units[0].rows
            on_unit(_report(units[0]))
            raise Lost()
        return super().train(units, warmup, on_unit, reuse)


def test_a_loss_after_a_checkpoint_within_the_day_replays_only_the_units_after_it(data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(
        data,
        "data.rows_per_unit=1000",  # 5 units a day, a checkpoint after every 2
        "train.checkpoint_every_rows=2000",
        "train.keep_checkpoints=0",
        run_dir=run_dir,
    )
    made: list[ScriptedBackend] = []
    rep = run(cfg, lambda c: made.append(LateLoss(c)) or made[-1])
    b = made[0]
    assert [c[2] for c in _trained(b) if c[1] == "2"] == [
        [1000] * 2,
        [1000] * 2,  # lost after its first unit
        [1000] * 2,  # replayed from the checkpoint after units 0-1
        [1000],
    ]
    assert [c for c in b.calls if c[0] == "restore"] == [("restore", ROWS_PER_DAY + 2000)]
    assert b.rows == 2 * ROWS_PER_DAY  # every row applied once
    day2 = rep["train"]["per_day"][1]
    assert day2["resumed_at_unit"] == 2 and day2["rows"] == 3000
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "day=1",
        "day=1.units=000002",
        "day=1.units=000004",
        "day=2",
        "day=2.units=000002",
        "day=2.units=000004",
    ]


def test_a_third_loss_on_one_day_gives_up_after_the_days_before(data, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Lost):
        _run(_cfg(data, run_dir=run_dir), fail={"2": [Lost(), Lost(), Lost()]})
    assert _events(run_dir) == ["train_day"]
    _, manifest = load_checkpoint(run_dir / "checkpoints" / "day=1")
    assert manifest["day"] == "1" and not (run_dir / "checkpoints" / "day=2").exists()


@pytest.mark.parametrize("error, run_dir", [(DataError("bad label"), True), (Lost(), False)])
def test_bad_input_or_no_checkpoint_gives_up_at_once(data, tmp_path, error, run_dir):
    made: list[ScriptedBackend] = []

    def make(c):
        made.append(ScriptedBackend(c, {"1": [error]}))
        return made[-1]

    cfg = _cfg(data, run_dir=tmp_path / "run" if run_dir else None)
    with pytest.raises(type(error)):
        run(cfg, make)
    assert len(_trained(made[0])) == 1 and made[0].starts == 1
    assert made[0].calls[-1] == ("close",)


def test_failure_policy_retries_lost_actors_up_to_n_per_day(caplog):
    caplog.set_level(logging.DEBUG, logger="psfm.runloop")
    policy = FailurePolicy(_lost, max_retries_per_day=2)
    retry, give_up = Decision.RETRY_DAY, Decision.GIVE_UP
    got = [policy.decide(Lost("gone"), "day 3", a) for a in (1, 2, 3)]
    assert got == [retry, retry, give_up]
    assert policy.decide(Lost("gone"), "day 4", 1) is retry  # the next day starts from zero
    assert "day 3: an actor died (Lost: gone); restarting, restoring the last" in caplog.text
    assert "on attempt 3; 2 retries per day or phase spent: giving up" in caplog.text
    assert policy.decide(DataError("bad"), "day 3", 1) is give_up
    # debug only: the caller shows the error itself, as one line
    assert "day 3: bad; not a lost shard or worker: giving up" in caplog.text
    assert [r.levelname for r in caplog.records if "not a lost" in r.message] == ["DEBUG"]
    assert FailurePolicy(_lost, can_restore=False).decide(Lost(), "3", 1) is give_up
    assert FailurePolicy(_lost, max_retries_per_day=0).decide(Lost(), "3", 1) is give_up


def test_the_run_loop_imports_neither_ray_nor_torch():
    import psfm.runloop

    tree = ast.parse(Path(psfm.runloop.__file__).read_text())
    names = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    names |= {
        n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module
    }
    assert not names & {"ray", "torch"}, names


# ------------------------------------------------------------------ passes, validation, stops


@pytest.fixture(scope="module")
def data4(tmp_path_factory):
    root = tmp_path_factory.mktemp("runloop4")
    # 4 days of 5 row groups of 1000 rows: train on 1-2, validate on 3, test on 4
    generate(
        root, days=4, rows_per_day=ROWS_PER_DAY, spec=GenSpec.small(), seed=2, row_group_rows=1000
    )
    return root


class ValidScripted(ScriptedBackend):
    """A :class:`ScriptedBackend` whose validation day scores as scripted: after pass p its
    predictions are ``q[p-1]`` for every positive and ``1 - q[p-1]`` for every negative, so
    the validation logloss of pass p is ``-log q[p-1]`` (higher q, better)."""

    def __init__(self, cfg, q: list[float]) -> None:
        super().__init__(cfg)
        self.q = list(q)

    def evaluate(self, units, keep_predictions, on_unit, reuse=False):
        if units[0].day != "3":
            return super().evaluate(units, keep_predictions, on_unit, reuse)
        self.reuse.append(("evaluate", units[0].day, reuse))
        self.calls.append(("validate", self.rows))
        q = self.q.pop(0)
        labels = np.array([0, 1, 1, 0], np.float32)
        probs = np.where(labels == 1, q, 1 - q)
        acc = MetricAccumulator()
        acc.update(labels, probs)
        for u in units:
            on_unit(
                UnitReport(
                    unit=u.uid,
                    rows=4,
                    skipped=0,
                    loss=0.0,
                    seconds=0.01,
                    acc_state=acc.state(),
                    acc_low_state=acc.state(),
                )
            )

    def snapshot(self):
        self.calls.append(("snapshot", self.rows))
        return [{"rows": np.array([self.rows])} for _ in range(self.cfg.ps.shards)]


def _run_valid(cfg, q, resume=False):
    made: list[ValidScripted] = []

    def make(c):
        made.append(ValidScripted(c, q))
        return made[-1]

    return run(cfg, make, resume=resume), made[0]


def test_passes_train_the_days_again_with_shuffled_units_and_count_once(data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(
        data,
        'model.kind="rafm"',
        "model.ranks=[1,2]",
        "train.passes=3",
        "data.rows_per_unit=1000",
        "ps.warmup_units=2",
        run_dir=run_dir,
    )
    rep, b = _run(cfg)
    # The statistics pass counts one pass's units once (occurrences, not x passes).
    assert [c for c in b.calls if c[0] == "count"] == [("count", 10)]
    # ... and keeps the batches for pass 1, which keeps them for pass 2, ... but not pass 3.
    assert [r[2] for r in b.reuse] == [True] + [True] * 4 + [False] * 2 + [False]
    trained = _trained(b)
    assert [c[1] for c in trained] == ["1", "2"] * 3
    assert [c[3] for c in trained] == [2, 0, 0, 0, 0, 0]  # warm-up: day 1 of pass 1 only
    assert [c[1] for c in b.calls if c[0] == "end_day"] == [1, 2, 3, 4, 5, 6]
    assert rep["train"]["rows"] == 3 * 2 * ROWS_PER_DAY and b.rows == 3 * 2 * ROWS_PER_DAY
    assert [(d["pass"], d["day"]) for d in rep["train"]["per_day"]] == [
        (p, d) for p in (1, 2, 3) for d in ("1", "2")
    ]
    assert rep["train"]["passes"] == rep["train"]["best_pass"] == 3
    # train.keep_checkpoints = 3: the newest three of day=stats, day=1 ... pass=3.day=2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "pass=2.day=2",
        "pass=3.day=1",
        "pass=3.day=2",
    ]
    _, manifest = load_checkpoint(run_dir / "checkpoints" / "pass=3.day=1")
    assert manifest["pass"] == 3 and manifest["day_index"] == 4
    assert _events(run_dir) == ["train_day"] * 6 + ["test"]


def test_a_next_day_scored_during_training_keeps_its_batches_when_it_is_trained_again(data):
    _, b = _run(_cfg(data, "train.eval_next_day=true", "train.passes=2"))
    assert b.reuse == [
        ("train", "1", True),
        ("evaluate", "2", True),  # trained next in this pass
        ("train", "2", True),
        ("evaluate", "3", False),  # the test day
        ("train", "1", False),
        ("evaluate", "2", True),  # trained next in this (last) pass
        ("train", "2", False),
        ("evaluate", "3", False),
        ("evaluate", "3", False),  # the test pass
    ]


def test_the_unit_order_of_later_passes_is_a_seeded_shuffle(data):
    from psfm.data.parquet import work_units
    from psfm.passes import pass_units

    units = work_units(str(data), "1", 1000)
    assert pass_units(units, 0, 1, 0) == units  # pass 1: file order
    a = [u.uid for u in pass_units(units, 0, 2, 0)]
    assert sorted(a) == sorted(u.uid for u in units) and a != [u.uid for u in units]
    assert a == [u.uid for u in pass_units(units, 0, 2, 0)]  # the same seed, the same order
    assert a != [u.uid for u in pass_units(units, 1, 2, 0)]  # another seed, another order
    assert a != [u.uid for u in pass_units(units, 0, 3, 0)]  # and another pass
    assert pass_units(units, -5, 2, 0)  # any int seeds it


def test_validation_is_scored_after_each_pass(data4, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(
        data4, 'data.train_days="1..2"', 'data.valid_days="3"', "train.passes=2", run_dir=run_dir
    )
    rep, b = _run_valid(cfg, [0.6, 0.7])
    assert [c for c in b.calls if c[0] == "validate"] == [
        ("validate", 2 * ROWS_PER_DAY),
        ("validate", 4 * ROWS_PER_DAY),
    ]
    assert _events(run_dir) == ["train_day", "train_day", "valid"] * 2 + ["test"]
    # The pass cache: what is read again in the run is kept, what is not is not (the last
    # pass's days, the last validation, the test day).
    assert b.reuse == [
        ("train", "1", True),
        ("train", "2", True),
        ("evaluate", "3", True),
        ("train", "1", False),
        ("train", "2", False),
        ("evaluate", "3", False),
        ("evaluate", "4", False),
    ]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    valid = [x for x in lines if x["event"] == "valid"]
    assert [v["pass"] for v in valid] == [1, 2] and all(v["rows"] == 4 for v in valid)
    assert [round(v["logloss"], 12) for v in valid] == [round(-np.log(q), 12) for q in (0.6, 0.7)]
    assert [v["pass"] for v in rep["valid"]] == [1, 2]
    assert {"pass", "auc", "logloss", "rows"} <= set(rep["valid"][0])
    assert "decision" not in rep["valid"][0]  # no early stopping: nothing decided
    # Without validation days, passes validate nothing.
    rep, b = _run_valid(_cfg(data4, 'data.train_days="1..2"', "train.passes=2"), [])
    assert rep["valid"] == [] and not [c for c in b.calls if c[0] == "validate"]


@pytest.mark.parametrize("with_run_dir", [True, False])
def test_early_stopping_stops_after_patience_and_tests_the_best_pass(
    data4, tmp_path, with_run_dir, caplog
):
    caplog.set_level(logging.INFO, logger="psfm.passes")
    run_dir = tmp_path / "run" if with_run_dir else None
    cfg = _cfg(
        data4,
        'data.train_days="1..2"',
        'data.valid_days="3"',
        "train.passes=6",
        'train.early_stop="logloss"',
        "train.patience=2",
        run_dir=run_dir,
    )
    # Pass 2 is the best; passes 3 and 4 do not improve on it (3 ties pass 2: no strict
    # improvement); pass 5 would have been the best but is never trained.
    rep, b = _run_valid(cfg, [0.6, 0.7, 0.7, 0.65, 0.9, 0.9])
    per_pass = 2 * ROWS_PER_DAY
    assert len(_trained(b)) == 4 * 2 and b.calls.count(("close",)) == 1
    assert [v["decision"] for v in rep["valid"]] == ["improved", "improved", "wait", "stop"]
    assert [v["best_pass"] for v in rep["valid"]] == [1, 2, 2, 2]
    assert rep["train"]["early_stopped"] and rep["train"]["best_pass"] == 2
    assert rep["train"]["passes"] == 4 and rep["train"]["rows"] == 4 * per_pass
    # The best pass's state is put back before the test pass scores the model.
    calls = b.calls
    test_at = calls.index(("evaluate", "4", 1, True))
    assert calls[test_at - 1] == ("restore", 2 * per_pass)
    if with_run_dir:
        assert not [c for c in calls if c[0] == "snapshot"]
        assert _events(run_dir) == (["train_day", "train_day", "valid"] * 4) + ["test"]
        from psfm.checkpoint import latest_checkpoint, resume_checkpoint

        assert resume_checkpoint(str(run_dir)).endswith("pass=4.day=2")
        assert latest_checkpoint(str(run_dir)).endswith("pass=2.day=2")
    else:
        assert [c for c in calls if c[0] == "snapshot"] == [
            ("snapshot", per_pass),
            ("snapshot", 2 * per_pass),
        ]
    assert (
        "pass 4: valid logloss 0.430783, no better than 0.356675 of pass 2 for 2 pass(es) "
        "(patience 2): stop" in caplog.text
    )


def test_a_run_resumed_after_early_stopping_does_not_train_again(data4, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(
        data4,
        'data.train_days="1..2"',
        'data.valid_days="3"',
        "train.passes=6",
        'train.early_stop="auc"',
        "train.patience=1",
        run_dir=run_dir,
    )
    first, _ = _run_valid(cfg, [0.7, 0.8, 0.6, 0.9])  # AUC: 1.0 at 0.7 and 0.8 (no gain)
    assert first["train"]["passes"] == 2 and first["train"]["best_pass"] == 1
    rep, b = _run_valid(cfg, [], resume=True)
    assert not _trained(b) and not [c for c in b.calls if c[0] == "validate"]
    per_pass = 2 * ROWS_PER_DAY
    assert [c for c in b.calls if c[0] == "restore"] == [
        ("restore", 2 * per_pass),
        ("restore", per_pass),
    ]
    assert rep["valid"] == first["valid"] and rep["train"]["best_pass"] == 1
    assert rep["train"]["per_day"] == first["train"]["per_day"]


def test_a_run_resumed_between_passes_continues_at_the_next_pass(data4, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    cfg = _cfg(
        data4,
        'data.train_days="1..2"',
        'data.valid_days="3"',
        "train.passes=3",
        "train.keep_checkpoints=0",
        run_dir=run_dir,
    )
    full, _ = _run_valid(cfg, [0.6, 0.7, 0.8])
    for name in ("pass=2.day=2", "pass=3.day=1", "pass=3.day=2"):  # a crash in pass 2
        shutil.rmtree(run_dir / "checkpoints" / name)
    rep, b = _run_valid(cfg, [0.7, 0.8], resume=True)
    assert [c[1] for c in _trained(b)] == ["2", "1", "2"]
    assert ("restore", 3 * ROWS_PER_DAY) in b.calls and b.rows == 6 * ROWS_PER_DAY
    assert [(d["pass"], d["day"]) for d in rep["train"]["per_day"]] == [
        (d["pass"], d["day"]) for d in full["train"]["per_day"]
    ]
    assert [v["pass"] for v in rep["valid"]] == [1, 2, 3]


@pytest.mark.parametrize(
    "sets, match",
    [
        (
            ['data.train_days="1,1,1"'],
            r"'train_days' parameter of DataConfig must name each day "
            r"once; .* train.passes .*Got '1,1,1' instead \(day '1'",
        ),
        (['data.train_days="1..2,2"'], r"day '2' named more than once"),
        (
            ['data.train_days="1..2"', 'data.valid_days="2..3"'],
            r"'valid_days' parameter of DataConfig must not overlap the train days. Got '2..3' "
            r"instead \(day '2' is also a train day\)",
        ),
        (
            ['data.train_days="1"', 'data.valid_days="2,4"'],
            r"must not overlap the test days. Got '2,4' instead \(day '4' is also a test day\)",
        ),
        (['data.valid_days="1..3"'], r"No training days"),
    ],
)
def test_bad_day_specs_are_refused_before_any_backend_starts(data4, sets, match):
    made: list = []
    with pytest.raises(DataError, match=match):
        run(_cfg(data4, *sets), lambda c: made.append(c))
    assert not made


def test_default_training_days_leave_the_validation_days_out(data4):
    rep, b = _run_valid(_cfg(data4, 'data.valid_days="3"'), [0.7])
    assert rep["train"]["days"] == ["1", "2"] and rep["test"]["days"] == ["4"]
    assert [v["days"] for v in rep["valid"]] == [["3"]]


def test_early_stopping_decisions():
    from psfm.passes import EarlyStopping, StopDecision

    def hist(values, metric):
        return [{"pass": i + 1, metric: v} for i, v in enumerate(values)]

    ll = EarlyStopping("logloss", patience=2)
    assert ll.decide(hist([0.5], "logloss")) is StopDecision.IMPROVED
    assert ll.decide(hist([0.5, 0.4], "logloss")) is StopDecision.IMPROVED
    assert ll.decide(hist([0.5, 0.4, 0.4], "logloss")) is StopDecision.WAIT  # a tie
    assert ll.decide(hist([0.5, 0.4, 0.4, 0.45], "logloss")) is StopDecision.STOP
    auc = EarlyStopping("auc", patience=1)
    assert auc.decide(hist([0.7, 0.75], "auc")) is StopDecision.IMPROVED
    assert auc.decide(hist([0.7, 0.65], "auc")) is StopDecision.STOP
    assert auc.decide(hist([0.7, float("nan")], "auc")) is StopDecision.STOP  # never better
    assert auc.best(hist([float("nan"), 0.6], "auc"))["pass"] == 2


def test_a_lost_actor_in_the_statistics_or_test_pass_is_retried(data, tmp_path, caplog):
    """The statistics pass and the test pass go through the same failure policy as a day: a
    lost actor restarts the backend and the phase runs again (the test pass on the tested
    state, restored from the last checkpoint); anything else gives up at once."""
    caplog.set_level(logging.INFO, logger="psfm.runloop")
    cfg = _cfg(data, 'model.kind="rafm"', run_dir=tmp_path / "run")  # static levels: counts
    rep, b = _run(cfg, fail={"count": [Lost("gone")], "evaluate": [Lost("gone")]})
    assert b.starts == 3  # the first start, one restart per lost phase
    assert [c[0] for c in b.calls].count("count") == 2  # the statistics pass ran again
    evals = [c for c in b.calls if c[0] == "evaluate"]
    assert len(evals) == 2 and ("restore", 2 * ROWS_PER_DAY) in b.calls
    assert b.rows == 2 * ROWS_PER_DAY  # the test pass scored the trained state, not an empty one
    assert "the statistics pass: an actor died (Lost: gone); restarting" in caplog.text
    assert "the test pass: an actor died" in caplog.text
    assert rep["test"]["rows"] > 0
    with pytest.raises(ValueError, match="boom"):
        _run(_cfg(data, run_dir=tmp_path / "run2"), fail={"evaluate": [ValueError("boom")]})


def test_a_lost_statistics_pass_is_retried_without_a_run_directory(data):
    """Counting again needs no checkpoint: the statistics pass retries even without a run
    directory (a lost test pass there still gives up: the trained state would be gone)."""
    rep, b = _run(_cfg(data, 'model.kind="rafm"'), fail={"count": [Lost("gone")]})
    assert b.starts == 2 and [c[0] for c in b.calls].count("count") == 2
    assert rep["test"]["rows"] > 0
    with pytest.raises(Lost):
        _run(_cfg(data, 'model.kind="rafm"'), fail={"evaluate": [Lost("gone")]})

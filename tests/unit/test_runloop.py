"""The run loop over a scripted backend (no Ray, no model): work units, warm-up, the statistics
pass, checkpoints and metrics lines, and the failure policy's per-day retries."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from psfm.checkpoint import load_checkpoint, save_checkpoint
from psfm.config import load_config
from psfm.data.gen import GenSpec, generate
from psfm.errors import DataError
from psfm.metrics import MetricAccumulator
from psfm.ps.messages import ShardStats
from psfm.runloop import Decision, FailurePolicy, UnitReport, run

ROWS_PER_DAY = 5000


class Lost(RuntimeError):
    """Stands for a dead actor."""


def _lost(error: BaseException) -> str | None:
    return "an actor died" if isinstance(error, Lost) else None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("runloop")
    # 3 days of 5 row groups of 1000 rows: train on days 1-2, test on day 3
    generate(root, days=3, rows_per_day=ROWS_PER_DAY, spec=GenSpec.small(), seed=2,
             row_group_rows=1000)
    return root


def _cfg(root, *sets, run_dir=None):
    extra = [f"train.run_dir={json.dumps(str(run_dir))}"] if run_dir else []
    return load_config(None, [f"data.root={json.dumps(str(root))}", 'model.kind="fm"', *sets,
                              *extra])


def _report(unit, keep: bool = False) -> UnitReport:
    labels = np.array([0, 1, 1, 0], np.float32)
    probs = np.array([0.2, 0.7, 0.4, 0.3])
    acc = MetricAccumulator()
    acc.update(labels, probs)
    return UnitReport(unit=unit.uid, rows=unit.rows, skipped=0, loss=1.0, seconds=0.01,
                      acc_state=acc.state(), acc_low_state=acc.state(), bytes_pulled=10,
                      bytes_pushed=20,
                      predictions=np.stack([probs, probs, labels]) if keep else None)


class ScriptedBackend:
    """A backend whose "model" is the number of rows trained into it; ``fail[day]`` lists the
    errors its next trainings of that day raise halfway through the day."""

    workers = 1

    def __init__(self, cfg, fail: dict[str, list[BaseException]] | None = None) -> None:
        self.cfg, self.fail = cfg, {d: list(e) for d, e in (fail or {}).items()}
        self.calls: list[tuple] = []
        self.rows = 0
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.rows = 0  # fresh, empty shards

    def close(self) -> None:
        self.calls.append(("close",))

    def lost(self, error):
        return _lost(error)

    def count(self, units):
        self.calls.append(("count", len(units)))
        return sum(u.rows for u in units)

    def finish_counts(self):
        return {"keys": 7, "not_admitted": 0}

    def train(self, units, warmup, on_unit):
        day = units[0].day
        self.calls.append(("train", day, [u.rows for u in units], warmup))
        for i, u in enumerate(units):
            if i == len(units) // 2 and self.fail.get(day):
                raise self.fail[day].pop(0)
            self.rows += u.rows
            on_unit(_report(u))

    def evaluate(self, units, keep_predictions, on_unit):
        self.calls.append(("evaluate", units[0].day, len(units), keep_predictions))
        for u in units:
            on_unit(_report(u, keep_predictions))

    def end_day(self, days_done):
        self.calls.append(("end_day", days_done))

    def checkpoint(self, ckpt_dir, meta):
        states = [{"rows": np.array([self.rows])} for _ in range(self.cfg.ps.shards)]
        save_checkpoint(ckpt_dir, states, meta)

    def restore(self, states):
        self.calls.append(("restore", int(states[0]["rows"][0])))
        self.rows = int(states[0]["rows"][0])

    def stats(self):
        return ShardStats(keys=7, nonzero_w=5, factor_rows_per_level=[3], nonzero_factors=9,
                          ps_bytes=100, raw_bytes=80)


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
    assert _trained(b) == [("train", "1", [2000, 2000, 1000], 2),
                           ("train", "2", [2000, 2000, 1000], 0)]
    assert ("evaluate", "3", 3, True) in b.calls
    assert rep["train"]["rows"] == 2 * ROWS_PER_DAY and rep["test"]["rows"] == ROWS_PER_DAY
    _, b = _run(_cfg(data))  # the default: one unit a day
    assert [c[2] for c in _trained(b)] == [[ROWS_PER_DAY]] * 2


def test_report_metrics_lines_and_checkpoints(data, tmp_path):
    run_dir = tmp_path / "run"
    rep, b = _run(_cfg(data, "train.eval_next_day=true", run_dir=run_dir))
    assert set(rep) == {"test", "model", "train", "config"}
    assert {"days", "rows", "samples_per_s", "bytes_per_sample", "per_day",
            "wall_seconds"} == set(rep["train"])
    assert rep["model"]["nonzero_params"] == 14 and rep["train"]["bytes_per_sample"] > 0
    assert [d["next_day"]["day"] for d in rep["train"]["per_day"]] == ["2", "3"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["train_day", "train_day", "test"]
    assert "next_day" in lines[0]  # the line holds the whole per-day record
    assert ("end_day", 1) in b.calls and ("end_day", 2) in b.calls
    states, manifest = load_checkpoint(run_dir / "checkpoints" / "day=2")
    assert manifest["day_index"] == 1 and int(states[0]["rows"][0]) == 2 * ROWS_PER_DAY
    assert json.loads((run_dir / "report.json").read_text())["test"] == rep["test"]


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
    rep, b = _run(_cfg(data, run_dir=run_dir), fail={"1": [Lost(), Lost()],
                                                      "2": [Lost(), Lost()]})
    assert [c[1] for c in _trained(b)] == ["1", "1", "1", "2", "2", "2"]
    assert b.starts == 5  # the first start and one per retry
    assert [c for c in b.calls if c[0] == "restore"] == [("restore", ROWS_PER_DAY)] * 2
    assert b.rows == 2 * ROWS_PER_DAY  # each replay started from the last checkpoint
    assert [d["day"] for d in rep["train"]["per_day"]] == ["1", "2"]
    assert _events(run_dir) == ["train_day", "train_day", "test"]  # no line twice
    assert caplog.text.count("replaying the day") == 4
    assert "retry 2 of 2 for this day" in caplog.text


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
    caplog.set_level(logging.INFO, logger="psfm.runloop")
    policy = FailurePolicy(_lost, max_retries_per_day=2)
    retry, give_up = Decision.RETRY_DAY, Decision.GIVE_UP
    assert [policy.decide(Lost("gone"), "3", a) for a in (1, 2, 3)] == [retry, retry, give_up]
    assert policy.decide(Lost("gone"), "4", 1) is retry  # the next day starts from zero
    assert "day 3: an actor died (Lost: gone); restoring the last checkpoint" in caplog.text
    assert "on attempt 3; 2 retries per day spent: giving up" in caplog.text
    assert policy.decide(DataError("bad"), "3", 1) is give_up
    assert "DataError: bad; not a lost shard or worker" in caplog.text
    assert FailurePolicy(_lost, can_restore=False).decide(Lost(), "3", 1) is give_up
    assert FailurePolicy(_lost, max_retries_per_day=0).decide(Lost(), "3", 1) is give_up


def test_the_run_loop_imports_neither_ray_nor_torch():
    import psfm.runloop

    tree = ast.parse(Path(psfm.runloop.__file__).read_text())
    names = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import)
             for a in n.names}
    names |= {n.module.split(".")[0] for n in tree.body
              if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"ray", "torch"}, names

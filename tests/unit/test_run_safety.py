"""Run directories that cannot be lost: a new run does not delete an earlier one unasked,
``--resume`` works in the directory given and applies the options given, checkpoints are
verified and fall back, retention keeps the newest few and the best, and day partitions that
would train or test the wrong rows are refused (in process; the Ray path shares the loop)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from psfm.checkpoint import JOURNAL, MANIFEST, load_checkpoint, load_newest_checkpoint
from psfm.cli import main
from psfm.datasets.gen import GenSpec, generate
from psfm.errors import CheckpointError, DataError
from tests.unit.test_trainer import _final_model, _train

LR = ('model.kind="lr"', "ps.shards=2", "train.keep_checkpoints=0")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    generate(root, days=4, rows_per_day=8_000, spec=GenSpec.small(), seed=2, row_group_rows=4096)
    return root


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def full(data, tmp_path_factory):
    """A finished 3-day LR run (every checkpoint kept) to copy, damage and resume."""
    run = tmp_path_factory.mktemp("full") / "run"
    rep = _train(data, *LR, run_dir=run)
    return run, rep


def test_a_new_run_refuses_a_directory_that_holds_a_run_and_keeps_it(data, full, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full[0], run)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match=r"already holds a run \(3 checkpoint\(s\), report"):
        _train(data, 'model.kind="fm"', run_dir=run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert (run / "report.json").exists()
    # --overwrite starts over: the old checkpoints and report go, the new run's come
    rep = _train(data, 'model.kind="fm"', "train.overwrite=true", run_dir=run)
    assert rep["model"]["kind"] == "fm"
    assert json.loads((run / "report.json").read_text())["model"]["kind"] == "fm"


def test_a_new_run_directory_is_its_owners_alone(data, full, tmp_path):
    import stat

    assert stat.S_IMODE(full[0].stat().st_mode) == 0o700
    mine = tmp_path / "shared"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    _train(data, *LR, "train.passes=1", run_dir=mine)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755  # made by its owner: left as it is


def test_resume_uses_the_directory_given_not_the_stored_one(data, full, tmp_path):
    src, rep = full
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    shutil.rmtree(copy / "checkpoints" / "day=3")
    (copy / "report.json").unlink()
    stamp = {p: p.stat().st_mtime_ns for p in src.rglob("*") if p.is_file()}
    assert main(["train", "--run-dir", str(copy), "--resume", "--in-process"]) == 0
    assert {p: p.stat().st_mtime_ns for p in src.rglob("*") if p.is_file()} == stamp
    assert (copy / "report.json").exists()
    _same(_final_model(src), _final_model(copy))
    # the stored config holds absolute paths: resuming from another directory finds the data
    stored = json.loads((copy / "config.json").read_text())
    assert stored["data"]["root"].startswith("/") and stored["train"]["run_dir"] == str(copy)


def test_resume_before_the_first_checkpoint_starts_the_run_over(data, full, tmp_path, caplog):
    """A run killed before its first checkpoint (in the statistics pass, say) has its
    config.json and nothing trained: --resume runs it from the start, not an error; with
    checkpoints of which none verifies it still refuses (and deletes nothing)."""
    src, rep = full
    run = tmp_path / "early"
    run.mkdir()
    shutil.copy(src / "config.json", run / "config.json")
    caplog.set_level(logging.WARNING, logger="psfm.runloop")
    assert main(["train", "--run-dir", str(run), "--resume", "--in-process"]) == 0
    assert "has no checkpoint yet" in caplog.text
    _same(_final_model(src), _final_model(run))
    damaged = tmp_path / "damaged"
    shutil.copytree(src, damaged)
    (damaged / "report.json").unlink()
    for m in (damaged / "checkpoints").glob(f"*/{MANIFEST}"):
        m.write_text("{")
    (damaged / JOURNAL).unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        _train(data, *LR, run_dir=damaged, resume=True)
    assert len(list((damaged / "checkpoints").iterdir())) == 3


def test_resume_applies_the_options_given_and_extends_a_run_by_days(data, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--data", str(data), "--model", "lr", "--run-dir", str(run), "--in-process"]
    assert main([*base, "--train-days", "1..2", "--test-days", "4"]) == 0
    # a named option on --resume is applied, not dropped: day 3 is trained on top
    assert (
        main(["train", "--run-dir", str(run), "--resume", "--in-process", "--train-days", "1..3"])
        == 0
    )
    rep = json.loads((run / "report.json").read_text())
    assert rep["train"]["days"] == ["1", "2", "3"] and rep["test"]["days"] == ["4"]
    # the days already trained cannot change under a checkpoint
    capsys.readouterr()
    code = main(
        ["train", "--run-dir", str(run), "--resume", "--in-process", "--train-days", "2..3"]
    )
    assert code == 2
    assert "was trained on (pass, day)" in capsys.readouterr().err
    # --config has no meaning on resume (the stored config is the base)
    code = main(["train", "--run-dir", str(run), "--resume", "--config", "x.toml", "--in-process"])
    assert code == 2


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
def test_a_damaged_newest_checkpoint_falls_back_and_the_replay_ends_identical(
    data, full, tmp_path, caplog, journal
):
    """Damaged shard files fall back to the previous checkpoint; a lost, cut or edited
    manifest is restored from the run's journal when its files match the recorded SHA-256
    (and falls back without a journal). Every way ends with the uninterrupted model."""
    src, rep = full
    for damage in ("truncate", "flip", "no_shard", "sha", "no_files", "no_manifest"):
        run = tmp_path / f"{damage}-{journal}"
        shutil.copytree(src, run)
        (run / "report.json").unlink()
        if not journal:
            (run / JOURNAL).unlink()
        ck = run / "checkpoints" / "day=3"
        shard = ck / "shard-00001.npz"
        man = json.loads((ck / MANIFEST).read_text())
        if damage == "truncate":
            shard.write_bytes(shard.read_bytes()[:-100])
        elif damage == "flip":
            b = bytearray(shard.read_bytes())
            b[len(b) // 2] ^= 0x40
            shard.write_bytes(bytes(b))
        elif damage == "no_shard":
            shard.unlink()
        elif damage == "sha":
            man["files"]["shard-00000.npz"]["sha256"] = "0" * 64
            (ck / MANIFEST).write_text(json.dumps(man))
        elif damage == "no_files":
            del man["files"]
            (ck / MANIFEST).write_text(json.dumps(man))
        else:
            (ck / MANIFEST).unlink()
        caplog.clear()
        got = _train(data, *LR, run_dir=run, resume=True)
        recovered = journal and damage in ("sha", "no_files", "no_manifest")
        assert ("recovered the manifest" in caplog.text) == recovered, damage
        if not recovered and damage != "no_manifest":  # no manifest: never was a checkpoint
            assert "skipped a damaged checkpoint" in caplog.text and "day=3" in caplog.text
        if recovered:
            assert (
                json.loads((ck / MANIFEST).read_text())["files"]
                == json.loads((src / "checkpoints" / "day=3" / MANIFEST).read_text())["files"]
            )
        assert [d["day"] for d in got["train"]["per_day"]] == ["1", "2", "3"]
        assert got["test"]["auc"] == rep["test"]["auc"], damage
        _same(_final_model(src), _final_model(run))


def test_every_manifest_lost_resumes_from_the_journal(full, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full[0], run)
    for ck in (run / "checkpoints").iterdir():
        (ck / MANIFEST).unlink()
    d, states, manifest = load_newest_checkpoint(str(run))
    assert d.endswith("day=3") and len(states) == 2 and manifest["day_index"] == 2
    # pruning keeps the journal to the kept checkpoints (this run keeps every one)
    journal = json.loads((run / JOURNAL).read_text())
    assert sorted(journal["checkpoints"]) == ["day=1", "day=2", "day=3"]


def test_every_checkpoint_damaged_is_one_clear_error(full, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full[0], run)
    for ck in (run / "checkpoints").iterdir():
        (ck / "shard-00000.npz").write_bytes(b"not an npz")  # the journal cannot vouch for it
    with pytest.raises(CheckpointError, match=r"No checkpoint of .* verifies: .*--overwrite"):
        load_newest_checkpoint(str(run))


def test_a_manifest_cannot_point_outside_its_checkpoint_or_load_objects(full, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full[0], run)
    ck = run / "checkpoints" / "day=1"
    man = json.loads((ck / MANIFEST).read_text())
    man["files"] = {"../../config.json": {"bytes": 1, "sha256": "x"}}
    (ck / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match=r"'../../config.json'.*must be 'shard-NNNNN.npz'"):
        load_checkpoint(str(ck))
    # an object array needs pickle to load: refused as damage, nothing is executed
    import hashlib
    import io

    buf = io.BytesIO()
    np.savez(buf, w=np.array([{"a": 1}], dtype=object))
    raw = buf.getvalue()
    ck2 = run / "checkpoints" / "day=2"
    (ck2 / "shard-00000.npz").write_bytes(raw)
    man2 = json.loads((ck2 / MANIFEST).read_text())
    man2["files"]["shard-00000.npz"] = {
        "bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    (ck2 / MANIFEST).write_text(json.dumps(man2))
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(str(ck2))


def test_retention_keeps_the_newest_and_the_best(data, tmp_path):
    run = tmp_path / "run"
    sets = (
        'model.kind="lr"',
        'data.train_days="1..2"',
        'data.valid_days="3"',
        "train.passes=4",
        'train.early_stop="logloss"',
        "train.patience=9",
        "train.keep_checkpoints=2",
        "ftrl.linear.alpha=3.0",  # large steps: later passes overfit, the best is early
    )
    rep = _train(data, *sets, run_dir=run)
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    best = rep["train"]["best_pass"]
    want = {"pass=4.day=1", "pass=4.day=2"} | {"day=2" if best == 1 else f"pass={best}.day=2"}
    assert set(left) == want, (left, best)


@pytest.mark.parametrize(
    "layout, match",
    [
        (("2", "02"), r"day=02 and day=2, two spellings of day 2"),
        (("1", "2", "latest"), r"mixes numbered days with others: day=latest"),
    ],
)
def test_day_partitions_that_would_train_the_wrong_rows_are_refused(data, tmp_path, layout, match):
    root = tmp_path / "data"
    for d in layout:
        shutil.copytree(data / "day=1", root / f"day={d}")
    with pytest.raises(DataError, match=match):
        _train(root, 'model.kind="lr"', 'data.train_days="1"')


def test_train_and_test_days_must_not_overlap(data):
    with pytest.raises(DataError, match=r"'test_days' .* must not overlap the train days.*'3'"):
        _train(data, 'model.kind="lr"', 'data.train_days="1..3"', 'data.test_days="3"')


@pytest.mark.parametrize("flag", ["--shards", "--workers"])
def test_zero_shards_or_workers_is_refused_not_replaced(data, flag, capsys):
    code = main(["train", "--data", str(data), "--in-process", flag, "0"])
    assert code == 2
    assert "must be an int >= 1. Got 0" in capsys.readouterr().err


def test_an_error_from_a_ray_actor_is_shown_as_its_one_line():
    """Ray wraps an actor's exception in a class made from it whose text is the remote
    traceback with colour codes; the user sees the psfm message alone."""
    import ray.exceptions as rx

    from psfm.errors import user_message

    msg = "File 'f.parquet', row 100 (row group 0), column 'label': value 2.0 breaks the rule"
    tb = "\x1b[36mray::WorkerRunner.run_unit()\x1b[39m\nTraceback ...\n  File 'worker.py'\n"
    wrapped = rx.RayTaskError("run_unit", tb + msg, DataError(msg)).as_instanceof_cause()
    assert isinstance(wrapped, DataError) and "File 'worker.py'" in str(wrapped) != msg
    assert user_message(wrapped) == msg
    plain = rx.RayTaskError("f", tb + "ValueError: boom", ValueError("boom")).as_instanceof_cause()
    assert user_message(plain) == f"{type(plain).__name__}: ValueError: boom"


@pytest.mark.parametrize(
    "change, match",
    [
        ("string", r"column 'C1' holds string values, int in the first file"),
        ("missing", r"categorical column\(s\) 'C2' missing"),
    ],
)
def test_a_file_with_another_feature_schema_is_refused_before_training(
    data, tmp_path, change, match
):
    """An int column that is a string in another file would hash to other keys; a file
    without some feature columns would train fewer features: both silently, before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "data"
    shutil.copytree(data, root)
    bad = sorted((root / "day=3").glob("*.parquet"))[0]
    t = pq.read_table(bad)
    if change == "string":
        t = t.set_column(t.schema.get_field_index("C1"), "C1", t["C1"].cast(pa.string()))
    else:
        t = t.drop_columns(["C2"])
    pq.write_table(t, bad)
    run = tmp_path / "run"
    with pytest.raises(DataError, match=rf"File '.*day=3.*' does not have the feature .*{match}"):
        _train(root, 'model.kind="lr"', run_dir=run)
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_train_says_how_to_resume_and_the_resumed_run_loses_nothing(
    data, full, tmp_path, sig
):
    """Ctrl-C (or ray job stop's SIGTERM) during a day: one line naming the resume command,
    exit 130, the newest checkpoint kept; the resumed run ends with the uninterrupted model."""
    run = tmp_path / "run"
    # LR at 16-row batches: 3 days of 8k rows take seconds, so the signal lands mid-run
    cmd = [sys.executable, "-m", "psfm.cli", "train", "--in-process", "--data", str(data),
           "--run-dir", str(run), "--set", "data.batch_size=16"]  # fmt: skip
    cmd += [f"--set={s}" for s in LR]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("day=1/MANIFEST*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("psfm: interrupted.") and f"--run-dir {run} --resume" in last, err
    assert "Traceback" not in err
    assert not (run / "report.json").exists()  # interrupted before the end
    assert main(["train", "--run-dir", str(run), "--resume", "--in-process"]) == 0
    reference = _train(data, *LR, "data.batch_size=16", run_dir=tmp_path / "whole")
    report = json.loads((run / "report.json").read_text())
    assert report["test"]["auc"] == reference["test"]["auc"]
    _same(_final_model(run), _final_model(tmp_path / "whole"))


def test_checkpoints_within_a_day_resume_after_the_units_done(data, tmp_path):
    """train.checkpoint_every_rows: a checkpoint after every group of units in a day; a run
    resumed from one trains the rest of that day and ends with the uninterrupted model."""
    sets = (*LR, "data.rows_per_unit=4096", "train.checkpoint_every_rows=4096")
    rep = _train(data, *sets, run_dir=tmp_path / "a")
    names = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert names == [
        "day=1",
        "day=1.units=000001",
        "day=2",
        "day=2.units=000001",
        "day=3",
        "day=3.units=000001",
    ]
    plain = _train(data, *LR, "data.rows_per_unit=4096", run_dir=tmp_path / "b")
    assert rep["test"] == plain["test"]  # the barriers change nothing in-process
    _same(_final_model(tmp_path / "a"), _final_model(tmp_path / "b"))
    # a crash during day 2's second unit: the newest checkpoint is day 2's first unit
    run = tmp_path / "c"
    shutil.copytree(tmp_path / "a", run)
    for gone in ("day=3", "day=3.units=000001", "day=2"):
        shutil.rmtree(run / "checkpoints" / gone)
    (run / "report.json").unlink()
    _, manifest = load_checkpoint(run / "checkpoints" / "day=2.units=000001")
    assert manifest["units_done"] == 1 and manifest["day_index"] == 0
    assert main(["train", "--run-dir", str(run), "--resume", "--in-process"]) == 0
    _same(_final_model(run), _final_model(tmp_path / "a"))
    resumed = json.loads((run / "report.json").read_text())
    assert resumed["test"] == rep["test"]
    day2 = resumed["train"]["per_day"][1]
    assert day2["resumed_at_unit"] == 1 and day2["rows"] == 8_000 - 4096


def test_columns_of_no_feature_type_are_named_once_and_training_goes_on(tmp_path, caplog):
    """A timestamp or binary column among inferred features is left out, and said so once."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 400
    for day in (1, 2):
        (tmp_path / f"day={day}").mkdir()
        ts = [datetime.datetime(2026, 1, day) + datetime.timedelta(seconds=i) for i in range(n)]
        pq.write_table(
            pa.table(
                {
                    "label": rng.integers(0, 2, n).astype(np.int8),
                    "C1": rng.integers(0, 20, n),
                    "I1": rng.random(n),
                    "ts": pa.array(ts, pa.timestamp("s")),
                    "blob": pa.array([b"x"] * n, pa.binary()),
                }
            ),
            tmp_path / f"day={day}" / "part-0.parquet",
        )
    caplog.set_level(logging.WARNING)
    rep = _train(tmp_path, 'model.kind="lr"')
    said = [r.getMessage() for r in caplog.records if "no feature type" in r.getMessage()]
    assert len(said) == 1 and "'ts' (timestamp" in said[0] and "'blob' (binary)" in said[0]
    assert rep["train"]["rows"] == n
    caplog.clear()
    _train(tmp_path, 'model.kind="lr"', 'data.ignore=["ts", "blob"]')
    assert not [r for r in caplog.records if "no feature type" in r.getMessage()]

"""Bad input on the command line: one line naming what is wrong (file, row, column, value or
path, and the rule), exit status 2, no traceback, nothing trained lost."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psfm.cli import main
from psfm.datasets.gen import GenSpec, generate


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    good = root / "good"
    generate(good, days=3, rows_per_day=2000, spec=GenSpec.small(), seed=4)
    for name, table in {
        "dup": pa.Table.from_arrays(
            [pa.array([0, 1] * 50), pa.array(range(100)), pa.array(range(100))],
            names=["label", "C1", "C1"],
        ),
        "text_keys": pa.table(
            {
                "label": pa.array([0, 1] * 50),
                "keys": pa.array([["a", "b"]] * 100, pa.list_(pa.string())),
            }
        ),
    }.items():
        for d in (1, 2):
            (root / name / f"day={d}").mkdir(parents=True)
            pq.write_table(table, root / name / f"day={d}" / "part-0.parquet")
    (root / "a_file").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "bad.toml").write_text("a = [\n")
    assert main(["train", "--in-process", "--data", str(good), "--run-dir", str(root / "run")]) == 0
    return root


def _fails(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if not x.startswith("20")]  # log lines have a date
    assert len(lines) == 1 and lines[0].startswith("psfm: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in err


CASES = {
    "duplicate column": (
        ["train", "--in-process", "--data", "{root}/dup"],
        ["dup/day=1/part-0.parquet", "'C1' appear more than once"],
    ),
    "text keys in the hashed layout": (
        ["train", "--in-process", "--data", "{root}/text_keys"],
        ["column 'keys' has type list<element: string>", "list<uint64>"],
    ),
    "run directory that is a file": (
        ["train", "--in-process", "--data", "{root}/good", "--run-dir", "{root}/a_file"],
        ["a_file", "non-directory entry exists"],
    ),
    "export into a missing folder": (
        ["export", "--run-dir", "{root}/run", "--out", "{root}/no/such/m.parquet"],
        ["no/such/m.parquet", "No such file or directory"],
    ),
    "a missing model": (
        [
            "predict",
            "--model",
            "{root}/missing.parquet",
            "--data",
            "{root}/good",
            "--out",
            "{root}/p.parquet",
        ],  # fmt: skip
        ["missing.parquet", "No such file or directory"],
    ),
    "unknown model kind": (
        ["train", "--in-process", "--data", "{root}/good", "--set", 'model.kind="ffm"'],
        ["'kind'", "'lr', 'fm', 'difacto', 'rafm'", "'ffm'"],
    ),
    "negative batch size": (
        ["train", "--in-process", "--data", "{root}/good", "--set", "data.batch_size=-1"],
        ["'batch_size'", "an int >= 0", "-1"],
    ),
    "negative learning rate": (
        ["train", "--in-process", "--data", "{root}/good", "--set", "ftrl.linear.alpha=-1"],
        ["'alpha'", ">= 0", "-1.0"],
    ),
    "unknown config section": (
        ["train", "--in-process", "--data", "{root}/good", "--set", "foo.bar=1"],
        ["Unknown parameter 'foo'", "data, model, ftrl"],
    ),
    "train days not in the data": (
        ["train", "--in-process", "--data", "{root}/good", "--set", 'data.train_days="9..10"'],
        ["'9..10'", "day '9'", "days: 1, 2, 3"],
    ),
    "a data root that does not exist": (
        ["train", "--in-process", "--data", "{root}/nowhere"],
        ["nowhere", "is not a directory"],
    ),
    "a data root without day partitions": (
        ["train", "--in-process", "--data", "{root}/empty"],
        ["empty", "no 'day=...' partitions"],
    ),
    "resume without a run directory": (
        ["train", "--in-process", "--resume"],
        ["--resume needs --run-dir"],
    ),
    "a missing config file": (
        ["train", "--in-process", "--data", "{root}/good", "--config", "{root}/missing.toml"],
        ["missing.toml", "No such file"],
    ),
    "a config file that is not TOML": (
        ["train", "--in-process", "--data", "{root}/good", "--config", "{root}/bad.toml"],
        ["bad.toml", "not valid TOML"],
    ),
    "export without a checkpoint": (
        ["export", "--run-dir", "{root}/empty", "--out", "{root}/x.parquet"],
        ["'{root}/empty'", "no complete checkpoint"],
    ),
    "zero days to generate": (
        ["gen", "--out", "{root}/g", "--days", "0"],
        ["'days'", "an int >= 1", "0"],
    ),
    "a rank of zero": (
        ["train", "--in-process", "--data", "{root}/good", "--set", "model.ranks=[0]"],
        ["'ranks'", "positive ints", "[0]"],
    ),
    "zero rows per unit": (
        ["train", "--in-process", "--data", "{root}/good", "--set", "data.rows_per_unit=0"],
        ["'rows_per_unit'", ">= 1", "0"],
    ),
    "early stopping without validation days": (
        ["train", "--in-process", "--data", "{root}/good", "--early-stop", "logloss"],
        ["'early_stop'", "data.valid_days is empty", "'logloss'"],
    ),
    "a negative number of passes": (
        ["train", "--in-process", "--data", "{root}/good", "--passes", "-1"],
        ["passes"],
    ),
    "test days that are train days": (
        [
            "train",
            "--in-process",
            "--data",
            "{root}/good",
            "--set",
            'data.train_days="1..2"',
            "--set",
            'data.test_days="2"',
        ],  # fmt: skip
        ["day '2'", "also a train day"],
    ),
    "evaluate a run directory without checkpoints": (
        ["evaluate", "--run-dir", "{root}/a_folder_without_a_run"],
        ["a_folder_without_a_run"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(logs, capsys, case):
    argv, words = CASES[case]
    (logs / "a_folder_without_a_run").mkdir(exist_ok=True)
    _fails(capsys, [a.format(root=logs) for a in argv], *(w.format(root=logs) for w in words))
    # what was trained is still there
    report = json.loads((logs / "run" / "report.json").read_text())
    assert report["test"]["rows"] == 2000

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
    "evaluate a run directory without checkpoints": (
        ["evaluate", "--run-dir", "{root}/a_folder_without_a_run"],
        ["a_folder_without_a_run"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(logs, capsys, case):
    argv, words = CASES[case]
    (logs / "a_folder_without_a_run").mkdir(exist_ok=True)
    _fails(capsys, [a.format(root=logs) for a in argv], *words)
    # what was trained is still there
    report = json.loads((logs / "run" / "report.json").read_text())
    assert report["test"]["rows"] == 2000

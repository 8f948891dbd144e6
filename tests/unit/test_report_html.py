"""``psfm report RUN_DIR``: a real run's report.json rendered as one self-contained HTML page."""

from __future__ import annotations

import json
import re

import pytest

from psfm.cli import main
from psfm.datasets.gen import GenSpec, generate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_html")
    generate(root / "data", days=4, rows_per_day=3000, spec=GenSpec.small(), seed=6)
    run = root / "run"
    argv = ["train", "--in-process", "--data", str(root / "data"), "--run-dir", str(run),
            "--set", 'model.kind="rafm"', "--set", "model.ranks=[1,2,4]", "--set",
            'data.train_days="1..2"', "--valid-days", "3", "--passes", "2", "--early-stop",
            "auc", "--set", "train.patience=2"]  # fmt: skip
    assert main(argv) == 0
    return run


def test_a_run_renders_as_one_page_with_its_numbers_and_charts(run, capsys):
    assert main(["report", str(run)]) == 0
    assert f"wrote {run / 'report.html'}" in capsys.readouterr().out
    page = (run / "report.html").read_text()
    report = json.loads((run / "report.json").read_text())
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # self-contained: no script, nothing fetched; links only to its own PNGs (psfm[plot])
    assert not re.search(r"<script|<link|src=", page)
    assert all(re.fullmatch(r"report/\w+\.png", h) for h in re.findall(r'href="([^"]*)"', page))
    assert f"{report['test']['auc']:,.4f}" in page
    for d in report["train"]["per_day"]:  # every day of every pass in the table
        assert f"{d['progressive_auc']:,.4f}" in page
    # charts: AUC and logloss over the 4 (pass, day) steps, validation over 2 passes, rows
    # per level for 3 levels, calibration of the test day
    assert page.count("<svg") == 5
    lines = re.findall(r'<polyline [^>]*points="([^"]+)"', page)
    assert [len(p.split()) for p in lines] == [4, 4, 2]
    assert ">2:1<" in page and ">level 3 (rank 4)<" in page
    assert page.count("<rect ") == 3
    assert "config.json" in page and "&quot;kind&quot;: &quot;rafm&quot;" in page


def test_a_run_without_a_report_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no readable report.json" in err and err.count("\n") == 1


def test_the_quickstart_ends_with_the_test_auc_and_the_report_command(tmp_path, capsys):
    argv = ["quickstart", "--dir", str(tmp_path / "qs"), "--days", "3", "--rows-per-day", "4000",
            "--in-process"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("test AUC   0.")
    assert out[-1].endswith(f"charts: psfm report {tmp_path / 'qs' / 'run'})")
    assert main(["report", str(tmp_path / "qs" / "run")]) == 0
    assert (tmp_path / "qs" / "run" / "report.html").exists()

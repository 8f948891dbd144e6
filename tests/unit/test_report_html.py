"""``psfm report RUN_DIR``: a real run's report.json rendered as one self-contained HTML page,
the test days' calibration (reliability bins and ECE in report.json, the chart on the page) and
the charts as PNG files with matplotlib."""

from __future__ import annotations

import json
import logging
import re
import struct
import sys

import pytest

from psfm.cli import main
from psfm.datasets.gen import GenSpec, generate
from psfm.metrics import calibration_error
from psfm.report_html import write_run_report


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


CHARTS = {
    "progressive_auc",
    "progressive_logloss",
    "validation_auc",
    "factor_rows_per_level",
    "calibration",
}


def _svg(page: str, label: str) -> str:
    m = re.search(rf'<svg [^>]*aria-label="{re.escape(label)}".*?</svg>', page)
    assert m, label
    return m.group(0)


def test_the_test_section_has_bins_that_hold_every_row_and_an_ece(run):
    t = json.loads((run / "report.json").read_text())["test"]
    b = t["calibration_bins"]
    assert t["rows"] == 3000 and sum(b["weight"]) == t["rows"]  # unweighted: weight = rows
    assert 10 <= len(b["weight"]) <= 20 and set(b) == {"lo", "hi", "weight", "pred", "label"}
    assert all(len(v) == len(b["weight"]) for v in b.values())
    assert b["lo"] == sorted(b["lo"]) and all(lo < hi for lo, hi in zip(b["lo"], b["hi"]))
    assert sum(b["label"]) == round(t["ctr"] * t["rows"])  # labels: the clicks
    assert 0.0 <= t["ece"] <= 1.0 and t["ece"] == pytest.approx(calibration_error(b), abs=1e-12)
    # the calibration ratio (sum pred / sum label) from the bins, to the centre-of-bin error
    assert sum(b["pred"]) / sum(b["label"]) == pytest.approx(t["calibration"], rel=1e-3)


def test_the_page_draws_the_calibration_chart_and_links_the_pngs(run):
    pytest.importorskip("matplotlib")
    assert main(["report", str(run)]) == 0
    t = json.loads((run / "report.json").read_text())["test"]
    page = (run / "report.html").read_text()
    svg = _svg(page, "calibration on test days 4")
    assert svg.count("<circle") == len(t["calibration_bins"]["weight"])  # a point per bin
    assert "stroke-dasharray" in svg  # the diagonal
    assert f"ECE {t['ece']:.4f}, calibration {t['calibration']:.3f}" in svg
    assert page.count("<svg") == len(CHARTS) and "calibration bins" in page
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert sorted(hrefs) == sorted(f"report/{c}.png" for c in CHARTS)
    for c in CHARTS:
        png = (run / "report" / f"{c}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 400 and height >= 300 and len(png) > 5_000, (c, width, height, len(png))


def test_without_matplotlib_the_page_alone_and_one_line_naming_the_extra(
    run, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    out = write_run_report(str(run), str(tmp_path / "page.html"))
    page = (tmp_path / "page.html").read_text()
    assert out == str(tmp_path / "page.html") and not (tmp_path / "page").exists()
    assert "href=" not in page and page.count("<svg") == len(CHARTS)  # the SVGs all the same
    lines = [r.getMessage() for r in caplog.records if "psfm[plot]" in r.getMessage()]
    assert len(lines) == 1 and "matplotlib" in lines[0]


def test_a_page_written_elsewhere_keeps_its_pngs_beside_it(run, tmp_path):
    pytest.importorskip("matplotlib")
    write_run_report(str(run), str(tmp_path / "runs" / "rafm.html"))
    page = (tmp_path / "runs" / "rafm.html").read_text()
    assert "rafm/calibration.png" in page
    assert {p.stem for p in (tmp_path / "runs" / "rafm").glob("*.png")} == CHARTS

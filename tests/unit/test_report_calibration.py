"""``psfm report`` on a real in-process run: the test days' calibration (reliability bins and
ECE in report.json, the chart on the page) and the charts as PNG files with matplotlib."""

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

CHARTS = {
    "progressive_auc",
    "progressive_logloss",
    "validation_auc",
    "factor_rows_per_level",
    "calibration",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_calibration")
    generate(root / "data", days=3, rows_per_day=4000, spec=GenSpec.small(), seed=9)
    run = root / "run"
    argv = ["train", "--in-process", "--data", str(root / "data"), "--run-dir", str(run),
            "--set", 'model.kind="fm"', "--set", 'data.train_days="1"', "--valid-days", "2",
            "--set", 'data.test_days="3"']  # fmt: skip
    assert main(argv) == 0
    return run


def _svg(page: str, label: str) -> str:
    m = re.search(rf'<svg [^>]*aria-label="{re.escape(label)}".*?</svg>', page)
    assert m, label
    return m.group(0)


def test_the_test_section_has_bins_that_hold_every_row_and_an_ece(run):
    t = json.loads((run / "report.json").read_text())["test"]
    b = t["calibration_bins"]
    assert t["rows"] == 4000 and sum(b["weight"]) == t["rows"]  # unweighted: weight = rows
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
    svg = _svg(page, "calibration on test days 3")
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
    write_run_report(str(run), str(tmp_path / "runs" / "fm.html"))
    page = (tmp_path / "runs" / "fm.html").read_text()
    assert "fm/calibration.png" in page
    assert {p.stem for p in (tmp_path / "runs" / "fm").glob("*.png")} == CHARTS

"""Progress of long phases (psfm.progress): a live bar on a terminal, log lines elsewhere; and
the phases that use it, ``psfm convert`` and ``psfm stats``, on files generated here."""

from __future__ import annotations

import gzip
import io
import logging
import re
import time

import numpy as np

from psfm.datasets.convert import convert_libfm_files
from psfm.datasets.gen import GenSpec, generate
from psfm.datasets.stats import count_features
from psfm.progress import BAR_INTERVAL_S, Progress


class FakeTerminal(io.StringIO):
    """A terminal as far as the bar can tell: a text stream whose isatty() is True."""

    def isatty(self) -> bool:
        return True


def _frames(text: str) -> list[str]:
    """The bar's successive states: what each carriage return redrew."""
    assert text.startswith("\r")
    return [f.rstrip() for f in text[1:].split("\r")]


def test_on_a_terminal_the_bar_redraws_one_line_and_ends_it_when_done(caplog):
    caplog.set_level(logging.INFO)
    tty = FakeTerminal()
    p = Progress("test", 1000, every_s=0.0, per="samples", stream=tty)
    for _ in range(4):
        time.sleep(BAR_INTERVAL_S * 1.2)
        p.add(200)
    assert "\n" not in tty.getvalue()  # one live line so far
    p.add(200)  # the total: the bar is drawn full and its line ends
    text = tty.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    frames = _frames(text[:-1])
    assert len(frames) == 5
    pcts = [int(re.search(r"\]\s+(\d+)%", f).group(1)) for f in frames]
    assert pcts == [20, 40, 60, 80, 100]
    assert frames[-1].startswith("test [" + "#" * 24 + "] 100% 1,000/1,000 rows, ")
    assert re.search(r"200/1,000 rows, [\d,]+ samples/s, ETA \d+s$", frames[0])
    assert caplog.records == []  # no log lines on a terminal
    p.add(10)  # after the end: nothing more drawn
    p.close()
    assert tty.getvalue() == text


def test_the_bar_redraws_at_most_ten_times_a_second():
    tty = FakeTerminal()
    p = Progress("fast", 0, every_s=0.0, stream=tty)  # unknown total: no ETA
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.35:
        p.add(1)
    elapsed = time.perf_counter() - t0
    draws = tty.getvalue().count("\r")
    assert 2 <= draws <= elapsed / BAR_INTERVAL_S + 1
    p.close()
    last = _frames(tty.getvalue().rstrip("\n"))[-1]
    assert re.fullmatch(rf"fast {p.rows:,} rows, [\d,]+ rows/s", last)
    assert "ETA" not in tty.getvalue() and tty.getvalue().endswith("\n")


def test_elsewhere_it_logs_lines_and_writes_nothing_on_the_stream(caplog):
    caplog.set_level(logging.INFO)
    pipe = io.StringIO()  # isatty() is False: a pipe, a file, a Ray job's log
    p = Progress("valid", 3 * 2**20, every_s=0.0, unit="bytes", stream=pipe)
    for _ in range(3):
        p.add(2**20)
    p.close()
    assert pipe.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert re.fullmatch(r"valid: 2\.0/3\.0 MiB, [\d,]+ MiB/s, ETA \d+s", lines[1])


def test_a_slow_interval_logs_nothing_for_a_short_phase(caplog):
    caplog.set_level(logging.INFO)
    p = Progress("short", 100, every_s=60.0, stream=io.StringIO())
    p.add(100)
    assert caplog.records == []


# ------------------------------------------------------------------------ the phases


def _libfm_file(path, rows: int, seed: int) -> tuple[str, int]:
    """A gzip libFM file of ``rows`` lines 'label idx:val ...' (8 features a line)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 5000, (rows, 8))
    val = np.round(rng.random((rows, 8)), 3)
    label = rng.integers(0, 2, rows)
    feats = np.char.add(np.char.add(idx.astype(str), ":"), val.astype(str))  # (rows, 8)
    lines = [f"{y} " + " ".join(f) for y, f in zip(label, feats)]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return str(path), rows


def test_convert_logs_its_progress_over_the_input_bytes(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    train, n_train = _libfm_file(tmp_path / "train.libfm.gz", 6000, 1)
    test, n_test = _libfm_file(tmp_path / "test.libfm.gz", 2000, 2)
    size = sum((tmp_path / n).stat().st_size for n in ("train.libfm.gz", "test.libfm.gz"))
    s = convert_libfm_files([train, test], str(tmp_path / "out"), block_size=1 << 15,
                            log_every_s=1e-9)  # fmt: skip
    assert s["rows"] == n_train + n_test
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "psfm.datasets.convert" and r.getMessage().startswith("convert: ")
    ]
    pat = r"convert: ([\d.,]+)/([\d.,]+) MiB, [\d,]+ MiB/s, ETA \w+, ([\d,]+) rows"
    got = [re.fullmatch(pat, line) for line in lines]
    assert len(lines) >= 4 and all(got), lines
    rows = [int(m.group(3).replace(",", "")) for m in got]
    assert rows == sorted(rows) and rows[-1] == n_train + n_test  # every row, in order
    assert {m.group(2) for m in got} == {f"{size / 2**20:,.1f}"}  # the gzip files' size
    assert got[-1].group(1) == got[-1].group(2)  # every byte read


def test_convert_draws_a_bar_on_a_terminal(tmp_path, monkeypatch):
    path, n = _libfm_file(tmp_path / "a.libfm.gz", 3000, 3)
    tty = FakeTerminal()
    monkeypatch.setattr("sys.stderr", tty)  # the terminal, not psfm's code
    convert_libfm_files([path], str(tmp_path / "out"), block_size=1 << 14)
    text = tty.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert re.search(rf"convert \[#+\] 100% .* MiB/s, ETA 0s, {n:,} rows\s*$", text[:-1])


def test_stats_logs_its_progress_over_the_rows(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    generate(tmp_path / "data", days=2, rows_per_day=3000, spec=GenSpec.small(), seed=4)
    _, _, info = count_features(str(tmp_path / "data"), "1..2", batch_rows=500,
                                log_every_s=1e-9)  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stats: ")]
    assert len(lines) >= 10
    assert all(re.fullmatch(r"stats: [\d,]+/6,000 rows, [\d,]+ rows/s, ETA \w+", x) for x in lines)
    assert lines[-1].startswith("stats: 6,000/6,000 rows") and info["rows"] == 6000

"""``psfm report RUN_DIR``: a run's ``report.json`` as one HTML page that opens from disk.

What a CTR engineer looks at after a run: the test metrics and the calibration of the test
days (a reliability diagram), the progressive AUC and logloss of every training day (by
pass), the validation metric by pass, where the time went, the model's size per factor level,
and the config. The charts are inline SVG drawn here (no plotting library, no server, no
network): a page renders the same wherever it is opened. With matplotlib (the ``plot`` extra)
each chart is also written as a PNG next to the page, ``RUN_DIR/report/<chart>.png``
(:mod:`psfm.report_png`), and linked under its SVG. Both draw the series of
:mod:`psfm.report_charts`.
"""

from __future__ import annotations

import html
import json
import logging
import math
import posixpath
from collections.abc import Sequence
from typing import Any

from psfm.checkpoint import read_bytes, write_bytes
from psfm.errors import PsfmError
from psfm.report_charts import BarChart, CalibrationChart, Chart, LineChart, log_ticks, run_charts

__all__ = ["render_run", "svg_chart", "write_run_report"]

log = logging.getLogger(__name__)

_W, _H, _PAD = 520, 220, 44  # chart size and margin (px)
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return html.escape(str(v))
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) < 1e6 else f"{v:,.0f}"
    return html.escape(str(v))


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _svg_open(title: str, h: int) -> list[str]:
    return [
        f'<svg width="{_W}" height="{h}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{_W / 2}" y="16" text-anchor="middle">{html.escape(title)}</text>',
    ]


def _svg_line(c: LineChart) -> str:
    """One polyline per series over the shared x labels."""
    values = [v for vs in c.series.values() for v in vs if v == v]  # NaN-free
    if not values or not c.labels:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = len(c.labels)

    def x(i: int) -> float:
        return _PAD + (i * (_W - 2 * _PAD) / max(n - 1, 1))

    def y(v: float) -> float:
        return _H - _PAD + (v - lo) / (hi - lo) * -(_H - 2 * _PAD)

    parts = _svg_open(c.title, _H)
    parts.append(
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#999"/>'
    )
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(
            f'<text x="{_PAD - 4}" y="{y(v) + 4:.1f}" text-anchor="end" '
            f'font-size="10">{v:.4f}</text>'
        )
    step = max(1, n // 12)
    for i in range(0, n, step):
        parts.append(
            f'<text x="{x(i):.1f}" y="{_H - _PAD + 14}" text-anchor="middle" '
            f'font-size="10">{html.escape(c.labels[i])}</text>'
        )
    for k, (name, vs) in enumerate(c.series.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vs) if v == v)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        for i, v in enumerate(vs):
            if v == v:
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
        parts.append(
            f'<text x="{_W - _PAD}" y="{30 + 14 * k}" text-anchor="end" fill="{colour}" '
            f'font-size="11">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _svg_bars(c: BarChart) -> str:
    """One horizontal bar per label."""
    if not c.bars:
        return ""
    top = max(max(c.bars.values()), 1e-12)
    row = 22
    parts = _svg_open(c.title, 30 + row * len(c.bars))
    for i, (label, v) in enumerate(c.bars.items()):
        w = (v / top) * (_W - 200)
        yy = 26 + i * row
        parts.append(
            f'<text x="110" y="{yy + 13}" text-anchor="end" font-size="11">'
            f"{html.escape(label)}</text>"
        )
        parts.append(f'<rect x="116" y="{yy}" width="{w:.1f}" height="16" fill="#1f77b4"/>')
        parts.append(f'<text x="{120 + w:.1f}" y="{yy + 13}" font-size="11">{v:,.0f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_calibration(c: CalibrationChart) -> str:
    """The reliability diagram on log-log axes: a point per bin (hollow when the bin has no
    clicks: drawn at the lower limit), the diagonal, and under it a bar per bin as tall as
    its weight."""
    lo, hi = c.limits()
    left, right, top, bottom, strip = 56, _W - 16, 28, 236, 40  # plot box (px), bar strip
    h = bottom + strip + 34
    span = math.log(hi) - math.log(lo)

    def x(v: float) -> float:
        return left + (math.log(max(v, lo)) - math.log(lo)) / span * (right - left)

    def y(v: float) -> float:
        return bottom - (math.log(max(v, lo)) - math.log(lo)) / span * (bottom - top)

    parts = _svg_open(c.title, h)
    parts.append(f'<path d="M{left},{top}H{right}V{bottom}H{left}Z" fill="none" stroke="#999"/>')
    parts.append(
        f'<line x1="{x(lo):.1f}" y1="{y(lo):.1f}" x2="{x(hi):.1f}" y2="{y(hi):.1f}" '
        'stroke="#999" stroke-dasharray="4 3"/>'
    )
    for t in log_ticks(lo, hi):
        parts.append(
            f'<text x="{left - 4}" y="{y(t) + 4:.1f}" text-anchor="end" font-size="10">{t:.3g}'
            f'</text><text x="{x(t):.1f}" y="{h - 20}" text-anchor="middle" font-size="10">'
            f"{t:.3g}</text>"
        )
    wmax = max(c.weight)
    for p, r, w in zip(c.pred, c.rate, c.weight):
        fill = "#d62728" if r > 0.0 else "none"
        parts.append(
            f'<circle cx="{x(p):.1f}" cy="{y(r):.1f}" r="3.5" fill="{fill}" stroke="#d62728"/>'
        )
        bh = w / wmax * (strip - 6)  # the bin's weight as a bar in the strip below the plot
        parts.append(
            f'<line x1="{x(p):.1f}" y1="{bottom + strip:.1f}" x2="{x(p):.1f}" '
            f'y2="{bottom + strip - bh:.1f}" stroke="#1f77b4" stroke-width="4"/>'
        )
    parts.append(
        f'<text x="{left + 6}" y="{top + 14}" font-size="11">ECE {c.ece:.4f}, '
        f"calibration {c.ratio:.3f}</text>"
        f'<text x="{right}" y="{h - 4}" text-anchor="end" font-size="10">mean prediction per '
        "bin (log); bars: rows per bin</text>"
        f'<text x="12" y="{(top + bottom) / 2:.0f}" font-size="10" text-anchor="middle" '
        f'transform="rotate(-90 12 {(top + bottom) / 2:.0f})">observed click rate (log)</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def svg_chart(chart: Chart) -> str:
    """The inline SVG of a chart of :func:`psfm.report_charts.run_charts`."""
    if isinstance(chart, LineChart):
        return _svg_line(chart)
    if isinstance(chart, BarChart):
        return _svg_bars(chart)
    return _svg_calibration(chart)


def _calibration_table(c: CalibrationChart) -> str:
    rows = [
        [f"{a:.3g}", f"{b:.3g}", int(w) if w.is_integer() else w, f"{p:.4g}", f"{r:.4g}"]
        for a, b, w, p, r in zip(c.lo, c.hi, c.weight, c.pred, c.rate)
    ]
    head = ["predictions from", "to", "rows (weight)", "mean prediction", "observed rate"]
    return f"<details><summary>calibration bins</summary>{_table(head, rows)}</details>"


def render_run(report: dict[str, Any], title: str, pngs: dict[str, str] | None = None) -> str:
    """The HTML page of one run's report (``report.json``); ``pngs``: chart name -> the
    relative address of its PNG, linked under the chart."""
    t, m, tr = report["test"], report["model"], report["train"]
    cfg = report.get("config", {})
    days = tr.get("per_day", [])
    charts = run_charts(report)
    links = pngs or {}

    def fig(name: str) -> str:
        if name not in charts:
            return ""
        link = links.get(name)
        a = f'<p class="png"><a href="{html.escape(link)}">PNG</a></p>' if link else ""
        return f"<figure>{svg_chart(charts[name])}{a}</figure>"

    sections = [f"<h1>{html.escape(title)}</h1>"]
    kind = f"{m.get('kind')} ranks {m.get('ranks') or '-'}"
    head = ["model", "days", "rows", "AUC", "logloss", "NE", "calibration", "ECE", "RaFM-low AUC"]
    keys = ("rows", "auc", "logloss", "ne", "calibration", "ece", "auc_low")
    test_row = [kind, ", ".join(map(str, t.get("days", []))), *(t.get(k) for k in keys)]
    cal = charts.get("calibration")
    sections.append(
        "<h2>Test</h2>"
        + _table(head, [test_row])
        + fig("calibration")
        + (_calibration_table(cal) if isinstance(cal, CalibrationChart) else "")
    )
    if days:
        sections.append(
            "<h2>Training days</h2>"
            + fig("progressive_auc")
            + fig("progressive_logloss")
            + _table(
                ["pass", "day", "rows", "seconds", "samples/s", "AUC", "logloss", "cached rows"],
                [
                    [
                        d.get("pass", 1),
                        d["day"],
                        d["rows"],
                        d["seconds"],
                        d["samples_per_s"],
                        d["progressive_auc"],
                        d["logloss"],
                        d.get("cached_rows", 0),
                    ]
                    for d in days
                ],
            )
        )
    valid = report.get("valid") or []
    if valid:
        sections.append(
            "<h2>Validation</h2>"
            + fig("validation_auc")
            + _table(
                ["pass", "AUC", "logloss", "decision"],
                [[v["pass"], v["auc"], v["logloss"], v.get("decision", "")] for v in valid],
            )
            + f"<p>pass tested: {_fmt(tr.get('best_pass'))}; early stopped: "
            f"{_fmt(tr.get('early_stopped'))}</p>"
        )
    sections.append(
        "<h2>Model size</h2>"
        + _table(
            ["keys", "non-zero parameters", "non-zero linear", "PS bytes"],
            [[m.get("keys"), m.get("nonzero_params"), m.get("nonzero_w"), m.get("ps_bytes")]],
        )
        + fig("factor_rows_per_level")
    )
    timing = report.get("timing") or {}
    sections.append(
        "<h2>Time</h2>"
        + _table(
            ["start-up s", "before training s", "to first batch s", "training samples/s", "test s"],
            [
                [
                    timing.get("startup_seconds"),
                    timing.get("seconds_before_training"),
                    timing.get("seconds_to_first_batch"),
                    tr.get("samples_per_s"),
                    timing.get("test_seconds"),
                ]
            ],
        )
    )
    sections.append(
        "<h2>Config</h2><details><summary>config.json</summary><pre>"
        + html.escape(json.dumps(cfg, indent=1))
        + "</pre></details>"
    )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}svg{margin:.3em 1em .3em 0;font-family:sans-serif}"
        "figure{display:inline-block;margin:0}p.png{margin:0 0 .5em;font-size:small}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )


def _write_pngs(report: dict[str, Any], folder: str) -> dict[str, str]:
    """Each chart as ``folder/<name>.png`` when matplotlib is there; chart name -> path."""
    from psfm.report_png import MissingDependency, write_pngs

    try:
        pngs = write_pngs(run_charts(report), folder)
    except MissingDependency as e:
        log.info("%s", e)
        return {}
    log.info("wrote %d charts as PNG under %s", len(pngs), folder)
    return pngs


def write_run_report(run_dir: str, out: str | None = None, png: bool = True) -> str:
    """Write ``RUN_DIR/report.html`` (or ``out``) from the run's ``report.json``; returns the
    path written. With ``png`` and matplotlib installed, each chart also goes to
    ``<page's folder>/<page's name>/<chart>.png`` (``RUN_DIR/report/<chart>.png`` by
    default), linked from the page; without matplotlib one log line says how to get them."""
    path = posixpath.join(str(run_dir), "report.json")
    try:
        report = json.loads(read_bytes(path))
    except (PsfmError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PsfmError(
            f"'{run_dir}' has no readable report.json ({e}): a run writes it when it ends; "
            "an interrupted run has none until it is resumed and finishes."
        ) from None
    target = out or posixpath.join(str(run_dir), "report.html")
    stem = posixpath.splitext(posixpath.basename(target))[0]
    pngs = _write_pngs(report, posixpath.join(posixpath.dirname(target), stem)) if png else {}
    links = {name: f"{stem}/{posixpath.basename(p)}" for name, p in pngs.items()}
    write_bytes(target, render_run(report, f"psfm run {run_dir}", links).encode())
    return target

"""``psfm report RUN_DIR``: a run's ``report.json`` as one HTML page that opens from disk.

What a CTR engineer looks at after a run: the test metrics, the progressive AUC and logloss of
every training day (by pass), the validation metric by pass, where the time went, the model's
size per factor level, and the config. The charts are inline SVG drawn here (no plotting
library, no server, no network): a page renders the same wherever it is opened.
"""

from __future__ import annotations

import html
import json
import posixpath
from collections.abc import Sequence
from typing import Any

from psfm.checkpoint import read_bytes, write_bytes
from psfm.errors import PsfmError

__all__ = ["render_run", "write_run_report"]

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


def line_chart(title: str, series: dict[str, list[float]], labels: Sequence[str]) -> str:
    """An SVG line chart: one polyline per series over the shared x ``labels``."""
    values = [v for vs in series.values() for v in vs if v == v]  # NaN-free
    if not values or not labels:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = len(labels)

    def x(i: int) -> float:
        return _PAD + (i * (_W - 2 * _PAD) / max(n - 1, 1))

    def y(v: float) -> float:
        return _H - _PAD + (v - lo) / (hi - lo) * -(_H - 2 * _PAD)

    parts = [f'<svg width="{_W}" height="{_H}" role="img" aria-label="{html.escape(title)}">']
    parts.append(f'<text x="{_W / 2}" y="16" text-anchor="middle">{html.escape(title)}</text>')
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
            f'font-size="10">{html.escape(labels[i])}</text>'
        )
    for k, (name, vs) in enumerate(series.items()):
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


def bar_chart(title: str, bars: dict[str, float]) -> str:
    """An SVG horizontal bar chart of ``bars`` (label -> value)."""
    if not bars:
        return ""
    top = max(max(bars.values()), 1e-12)
    row = 22
    h = 30 + row * len(bars)
    parts = [f'<svg width="{_W}" height="{h}" role="img" aria-label="{html.escape(title)}">']
    parts.append(f'<text x="{_W / 2}" y="16" text-anchor="middle">{html.escape(title)}</text>')
    for i, (label, v) in enumerate(bars.items()):
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


def render_run(report: dict[str, Any], title: str) -> str:
    """The HTML page of one run's report (``report.json``)."""
    t, m, tr = report["test"], report["model"], report["train"]
    cfg = report.get("config", {})
    days = tr.get("per_day", [])
    sections = [f"<h1>{html.escape(title)}</h1>"]
    kind = f"{m.get('kind')} ranks {m.get('ranks') or '-'}"
    sections.append(
        "<h2>Test</h2>"
        + _table(
            ["model", "days", "rows", "AUC", "logloss", "NE", "calibration", "RaFM-low AUC"],
            [
                [
                    kind,
                    ", ".join(map(str, t.get("days", []))),
                    t.get("rows"),
                    t.get("auc"),
                    t.get("logloss"),
                    t.get("ne"),
                    t.get("calibration"),
                    t.get("auc_low"),
                ]
            ],
        )
    )
    if days:
        several = len({int(d.get("pass", 1)) for d in days}) > 1
        labels = [f"{d.get('pass', 1)}:{d['day']}" if several else str(d["day"]) for d in days]
        what = " (pass:day)" if several else ""
        sections.append(
            "<h2>Training days</h2>"
            + line_chart(
                f"progressive AUC by day{what}",
                {"AUC": [float(d["progressive_auc"]) for d in days]},
                labels,
            )
            + line_chart(
                f"progressive logloss by day{what}",
                {"logloss": [float(d["logloss"]) for d in days]},
                labels,
            )
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
            + line_chart(
                "validation AUC by pass",
                {"AUC": [float(v["auc"]) for v in valid]},
                [str(v["pass"]) for v in valid],
            )
            + _table(
                ["pass", "AUC", "logloss", "decision"],
                [[v["pass"], v["auc"], v["logloss"], v.get("decision", "")] for v in valid],
            )
            + f"<p>pass tested: {_fmt(tr.get('best_pass'))}; early stopped: "
            f"{_fmt(tr.get('early_stopped'))}</p>"
        )
    rows = m.get("factor_rows_per_level") or []
    sections.append(
        "<h2>Model size</h2>"
        + _table(
            ["keys", "non-zero parameters", "non-zero linear", "PS bytes"],
            [[m.get("keys"), m.get("nonzero_params"), m.get("nonzero_w"), m.get("ps_bytes")]],
        )
        + bar_chart(
            "factor rows per level",
            {
                f"level {i + 1} (rank {r})": float(n)
                for i, (n, r) in enumerate(zip(rows, m.get("ranks") or []))
            },
        )
    )
    timing = report.get("timing") or {}
    sections.append(
        "<h2>Time</h2>"
        + _table(
            ["start-up s", "before training s", "training samples/s", "test s"],
            [
                [
                    timing.get("startup_seconds"),
                    timing.get("seconds_before_training"),
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
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )


def write_run_report(run_dir: str, out: str | None = None) -> str:
    """Write ``RUN_DIR/report.html`` (or ``out``) from the run's ``report.json``; returns the
    path written."""
    path = posixpath.join(str(run_dir), "report.json")
    try:
        report = json.loads(read_bytes(path))
    except (PsfmError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PsfmError(
            f"'{run_dir}' has no readable report.json ({e}): a run writes it when it ends; "
            "an interrupted run has none until it is resumed and finishes."
        ) from None
    target = out or posixpath.join(str(run_dir), "report.html")
    write_bytes(target, render_run(report, f"psfm run {run_dir}").encode())
    return target

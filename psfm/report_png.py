"""The charts of a run's report as PNG files (matplotlib, the optional ``plot`` extra).

:func:`write_pngs` draws each chart of :func:`psfm.report_charts.run_charts` (the same series
as the page's SVG) into ``FOLDER/<name>.png``; without matplotlib it raises
:class:`MissingDependency` naming the extra, and ``psfm report`` writes the HTML alone.
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

from psfm.checkpoint import write_bytes
from psfm.datasets.stats_report import MissingDependency
from psfm.report_charts import BarChart, CalibrationChart, Chart, LineChart, log_ticks

__all__ = ["MissingDependency", "png_bytes", "write_pngs"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependency(
            "the report's PNG charts need matplotlib, which is not installed: pip install "
            "'psfm[plot]' (or pip install matplotlib); the HTML page has them as SVG."
        ) from e
    return plt


def _line(ax: Any, c: LineChart) -> None:
    xs = list(range(len(c.labels)))
    for k, (name, vs) in enumerate(c.series.items()):
        pts = [(x, v) for x, v in zip(xs, vs) if v == v]  # NaN-free
        ax.plot(*zip(*pts), marker="o", color=_COLOURS[k % len(_COLOURS)], label=name)
    step = max(1, len(xs) // 12)
    ax.set_xticks(xs[::step], c.labels[::step])
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _bars(ax: Any, c: BarChart) -> None:
    labels = list(c.bars)[::-1]  # top to bottom as on the page
    ax.barh(labels, [c.bars[k] for k in labels], color=_COLOURS[0])
    for i, k in enumerate(labels):
        ax.annotate(f" {c.bars[k]:,.0f}", (c.bars[k], i), va="center", fontsize=8)


def _calibration(fig: Any, c: CalibrationChart) -> None:
    lo, hi = c.limits()
    ax, strip = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="#999", label="perfect calibration")
    clicked = [r > 0.0 for r in c.rate]
    ax.scatter(
        [p for p, k in zip(c.pred, clicked) if k],
        [r for r, k in zip(c.rate, clicked) if k],
        color=_COLOURS[1],
        label=f"bins (ECE {c.ece:.4f}, calibration {c.ratio:.3f})",
        zorder=3,
    )
    if not all(clicked):
        ax.scatter(
            [p for p, k in zip(c.pred, clicked) if not k],
            [lo] * clicked.count(False),
            facecolors="none",
            edgecolors=_COLOURS[1],
            label="bins without clicks",
            zorder=3,
        )
    ticks = log_ticks(lo, hi)
    for a in (ax, strip):
        a.set_xscale("log")
        a.set_xlim(lo, hi)
        a.grid(True, which="both", alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_yticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.set_ylabel("observed click rate")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(c.title, fontsize=10)
    strip.bar(c.pred, c.weight, width=[p * 0.06 for p in c.pred], color=_COLOURS[0])
    strip.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    strip.set_xlabel("mean prediction per bin")
    strip.set_ylabel("rows", fontsize=8)


def png_bytes(chart: Chart) -> bytes:
    """One chart as a PNG; raises :class:`MissingDependency` without matplotlib."""
    plt = _pyplot()
    if isinstance(chart, CalibrationChart):
        fig = plt.figure(figsize=(6, 6))
        _calibration(fig, chart)
    else:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        if isinstance(chart, LineChart):
            _line(ax, chart)
        else:
            _bars(ax, chart)
        ax.set_title(chart.title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_pngs(charts: dict[str, Chart], folder: str) -> dict[str, str]:
    """Write ``folder/<name>.png`` for each chart; returns name -> path written. Raises
    :class:`MissingDependency` (before writing anything) without matplotlib."""
    _pyplot()
    out = {}
    for name, chart in charts.items():
        path = posixpath.join(folder, f"{name}.png")
        write_bytes(path, png_bytes(chart))
        out[name] = path
    return out

"""The report of :func:`psfm.datasets.stats.feature_stats`: a text table and a PNG histogram.

:func:`format_stats` prints the totals, the log2 histogram of occurrences per feature, the
levels and the implied parameter counts; :func:`plot_stats` draws the histogram with the level
thresholds (matplotlib, an optional dependency: :class:`MissingDependency` when absent).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from psfm.errors import PsfmError

__all__ = ["MissingDependency", "format_stats", "plot_stats"]


class MissingDependency(PsfmError, ImportError):
    """An optional dependency (an extra of the psfm package) is not installed."""


def _pct(a: float, b: float) -> str:
    return f"{100.0 * a / b:6.2f}%" if b else "     -"


def format_stats(stats: dict[str, Any]) -> str:
    """A text report of :func:`~psfm.datasets.stats.feature_stats`: totals, the log2
    histogram, levels, sizes."""
    s = stats
    nf, no = s["features"], s["occurrences"]
    lines = [
        f"data       {s['root']} days {', '.join(s['days'])}: {s['rows']:,} rows"
        + (f" ({s['skipped']:,} bad rows skipped)" if s["skipped"] else ""),
        f"features   {nf:,} distinct keys, {no:,} occurrences "
        f"({no / max(s['rows'], 1):.1f} per row; bias excluded)",
        "",
        "occurrences per feature (log2 bins)",
        f"  {'count':>17}  {'features':>12} {'% feat':>7}  {'occurrences':>15} {'% occ':>7}",
    ]
    for h in s["histogram"]:
        rng = f"{h['lo']:,}" if h["lo"] == h["hi"] else f"{h['lo']:,}-{h['hi']:,}"
        lines.append(
            f"  {rng:>17}  {h['features']:>12,} {_pct(h['features'], nf)}  "
            f"{h['occurrences']:>15,} {_pct(h['occurrences'], no)}"
        )
    lv = s["levels"]
    rule = (
        f"level_min_count {lv['level_min_count']}"
        if lv["level_min_count"]
        else f"RaFM Eq. 17, count_per_dim {lv['count_per_dim']:g}"
    )
    lines += [
        "",
        f"levels     ranks {lv['ranks']}, {rule}: thresholds "
        f"[{', '.join(f'{t:g}' for t in lv['thresholds'])}]"
        + (
            f"; admitted keys (count >= {s['admit_min_count']}): {s['admitted_features']:,}"
            if s["admit_min_count"] > 1
            else ""
        ),
        f"  {'level':>5} {'rank':>5} {'count >=':>9}  {'features':>12} {'% feat':>7}  "
        f"{'occurrences':>15} {'% occ':>7}",
    ]
    na = s["admitted_features"]
    for p in lv["per_level"]:
        t = "-" if p["level"] == 0 else f"{p['min_count']:g}"
        lines.append(
            f"  {p['level']:>5} {p['rank']:>5} {t:>9}  {p['features']:>12,} "
            f"{_pct(p['features'], na)}  {p['occurrences']:>15,} "
            f"{_pct(p['occurrences'], no)}"
        )
    pr = s["params"]
    ranks = lv["ranks"]
    lines += ["", "parameters (stored, before FTRL sparsity)", f"  {'LR':<22} {pr['lr']:>15,}"]
    for f in pr["fm"]:
        lines.append(f"  {'FM(' + str(f['rank']) + ')':<22} {f['params']:>15,}")
    if ranks:
        label = "{" + ",".join(str(r) for r in ranks) + "}"
        lines.append(
            f"  {'DiFacto' + label:<22} {pr['difacto']:>15,}   rows per level "
            f"{pr['difacto_rows_per_level']}"
        )
        lines.append(
            f"  {'RaFM' + label:<22} {pr['rafm']:>15,}   rows per level {pr['rafm_rows_per_level']}"
        )
    return "\n".join(lines)


def plot_stats(stats: dict[str, Any], path: str) -> None:
    """A PNG of the log2 histogram (features and occurrences per bin, log scale) with the level
    thresholds; needs matplotlib (``pip install 'psfm[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependency(
            "plot_stats needs matplotlib, which is not installed: pip install 'psfm[plot]' "
            "(or pip install matplotlib)."
        ) from e
    h = stats["histogram"]
    x = np.arange(len(h))
    labels = [str(b["lo"]) if b["lo"] == b["hi"] else f"{b['lo']}-{b['hi']}" for b in h]
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(h) + 2), 7), sharex=True)
    for ax, what, color in (
        (axes[0], "features", "tab:blue"),
        (axes[1], "occurrences", "tab:orange"),
    ):
        ax.bar(x, [b[what] for b in h], color=color)
        ax.set_yscale("log")
        ax.set_ylabel(what)
        ax.grid(axis="y", alpha=0.3)
        for k, t in enumerate(stats["levels"]["thresholds"], start=1):
            if t > 1:  # counts are integers: level k starts at ceil(t); bin b spans b +- 0.5
                pos = np.log2(np.ceil(t)) - 0.5
                ax.axvline(pos, color="k", ls="--", lw=0.8)
                if what == "features":
                    ax.text(pos + 0.05, ax.get_ylim()[1], f"level {k}", va="top", fontsize=8)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    axes[1].set_xlabel("occurrences per feature")
    axes[0].set_title(
        f"{stats['root']}: {stats['features']:,} features, {stats['occurrences']:,} occurrences"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

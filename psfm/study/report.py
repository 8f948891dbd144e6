"""A study's outputs, rendered from its runs' reports (``psfm study report STUDY_DIR`` and after
each run of ``psfm study``):

- ``results.csv`` / ``results.parquet``: one row per grid point (:data:`RESULT_COLUMNS`): its
  coordinates, status and error, test AUC / logloss / NE, non-zero parameters and their ratio to
  LR's, PS bytes, training throughput and time, test time;
- ``summary.csv``: one row per configuration (the grid point without its seed), mean and sample
  standard deviation over the seeds that finished, and whether it is on the Pareto front of
  test AUC against non-zero parameters;
- ``auc_vs_size.png`` (matplotlib, the ``plot`` extra): test AUC against non-zero parameters,
  log x, one marker set per model family, seeds as error bars, the Pareto front marked;
- with ``protocol = "table4"``: ``table4.csv`` and ``table4.md``, the RaFM paper's Table 4
  layout (test logloss and AUC mean ± std, #params, train and test seconds).

Everything is read from ``STUDY_DIR/study.json`` (the grid), each run's ``report.json`` and the
study's record of the run (``study_run.json``: status, error, measured test seconds).
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from psfm.checkpoint import read_bytes, resolve, write_bytes
from psfm.errors import CheckpointError, PsfmError
from psfm.study.spec import GridPoint, Study

__all__ = [
    "RESULT_COLUMNS",
    "SUMMARY_METRICS",
    "RUN_RECORD",
    "pareto_front",
    "collect_rows",
    "summarize",
    "table4_rows",
    "table4_markdown",
    "write_outputs",
    "plot_auc_vs_size",
    "load_study_dir",
    "format_summary",
]

RUN_RECORD = "study_run.json"  # the study's record of one run, in its run directory
STUDY_FILE = "study.json"

# (column, arrow type) of results.csv / results.parquet
RESULT_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("name", pa.string()),
    ("label", pa.string()),
    ("model", pa.string()),
    ("title", pa.string()),
    ("ranks", pa.string()),
    ("count_per_dim", pa.float64()),
    ("l1_linear", pa.float64()),
    ("l1_factor", pa.float64()),
    ("seed", pa.int64()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("resumed", pa.bool_()),
    ("test_auc", pa.float64()),
    ("test_logloss", pa.float64()),
    ("test_ne", pa.float64()),
    ("nonzero_params", pa.int64()),
    ("nonzero_vs_lr", pa.float64()),
    ("ps_bytes", pa.int64()),
    ("train_samples_per_s", pa.float64()),
    ("train_seconds", pa.float64()),
    ("test_seconds", pa.float64()),
    ("wall_seconds", pa.float64()),
    ("train_rows", pa.int64()),
    ("test_rows", pa.int64()),
    ("passes", pa.int64()),
    ("best_pass", pa.int64()),
    ("early_stopped", pa.bool_()),
    ("valid_logloss", pa.float64()),
    ("run_dir", pa.string()),
]

# the metrics summary.csv averages over seeds (mean and std columns each)
SUMMARY_METRICS = (
    "test_auc",
    "test_logloss",
    "test_ne",
    "nonzero_params",
    "nonzero_vs_lr",
    "ps_bytes",
    "train_samples_per_s",
    "train_seconds",
    "test_seconds",
    "best_pass",
)
_SUMMARY_KEYS = ("label", "model", "title", "ranks", "count_per_dim", "l1_linear", "l1_factor")

_FAMILIES = {  # plot style per model family
    "lr": ("LR", "tab:gray", "s"),
    "fm": ("FM", "tab:blue", "o"),
    "difacto": ("DiFacto", "tab:green", "^"),
    "rafm": ("RaFM", "tab:red", "D"),
}
ZOOM_AUC = 0.01  # the plot's second panel: configurations this close to the best AUC


# ----------------------------------------------------------------------------- Pareto front


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points on the front of (size, AUC): those no other point dominates (one
    with size <= and AUC >=, one of the two strictly). Points with a NaN are never on it;
    identical points are both on it. Sorted by size, then index.

    >>> pareto_front([(10, 0.70), (100, 0.75), (50, 0.69), (100, 0.74)])
    [0, 1]
    """
    ok = [
        i for i, (x, y) in enumerate(points) if not (math.isnan(float(x)) or math.isnan(float(y)))
    ]
    front = []
    for i in ok:
        xi, yi = points[i]
        dominated = any(
            points[j][0] <= xi and points[j][1] >= yi and (points[j][0] < xi or points[j][1] > yi)
            for j in ok
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], i))


# ----------------------------------------------------------------------------- reading runs


def exists(path: str) -> bool:
    """Whether ``path`` (local or a URI) is a file."""
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(read_bytes(path))
    except (CheckpointError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def run_dir_of(study_dir: str, point: GridPoint) -> str:
    return posixpath.join(str(study_dir), "runs", point.name)


def load_study_dir(study_dir: str) -> Study:
    """The study a ``STUDY_DIR`` was run with (its ``study.json``)."""
    d = _read_json(posixpath.join(str(study_dir), STUDY_FILE))
    if d is None:
        raise PsfmError(
            f"'{study_dir}' is not a study directory: it has no readable {STUDY_FILE} "
            "(psfm study --config STUDY.toml --out STUDY_DIR writes one)."
        )
    return Study.from_dict(d)


def _row(study_dir: str, point: GridPoint) -> dict[str, Any]:
    run_dir = run_dir_of(study_dir, point)
    report = _read_json(posixpath.join(run_dir, "report.json"))
    record = _read_json(posixpath.join(run_dir, RUN_RECORD)) or {}
    p = point.params()
    row: dict[str, Any] = {name: None for name, _ in RESULT_COLUMNS}
    row.update(
        name=p["name"],
        label=p["label"],
        model=p["model"],
        title=p["title"],
        ranks=",".join(str(r) for r in p["ranks"]),
        count_per_dim=p["count_per_dim"],
        l1_linear=p["l1_linear"],
        l1_factor=p["l1_factor"],
        seed=p["seed"],
        run_dir=run_dir,
        resumed=bool(record.get("resumed", False)),
    )
    status = record.get("status") or ("ok" if report else "pending")
    if status == "ok" and report is None:
        status = "pending"  # its report is gone: the next study run resumes or trains it
    row["status"] = status
    row["error"] = record.get("error") if status == "failed" else None
    if status != "ok" or report is None:
        return row
    test, model, train = report["test"], report["model"], report["train"]
    per_day = train.get("per_day", [])
    best = train.get("best_pass")
    valid = [v for v in report.get("valid", []) if v.get("pass") == best]
    test_s = test.get("seconds", record.get("test_seconds"))
    row.update(
        test_auc=test.get("auc"),
        test_logloss=test.get("logloss"),
        test_ne=test.get("ne"),
        nonzero_params=model.get("nonzero_params"),
        ps_bytes=model.get("ps_bytes"),
        train_samples_per_s=train.get("samples_per_s"),
        train_seconds=sum(float(d.get("seconds", 0.0)) for d in per_day),
        test_seconds=test_s,
        wall_seconds=train.get("wall_seconds"),
        train_rows=train.get("rows"),
        test_rows=test.get("rows"),
        passes=train.get("passes"),
        best_pass=best,
        early_stopped=train.get("early_stopped"),
        valid_logloss=valid[0].get("logloss") if valid else None,
    )
    return row


def _add_lr_ratio(rows: list[dict[str, Any]]) -> None:
    """``nonzero_vs_lr``: non-zero parameters over those of the LR run with the same seed and
    linear l1; when the study has no such run but exactly one LR run of that seed, that one."""
    lr = [r for r in rows if r["model"] == "lr" and r["status"] == "ok" and r["nonzero_params"]]
    for r in rows:
        if r["nonzero_params"] is None:
            continue
        same = [x for x in lr if x["seed"] == r["seed"] and x["l1_linear"] == r["l1_linear"]]
        if not same:
            seed_runs = [x for x in lr if x["seed"] == r["seed"]]
            same = seed_runs if len(seed_runs) == 1 else []
        if same:
            r["nonzero_vs_lr"] = r["nonzero_params"] / same[0]["nonzero_params"]


def collect_rows(study_dir: str, study: Study) -> list[dict[str, Any]]:
    """One results row per grid point, in grid order."""
    rows = [_row(study_dir, p) for p in study.points]
    _add_lr_ratio(rows)
    return rows


# ----------------------------------------------------------------------------- summaries


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (label), in first-seen order: runs, finished runs, mean and
    std of :data:`SUMMARY_METRICS` over the finished seeds, and ``pareto`` (on the front of
    mean test AUC against mean non-zero parameters, over every configuration)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    out = []
    for label, rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        s: dict[str, Any] = {k: rs[0][k] for k in _SUMMARY_KEYS}
        s["label"] = label
        s["runs"], s["ok"] = len(rs), len(ok)
        s["failed"] = sum(r["status"] == "failed" for r in rs)
        for m in SUMMARY_METRICS:
            vals = [float(r[m]) for r in ok if r[m] is not None]
            s[f"{m}_mean"], s[f"{m}_std"] = _mean_std(vals)
        s["pareto"] = False
        out.append(s)
    pts = [
        (
            s["nonzero_params_mean"] if s["nonzero_params_mean"] is not None else math.nan,
            s["test_auc_mean"] if s["test_auc_mean"] is not None else math.nan,
        )
        for s in out
    ]
    for i in pareto_front(pts):
        out[i]["pareto"] = True
    return out


def summary_columns() -> list[str]:
    cols = [*_SUMMARY_KEYS, "runs", "ok", "failed"]
    for m in SUMMARY_METRICS:
        cols += [f"{m}_mean", f"{m}_std"]
    return [*cols, "pareto"]


_TABLE4_COLUMNS = [
    "model",
    "label",
    "seeds",
    "test_logloss_mean",
    "test_logloss_std",
    "test_auc_mean",
    "test_auc_std",
    "nonzero_params_mean",
    "ps_mib_mean",
    "epochs_mean",
    "train_seconds_mean",
    "train_seconds_std",
    "test_seconds_mean",
    "test_seconds_std",
]


def table4_rows(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The RaFM paper's Table 4 layout, one row per configuration with a finished run."""
    out = []
    for s in summary:
        if not s["ok"]:
            continue
        ps = s["ps_bytes_mean"]
        out.append(
            {
                "model": s["title"],
                "label": s["label"],
                "seeds": s["ok"],
                "test_logloss_mean": s["test_logloss_mean"],
                "test_logloss_std": s["test_logloss_std"],
                "test_auc_mean": s["test_auc_mean"],
                "test_auc_std": s["test_auc_std"],
                "nonzero_params_mean": s["nonzero_params_mean"],
                "ps_mib_mean": None if ps is None else ps / 2**20,
                "epochs_mean": s["best_pass_mean"],
                "train_seconds_mean": s["train_seconds_mean"],
                "train_seconds_std": s["train_seconds_std"],
                "test_seconds_mean": s["test_seconds_mean"],
                "test_seconds_std": s["test_seconds_std"],
            }
        )
    return out


def _pm(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def table4_markdown(rows: list[dict[str, Any]], title: str = "") -> str:
    """``table4.md``: test logloss and AUC (mean ± std over seeds), #params (non-zero), PS
    memory, epochs (the pass tested), train and test seconds."""
    lines = [f"# {title}", ""] if title else []
    lines += [
        "| model | seeds | test logloss | test AUC | #params (non-zero) | PS MiB | epochs "
        "| train s | test s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        params = r["nonzero_params_mean"]
        mib = r["ps_mib_mean"]
        epochs = r["epochs_mean"]
        lines.append(
            f"| {r['model']} | {r['seeds']} "
            f"| {_pm(r['test_logloss_mean'], r['test_logloss_std'], 4)} "
            f"| {_pm(r['test_auc_mean'], r['test_auc_std'], 4)} "
            f"| {'–' if params is None else f'{params:,.0f}'} "
            f"| {'–' if mib is None else f'{mib:.1f}'} "
            f"| {'–' if epochs is None else f'{epochs:.1f}'} "
            f"| {_pm(r['train_seconds_mean'], r['train_seconds_std'], 1)} "
            f"| {_pm(r['test_seconds_mean'], r['test_seconds_std'], 2)} |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over the seeds that finished. Epochs: the pass whose "
        "state was tested (early stopping on the validation days). Train s: the training days' "
        "seconds summed over the passes trained. Test s: one in-process scoring pass over the "
        "test days with the tested checkpoint.",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- writing


def _csv_bytes(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r[c] for c in columns])
    return buf.getvalue().encode()


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    schema = pa.schema([pa.field(n, t) for n, t in RESULT_COLUMNS])
    table = pa.Table.from_pylist(
        [{n: r.get(n) for n, _ in RESULT_COLUMNS} for r in rows], schema=schema
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_outputs(study_dir: str, study: Study, plot: bool = True) -> dict[str, Any]:
    """Render every output of ``study_dir`` from its runs; returns the rows, the summary, the
    files written and, when the PNG could not be drawn, why (``plot_error``)."""
    rows = collect_rows(study_dir, study)
    summary = summarize(rows)
    join = posixpath.join
    files = {
        "results.csv": _csv_bytes(rows, [n for n, _ in RESULT_COLUMNS]),
        "results.parquet": _parquet_bytes(rows),
        "summary.csv": _csv_bytes(summary, summary_columns()),
    }
    if study.protocol == "table4":
        t4 = table4_rows(summary)
        files["table4.csv"] = _csv_bytes(t4, _TABLE4_COLUMNS)
        files["table4.md"] = table4_markdown(t4, f"{study.name}: Table 4 protocol").encode()
    for name, data in files.items():
        write_bytes(join(str(study_dir), name), data)
    written = list(files)
    plot_error = None
    if plot:
        try:
            png = plot_auc_vs_size(summary, f"{study.name}: test AUC against model size")
        except MissingDependency as e:
            plot_error = str(e)
        else:
            if png is not None:
                write_bytes(join(str(study_dir), "auc_vs_size.png"), png)
                written.append("auc_vs_size.png")
    return {"rows": rows, "summary": summary, "files": written, "plot_error": plot_error}


class MissingDependency(PsfmError):
    """An optional dependency (matplotlib) is not installed."""


def plot_auc_vs_size(summary: list[dict[str, Any]], title: str = "") -> bytes | None:
    """A PNG of mean test AUC against mean non-zero parameters (log x), one marker set per
    model family joined in order of size, the std over seeds as error bars, the Pareto front
    as a dashed step line with ringed points; where some configurations are far below the
    best (LR beside factorization models), a second panel shows those within ``ZOOM_AUC`` of
    it at their own scale. None when no configuration has finished."""
    pts = [s for s in summary if s["test_auc_mean"] is not None and s["nonzero_params_mean"]]
    if not pts:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependency(
            "auc_vs_size.png needs matplotlib, which is not installed: pip install "
            "'psfm[plot]' (or pip install matplotlib), then psfm study report STUDY_DIR."
        ) from e
    best = max(s["test_auc_mean"] for s in pts)
    near = [s for s in pts if s["test_auc_mean"] >= best - ZOOM_AUC]
    far = any(s["test_auc_mean"] < best - 2 * ZOOM_AUC for s in pts)  # else one panel shows all
    zoom = len(near) >= 2 and far
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(14, 5.5) if zoom else (8, 5.5))
    panels = [(axes, pts, title)]
    if zoom:
        panels = [(axes[0], pts, title), (axes[1], near, f"within {ZOOM_AUC:g} AUC of the best")]
    for ax, shown, head in panels:
        _draw(ax, shown)
        if head:
            ax.set_title(head, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def _draw(ax: Any, pts: list[dict[str, Any]]) -> None:
    """One panel of :func:`plot_auc_vs_size`: the families and the Pareto front of ``pts``
    (the front as computed over the whole study)."""
    kinds = sorted({s["model"] for s in pts}, key=lambda k: list(_FAMILIES).index(k))
    for kind in kinds:
        name, color, marker = _FAMILIES[kind]
        fam = sorted((s for s in pts if s["model"] == kind), key=lambda s: s["nonzero_params_mean"])
        xs = [s["nonzero_params_mean"] for s in fam]
        ys = [s["test_auc_mean"] for s in fam]
        ax.errorbar(
            xs,
            ys,
            yerr=[s["test_auc_std"] or 0.0 for s in fam],
            xerr=[s["nonzero_params_std"] or 0.0 for s in fam],
            color=color,
            marker=marker,
            linestyle="-",
            linewidth=0.8,
            capsize=3,
            label=name,
        )
        one_model = len({s["ranks"] for s in fam}) == 1  # the legend names the model
        for j, (s, x, y) in enumerate(zip(fam, xs, ys, strict=True)):
            text = s["title"]
            if one_model and ", " in text:
                text = text.split(", ", 1)[1]
            ax.annotate(
                text,
                (x, y),
                textcoords="offset points",
                xytext=(5, 5 if j % 2 == 0 else -10),
                fontsize=6.5,
                color=color,
            )
    front = sorted((s for s in pts if s["pareto"]), key=lambda s: s["nonzero_params_mean"])
    if front:
        ax.plot(
            [s["nonzero_params_mean"] for s in front],
            [s["test_auc_mean"] for s in front],
            linestyle="--",
            color="black",
            linewidth=1.0,
            drawstyle="steps-post",
            label="Pareto front",
        )
        ax.scatter(
            [s["nonzero_params_mean"] for s in front],
            [s["test_auc_mean"] for s in front],
            s=160,
            facecolors="none",
            edgecolors="black",
            linewidths=1.0,
            zorder=3,
        )
    ax.set_xscale("log")
    ax.set_xlabel("non-zero parameters (log scale)")
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def format_summary(summary: list[dict[str, Any]]) -> str:
    """The summary as text: one line per configuration (``*`` marks the Pareto front)."""
    head = f"  {'configuration':34s} {'done':>5s} {'test AUC':>17s} {'logloss':>8s} "
    head += f"{'non-zero params':>15s} {'x LR':>6s}"
    lines = [head]
    for s in summary:
        auc = _pm(s["test_auc_mean"], s["test_auc_std"], 4)
        ll = "–" if s["test_logloss_mean"] is None else f"{s['test_logloss_mean']:.4f}"
        nz = "–" if s["nonzero_params_mean"] is None else f"{s['nonzero_params_mean']:,.0f}"
        rel = "–" if s["nonzero_vs_lr_mean"] is None else f"{s['nonzero_vs_lr_mean']:.2f}"
        mark = "*" if s["pareto"] else " "
        lines.append(
            f"{mark} {s['label']:34s} {s['ok']:>2d}/{s['runs']:<2d} {auc:>17s} {ll:>8s} "
            f"{nz:>15s} {rel:>6s}"
        )
    lines.append("(* on the Pareto front of test AUC against non-zero parameters)")
    return "\n".join(lines)

"""Model-size studies: a grid of ordinary psfm runs (model kinds and rank sets x
``levels.count_per_dim`` x FTRL l1 x seeds) over one base run config, and their results as
tables and a plot of test AUC against non-zero parameters (the RaFM paper's size/AUC trade-off;
``protocol = "table4"``: its Table 4 protocol, epochs with early stopping on validation days).

::

    psfm study --config STUDY.toml [--data DIR] --out STUDY_DIR [--in-process] [--address ADDR]
    psfm study report STUDY_DIR

:mod:`psfm.study.spec` reads the study config, :mod:`psfm.study.runner` runs the grid (skipping
finished runs, resuming interrupted ones, recording failed ones), :mod:`psfm.study.report`
renders ``results.csv``/``.parquet``, ``summary.csv``, ``auc_vs_size.png`` and, for Table 4,
``table4.csv``/``table4.md``. This module only registers the command: importing it loads
nothing heavy.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_cli", "main_study", "main_report"]


def main_study(args: argparse.Namespace) -> int:
    """``psfm study --config STUDY.toml --out STUDY_DIR``: 0 when every run finished, 1 when
    some failed (they are in the results with their errors)."""
    from psfm.cli_options import dashboard_sets
    from psfm.errors import PsfmError
    from psfm.study.runner import run_study
    from psfm.study.spec import load_study

    if getattr(args, "study_cmd", None) == "report":
        return main_report(args)
    if not args.config or not args.out:
        raise PsfmError(
            "psfm study needs --config STUDY.toml and --out STUDY_DIR "
            "(or: psfm study report STUDY_DIR)."
        )
    study = load_study(args.config, data=args.data, sets=[*dashboard_sets(args), *args.set])
    res = run_study(
        study,
        args.out,
        in_process=args.in_process,
        address=args.address,
        concurrency=args.concurrency,
    )
    return 1 if any(a == "failed" for a in res["actions"].values()) else 0


def main_report(args: argparse.Namespace) -> int:
    """``psfm study report STUDY_DIR``: re-render the outputs from the runs' reports."""
    from psfm.study.report import format_summary, load_study_dir, write_outputs

    study = load_study_dir(args.study_dir)
    res = write_outputs(args.study_dir, study, plot=not args.no_plot)
    print(format_summary(res["summary"]))
    print(f"wrote {', '.join(res['files'])} in {args.study_dir}")
    if res["plot_error"]:
        print(f"no auc_vs_size.png: {res['plot_error']}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``study`` (and ``study report``) on an ``argparse`` subparsers object."""
    from psfm.cli_options import dashboard_option, set_option

    p = subparsers.add_parser(
        "study",
        help="run a grid of runs (models x ranks x count_per_dim x l1 x seeds) and tabulate "
        "and plot test AUC against model size",
        description="Run every grid point of a study config as an ordinary psfm run in "
        "STUDY_DIR/runs/NAME/ (finished runs are skipped, interrupted ones resumed, failed ones "
        "recorded), then write results.csv, results.parquet, summary.csv and auc_vs_size.png "
        "(and table4.csv / table4.md with protocol = 'table4'). "
        "'psfm study report STUDY_DIR' re-renders them.",
    )
    p.add_argument("--config", help="study config (TOML): base run config, [grid], [[models]]")
    p.add_argument("--out", help="STUDY_DIR: runs/, results and plots go here")
    p.add_argument("--data", help="data root with day=... partitions (data.root of the base)")
    set_option(p, "one key of the base run config")
    p.add_argument(
        "--address",
        help="Ray cluster to join ('auto', host:port); default: RAY_ADDRESS, else a local Ray",
    )
    dashboard_option(p)
    p.add_argument("--in-process", action="store_true", help="no Ray: each run in this process")
    p.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="runs at once on Ray (default: the config's concurrency, 1); each run waits for "
        "room for all its actors, so the cluster's CPUs are never oversubscribed",
    )
    p.set_defaults(func=main_study)
    sub = p.add_subparsers(dest="study_cmd", required=False, metavar="{report}")
    r = sub.add_parser("report", help="re-render a study's tables and plot from its runs")
    r.add_argument("study_dir", metavar="STUDY_DIR")
    r.add_argument("--no-plot", action="store_true", help="tables only")
    r.set_defaults(func=main_report)

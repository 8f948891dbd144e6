"""psfm: train LR, FM, DiFacto and Rank-Aware FM with FTRL on a Ray parameter server."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from psfm.cli_options import (
    build_config,
    dashboard_option,
    dashboard_sets,
    knobs_epilog,
    option_sets,
    set_option,
    train_options,
)
from psfm.config import Config, apply_overrides, config_from_dict, load_config, to_dict
from psfm.errors import PsfmError, RunStopped, user_message

__all__ = ["main", "build_config", "summary"]

log = logging.getLogger("psfm")


def summary(report: dict[str, Any]) -> str:
    """The human summary of a report (:func:`psfm.rundir.summary`; imported when used, so
    that ``psfm --help`` stays light)."""
    from psfm.rundir import summary as _summary

    return _summary(report)


def run_training(cfg: Config, resume: bool, address: str | None, in_process: bool) -> dict:
    """Train with Ray (the default) or in this process."""
    if in_process:
        from psfm.trainer import train_local

        return train_local(cfg, resume=resume)
    from psfm.ray_backend.driver import train_ray

    return train_ray(cfg, resume=resume, address=address)


def _cmd_train(args: argparse.Namespace) -> int:
    from psfm.rundir import load_run_config

    if args.resume:
        if not args.run_dir:
            raise PsfmError("--resume needs --run-dir RUN_DIR.")
        if args.config or args.overwrite:
            raise PsfmError(
                "--resume continues the run's stored config (RUN_DIR/config.json): give "
                "options or --set KEY=VALUE to change it, not "
                + ("--config." if args.config else "--overwrite.")
            )
        base = to_dict(load_run_config(args.run_dir))
        # the directory given, wherever the stored config says the run was
        sets = [*option_sets(args), *args.set]
        cfg = config_from_dict(apply_overrides(base, sets))
        cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, run_dir=str(args.run_dir))
        )
    else:
        cfg = build_config(args)
    if not cfg.data.root:
        raise PsfmError("No data: give --data DIR or data.root in the config.")
    report = run_training(cfg, args.resume, args.address, args.in_process)
    print(summary(report))
    return 0


def _cmd_gen(args: argparse.Namespace) -> int:
    from psfm.datasets.gen import GenSpec, generate

    spec = GenSpec.small() if args.small else GenSpec()
    if args.interaction != spec.interaction:
        spec = dataclasses.replace(spec, interaction=args.interaction)
    t0 = time.perf_counter()
    paths = generate(
        args.out, days=args.days, rows_per_day=args.rows_per_day, seed=args.seed, spec=spec
    )
    rows = args.days * args.rows_per_day
    print(
        f"wrote {rows:,} rows in {len(paths)} files under {args.out} "
        f"({rows / (time.perf_counter() - t0):,.0f} rows/s)"
    )
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from psfm.datasets.gen import GenSpec, generate

    work = Path(args.dir)
    data = work / "data"
    if not (data / "day=1").exists():
        print(f"generating {args.days} days x {args.rows_per_day:,} rows into {data} ...")
        generate(data, days=args.days, rows_per_day=args.rows_per_day, seed=0, spec=GenSpec.small())
    gen = json.loads((data / "_gen.json").read_text())
    cfg = load_config(
        None,
        [
            f"data.root={json.dumps(str(data))}",
            'model.kind="rafm"',
            f"train.run_dir={json.dumps(str(work / 'run'))}",
            "ps.shards=2",
            "train.workers=2",
            # 200k rows a day: units of one row group give both workers work
            "data.rows_per_unit=65536",
            "train.overwrite=true",  # a demo: each quickstart starts its run afresh
            *dashboard_sets(args),
            *args.set,
        ],
    )
    where = "in this process" if args.in_process else "a local Ray (2 shards, 2 workers)"
    print(
        f"training RaFM ranks {list(cfg.model.ranks)} on days 1..{args.days - 1} on {where}, "
        f"testing on day {args.days} ..."
    )
    report = run_training(cfg, False, args.address, args.in_process)
    print(summary(report))
    bayes = gen["per_day"][-1]["bayes_auc"]
    print(
        f"(Bayes-optimal test AUC of the generator's true model: {bayes:.4f}; "
        f"report: {work / 'run' / 'report.json'}; charts: psfm report {work / 'run'})"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from psfm.export import export_model

    info = export_model(args.run_dir, args.out)
    print(
        f"exported {info['keys']:,} keys with non-zero parameters (dropped "
        f"{info['dropped_zero_keys']:,} all-zero keys) of day {info['day']} to {info['file']}"
    )
    return 0


_PREDICT_COLUMNS = ("day", "file", "row", "prediction", "label", "coverage")


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from psfm.data.parquet import list_days, select_days, work_units
    from psfm.errors import DataError
    from psfm.export import Predictor
    from psfm.metrics import MetricAccumulator
    from psfm.scoring import Progress

    keep = list(dict.fromkeys(args.keep or []))
    clash = [c for c in keep if c in _PREDICT_COLUMNS]
    if clash:
        raise PsfmError(
            f"--keep {', '.join(clash)}: the output already has a column of that name "
            f"(it has {', '.join(_PREDICT_COLUMNS)})."
        )
    pred = Predictor(args.model)
    all_days = list_days(args.data)
    days = select_days(all_days, args.days) if args.days else all_days
    total = sum(u.rows for d in days for u in work_units(args.data, d))
    progress = Progress("predict", total, 10.0)
    acc = MetricAccumulator()
    writer = None
    n = 0
    labelled = 0
    for s in pred.iter_batches(args.data, days, keep=keep, label_optional=True):
        cols = {c: s.kept.column(c) for c in keep} if s.kept is not None else {}
        t = pa.table(
            {
                **cols,
                "day": pa.repeat(s.day, s.rows.size),
                "file": pa.repeat(s.file, s.rows.size),
                "row": pa.array(s.rows),
                "prediction": pa.array(s.probs.astype(np.float64)),
                "label": pa.array(s.labels, mask=np.isnan(s.labels)),  # null: none
                "coverage": pa.array(s.coverage),
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(args.out, t.schema)
        elif t.schema != writer.schema:
            try:
                t = t.cast(writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
                raise DataError(
                    f"File '{s.file}': the --keep columns have types {t.schema} there, "
                    f"{writer.schema} in the first file scored: {e}"
                ) from e
        writer.write_table(t)
        has = ~np.isnan(s.labels)  # a file without the label column: predictions only
        if pred.loss.classification and has.any():  # regression metrics are still to come
            acc.update(s.labels[has], s.probs[has])
            labelled += int(has.sum())
        n += s.rows.size
        progress.add(s.rows.size)
    progress.close()
    if writer:
        writer.close()
    r = acc.result()
    if not labelled:
        what = " (no labels: predictions only)" if pred.loss.classification else ""
    else:
        on = f" on the {labelled:,} labelled rows" if labelled < n else ""
        what = f": AUC {r['auc']:.4f}, logloss {r['logloss']:.4f}{on}"
    print(f"scored {n:,} rows into {args.out}{what}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from psfm.report_html import write_run_report

    print(f"wrote {write_run_report(args.run_dir, args.out)}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from psfm.checkpoint import latest_checkpoint, load_checkpoint
    from psfm.data.parquet import day_files, list_days, select_days
    from psfm.data.schemas import check_files
    from psfm.ps.client import LocalClient
    from psfm.trainer import evaluate, load_run_config, make_shards
    from psfm.worker import Worker

    cfg = load_run_config(args.run_dir)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    root = args.data or cfg.data.root
    all_days = list_days(root)
    days = select_days(all_days, args.days) if args.days else [all_days[-1]]
    ckpt = latest_checkpoint(args.run_dir)
    if ckpt is None:
        raise PsfmError(f"Run directory '{args.run_dir}' has no complete checkpoint.")
    states, manifest = load_checkpoint(ckpt)
    if manifest.get("schema"):  # data of another layout or schema would score other keys
        check_files(cfg.data, [f for d in days for f in day_files(root, d)], manifest["schema"])
    client = LocalClient(make_shards(cfg))
    client.restore(states)
    out = evaluate(cfg, Worker(cfg), client, root, days)
    if args.json:
        print(json.dumps({"checkpoint_day": manifest.get("day"), **out}, indent=1))
    else:
        from psfm.rundir import test_lines

        name = ckpt.rstrip("/").rsplit("/", 1)[-1]
        print("\n".join([f"checkpoint {name}", *test_lines(out)]))
    return 0


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI; the offline tools' options (convert, stats) are registered only when that
    command runs, so ``psfm --help`` and the other commands do not import them."""
    from psfm import __version__

    ap = argparse.ArgumentParser(prog="psfm", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument("--version", action="version", version=f"psfm {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("quickstart", help="generate a small log, train RaFM, print the report")
    p.add_argument("--dir", default="psfm-quickstart", help="where data and run go")
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--rows-per-day", type=int, default=200_000)
    set_option(p)
    p.add_argument("--address", help="Ray cluster to join instead of a local Ray")
    dashboard_option(p)
    p.add_argument("--in-process", action="store_true", help="no Ray")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("gen", help="write a synthetic multi-day CTR log with a known true model")
    p.add_argument("--out", required=True)
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--rows-per-day", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="10 fields, small vocabularies")
    p.add_argument(
        "--interaction",
        choices=("prefix", "rank_aware"),
        default="prefix",
        help="the true model's pairs: one vector per value, cut to the smaller dim (prefix, "
        "DiFacto's form) or a vector per value and dim (rank_aware, RaFM's form)",
    )
    p.set_defaults(func=_cmd_gen)

    p = sub.add_parser(
        "train",
        help="train on the train days, evaluate the test days",
        epilog=knobs_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="score days with a run's latest checkpoint")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--data", help="data root (default: the run's)")
    p.add_argument("--days", help="day SPEC (default: the last day)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("export", help="write the serving model (non-zero parameters, Parquet)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_export)

    if command == "convert":
        from psfm.datasets import convert as _convert

        _convert.add_cli(sub)  # psfm convert criteo|avazu|libfm INPUT... --out DIR
    else:
        sub.add_parser(
            "convert", help="convert Criteo / Avazu / libFM text logs into day-partitioned Parquet"
        )
    if command == "stats":
        from psfm.datasets import stats as _stats

        _stats.add_cli(sub)  # psfm stats --data DIR [--days SPEC] [--plot FILE]
    else:
        sub.add_parser(
            "stats", help="feature counts, log2 histogram, RaFM levels and model sizes of a log"
        )

    from psfm import study as _study  # registers only; the runs import their modules lazily

    _study.add_cli(sub)  # psfm study --config STUDY.toml --out DIR | psfm study report DIR

    from psfm import sizing as _sizing  # numbers only: no heavy import

    _sizing.add_cli(sub)  # psfm sizing RUN_DIR --workers 1,2,4 --shards 1,2

    p = sub.add_parser(
        "bench",
        help="run the benchmark suite (benchmarks/bench.py of a source checkout)",
        add_help=False,
    )
    p.set_defaults(func=lambda a: _cmd_bench([]))  # main() hands it the raw arguments

    p = sub.add_parser(
        "report",
        help="write a run's report as one HTML page (charts inline; opens from disk)",
        description="Reads RUN_DIR/report.json and writes RUN_DIR/report.html (or --out): "
        "test metrics, progressive AUC and logloss by day and pass, validation by pass, time, "
        "model size per level, the test days' calibration (reliability by bin, ECE), the "
        "config. With matplotlib (pip install 'psfm[plot]') each chart is also written as a "
        "PNG in report/ beside the page.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="the HTML file (default RUN_DIR/report.html)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "predict",
        help="score Parquet logs with an exported model (no Ray)",
        description="Writes, per input row: the --keep columns, day, file, row, prediction, "
        "label (null for logs without the label column: serving data) and coverage (the "
        "fraction of the row's feature keys the model has). Data of "
        "another layout or feature schema than the model's is refused.",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--days", help="day SPEC (default: every day)")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--keep",
        nargs="+",
        metavar="COL",
        help="input columns copied into the output (e.g. ids to join the predictions on)",
    )
    p.set_defaults(func=_cmd_predict)
    return ap


def _cmd_bench(argv: list[str]) -> int:
    """``psfm bench ARGS``: the suite lives outside the package, in the checkout's benchmarks/."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    if not path.is_file():
        raise PsfmError(
            f"psfm bench runs the suite of a source checkout and there is none at {path.parent}: "
            "clone the repository and run 'python benchmarks/bench.py' there"
        )
    spec = importlib.util.spec_from_file_location("psfm_benchmarks_bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return int(mod.main(argv, prog="psfm bench"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options are the suite's own
        try:
            return _cmd_bench(argv[1:])
        except PsfmError as e:
            print(f"psfm: error: {user_message(e)}", file=sys.stderr)
            return 2
    args = _parser(argv[0] if argv else None).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # ray job stop, kill: as Ctrl-C
    try:
        return int(args.func(args) or 0)
    except RunStopped as e:  # not the user's doing: the run ends, its checkpoints stay
        print(f"psfm: {user_message(e)}{_resume_hint(args)}", file=sys.stderr)
        return 1
    except PsfmError as e:
        print(f"psfm: error: {user_message(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that is missing, not a folder, not readable: the user's to fix
        if args.verbose:
            logging.getLogger("psfm").exception("the traceback")
        print(f"psfm: error: {user_message(e)} (-v shows where)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the run loop has closed its backend (actors killed) by now
        print(f"psfm: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _resume_hint(args: argparse.Namespace) -> str:
    """What to do after an interrupted command: how to continue it without losing work."""
    if args.cmd == "train" and getattr(args, "run_dir", None):
        return (
            f". Nothing trained is lost past the newest checkpoint in '{args.run_dir}': "
            f"continue with psfm train --run-dir {args.run_dir} --resume"
        )
    if args.cmd == "study":
        return (
            ". Run the same command again: finished runs are skipped, the interrupted one "
            "resumes from its checkpoints"
        )
    return ""


if __name__ == "__main__":
    sys.exit(main())

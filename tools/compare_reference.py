"""psfm's minibatch FTRL against the per-sample FTRL reference, on generated logs.

DESIGN §3: a minibatch must move a coordinate about as far as its per-sample FTRL steps would, and
the accumulation rule is chosen by measurement against a per-sample reference. This script is
that measurement. For every (spec, size, model) case it generates 2 training days and 1 test day
(``size`` training rows in all, fixed ``--seed``), trains the slow exact reference
(``tests/reference/ftrl_fm.py``, one pass, one row at a time) and psfm in-process
(``psfm.trainer.train_local``) on the same rows in the same order, and prints test AUC, logloss
and seconds of both, plus the generator's Bayes AUC of the test day (the ceiling).

Specs: ``dense`` is ``GenSpec.small()`` (10 fields, small vocabularies), ``zipf39`` the default
``GenSpec()`` (13 numeric + 26 categorical Zipf fields, vocabularies up to 1e6). Models: ``fm``
(``model.kind="fm"``, ranks [8]; reference D = 8) and ``lr`` (reference D = 0).

``--set section.key=value`` (repeatable) changes psfm's config. The reference reads its FTRL
hyperparameters, ``model.init_std`` and ``train.seed`` from that same resolved config, so by
default both train with identical hyperparameters and initial factors; ``--ref-set`` (repeatable)
overrides them for the reference alone. Results go to ``tools/compare_reference.json`` (``--out``),
without machine paths.

    python tools/compare_reference.py                             # 20k, 100k rows; ~3 min
    python tools/compare_reference.py --sizes 1000000 --data-dir /tmp/logs
    python tools/compare_reference.py --set data.batch_size=256 --models fm,lr
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from psfm.config import Config, load_config, to_dict  # noqa: E402
from psfm.data.parquet import list_days, split_days  # noqa: E402
from psfm.datasets.gen import GEN_JSON, GenSpec, generate  # noqa: E402
from psfm.trainer import train_local  # noqa: E402
from tests.reference.ftrl_fm import run_reference  # noqa: E402

__all__ = ["main", "SPECS", "MODELS", "compare_case"]

SPECS = {"dense": GenSpec.small, "zipf39": GenSpec}
MODELS = {"fm": ['model.kind="fm"', "model.ranks=[8]"], "lr": ['model.kind="lr"']}
DAYS = 3  # 2 training days + 1 test day


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _log_root(parent: Path, spec: str, size: int, seed: int) -> Path:
    """A generated log for the case, reused when ``_gen.json`` says it is the same one."""
    root = parent / f"{spec}-{size}-s{seed}"
    meta = root / GEN_JSON
    if meta.exists():
        m = json.loads(meta.read_text())
        if (m.get("days"), m.get("rows_per_day"), m.get("seed")) == (DAYS, size // 2, seed):
            return root
    t0 = time.perf_counter()
    generate(root, days=DAYS, rows_per_day=size // 2, seed=seed, spec=SPECS[spec]())
    logging.getLogger(__name__).info("generated %s in %.1fs", root.name, time.perf_counter() - t0)
    return root


def _bayes_auc(root: Path, days: list[str]) -> float | None:
    per_day = {str(d["day"]): d for d in json.loads((root / GEN_JSON).read_text())["per_day"]}
    aucs = [per_day[d]["bayes_auc"] for d in days if d in per_day]
    return sum(aucs) / len(aucs) if aucs else None


def _ref_params(cfg: Config) -> dict[str, Any]:
    d = to_dict(cfg)
    return {
        "linear": d["ftrl"]["linear"],
        "factor": d["ftrl"]["factor"],
        "init_std": cfg.model.init_std,
        "seed": cfg.train.seed,
    }


def _psfm_params(cfg: Config) -> dict[str, Any]:
    """The reference's parameters plus psfm's minibatch rule, where the config has one."""
    rule = to_dict(cfg)["ftrl"].get("accumulate")
    return {**_ref_params(cfg), **({"accumulate": rule} if rule is not None else {})}


def _sets_of(resolved: dict[str, Any]) -> list[str]:
    """``--set`` strings pinning a resolved config's FTRL rates."""
    f = resolved["ftrl"]
    return [
        f"ftrl.linear.alpha={f['linear']['alpha']}",
        f"ftrl.factor.alpha={f['factor']['alpha']}",
    ]


def compare_case(root: Path, model: str, sets: list[str], ref_sets: list[str]) -> dict[str, Any]:
    """Reference and psfm on one log; returns the result record."""
    base = [f"data.root={json.dumps(str(root))}", *MODELS[model]]
    cfg = load_config(None, [*base, *sets])
    t0 = time.perf_counter()
    rep = train_local(cfg)
    psfm_s = time.perf_counter() - t0
    # the reference takes psfm's resolved hyper-parameters (auto rates chosen for its batch)
    resolved = rep["config"]
    ref_cfg = load_config(None, [*base, *_sets_of(resolved), *sets, *ref_sets])
    if ref_cfg.model.kind not in MODELS:
        raise SystemExit(f"--ref-set: the reference trains lr or fm, not {ref_cfg.model.kind!r}")
    dim = ref_cfg.model.ranks[0] if ref_cfg.model.kind == "fm" else 0
    train_days, test_days = split_days(
        list_days(str(root)), cfg.data.train_days, cfg.data.test_days
    )
    ref = run_reference(str(root), train_days, test_days, dim=dim, config=ref_cfg)
    return {
        "rows": ref["train_rows"],
        "test_rows": ref["rows"],
        "bayes_auc": _bayes_auc(root, test_days),
        "ref": {
            "auc": ref["auc"],
            "logloss": ref["logloss"],
            "seconds": ref["seconds"],
            "us_per_row": ref["us_per_row"],
            "progressive_auc": ref["progressive_auc"],
            "keys": ref["keys"],
            "dim": dim,
            "params": _ref_params(ref_cfg),
        },
        "psfm": {
            "auc": rep["test"]["auc"],
            "logloss": rep["test"]["logloss"],
            "seconds": psfm_s,
            "train_rows": rep["train"]["rows"],
            "samples_per_s": rep["train"]["samples_per_s"],
            "nonzero_params": rep["model"]["nonzero_params"],
            "params": _psfm_params(load_config(None, [*base, *_sets_of(resolved)])),
            "batch_size": rep["config"]["data"]["batch_size"],
        },
        "delta_auc": rep["test"]["auc"] - ref["auc"],
        "delta_logloss": rep["test"]["logloss"] - ref["logloss"],
    }


def _git() -> dict[str, Any]:
    """The checkout's commit and whether psfm/ differs from it (read-only, no index lock)."""
    here = Path(__file__).resolve().parents[1]

    def run(*a: str) -> str:
        return subprocess.run(
            ["git", "--no-optional-locks", *a], cwd=here, text=True, capture_output=True, timeout=30
        ).stdout.strip()

    try:
        return {
            "commit": run("rev-parse", "HEAD"),
            "psfm_dirty": bool(run("status", "--porcelain", "--", "psfm")),
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "psfm_dirty": None}


_HEAD = (
    f"{'case':<22}{'rows':>9}{'bayes':>7} | {'ref auc':>8}{'logloss':>8}{'s':>7}"
    f"{'us/row':>7} | {'psfm auc':>8}{'logloss':>8}{'s':>7} | {'dAUC':>8}{'dLL':>8}"
)


def _line(case: str, r: dict[str, Any]) -> str:
    b = f"{r['bayes_auc']:.4f}" if r["bayes_auc"] is not None else "-"
    f, p = r["ref"], r["psfm"]
    return (
        f"{case:<22}{r['rows']:>9,}{b:>7} | {f['auc']:>8.4f}{f['logloss']:>8.4f}"
        f"{f['seconds']:>7.1f}{f['us_per_row']:>7.0f} | {p['auc']:>8.4f}"
        f"{p['logloss']:>8.4f}{p['seconds']:>7.1f} | {r['delta_auc']:>+8.4f}"
        f"{r['delta_logloss']:>+8.4f}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,100000", help="training rows per case (2 days)")
    ap.add_argument("--specs", default="dense,zipf39", help=f"of {', '.join(SPECS)}")
    ap.add_argument("--models", default="fm", help=f"of {', '.join(MODELS)}")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="psfm config override (the reference reads its hyperparameters from it)",
    )
    ap.add_argument(
        "--ref-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override for the reference only (ftrl.*, model.init_std, train.seed)",
    )
    ap.add_argument("--data-dir", default=None, help="cache generated logs here across runs")
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).setLevel(logging.INFO)
    sizes = [int(s) for s in _csv(args.sizes)]
    specs, models = _csv(args.specs), _csv(args.models)
    for name, given, known in (("--specs", specs, SPECS), ("--models", models, MODELS)):
        if not given or any(g not in known for g in given):
            ap.error(f"{name} must be a comma list of {', '.join(known)}. Got {given!r}.")
    if any(s < 2 for s in sizes):
        ap.error(f"--sizes must be ints >= 2. Got {sizes!r}.")
    record: dict[str, Any] = {
        "args": {
            "sizes": sizes,
            "specs": specs,
            "models": models,
            "seed": args.seed,
            "set": args.set,
            "ref_set": args.ref_set,
            "days": DAYS,
        },
        "git": _git(),
        "cpus": os.cpu_count(),
        "results": [],
    }
    out = Path(args.out)
    probe = load_config(None, [*MODELS[models[0]], *args.set])
    rule = to_dict(probe)["ftrl"].get("accumulate", "(none: one step per batch)")
    print(
        f"psfm: data.batch_size={probe.data.batch_size}, ftrl.accumulate={rule}, "
        f"--set {args.set}; reference --ref-set {args.ref_set}"
    )
    print(_HEAD, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(args.data_dir) if args.data_dir else Path(tmp)
        for spec in specs:
            for size in sizes:
                root = _log_root(parent, spec, size, args.seed)
                for model in models:
                    case = f"{spec}/{size // 1000}k/{model}"
                    r = compare_case(root, model, args.set, args.ref_set)
                    record["results"].append(
                        {"case": case, "spec": spec, "size": size, "model": model, **r}
                    )
                    out.write_text(json.dumps(record, indent=1) + "\n")  # partial results too
                    print(_line(case, r), flush=True)
    print(f"wrote {out.name}")


if __name__ == "__main__":
    main()

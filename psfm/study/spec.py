"""A study config (TOML) and the grid of runs it describes.

A study is a base run config and a grid over it; every grid point is one ordinary psfm run::

    protocol = "grid"                 # or "table4" (epochs, early stopping, >= 3 seeds)
    base = "jobs/configs/fm.toml"     # a run config file (relative to this file), or:

    [base]                            # ordinary psfm config keys
    data.train_days = "1..2"
    data.test_days = "3"
    ps.shards = 1

    [grid]
    seeds = [0, 1]                    # train.seed
    count_per_dim = [1.0, 16.0]       # levels.count_per_dim, for models with >= 2 levels
    l1 = [1.0, {linear = 4.0, factor = 1.0}]   # ftrl.linear.l1 and ftrl.factor.l1

    [[models]]
    kind = "lr"

    [[models]]
    kind = "fm"
    ranks = [[8], [32]]               # a rank set per model: FM(8) and FM(32)

    [[models]]
    kind = "rafm"
    ranks = [1, 2, 4, 8]              # one rank set
    count_per_dim = [16.0]            # this model's own list (replaces the grid's)
    set = { model = { dependent_lr_coef = [1.0, 1.0, 1.0] } }   # more config for this model

The grid is models x count_per_dim (leveled models only) x l1 x seeds, in that order. The study
checks its own structure when loaded (:class:`ConfigError` naming the key, the rule and the
value); the values a run's config rejects (a negative ``count_per_dim``, ranks out of order)
fail that run only, which the results record with its error.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psfm.config import MODEL_KINDS, Config, apply_overrides, config_from_dict, to_dict
from psfm.errors import ConfigError

__all__ = [
    "GridPoint",
    "Study",
    "PROTOCOLS",
    "load_study",
    "study_from_dict",
    "display_name",
]

PROTOCOLS = ("grid", "table4")
_TOP_KEYS = ("protocol", "name", "base", "grid", "models", "measure_test_seconds", "concurrency")
_GRID_KEYS = ("seeds", "count_per_dim", "l1")
_MODEL_KEYS = ("kind", "ranks", "label", "count_per_dim", "l1", "set")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _fail(key: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(
        f"The '{key}' key of the study config must be {rule}. Got {value!r} instead."
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class GridPoint:
    """One run of a study: its name (the run directory under ``STUDY_DIR/runs/``), the
    configuration it belongs to (``label``: the name without the seed, what seeds are averaged
    over) and the overrides that make its run config from the study's base."""

    name: str
    label: str
    kind: str
    ranks: tuple[int, ...]
    count_per_dim: float | None
    l1_linear: float | None
    l1_factor: float | None
    seed: int
    title: str = ""
    overrides: dict[str, Any] = field(default_factory=dict, compare=False)

    def params(self) -> dict[str, Any]:
        """The grid coordinates (JSON-ready)."""
        return {
            "name": self.name,
            "label": self.label,
            "model": self.kind,
            "ranks": list(self.ranks),
            "count_per_dim": self.count_per_dim,
            "l1_linear": self.l1_linear,
            "l1_factor": self.l1_factor,
            "seed": self.seed,
            "title": self.title or display_name(self.kind, self.ranks),
        }


def display_name(kind: str, ranks: list[int] | tuple[int, ...]) -> str:
    """``LR``, ``FM(8)``, ``DiFacto({1,2,4,8})``, ``RaFM({1,2,4,8})`` (the RaFM paper's names)."""
    r = ",".join(str(x) for x in ranks)
    return {
        "lr": "LR",
        "fm": f"FM({r})",
        "difacto": f"DiFacto({{{r}}})",
        "rafm": f"RaFM({{{r}}})",
    }.get(kind, f"{kind}({r})")


@dataclass(frozen=True)
class Study:
    """A loaded study: the base run config (nested dict of psfm config keys, ``data.root``
    included) and the grid points, in run order."""

    name: str
    protocol: str
    base: dict[str, Any]
    points: tuple[GridPoint, ...]
    measure_test_seconds: bool = True
    source: str = ""
    concurrency: int = 1  # runs at once on Ray (each waits for room for all its actors)

    def run_config(self, point: GridPoint, run_dir: str) -> Config:
        """The run config of ``point`` (raises ConfigError when a value breaks its rule)."""
        values = apply_overrides(self.base, [])
        _merge(values, point.overrides)
        _merge(
            values,
            {"train": {"run_dir": str(run_dir), "overwrite": False, "seed": point.seed}},
        )
        return config_from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "name": self.name,
            "protocol": self.protocol,
            "source": self.source,
            "measure_test_seconds": self.measure_test_seconds,
            "concurrency": self.concurrency,
            "base": self.base,
            "points": [{**p.params(), "overrides": p.overrides} for p in self.points],
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Study:
        """The study as ``to_dict`` wrote it (``STUDY_DIR/study.json``)."""
        points = tuple(
            GridPoint(
                name=p["name"],
                label=p["label"],
                kind=p["model"],
                ranks=tuple(p["ranks"]),
                count_per_dim=p["count_per_dim"],
                l1_linear=p["l1_linear"],
                l1_factor=p["l1_factor"],
                seed=int(p["seed"]),
                title=p.get("title", ""),
                overrides=p.get("overrides", {}),
            )
            for p in d["points"]
        )
        return Study(
            name=d.get("name", ""),
            protocol=d.get("protocol", "grid"),
            base=d.get("base", {}),
            points=points,
            measure_test_seconds=bool(d.get("measure_test_seconds", True)),
            concurrency=int(d.get("concurrency", 1)),
            source=d.get("source", ""),
        )


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge nested dict ``extra`` into ``into`` (tables merged, values replaced)."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = json.loads(json.dumps(v))


def _nest(table: dict[str, Any]) -> dict[str, Any]:
    """A table whose keys may be quoted dotted paths (``{"model.init_std" = 0.1}``) as nested
    tables (``{model = {init_std = 0.1}}``)."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        parts = k.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        value = _nest(v) if isinstance(v, dict) else v
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            _merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"Cannot read {what} '{path}': {e.strerror}.") from e
    try:
        return json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what.capitalize()} '{path}' is not valid TOML/JSON: {e}") from e


def load_study(path: str | Path, data: str | None = None, sets: list[str] | None = None) -> Study:
    """Read a study config; ``data`` (``--data DIR``) sets ``data.root`` and ``sets``
    (``section.key=value``) override base keys."""
    p = Path(path)
    values = _read_toml(p, "study config")
    return study_from_dict(values, where=p.parent, data=data, sets=sets, source=str(p))


def _number_list(key: str, value: Any) -> list[float]:
    if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
        raise _fail(key, "a non-empty list of numbers", value)
    return [float(v) for v in value]


def _l1_list(key: str, value: Any) -> list[tuple[float, float]]:
    """``l1`` entries: a number (both groups) or ``{linear = x, factor = y}``."""
    rule = "a non-empty list of numbers >= 0 or tables {linear = x, factor = y}"
    if not isinstance(value, list) or not value:
        raise _fail(key, rule, value)
    out = []
    for v in value:
        if _is_number(v):
            pair = (float(v), float(v))
        elif (
            isinstance(v, dict)
            and set(v) == {"linear", "factor"}
            and all(_is_number(x) for x in v.values())
        ):
            pair = (float(v["linear"]), float(v["factor"]))
        else:
            raise _fail(key, rule, value)
        if min(pair) < 0:
            raise _fail(key, rule, value)
        out.append(pair)
    return out


def _rank_sets(key: str, kind: str, value: Any) -> list[tuple[int, ...]]:
    """``ranks``: one rank set ``[1, 2, 4, 8]`` or several ``[[8], [32]]``; absent: the
    kind's default (one model)."""
    rule = "a list of ints (one rank set) or a list of lists of ints (one model each)"
    if value is None:
        return [()]
    if not isinstance(value, list):
        raise _fail(key, rule, value)
    if kind == "lr" and value in ([], [[]]):
        return [()]
    if value and all(isinstance(v, list) for v in value):
        sets = value
    else:
        sets = [value]
    out = []
    for s in sets:
        if not s or not all(isinstance(r, int) and not isinstance(r, bool) for r in s):
            raise _fail(key, rule, value)
        out.append(tuple(s))
    return out


def _check_keys(key: str, table: Any, known: tuple[str, ...]) -> None:
    if not isinstance(table, dict):
        raise _fail(key, "a table", table)
    unknown = sorted(set(table) - set(known))
    if unknown:
        where = f"{key}." if key else ""
        raise ConfigError(
            f"Unknown study config key '{where}{unknown[0]}'. Known keys"
            f"{' of ' + key if key else ''}: {', '.join(known)}."
        )


def _base_values(
    base: Any, where: Path | None, data: str | None, sets: list[str] | None
) -> dict[str, Any]:
    if isinstance(base, str):
        path = Path(base)
        if not path.is_absolute() and where is not None:
            path = where / path
        values = _read_toml(path, "base run config")
    elif isinstance(base, dict):
        values = json.loads(json.dumps(base))
    elif base is None:
        values = {}
    else:
        raise _fail("base", "a path to a run config (string) or a table of config keys", base)
    if data:
        values = apply_overrides(values, [f"data.root={json.dumps(str(data))}"])
    values = apply_overrides(values, list(sets or []))
    # the study sets these on every run: run directories under STUDY_DIR/runs/, and the
    # seeds of grid.seeds (default: the base's train.seed)
    if isinstance(values.get("train"), dict):
        for key in ("run_dir", "overwrite"):
            values["train"].pop(key, None)
    cfg = config_from_dict(values)  # the base must be a valid run config by itself
    if not cfg.data.root:
        raise ConfigError("The study has no data: give --data DIR or data.root in the base config.")
    return values


def study_from_dict(
    values: dict[str, Any],
    *,
    where: Path | None = None,
    data: str | None = None,
    sets: list[str] | None = None,
    source: str = "",
) -> Study:
    """Build and check a :class:`Study` from the TOML tables (see the module doc)."""
    _check_keys("", values, _TOP_KEYS)
    protocol = values.get("protocol", "grid")
    if protocol not in PROTOCOLS:
        raise _fail("protocol", "one of " + ", ".join(repr(p) for p in PROTOCOLS), protocol)
    name = values.get("name", "")
    if not isinstance(name, str):
        raise _fail("name", "a string", name)
    measure = values.get("measure_test_seconds", True)
    if not isinstance(measure, bool):
        raise _fail("measure_test_seconds", "true or false", measure)
    concurrency = values.get("concurrency", 1)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise _fail("concurrency", "an int >= 1 (runs at once on Ray)", concurrency)
    base = _base_values(values.get("base"), where, data, sets)

    grid = values.get("grid", {})
    _check_keys("grid", grid, _GRID_KEYS)
    seeds = grid.get("seeds", [config_from_dict(base).train.seed])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise _fail("grid.seeds", "a non-empty list of distinct ints >= 0", seeds)
    grid_c = (
        _number_list("grid.count_per_dim", grid["count_per_dim"])
        if "count_per_dim" in grid
        else None
    )
    grid_l1 = _l1_list("grid.l1", grid["l1"]) if "l1" in grid else None

    models = values.get("models")
    if not isinstance(models, list) or not models:
        raise _fail("models", "a non-empty array of tables ([[models]] with a kind)", models)
    points: list[GridPoint] = []
    for i, m in enumerate(models):
        key = f"models[{i}]"
        _check_keys(key, m, _MODEL_KEYS)
        kind = m.get("kind")
        if kind not in MODEL_KINDS:
            raise _fail(f"{key}.kind", "one of " + ", ".join(map(repr, MODEL_KINDS)), kind)
        extra = m.get("set", {})
        if not isinstance(extra, dict):
            raise _fail(f"{key}.set", "a table of config keys", extra)
        extra = _nest(extra)
        c_list = (
            _number_list(f"{key}.count_per_dim", m["count_per_dim"])
            if "count_per_dim" in m
            else grid_c
        )
        l1_list = _l1_list(f"{key}.l1", m["l1"]) if "l1" in m else grid_l1
        label_base = m.get("label")
        rank_sets = _rank_sets(f"{key}.ranks", kind, m.get("ranks"))
        if label_base is not None and (
            not isinstance(label_base, str) or not _LABEL.fullmatch(label_base)
        ):
            raise _fail(
                f"{key}.label", "letters, digits, '.', '_', '+', '-' (a folder name)", label_base
            )
        if label_base is not None and len(rank_sets) > 1:
            raise _fail(f"{key}.label", "absent when ranks lists several rank sets", label_base)
        for ranks in rank_sets:
            points += _expand(
                kind, ranks, label_base, c_list, l1_list, [int(s) for s in seeds], extra, base
            )

    names = [p.name for p in points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            f"Two grid points of the study are both named '{dup[0]}': give the [[models]] "
            "entries distinct labels (models[i].label) or distinct ranks."
        )
    if protocol == "table4":
        _check_table4(base, seeds)
        base = _table4_base(base)
    return Study(
        name=name or (Path(source).stem if source else "study"),
        protocol=protocol,
        base=base,
        points=tuple(points),
        measure_test_seconds=measure,
        source=source,
        concurrency=concurrency,
    )


def _expand(
    kind: str,
    ranks: tuple[int, ...],
    label_base: str | None,
    c_list: list[float] | None,
    l1_list: list[tuple[float, float]] | None,
    seeds: list[int],
    extra: dict[str, Any],
    base: dict[str, Any],
) -> list[GridPoint]:
    """One model entry's grid points: count_per_dim (leveled models only) x l1 x seeds."""
    base_ranks = ranks or _default_ranks(kind)
    leveled = len(base_ranks) >= 2
    model_tag = label_base or (kind + "".join(f"-{r}" for r in ranks) if kind != "lr" else kind)
    # effective values of the base, for the rows of models the grid does not vary
    defaults = to_dict(config_from_dict(apply_overrides(base, [])))
    base_l1 = (defaults["ftrl"]["linear"]["l1"], defaults["ftrl"]["factor"]["l1"])
    base_c = float(defaults["levels"]["count_per_dim"])
    out = []
    cs: list[float | None] = list(c_list) if (c_list and leveled) else [None]
    l1s: list[tuple[float, float] | None] = list(l1_list) if l1_list else [None]
    if kind == "lr" and l1_list:  # LR has no factors: one run per linear l1
        l1s = list(dict.fromkeys((lin, lin) for lin, _ in l1_list))
    for c in cs:
        for l1 in l1s:
            tag, title = model_tag, display_name(kind, base_ranks)
            over: dict[str, Any] = {"model": {"kind": kind, "ranks": list(ranks)}}
            _merge(over, extra)
            if c is not None:
                tag += f"_c{_fmt(c)}"
                title += f", c = {_fmt(c)}"
                over.setdefault("levels", {})["count_per_dim"] = c
            if l1 is not None:
                lin, fac = l1
                tag += (
                    f"_l1-{_fmt(lin)}"
                    if (lin == fac or kind == "lr")
                    else (f"_l1-{_fmt(lin)}+{_fmt(fac)}")
                )
                title += f", l1 = {_fmt(lin)}" + (
                    "" if (lin == fac or kind == "lr") else f"/{_fmt(fac)}"
                )
                ftrl = over.setdefault("ftrl", {})
                ftrl.setdefault("linear", {})["l1"] = lin
                if kind != "lr":
                    ftrl.setdefault("factor", {})["l1"] = fac
            for seed in seeds:
                out.append(
                    GridPoint(
                        name=f"{tag}_s{seed}",
                        label=tag,
                        kind=kind,
                        ranks=tuple(base_ranks),
                        count_per_dim=(c if c is not None else (base_c if leveled else None)),
                        l1_linear=l1[0] if l1 is not None else base_l1[0],
                        l1_factor=(
                            None if kind == "lr" else (l1[1] if l1 is not None else base_l1[1])
                        ),
                        seed=seed,
                        title=title,
                        overrides=over,
                    )
                )
    return out


def _default_ranks(kind: str) -> tuple[int, ...]:
    from psfm.config import ModelConfig

    return ModelConfig(kind=kind).ranks


def _check_table4(base: dict[str, Any], seeds: list[int]) -> None:
    """The RaFM paper's Table 4 protocol: epochs with early stopping on validation days,
    several seeds."""
    if len(seeds) < 3:
        raise _fail("grid.seeds", "at least 3 seeds with protocol = 'table4'", seeds)
    cfg = config_from_dict(apply_overrides(base, []))
    if not cfg.data.valid_days.strip():
        raise ConfigError(
            "The 'data.valid_days' key of the base config must name validation days with "
            "protocol = 'table4' (early stopping on validation logloss). Got '' instead."
        )
    if cfg.train.passes < 2:
        raise ConfigError(
            "The 'train.passes' key of the base config must be >= 2 with protocol = 'table4' "
            f"(epochs with early stopping). Got {cfg.train.passes} instead."
        )


def _table4_base(base: dict[str, Any]) -> dict[str, Any]:
    """Early stopping on validation logloss unless the base chose a metric."""
    if base.get("train", {}).get("early_stop"):
        return base
    return apply_overrides(base, ['train.early_stop="logloss"'])

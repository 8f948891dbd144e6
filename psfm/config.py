"""One typed, frozen, validated configuration tree.

Experiments are TOML files (``jobs/configs/*.toml``) with one table per section::

    [model]
    kind = "rafm"
    ranks = [1, 2, 4, 8]

    [ftrl.factor]
    alpha = 0.05

Command lines override single values with ``--set section.key=value`` (the value is read as a
TOML literal, so ``--set model.ranks=[1,2,4]`` and ``--set data.weight="w"`` both work; a bare
word is taken as a string). Every section validates itself on construction and names the
parameter, the rule and the value it got. The resolved tree (``to_dict``) is printed at start and
written into the run directory and every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psfm.errors import ConfigError
from psfm.models.loss import LOSSES
from psfm.optim.ftrl import FtrlParams

__all__ = [
    "DataConfig",
    "ModelConfig",
    "FtrlConfig",
    "LevelConfig",
    "PsConfig",
    "TrainConfig",
    "RayConfig",
    "Config",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "to_dict",
    "MODEL_KINDS",
]

MODEL_KINDS = ("lr", "fm", "difacto", "rafm")
# more shards than any cluster has CPUs for; 100,000 in-process shards took minutes to build
MAX_SHARDS = 1024
ACCUMULATE_RULES = ("sum_of_squares", "square_of_sum", "count_scaled")
# the losses the metrics (AUC, logloss) support: the classification ones
_LOSS_CHOICES = tuple(name for name, f in LOSSES.items() if f.classification)
_DEFAULT_RANKS = {"lr": (), "fm": (8,), "difacto": (1, 2, 4, 8), "rafm": (1, 2, 4, 8)}


def _fail(section: str, name: str, rule: str, value: Any) -> typing.NoReturn:
    raise ConfigError(f"The '{name}' parameter of {section} must be {rule}. Got {value!r} instead.")


def _check_choice(section: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(section, name, "one of " + ", ".join(repr(c) for c in choices), value)


def _check_positive(section: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value >= 0 if allow_zero else value > 0):
        _fail(section, name, "a number >= 0" if allow_zero else "a number > 0", value)


MAX_BATCH = 1 << 20  # rows per FTRL step: a step's rows are decoded and held at once


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how rows become features.

    ``layout = "columns"``: a label column, categorical columns (int or string; null = missing)
    and numeric columns (null = missing). ``numeric_transform = "log_bucket"`` turns a numeric
    value into a categorical bucket (``floor(log(x)^2)`` for x > 2, else x); ``"raw"`` keeps
    one key per numeric column with the value as the feature value. ``categorical`` and
    ``numeric`` left empty are inferred: floating columns are numeric, integer and string
    columns categorical (the label, weight and ``ignore`` columns excepted).
    ``layout = "hashed"``: a ``keys: list<uint64>`` column and optional ``values: list<float>``.
    ``batch_size``: rows per update. In async mode every worker reads ``batch_size`` rows per
    step; in sync mode with W workers each reads its ``batch_size / W`` slice of one global
    step. ``0`` (the default) picks it from the size of one pass over the training days
    (:mod:`psfm.steps`): enough FTRL steps for small logs, 4096 rows for large ones.
    ``rows_per_unit``: size of the work units handed out. ``valid_days``: a day SPEC scored
    predict-only after each pass over the training days (``train.passes``), for early
    stopping (``train.early_stop``); it must not overlap the train or test days, and when
    ``train_days`` is left empty the default training days leave the validation days out.
    ``cache_mb`` / ``cache_disk_mb``: what each worker's pass cache may hold in memory and on
    local disk (``cache_dir``, default the system's temporary folder), in MiB; a unit read
    again in the run (the statistics pass before pass 1, every pass but the last, validation)
    is replayed from it instead of decoded again (:mod:`psfm.data.cache`). 0 and 0: off.
    ``max_row_keys`` (hashed layout): the most keys a row may have; a longer row is bad input
    (a chunk of rows is decoded as a dense rows x longest-row matrix, so one 10,000-key row
    would take gigabytes).
    """

    root: str = ""
    layout: str = "columns"
    label: str = "label"
    weight: str = ""
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ("p_true",)
    numeric_transform: str = "log_bucket"
    train_days: str = ""
    test_days: str = ""
    valid_days: str = ""
    batch_size: int = 0
    bad_rows: str = "fail"
    rows_per_unit: int = 1 << 18
    cache_mb: int = 1024
    cache_disk_mb: int = 8192
    cache_dir: str = ""
    max_row_keys: int = 1000

    def __post_init__(self) -> None:
        _check_choice("DataConfig", "layout", self.layout, ("columns", "hashed"))
        _check_choice(
            "DataConfig", "numeric_transform", self.numeric_transform, ("log_bucket", "raw")
        )
        _check_choice("DataConfig", "bad_rows", self.bad_rows, ("fail", "skip"))
        if not isinstance(self.batch_size, int) or not 0 <= self.batch_size <= MAX_BATCH:
            _fail(
                "DataConfig",
                "batch_size",
                f"an int in [0, {MAX_BATCH}] (0 = auto; a step decodes its rows at once)",
                self.batch_size,
            )
        if not isinstance(self.rows_per_unit, int) or self.rows_per_unit < 1:
            _fail("DataConfig", "rows_per_unit", "an int >= 1", self.rows_per_unit)
        if not isinstance(self.max_row_keys, int) or self.max_row_keys < 1:
            _fail("DataConfig", "max_row_keys", "an int >= 1", self.max_row_keys)
        for name in ("cache_mb", "cache_disk_mb"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                _fail("DataConfig", name, "an int >= 0 (MiB; 0 = none)", v)
        overlap = set(self.categorical) & set(self.numeric)
        if overlap:
            _fail("DataConfig", "categorical", "disjoint from 'numeric'", sorted(overlap))


@dataclass(frozen=True)
class ModelConfig:
    """The model family of DESIGN §2: ``lr`` (m = 0), ``fm`` (m = 1), ``difacto`` (tied
    prefixes of one vector per feature) and ``rafm`` (rank-aware, m >= 2 levels).

    ``ranks`` empty means the kind's default: lr none, fm ``[8]``, difacto and rafm
    ``[1, 2, 4, 8]``. ``dependent_lr_coef[p-1]`` is c_p, the weight of the distillation term of
    level p (RaFM Algorithm 1); empty means 1.0 for every level. ``loss`` must be
    ``"logistic"``: the model family also has squared loss, but the metrics (AUC, logloss) need
    0/1 labels and probabilities, so regression is refused here until they support it.
    """

    kind: str = "rafm"
    ranks: tuple[int, ...] = ()
    loss: str = "logistic"
    init_std: float = 0.05
    dependent_lr_coef: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_choice("ModelConfig", "kind", self.kind, MODEL_KINDS)
        if self.loss in LOSSES and self.loss not in _LOSS_CHOICES:
            # the model has it; the metrics need 0/1 labels, p in [0, 1]
            _fail(
                "ModelConfig",
                "loss",
                f"{', '.join(map(repr, _LOSS_CHOICES))} (regression with {self.loss} loss is "
                "not supported yet)",
                self.loss,
            )
        _check_choice("ModelConfig", "loss", self.loss, _LOSS_CHOICES)
        _check_positive("ModelConfig", "init_std", self.init_std, allow_zero=True)
        ranks = tuple(self.ranks) or _DEFAULT_RANKS[self.kind]
        if any(not isinstance(r, int) or r < 1 for r in ranks) or list(ranks) != sorted(set(ranks)):
            _fail("ModelConfig", "ranks", "strictly increasing positive ints", list(ranks))
        rule = {"lr": (0, 0), "fm": (1, 1), "difacto": (1, 64), "rafm": (1, 64)}[self.kind]
        if not rule[0] <= len(ranks) <= rule[1]:
            _fail(
                "ModelConfig",
                "ranks",
                f"a list of {rule[0]}..{rule[1]} ranks for kind {self.kind!r}",
                list(ranks),
            )
        object.__setattr__(self, "ranks", ranks)
        coef = tuple(float(c) for c in self.dependent_lr_coef) or (1.0,) * max(len(ranks) - 1, 0)
        if len(coef) != max(len(ranks) - 1, 0) or any(c < 0 for c in coef):
            _fail(
                "ModelConfig",
                "dependent_lr_coef",
                f"{max(len(ranks) - 1, 0)} non-negative floats (one per level below the top)",
                list(self.dependent_lr_coef),
            )
        object.__setattr__(self, "dependent_lr_coef", coef)

    @property
    def levels(self) -> int:
        """m, the number of factor levels."""
        return len(self.ranks)

    @property
    def tied(self) -> bool:
        """DiFacto-style: lower-rank factors are prefixes of one stored vector."""
        return self.kind == "difacto"


@dataclass(frozen=True)
class FtrlConfig:
    """FTRL-Proximal hyperparameters, separately for the linear part and for factors, and
    how a minibatch grows the per-coordinate ``n`` (``accumulate``, :mod:`psfm.optim.ftrl`):
    ``sum_of_squares`` (per-sample FTRL with weights frozen within the batch),
    ``square_of_sum`` (a batch is one step) or ``count_scaled``.

    Defaults were chosen by a holdout search on generated data (see README, "Defaults"); a
    group's ``alpha = 0`` (the default) takes the rate measured best for the run's batch size
    (:func:`psfm.steps.auto_alpha`).
    """

    # alpha 0 = auto: chosen from the batch size (psfm.steps.auto_alpha)
    linear: FtrlParams = field(default_factory=lambda: FtrlParams(0.0, 1.0, 1.0, 1.0))
    factor: FtrlParams = field(default_factory=lambda: FtrlParams(0.0, 1.0, 0.1, 1.0))
    accumulate: str = "square_of_sum"

    def __post_init__(self) -> None:
        _check_choice("FtrlConfig", "accumulate", self.accumulate, ACCUMULATE_RULES)


@dataclass(frozen=True)
class LevelConfig:
    """How a feature's level k_i is chosen (DESIGN §4).

    ``static``: a statistics pass over the training days counts n_i; then
    ``k_i = argmin_k |log n_i - log(count_per_dim * D_k)|`` (RaFM Eq. 17), or, when
    ``level_min_count = [t_1..t_m]`` is given, ``k_i = #{k : n_i >= t_k}``.
    ``online``: counts grow as data arrives and a feature is promoted when it crosses the next
    threshold (the given ``level_min_count`` or the Eq. 17 boundaries); counts are multiplied by
    ``daily_decay`` at each day end. ``admit_min_count``: a key gets storage only once seen this
    often. ``ttl_days``: keys unseen for this many days are evicted at day end (0 = never).

    ``count_per_dim = 16`` (the paper's form has c = 1): a key reaches rank D once seen about
    16 D times. Chosen by test AUC against FM(8) on shared initial draws over six generated
    logs of 20k-1M rows, three seeds (README, "How the defaults were chosen"), where it is at
    or above FM(8) on all six and above c = 1 on all six, and by the level study
    (``tools/rafm_levels.py``) on the benchmark log.
    """

    policy: str = "static"
    count_per_dim: float = 16.0
    level_min_count: tuple[float, ...] = ()
    daily_decay: float = 1.0
    admit_min_count: int = 1
    ttl_days: int = 0

    def __post_init__(self) -> None:
        _check_choice("LevelConfig", "policy", self.policy, ("static", "online"))
        _check_positive("LevelConfig", "count_per_dim", self.count_per_dim)
        t = tuple(float(x) for x in self.level_min_count)
        if any(b < a for a, b in zip(t, t[1:])) or any(x < 0 for x in t):
            _fail("LevelConfig", "level_min_count", "non-decreasing counts >= 0", list(t))
        object.__setattr__(self, "level_min_count", t)
        if not 0 < self.daily_decay <= 1:
            _fail("LevelConfig", "daily_decay", "a float in (0, 1]", self.daily_decay)
        if not isinstance(self.admit_min_count, int) or self.admit_min_count < 1:
            _fail("LevelConfig", "admit_min_count", "an int >= 1", self.admit_min_count)
        if not isinstance(self.ttl_days, int) or self.ttl_days < 0:
            _fail("LevelConfig", "ttl_days", "an int >= 0", self.ttl_days)


@dataclass(frozen=True)
class PsConfig:
    """Parameter servers: shard count (fixed per run) and consistency.

    ``mode = "async"``: workers pull and push freely with at most ``max_in_flight`` pushes
    outstanding each; ``"sync"``: barrier steps, reproducible. ``pipeline`` (async only):
    ``"overlap"`` reads batch t+1 while pull t is in flight and pulls t+1 after pushing t;
    ``"prefetch"`` pulls t+1 before computing t (staler by one batch); ``"none"``.
    ``warmup_units`` (async, several workers): on the first training day of a fresh run, one
    worker trains this many work units alone, in order, before the others join (a day of
    fewer units than workers is cut into row groups first: its warm-up is a row group and the
    workers share the rest). FTRL's first steps from
    an empty model are large, and several workers taking them on stale weights made the test
    AUC depend on timing (0.759-0.779 over runs on the benchmark's log; with one warm-up unit
    the same to 1e-4). ``transport``: ``"auto"`` passes a worker's messages to a shard on
    its node through a shared-memory file (the actor call carries only where they are: a
    quarter less CPU per 4096-row FM(8) push + pull, half less on the worker), and through
    Ray to other nodes; ``"ray"`` always through Ray. ``local_steps`` (async): how many
    batches' FTRL steps a worker takes on its own copy of their keys' state between a pull
    and a push (:mod:`psfm.ps.local`); 0 = auto, as many as fill a message of 4,096 rows;
    1 = a pull and a push per batch. Sync mode always steps per batch."""

    shards: int = 2
    mode: str = "async"
    max_in_flight: int = 2
    pipeline: str = "overlap"
    warmup_units: int = 1
    transport: str = "auto"
    local_steps: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.shards, int) or self.shards < 1:
            _fail("PsConfig", "shards", "an int >= 1", self.shards)
        if self.shards > MAX_SHARDS:
            _fail("PsConfig", "shards", f"an int in 1..{MAX_SHARDS}", self.shards)
        if not isinstance(self.warmup_units, int) or self.warmup_units < 0:
            _fail("PsConfig", "warmup_units", "an int >= 0", self.warmup_units)
        if not isinstance(self.local_steps, int) or self.local_steps < 0:
            _fail("PsConfig", "local_steps", "an int >= 0 (0 = auto)", self.local_steps)
        _check_choice("PsConfig", "mode", self.mode, ("sync", "async"))
        if not isinstance(self.max_in_flight, int) or self.max_in_flight < 1:
            _fail("PsConfig", "max_in_flight", "an int >= 1", self.max_in_flight)
        _check_choice("PsConfig", "pipeline", self.pipeline, ("none", "overlap", "prefetch"))
        _check_choice("PsConfig", "transport", self.transport, ("auto", "ray"))


@dataclass(frozen=True)
class TrainConfig:
    """Workers, device, seed and where the run writes. ``eval_next_day``: after each
    training day, score the next day (predict-only) and record its AUC and logloss.

    ``passes``: epochs over the training days. Pass 1 trains the days in order and each
    day's units in file order; later passes go over the days in order again with each day's
    units shuffled by a generator seeded from (``seed``, pass, day) — the same on every
    backend (:mod:`psfm.passes`). ``early_stop`` (``""`` = off, ``"logloss"`` or ``"auc"``,
    needs ``data.valid_days``): stop once the validation metric has not improved on its best
    for ``patience`` consecutive passes; the best pass's state is then the one tested and
    exported.

    ``run_dir`` (``""`` = none): where config, metrics, checkpoints and report go. A new run
    refuses a run directory that already holds a run unless ``overwrite`` (``--overwrite``),
    which deletes its checkpoints first. ``keep_checkpoints``: how many of the newest
    checkpoints are kept (0 = all); the best pass's checkpoint under early stopping is always
    kept too. ``checkpoint_every_rows`` (0 = at day ends only): also checkpoint within a day
    after every group of work units of at least this many rows (the workers finish their
    units first), so a crash, a lost actor or an interrupted run loses at most that much
    training instead of the day; a resumed day continues after the units done.

    ``init_from`` (``""`` = none): a warm start, the daily incremental loop (alphaFM ``-im``,
    VW ``-i``). A new run whose run directory has no checkpoint of its own starts from
    another run's state instead of empty shards: ``RUN_DIR``, that run's model checkpoint
    (the full FTRL state; re-split by key when ``ps.shards`` differs), or ``MODEL.parquet``
    from ``psfm export`` (weights only: ``n = 0`` and ``z`` such that the first pull returns
    the exported weights under this run's FTRL parameters). The model kind, ranks and loss,
    ``levels.policy`` and the feature schema (layout, feature columns, value kinds) must be
    the source's; anything else (FTRL rates, shard count, days) may change. Static levels
    count this run's training days in the statistics pass: a known key keeps its level or
    rises to the level of its new count, new keys are admitted and levelled by the new
    counts; online levels continue from the stored counts. A resumed run (``--resume``) or a
    replayed day restores this run's own checkpoints and never reads ``init_from`` again."""

    workers: int = 1
    device: str = "cpu"
    seed: int = 0
    run_dir: str = ""
    torch_threads: int = 1
    log_every_s: float = 10.0
    eval_next_day: bool = False
    passes: int = 1
    early_stop: str = ""
    patience: int = 1
    overwrite: bool = False
    keep_checkpoints: int = 3
    checkpoint_every_rows: int = 0
    init_from: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            _fail("TrainConfig", "workers", "an int >= 1", self.workers)
        if not isinstance(self.init_from, str):
            _fail("TrainConfig", "init_from", "a path (str)", self.init_from)
        for name in ("passes", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                _fail("TrainConfig", name, "an int >= 1", value)
        _check_choice("TrainConfig", "early_stop", self.early_stop, ("", "logloss", "auc"))
        _check_choice("TrainConfig", "device", self.device, ("cpu", "cuda", "auto"))
        if not isinstance(self.torch_threads, int) or self.torch_threads < 0:
            _fail(
                "TrainConfig",
                "torch_threads",
                "an int >= 0 (0 = torch default)",
                self.torch_threads,
            )
        _check_positive("TrainConfig", "log_every_s", self.log_every_s)
        k = self.keep_checkpoints
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            _fail("TrainConfig", "keep_checkpoints", "an int >= 0 (0 = keep all)", k)
        k = self.checkpoint_every_rows
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            _fail("TrainConfig", "checkpoint_every_rows", "an int >= 0 (0 = day ends only)", k)


@dataclass(frozen=True)
class RayConfig:
    """Actor sizing on a Ray cluster (logical CPUs per shard and per worker). ``metrics``: the
    local Ray psfm starts exports Prometheus metrics (psfm's, tagged ``run``, with Ray's own;
    :mod:`psfm.ray_backend.metrics`), with the node kept on 127.0.0.1; off by default, since
    Ray's exporter serves them without authentication. ``dashboard`` (``--dashboard``): it
    also serves the Ray dashboard on 127.0.0.1 (metrics on). A cluster keeps its own
    settings."""

    shard_cpus: float = 1.0
    worker_cpus: float = 1.0
    metrics: bool = False
    dashboard: bool = False

    def __post_init__(self) -> None:
        _check_positive("RayConfig", "shard_cpus", self.shard_cpus, allow_zero=True)
        _check_positive("RayConfig", "worker_cpus", self.worker_cpus, allow_zero=True)


@dataclass(frozen=True)
class Config:
    """The whole run: ``data``, ``model``, ``ftrl``, ``levels``, ``ps``, ``train``, ``ray``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ftrl: FtrlConfig = field(default_factory=FtrlConfig)
    levels: LevelConfig = field(default_factory=LevelConfig)
    ps: PsConfig = field(default_factory=PsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.train.early_stop and not self.data.valid_days.strip():
            _fail(
                "TrainConfig",
                "early_stop",
                "'' (off) while data.valid_days is empty: early stopping compares the "
                "validation days' metric between passes",
                self.train.early_stop,
            )
        t = self.levels.level_min_count
        if t and len(t) != self.model.levels:
            _fail(
                "LevelConfig",
                "level_min_count",
                f"one threshold per level ({self.model.levels} for ranks {list(self.model.ranks)})",
                list(t),
            )


# ----------------------------------------------------------------------------- dict <-> tree


def _default_value(f: dataclasses.Field) -> Any:
    """A field's default value (calling its ``default_factory``), or MISSING."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _coerce(tp: Any, value: Any, where: str, default: Any = dataclasses.MISSING) -> Any:
    """Check and convert a TOML/JSON value to the annotated field type. A table for a
    dataclass field is merged over ``default``, the field's default value."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"The '{where}' section must be a table. Got {value!r} instead.")
        return _build(tp, value, where, default)
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"The '{where}' parameter must be a list. Got {value!r} instead.")
        return tuple(_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    ):
        raise ConfigError(
            f"The '{where}' parameter must be of type {tp.__name__}. Got {value!r} instead."
        )
    return value


def _carried(cls: type, default: Any) -> dict[str, Any]:
    """The constructor arguments that make ``cls`` differ from its own defaults in
    ``default`` (a ``cls`` value): the fields where the two differ. Only those are carried
    over to a partial table, so a field a class derives in ``__post_init__`` (``ranks`` from
    ``kind`` in :class:`ModelConfig`) is derived again from the table's values."""
    if not isinstance(default, cls):
        return {}
    fields = [f for f in dataclasses.fields(cls) if f.init]
    try:
        own = cls()
    except (TypeError, ConfigError):  # no complete set of defaults: carry every field
        return {f.name: getattr(default, f.name) for f in fields}
    return {
        f.name: getattr(default, f.name)
        for f in fields
        if getattr(default, f.name) != getattr(own, f.name)
    }


def _build(
    cls: type, values: dict[str, Any], where: str, default: Any = dataclasses.MISSING
) -> Any:
    """``cls`` from a (possibly partial) table, merged over ``default`` (a ``cls`` value, the
    default value of the field the table is for) and at every depth over the default values of
    nested dataclass fields: ``[ftrl.factor] l1 = 0.2`` keeps the other documented factor
    defaults of :class:`FtrlConfig`, not those of :class:`FtrlParams`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"Unknown parameter '{where + '.' if where else ''}{unknown[0]}'. "
            f"Known parameters of {cls.__name__}: {', '.join(fields)}."
        )
    kwargs = _carried(cls, default)
    for k, v in values.items():
        inner = dataclasses.MISSING
        if dataclasses.is_dataclass(hints[k]):
            inner = getattr(default, k) if isinstance(default, cls) else _default_value(fields[k])
        kwargs[k] = _coerce(hints[k], v, f"{where + '.' if where else ''}{k}", inner)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested dicts (TOML tables or JSON)."""
    return _build(Config, values, "")


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved tree as nested dicts of plain values (lists for tuples)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict (returns a new dict)."""
    out = json.loads(json.dumps(values))
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError(
                f"An override must look like 'section.key=value'. Got {item!r} instead."
            )
        keys = path.strip().split(".")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {item!r}: '{k}' is a value, not a section.")
        node[keys[-1]] = _parse_value(text.strip())
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML (or JSON) config file, apply ``--set`` overrides, validate."""
    values: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise ConfigError(f"Cannot read config file '{p}': {e.strerror}.") from e
        try:
            values = json.loads(raw) if p.suffix == ".json" else tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"Config file '{p}' is not valid TOML/JSON: {e}") from e
    return config_from_dict(apply_overrides(values, overrides or []))

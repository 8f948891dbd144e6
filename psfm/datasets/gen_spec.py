"""The synthetic logs' specification: :class:`GenSpec`, the output schema and the argument checks.

What the fields of a :class:`GenSpec` mean for the generated data is told in
:mod:`psfm.datasets.gen`; this module holds the dataclass, its validation (every bad parameter is
a :class:`~psfm.errors.ConfigError` naming the parameter, the rule and the value) and the checks
of the generator's other arguments (seed, day, counts), shared by :mod:`psfm.datasets.gen_model`
and :mod:`psfm.datasets.gen`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from psfm.errors import ConfigError

__all__ = ["GenSpec", "gen_schema", "is_int", "check_seed", "check_day", "check_count", "MAX_DAY"]

MAX_DAY = 1_000_000
_MAX_VOCAB = 100_000_000
_MAX_DIM = 256


def _bad(param: str, rule: str, value: object) -> ConfigError:
    return ConfigError(f"The '{param}' parameter of GenSpec must be {rule}. Got {value!r} instead.")


def is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v: object) -> bool:
    return (
        isinstance(v, (int, float, np.integer, np.floating))
        and not isinstance(v, (bool, np.bool_))
        and math.isfinite(float(v))
    )


def _spread(n: int, lo: float, hi: float) -> tuple[int, ...]:
    """``n`` sizes log-uniformly spaced in [lo, hi], in a fixed scrambled field order."""
    if n == 0:
        return ()
    if n == 1:
        return (int(round(math.sqrt(lo * hi))),)
    sizes = [int(round(lo * (hi / lo) ** (i / (n - 1)))) for i in range(n)]
    order = sorted(range(n), key=lambda i: ((i + 1) * 0x9E3779B1) % (1 << 32))
    return tuple(sizes[i] for i in order)


@dataclass(frozen=True)
class GenSpec:
    """What the synthetic logs look like; the true model is a function of ``(spec, seed)``.

    ``rank_dims[k]`` is a factor dimension (strictly increasing) and ``tier_counts[k]`` how many
    top-popularity values of each field have a dimension ``>= rank_dims[k]`` (non-increasing).
    Values ranked ``>= tier_counts[0]`` have no factors (linear only) and form the tail that
    ``drift`` acts on. ``vocab_sizes=None`` spreads the categorical vocabularies log-uniformly
    between 10 and 10^6 (see :meth:`vocab`). ``interaction``: ``"prefix"`` (a pair interacts
    through the first ``min(dim_f, dim_g)`` coordinates of one vector per value: DiFacto's
    form) or ``"rank_aware"`` (through a separate vector per value and dimension, the one of
    dimension ``min(dim_f, dim_g)``: RaFM's form; :mod:`psfm.datasets.gen`).
    """

    n_numeric: int = 13
    n_categorical: int = 26
    vocab_sizes: tuple[int, ...] | None = None
    zipf_s: float = 1.1
    base_ctr: float = 0.2
    interaction_scale: float = 1.0
    linear_scale: float = 1.0
    missing_rate: float = 0.05
    drift: float = 0.05
    rank_dims: tuple[int, ...] = (1, 2, 4, 8)
    tier_counts: tuple[int, ...] = (1000, 200, 50, 10)
    interaction: str = "prefix"

    def __post_init__(self) -> None:
        for name in ("vocab_sizes", "rank_dims", "tier_counts"):
            v = getattr(self, name)
            if isinstance(v, (list, np.ndarray)):
                object.__setattr__(self, name, tuple(int(x) if is_int(x) else x for x in v))
        for name in ("n_numeric", "n_categorical"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                raise _bad(name, "an int >= 0", v)
        if self.n_numeric + self.n_categorical < 1:
            raise ConfigError(
                "The 'n_categorical' parameter of GenSpec must make n_numeric + n_categorical "
                f">= 1. Got {self.n_categorical!r} instead (n_numeric={self.n_numeric!r})."
            )
        vs = self.vocab_sizes
        if vs is not None and (
            not isinstance(vs, tuple)
            or len(vs) != self.n_categorical
            or not all(is_int(x) and 1 <= x <= _MAX_VOCAB for x in vs)
        ):
            raise _bad(
                "vocab_sizes",
                f"None or a tuple of n_categorical={self.n_categorical} ints in [1, {_MAX_VOCAB}]",
                vs,
            )
        if self.interaction not in ("prefix", "rank_aware"):
            raise _bad("interaction", "'prefix' or 'rank_aware'", self.interaction)
        if not _is_real(self.zipf_s) or not self.zipf_s > 1.0:
            raise _bad("zipf_s", "a float > 1", self.zipf_s)
        if not _is_real(self.base_ctr) or not 0.0 < self.base_ctr < 1.0:
            raise _bad("base_ctr", "a float in (0, 1)", self.base_ctr)
        for name in ("interaction_scale", "linear_scale"):
            v = getattr(self, name)
            if not _is_real(v) or not 0.0 <= v <= 100.0:
                raise _bad(name, "a float in [0, 100]", v)
        if not _is_real(self.missing_rate) or not 0.0 <= self.missing_rate < 1.0:
            raise _bad("missing_rate", "a float in [0, 1)", self.missing_rate)
        if not _is_real(self.drift) or not 0.0 <= self.drift <= 1.0:
            raise _bad("drift", "a float in [0, 1]", self.drift)
        rd = self.rank_dims
        if (
            not isinstance(rd, tuple)
            or not rd
            or not all(is_int(d) and 1 <= d <= _MAX_DIM for d in rd)
            or any(a >= b for a, b in zip(rd, rd[1:], strict=False))
        ):
            raise _bad(
                "rank_dims",
                f"a non-empty, strictly increasing tuple of ints in [1, {_MAX_DIM}]",
                rd,
            )
        tc = self.tier_counts
        if (
            not isinstance(tc, tuple)
            or len(tc) != len(rd)
            or not all(is_int(c) and 0 <= c <= _MAX_VOCAB for c in tc)
            or any(a < b for a, b in zip(tc, tc[1:], strict=False))
        ):
            raise _bad(
                "tier_counts",
                f"a non-increasing tuple of {len(rd)} ints >= 0 (one per rank_dims entry)",
                tc,
            )

    @classmethod
    def small(cls) -> GenSpec:
        """A compact preset for fast tests: 2 numeric + 8 categorical fields, vocab 20..2000,
        strong interactions."""
        return cls(
            n_numeric=2,
            n_categorical=8,
            vocab_sizes=_spread(8, 20, 2000),
            interaction_scale=1.5,
            tier_counts=(200, 60, 20, 5),
        )

    def vocab(self) -> tuple[int, ...]:
        """The categorical vocabulary sizes (resolving ``vocab_sizes=None``)."""
        if self.vocab_sizes is not None:
            return tuple(int(v) for v in self.vocab_sizes)
        return _spread(self.n_categorical, 10, 1_000_000)

    def numeric_columns(self) -> list[str]:
        return [f"I{i + 1}" for i in range(self.n_numeric)]

    def categorical_columns(self) -> list[str]:
        return [f"C{i + 1}" for i in range(self.n_categorical)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"GenSpec has no parameter(s) {', '.join(map(repr, unknown))}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def gen_schema(spec: GenSpec) -> pa.Schema:
    """``label`` int8, ``p_true`` float32, ``I1..`` float32 (nullable), ``C1..`` int64
    (nullable), in that order."""
    fields = [
        pa.field("label", pa.int8(), nullable=False),
        pa.field("p_true", pa.float32(), nullable=False),
    ]
    fields += [pa.field(c, pa.float32()) for c in spec.numeric_columns()]
    fields += [pa.field(c, pa.int64()) for c in spec.categorical_columns()]
    return pa.schema(fields)


def check_seed(seed: object, where: str) -> int:
    if not is_int(seed) or not 0 <= seed < 2**63:
        raise ConfigError(
            f"The 'seed' parameter of {where} must be an int in [0, 2^63). Got {seed!r} instead."
        )
    return int(seed)


def check_day(day: object, where: str) -> int:
    if not is_int(day) or not 1 <= day <= MAX_DAY:
        raise ConfigError(
            f"The 'day' parameter of {where} must be an int in [1, {MAX_DAY}]. Got {day!r} instead."
        )
    return int(day)


def check_count(value: object, name: str, where: str, lo: int) -> int:
    if not is_int(value) or value < lo:
        raise ConfigError(
            f"The '{name}' parameter of {where} must be an int >= {lo}. Got {value!r} instead."
        )
    return int(value)

"""Synthetic multi-day CTR logs with a known true model.

The generator writes Criteo-like, day-partitioned Parquet logs (``label``, ``p_true``, numeric
counts ``I1..`` and categorical ids ``C1..``) whose click probability comes from a known
field-aware model, so tests can compare a trained model with the Bayes-optimal AUC, and so
Rank-Aware FM (frequent values get higher-rank factors) has a real structure to find.

Ground truth
------------
Every field (numeric or categorical) holds at most one value per row; a null cell is a missing
feature and contributes nothing. A numeric count ``x`` enters through its Criteo bucket
``b(x) = floor(log(x)^2)`` for x > 2 else ``x``. Each field keeps its parameters in tables
indexed by the popularity *rank* ``r`` of a value (0 = most frequent; numeric buckets are ranked
by their exact probability)::

    logit = bias + sum_f w_f[r_f] + sum_{f<g} <v_f[r_f][:d], v_g[r_g][:d]>,
            d = min(dim_f(r_f), dim_g(r_g))
    p_true = sigmoid(logit),   label ~ Bernoulli(p_true)

``dim(r)`` is the factor dimension of the popularity tier of rank ``r``: with
``rank_dims = (1, 2, 4, 8)`` and ``tier_counts = (1000, 200, 50, 10)`` the top 10 values of a
field have 8 dims, ranks 10..49 have 4, 50..199 have 2, 200..999 have 1 and the rest 0 (linear
only). Vectors are zero beyond their dim, so the prefix ("DiFacto-style") interaction is the
plain dot product of the zero-padded vectors and the pairwise term is computed in O(n * D) with
``0.5 * (||sum_f v_f||^2 - sum_f ||v_f||^2)``.

Construction (all of it a function of ``(spec, seed)`` only; every day shares one true model):

* ``w_f[r] = g_f * N(0, 1)`` with a per-field importance ``g_f = exp(N(0, 0.5^2))``;
  ``v_f[r][k] = h_f * N(0, 1)`` for ``k < dim(r)`` with ``h_f = exp(N(0, 0.3^2))``.
* Every factor coordinate is centred under the field's value distribution, so
  ``E[v_f] = 0`` and (fields are independent) no function of a single field correlates with
  the pairwise term: the best logistic regression sees only ``bias + sum_f w_f``.
* On a fixed calibration sample (2^17 rows) the linear term is rescaled to standard deviation
  ``0.9 * linear_scale`` and the pairwise term to ``1.1 * interaction_scale``; the bias is then
  solved by bisection so that ``mean(p_true) = base_ctr`` on that sample.

Sampling: a categorical rank is ``floor(X) - 1`` where ``X`` follows a continuous power law with
exponent ``zipf_s`` truncated to ``[1, V + 1)`` (closed-form inverse CDF). A numeric count is
``floor(scale_f * ((1 - U)^(-1 / alpha_f) - 1))`` (a discretized Lomax law), capped at 2^20 - 1.
A categorical id is its rank, except that a ``drift`` fraction of the tail ranks (``r >=
tier_counts[0]``, the values without factors), chosen by a hash of ``(field, rank, day)``, get the
day-specific id ``r + V * day``: each day brings never-seen ids whose meaning (parameters) is
that of their rank. Rows are produced in blocks of 65,536; block ``k`` of day ``d`` draws from
an RNG seeded by ``(seed, d, k)``, so one day generated alone equals that day of a multi-day run.

Example::

    >>> paths = generate("/tmp/logs", days=2, rows_per_day=10_000, spec=GenSpec.small())
    >>> paths
    ['/tmp/logs/day=1/part-00000.parquet', '/tmp/logs/day=2/part-00000.parquet']
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from psfm.errors import ConfigError

__all__ = [
    "GenSpec",
    "FieldParams",
    "TrueModel",
    "true_model",
    "gen_schema",
    "criteo_bucket",
    "rank_auc",
    "generate_day",
    "logit_terms",
    "generate",
    "BLOCK_ROWS",
    "GEN_JSON",
]

log = logging.getLogger(__name__)

BLOCK_ROWS = 1 << 16
"""Rows per RNG block; part of the output definition (changing it changes the data)."""
GEN_JSON = "_gen.json"
_X_MAX = (1 << 20) - 1  # numeric counts are capped here (exact in float32)
_CALIB_ROWS = 1 << 17
_LINEAR_STD = 0.9
_PAIR_STD = 1.1
_MAX_VOCAB = 100_000_000
_MAX_DIM = 256
_MAX_DAY = 1_000_000
_CODECS = ("none", "snappy", "zstd", "lz4", "gzip", "brotli")
_TAG_MODEL, _TAG_CALIB, _TAG_ROWS = 0x6D6F64, 0x63616C, 0x726F77

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1, _M2 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = _U64(30), _U64(27), _U64(31), _U64(32)


# ----------------------------------------------------------------------------------------------
# spec
# ----------------------------------------------------------------------------------------------


def _bad(param: str, rule: str, value: object) -> ConfigError:
    return ConfigError(f"The '{param}' parameter of GenSpec must be {rule}. Got {value!r} instead.")


def _is_int(v: object) -> bool:
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
    between 10 and 10^6 (see :meth:`vocab`).
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

    def __post_init__(self) -> None:
        for name in ("vocab_sizes", "rank_dims", "tier_counts"):
            v = getattr(self, name)
            if isinstance(v, (list, np.ndarray)):
                object.__setattr__(self, name, tuple(int(x) if _is_int(x) else x for x in v))
        for name in ("n_numeric", "n_categorical"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
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
            or not all(_is_int(x) and 1 <= x <= _MAX_VOCAB for x in vs)
        ):
            raise _bad(
                "vocab_sizes",
                f"None or a tuple of n_categorical={self.n_categorical} ints in [1, {_MAX_VOCAB}]",
                vs,
            )
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
            or not all(_is_int(d) and 1 <= d <= _MAX_DIM for d in rd)
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
            or not all(_is_int(c) and 0 <= c <= _MAX_VOCAB for c in tc)
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


# ----------------------------------------------------------------------------------------------
# true model
# ----------------------------------------------------------------------------------------------


def criteo_bucket(x: np.ndarray) -> np.ndarray:
    """The Criteo-winner transform of non-negative counts: ``floor(log(x)^2)`` if x > 2 else
    ``floor(x)`` (int64)."""
    x = np.asarray(x, dtype=np.float64)
    big = x > 2
    return np.floor(np.where(big, np.square(np.log(np.where(big, x, 3.0))), x)).astype(np.int64)


@functools.lru_cache(maxsize=1)
def _bucket_of_x() -> np.ndarray:
    """Bucket of every count 0.._X_MAX (uint8; the largest bucket is 192)."""
    return criteo_bucket(np.arange(_X_MAX + 1, dtype=np.float64)).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class FieldParams:
    """One field of the true model. Tables are indexed by popularity rank, with one extra
    trailing zero entry that missing cells (rank -1) and factorless ranks index.

    ``linear``: (size + 1,) float32. ``factors``: (head + 1, D) float32, zero beyond each rank's
    dim. ``sqnorm``: (head + 1,) squared norms of ``factors``. ``dims``: (head,) int.
    ``probs``: (head,) the exact probability of each rank that has factors. Categorical fields
    sample ``rank = floor((1 - u * zipf_c) ** zipf_a) - 1``; numeric fields sample
    ``x = floor(scale * ((1 - u) ** (-1 / alpha) - 1))`` and ``rank = rank_of_bucket[b(x)]``.
    """

    name: str
    numeric: bool
    index: int
    size: int
    head: int
    linear: np.ndarray
    factors: np.ndarray
    sqnorm: np.ndarray
    dims: np.ndarray
    probs: np.ndarray
    zipf_c: float = 0.0
    zipf_a: float = 0.0
    alpha: float = 1.0
    scale: float = 1.0
    rank_of_bucket: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass(frozen=True, eq=False)
class TrueModel:
    """The true model of ``(spec, seed)``: the bias and one :class:`FieldParams` per field
    (numeric fields first, then categorical, in column order)."""

    spec: GenSpec
    seed: int
    bias: float
    fields: tuple[FieldParams, ...]


def _zipf_probs(vocab: int, s: float, n: int) -> np.ndarray:
    """P(rank = r) for r < n under the truncated continuous power law on [1, vocab + 1)."""
    r = np.arange(1, n + 2, dtype=np.float64)
    cdf = -np.expm1((1.0 - s) * np.log(r)) / -np.expm1((1.0 - s) * math.log(vocab + 1.0))
    return np.diff(cdf)


def _lomax_bucket_probs(alpha: float, scale: float) -> np.ndarray:
    """Exact probability of each Criteo bucket for the capped discretized Lomax count."""
    k = np.arange(_X_MAX + 2, dtype=np.float64)
    surv = np.exp(-alpha * np.log1p(k / scale))  # P(X >= k) = P(Y >= k)
    pmf = surv[:-1] - surv[1:]
    pmf[-1] = surv[-2]  # the cap collects the tail
    buckets = _bucket_of_x()
    return np.bincount(buckets, weights=pmf, minlength=int(buckets.max()) + 1)


def _dims(spec: GenSpec, head: int) -> np.ndarray:
    dims = np.zeros(head, dtype=np.int64)
    for d, c in zip(spec.rank_dims, spec.tier_counts, strict=True):
        dims[: min(c, head)] = d
    return dims


def _build_field(
    spec: GenSpec, rng: np.random.Generator, index: int, name: str, numeric: bool, vocab: int
) -> FieldParams:
    dmax = max(spec.rank_dims)
    extra: dict[str, Any] = {}
    if numeric:
        alpha = float(rng.uniform(0.9, 2.5))
        scale = float(np.exp(rng.uniform(np.log(0.5), np.log(300.0))))
        bprobs = _lomax_bucket_probs(alpha, scale)
        order = np.argsort(-bprobs, kind="stable")  # rank -> bucket
        rank_of_bucket = np.empty(order.size, dtype=np.int64)
        rank_of_bucket[order] = np.arange(order.size)
        probs = bprobs[order]
        size = order.size
        extra = dict(alpha=alpha, scale=scale, rank_of_bucket=rank_of_bucket)
    else:
        size = vocab
        s = float(spec.zipf_s)
        c = -math.expm1((1.0 - s) * math.log(vocab + 1.0))  # 1 - (V + 1)^(1 - s)
        probs = _zipf_probs(vocab, s, min(spec.tier_counts[0], vocab))
        extra = dict(zipf_c=c, zipf_a=1.0 / (1.0 - s))
    head = min(spec.tier_counts[0], size)
    dims = _dims(spec, head)
    g = math.exp(rng.normal(0.0, 0.5))
    h = math.exp(rng.normal(0.0, 0.3))
    linear = np.zeros(size + 1, dtype=np.float64)
    linear[:size] = g * rng.standard_normal(size)
    factors = np.zeros((head + 1, dmax), dtype=np.float64)
    factors[:head] = h * rng.standard_normal((head, dmax))
    factors[:head] *= np.arange(dmax)[None, :] < dims[:, None]
    for k in range(dmax):  # centre coordinate k over the ranks that have it (a rank prefix)
        n_k = int(np.count_nonzero(dims > k))
        if n_k:
            p = probs[:n_k]
            factors[:n_k, k] -= (p @ factors[:n_k, k]) / p.sum()
    return FieldParams(
        name=name,
        numeric=numeric,
        index=index,
        size=size,
        head=head,
        linear=linear.astype(np.float32),
        factors=factors.astype(np.float32),
        sqnorm=np.square(factors).sum(axis=1).astype(np.float32),
        dims=dims,
        probs=probs[:head],
        **extra,
    )


def _scaled(fp: FieldParams, lin: float, fac: float) -> FieldParams:
    factors = fp.factors * np.float32(fac)
    return dataclasses.replace(
        fp,
        linear=fp.linear * np.float32(lin),
        factors=factors,
        sqnorm=np.square(factors.astype(np.float64)).sum(axis=1).astype(np.float32),
    )


def _solve_bias(lin: np.ndarray, pair: np.ndarray, target: float) -> float:
    z = lin.astype(np.float64) + pair
    lo, hi = -40.0, 40.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(z + mid)))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _check_seed(seed: object, where: str) -> int:
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise ConfigError(
            f"The 'seed' parameter of {where} must be an int in [0, 2^63). Got {seed!r} instead."
        )
    return int(seed)


@functools.lru_cache(maxsize=4)
def _model(spec: GenSpec, seed: int) -> TrueModel:
    rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, _TAG_MODEL])))
    vocab = spec.vocab()
    raw: list[FieldParams] = []
    for name in spec.numeric_columns():
        raw.append(_build_field(spec, rng, len(raw), name, True, 0))
    for i, name in enumerate(spec.categorical_columns()):
        raw.append(_build_field(spec, rng, len(raw), name, False, vocab[i]))
    pre = TrueModel(spec, seed, 0.0, tuple(raw))
    crng = np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, _TAG_CALIB])))
    blk = _block(pre, crng, _CALIB_ROWS, day=0, values=False)
    lin_sd, pair_sd = float(np.std(blk.linear)), float(np.std(blk.pair))
    c_lin = _LINEAR_STD * spec.linear_scale / lin_sd if lin_sd > 0 else 0.0
    c_pair = _PAIR_STD * spec.interaction_scale / pair_sd if pair_sd > 0 else 0.0
    fields = tuple(_scaled(fp, c_lin, math.sqrt(c_pair)) for fp in raw)
    bias = _solve_bias(c_lin * blk.linear, c_pair * blk.pair, spec.base_ctr)
    log.debug(
        "true model seed=%d: linear x%.4g, pairwise x%.4g, bias %.4f", seed, c_lin, c_pair, bias
    )
    return TrueModel(spec, seed, bias, fields)


def true_model(spec: GenSpec | None = None, seed: int = 0) -> TrueModel:
    """The true model shared by every day generated with ``(spec, seed)`` (cached)."""
    spec = GenSpec() if spec is None else spec
    return _model(spec, _check_seed(seed, "true_model"))


# ----------------------------------------------------------------------------------------------
# rows
# ----------------------------------------------------------------------------------------------


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _salt(*parts: int) -> np.uint64:
    z = np.zeros(1, dtype=np.uint64)
    for p in parts:
        z = _mix(z ^ _U64(p & 0xFFFFFFFFFFFFFFFF)) + _GOLDEN
    return _U64(z[0])


@dataclass
class _Block:
    linear: np.ndarray  # float32, without the bias
    pair: np.ndarray  # float32
    columns: list[pa.Array]  # label, p_true, I.., C.. (empty when values=False)


def _nullable(values: np.ndarray, miss: np.ndarray | None, typ: pa.DataType) -> pa.Array:
    n = values.size
    if miss is None:
        return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(values)], null_count=0)
    bits = np.packbits(~miss, bitorder="little")
    nulls = int(np.count_nonzero(miss))
    return pa.Array.from_buffers(
        typ, n, [pa.py_buffer(bits), pa.py_buffer(values)], null_count=nulls
    )


def _block(model: TrueModel, rng: np.random.Generator, n: int, day: int, values: bool) -> _Block:
    spec = model.spec
    m = float(spec.missing_rate)
    inv = 1.0 / (1.0 - m)
    dmax = max(spec.rank_dims)
    lin = np.zeros(n, dtype=np.float32)
    ssum = np.zeros((n, dmax), dtype=np.float32)
    qsum = np.zeros(n, dtype=np.float32)
    num_cols: list[pa.Array] = []
    cat_cols: list[pa.Array] = []
    bucket_of_x = _bucket_of_x()
    thr = _U64(min(int(spec.drift * 2.0**64), 2**64 - 1))
    for fp in model.fields:
        u = rng.random(n)
        miss = (u < m) if m > 0 else None
        u -= m
        u *= inv  # uniform on [0, 1) given not missing; negative for missing cells
        if fp.numeric:
            np.maximum(u, 0.0, out=u)
            t = np.log(1.0 - u)
            t *= -1.0 / fp.alpha
            np.exp(t, out=t)
            t -= 1.0
            t *= fp.scale
            np.minimum(t, float(_X_MAX), out=t)
            x = t.astype(np.int32)
            rank = np.take(fp.rank_of_bucket, np.take(bucket_of_x, x))
        else:
            t = np.log(1.0 - u * fp.zipf_c)
            t *= fp.zipf_a
            np.exp(t, out=t)
            rank = t.astype(np.int64)
            rank -= 1
            np.minimum(rank, fp.size - 1, out=rank)
        if miss is not None:
            np.putmask(rank, miss, -1)  # -1 -> the trailing zero entry of every table
        lin += np.take(fp.linear, rank)
        if fp.head:
            fidx = np.minimum(rank, fp.head)
            ssum += np.take(fp.factors, fidx, axis=0)
            qsum += np.take(fp.sqnorm, fidx)
        if not values:
            continue
        if fp.numeric:
            num_cols.append(_nullable(x.astype(np.float32), miss, pa.float32()))
        else:
            ids = rank
            if thr and day and fp.head < fp.size:
                h = rank.view(np.uint64) ^ _salt(fp.index, day)
                h *= _M1
                h ^= h >> _S32
                h *= _M2
                moved = h < thr
                moved &= rank >= fp.head
                ids = np.where(moved, rank + fp.size * day, rank)
            cat_cols.append(_nullable(ids, miss, pa.int64()))
    pair = np.einsum("ij,ij->i", ssum, ssum)
    pair -= qsum
    pair *= 0.5
    cols: list[pa.Array] = []
    if values:
        z = lin + np.float32(model.bias)
        z += pair
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        p = np.reciprocal(z, out=z)
        label = (rng.random(n, dtype=np.float32) < p).view(np.int8)
        cols = [_nullable(label, None, pa.int8()), _nullable(p, None, pa.float32())]
        cols += num_cols + cat_cols
    return _Block(lin, pair, cols)


def _check_day(day: object, where: str) -> int:
    if not _is_int(day) or not 1 <= day <= _MAX_DAY:
        raise ConfigError(
            f"The 'day' parameter of {where} must be an int in [1, {_MAX_DAY}]. Got {day!r} "
            "instead."
        )
    return int(day)


def _check_count(value: object, name: str, where: str, lo: int) -> int:
    if not _is_int(value) or value < lo:
        raise ConfigError(
            f"The '{name}' parameter of {where} must be an int >= {lo}. Got {value!r} instead."
        )
    return int(value)


def _blocks(model: TrueModel, day: int, rows: int, values: bool = True) -> Iterator[_Block]:
    for k, start in enumerate(range(0, rows, BLOCK_ROWS)):
        ss = np.random.SeedSequence([model.seed, day, k, _TAG_ROWS])
        rng = np.random.Generator(np.random.SFC64(ss))
        yield _block(model, rng, min(BLOCK_ROWS, rows - start), day, values)


def _block_table(schema: pa.Schema, blk: _Block) -> pa.Table:
    return pa.Table.from_arrays(blk.columns, schema=schema)


def generate_day(spec: GenSpec, day: int, rows: int, seed: int) -> pa.Table:
    """The ``rows`` rows of day ``day`` (>= 1) of the logs of ``(spec, seed)``, in chunks of
    :data:`BLOCK_ROWS` rows (``combine_chunks()`` for one chunk)."""
    day = _check_day(day, "generate_day")
    rows = _check_count(rows, "rows", "generate_day", 0)
    model = _model(spec, _check_seed(seed, "generate_day"))
    schema = gen_schema(spec)
    tables = [_block_table(schema, b) for b in _blocks(model, day, rows)]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def logit_terms(
    spec: GenSpec, day: int, rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(linear, pairwise, bias)`` of the rows of :func:`generate_day` (same rows, same order):
    ``p_true = sigmoid(bias + linear + pairwise)``. ``linear`` is all a logistic regression can
    capture (the pairwise term is uncorrelated with every single field)."""
    day = _check_day(day, "logit_terms")
    rows = _check_count(rows, "rows", "logit_terms", 0)
    model = _model(spec, _check_seed(seed, "logit_terms"))
    blocks = list(_blocks(model, day, rows, values=False))
    if not blocks:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), model.bias
    lin = np.concatenate([b.linear for b in blocks])
    pair = np.concatenate([b.pair for b in blocks])
    return lin, pair, model.bias


def rank_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Exact ROC AUC, tied scores counting one half (nan if one class is absent).

    The Mann-Whitney form of the rank-sum formula: for every positive, the negatives scored
    below it plus half of those tied with it, found by binary search in the sorted negatives.
    """
    s = np.asarray(scores).ravel()
    if s.dtype.kind == "f":
        s = s + s.dtype.type(0)  # -0.0 -> 0.0
    y = np.asarray(labels).ravel() != 0
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    upto = np.searchsorted(neg, pos, side="right")
    wins = 2.0 * float(below.sum(dtype=np.int64)) + float((upto - below).sum(dtype=np.int64))
    return wins / (2.0 * pos.size * neg.size)


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------


class _DayWriter:
    """Splits a stream of tables into files of ``rows_per_file`` rows and row groups of
    ``row_group_rows`` rows."""

    def __init__(
        self,
        day_dir: Path,
        schema: pa.Schema,
        rows_per_file: int,
        row_group_rows: int,
        compression: str,
    ) -> None:
        self.dir, self.schema = day_dir, schema
        self.rows_per_file, self.row_group_rows = rows_per_file, row_group_rows
        self.compression = compression
        self.paths: list[str] = []
        self.writer: pq.ParquetWriter | None = None
        self.in_file = 0
        self.buf: list[pa.Table] = []
        self.buffered = 0

    def _flush(self, final: bool) -> None:
        if not self.buffered:
            return
        t = pa.concat_tables(self.buf)
        n = t.num_rows if final else (t.num_rows // self.row_group_rows) * self.row_group_rows
        if n == 0:
            return
        if self.writer is None:
            path = self.dir / f"part-{len(self.paths):05d}.parquet"
            self.paths.append(str(path))
            self.writer = pq.ParquetWriter(
                path, self.schema, compression=self.compression, use_dictionary=True
            )
        self.writer.write_table(t.slice(0, n), row_group_size=self.row_group_rows)
        rest = t.slice(n)
        self.buf = [rest] if rest.num_rows else []
        self.buffered = rest.num_rows

    def _close_file(self) -> None:
        self._flush(final=True)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.in_file = 0

    def write(self, t: pa.Table) -> None:
        while t.num_rows:
            take = min(t.num_rows, self.rows_per_file - self.in_file)
            self.buf.append(t.slice(0, take))
            self.buffered += take
            self.in_file += take
            t = t.slice(take)
            if self.in_file == self.rows_per_file:
                self._close_file()
            elif self.buffered >= self.row_group_rows:
                self._flush(final=False)

    def close(self) -> list[str]:
        self._close_file()
        return self.paths


def _finite(x: float) -> float | None:
    """JSON has no NaN: an undefined AUC (one class only) is written as null."""
    return x if math.isfinite(x) else None


def generate(
    out_dir: str | os.PathLike[str],
    days: int = 8,
    rows_per_day: int = 100_000,
    seed: int = 0,
    spec: GenSpec | None = None,
    rows_per_file: int = 1_000_000,
    row_group_rows: int = 65_536,
    *,
    compression: str = "none",
) -> list[str]:
    """Write ``out_dir/day=D/part-NNNNN.parquet`` for D = 1..days and ``out_dir/_gen.json``.

    Existing ``part-*.parquet`` files of the written day folders are removed first. Returns the
    written Parquet paths. ``_gen.json`` holds the spec, the seed, the bias and per day: rows,
    files, ``bayes_auc`` (AUC of p_true), ``linear_auc`` (AUC of the linear part of the true
    logit: the best a logistic regression can do) and the mean label and p_true.

    Files are dictionary-encoded (the Zipf-distributed ids shrink to ~80 bytes/row) and, by
    default, not compressed further: ``compression="snappy"`` saves ~13% more disk for ~5-10%
    more time, and reads back ~1.5x slower.
    """
    where = "generate"
    spec = GenSpec() if spec is None else spec
    if compression not in _CODECS:
        raise ConfigError(
            f"The 'compression' parameter of {where} must be one of {', '.join(_CODECS)}. "
            f"Got {compression!r} instead."
        )
    if not isinstance(spec, GenSpec):
        raise ConfigError(
            f"The 'spec' parameter of {where} must be a GenSpec or None. Got {spec!r} instead."
        )
    days = _check_count(days, "days", where, 1)
    rows_per_day = _check_count(rows_per_day, "rows_per_day", where, 1)
    rows_per_file = _check_count(rows_per_file, "rows_per_file", where, 1)
    row_group_rows = _check_count(row_group_rows, "row_group_rows", where, 1)
    seed = _check_seed(seed, where)
    if days > _MAX_DAY:
        raise ConfigError(
            f"The 'days' parameter of {where} must be an int <= {_MAX_DAY}. Got {days!r} instead."
        )
    model = _model(spec, seed)
    schema = gen_schema(spec)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    per_day: list[dict[str, Any]] = []
    for day in range(1, days + 1):
        day_dir = root / f"day={day}"
        day_dir.mkdir(exist_ok=True)
        for stale in day_dir.glob("part-*.parquet"):
            stale.unlink()
        writer = _DayWriter(day_dir, schema, rows_per_file, row_group_rows, compression)
        p_parts, y_parts, lin_parts = [], [], []
        for blk in _blocks(model, day, rows_per_day):
            y_parts.append(blk.columns[0].to_numpy(zero_copy_only=False))
            p_parts.append(blk.columns[1].to_numpy(zero_copy_only=False))
            lin_parts.append(blk.linear)
            writer.write(_block_table(schema, blk))
        files = writer.close()
        paths += files
        y, p = np.concatenate(y_parts), np.concatenate(p_parts)
        bayes, linear = rank_auc(p, y), rank_auc(np.concatenate(lin_parts), y)
        rec = {
            "day": day,
            "rows": rows_per_day,
            "files": [str(Path(f).relative_to(root)) for f in files],
            "bayes_auc": _finite(bayes),
            "linear_auc": _finite(linear),
            "mean_label": float(y.mean()),
            "mean_p_true": float(p.astype(np.float64).mean()),
        }
        per_day.append(rec)
        log.info(
            "gen day=%d: %d rows in %d file(s), bayes AUC %.4f, linear AUC %.4f",
            day,
            rows_per_day,
            len(files),
            bayes,
            linear,
        )
    meta = {
        "format": "psfm-gen/1",
        "spec": spec.to_dict(),
        "vocab_sizes": list(spec.vocab()),
        "seed": seed,
        "days": days,
        "rows_per_day": rows_per_day,
        "bias": model.bias,
        "per_day": per_day,
    }
    tmp = root / (GEN_JSON + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, root / GEN_JSON)
    return paths

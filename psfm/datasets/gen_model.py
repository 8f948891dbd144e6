"""The generator's true model and its row sampler (:mod:`psfm.datasets.gen` tells what they are).

:func:`true_model` builds the per-field parameter tables of ``(spec, seed)`` (cached), and
:func:`blocks` draws the rows of one day in blocks of :data:`BLOCK_ROWS` rows, each block from
an RNG seeded by ``(seed, day, block)``; both are vectorized over rows (the loops run over
fields, factor coordinates and blocks). The hash that picks the drifting tail ids is
:func:`psfm.hashing.mul_mix64` salted with :func:`psfm.hashing.hash_ints` of (field, day), and
numeric counts are bucketed with :func:`psfm.hashing.criteo_bucket`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from psfm.datasets.gen_spec import GenSpec, check_seed
from psfm.hashing import criteo_bucket, hash_ints, mul_mix64

__all__ = [
    "BLOCK_ROWS",
    "FieldParams",
    "TrueModel",
    "Block",
    "true_model",
    "model_of",
    "blocks",
    "block_table",
]

log = logging.getLogger("psfm.datasets.gen")

BLOCK_ROWS = 1 << 16
"""Rows per RNG block; part of the output definition (changing it changes the data)."""
_X_MAX = (1 << 20) - 1  # numeric counts are capped here (exact in float32)
_CALIB_ROWS = 1 << 17
_LINEAR_STD = 0.9
_PAIR_STD = 1.1
_TAG_MODEL, _TAG_CALIB, _TAG_ROWS = 0x6D6F64, 0x63616C, 0x726F77


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
    # interaction = "rank_aware": per rank_dims entry D_p, a (head + 1, D_p) table (zero for
    # ranks whose dim is below D_p) and its rows' squared norms
    levels: tuple[np.ndarray, ...] = ()
    level_sqnorm: tuple[np.ndarray, ...] = ()


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
    levels = []
    if spec.interaction == "rank_aware":  # drawn after the prefix model's: its RNG unchanged
        for d in spec.rank_dims:
            t = np.zeros((head + 1, d), dtype=np.float64)
            n_d = int(np.count_nonzero(dims >= d))  # the ranks of dim >= d (a rank prefix)
            t[:n_d] = h * rng.standard_normal((n_d, d))
            if n_d:
                p = probs[:n_d]
                t[:n_d] -= (p @ t[:n_d]) / p.sum()  # centred, as the prefix factors
            levels.append(t.astype(np.float32))
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
        levels=tuple(levels),
        level_sqnorm=tuple(
            np.square(t.astype(np.float64)).sum(axis=1).astype(np.float32) for t in levels
        ),
        **extra,
    )


def _scaled(fp: FieldParams, lin: float, fac: float) -> FieldParams:
    def sq(t: np.ndarray) -> np.ndarray:
        return np.square(t.astype(np.float64)).sum(axis=1).astype(np.float32)

    factors = fp.factors * np.float32(fac)
    levels = tuple(t * np.float32(fac) for t in fp.levels)
    return dataclasses.replace(
        fp,
        linear=fp.linear * np.float32(lin),
        factors=factors,
        sqnorm=sq(factors),
        levels=levels,
        level_sqnorm=tuple(sq(t) for t in levels),
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


@functools.lru_cache(maxsize=4)
def model_of(spec: GenSpec, seed: int) -> TrueModel:
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
    return model_of(spec, check_seed(seed, "true_model"))


@dataclass
class Block:
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


def _block(model: TrueModel, rng: np.random.Generator, n: int, day: int, values: bool) -> Block:
    spec = model.spec
    m = float(spec.missing_rate)
    inv = 1.0 / (1.0 - m)
    dmax = max(spec.rank_dims)
    lin = np.zeros(n, dtype=np.float32)
    ssum = np.zeros((n, dmax), dtype=np.float32)
    qsum = np.zeros(n, dtype=np.float32)
    aware = spec.interaction == "rank_aware"
    dims_l = spec.rank_dims if aware else ()
    # rank-aware: per level p, the sums over the row's values of dim >= D_p (A) and of dim
    # > D_p (B) of their level-p vectors, with the sums of squared norms (QA, QB)
    a_sum = [np.zeros((n, d), np.float32) for d in dims_l]
    b_sum = [np.zeros((n, d), np.float32) for d in dims_l]
    qa = [np.zeros(n, np.float32) for _ in dims_l]
    qb = [np.zeros(n, np.float32) for _ in dims_l]
    num_cols: list[pa.Array] = []
    cat_cols: list[pa.Array] = []
    bucket_of_x = _bucket_of_x()
    thr = np.uint64(min(int(spec.drift * 2.0**64), 2**64 - 1))
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
        if fp.head and not aware:
            fidx = np.minimum(rank, fp.head)
            ssum += np.take(fp.factors, fidx, axis=0)
            qsum += np.take(fp.sqnorm, fidx)
        elif fp.head:
            fidx = np.minimum(rank, fp.head)
            dim_of = np.take(np.append(fp.dims, 0), fidx)  # missing and factorless: 0
            for p, d in enumerate(dims_l):
                v = np.take(fp.levels[p], fidx, axis=0)
                q = np.take(fp.level_sqnorm[p], fidx)
                a_sum[p] += v
                qa[p] += q
                above = dim_of > d
                b_sum[p] += v * above[:, None]
                qb[p] += q * above
        if not values:
            continue
        if fp.numeric:
            num_cols.append(_nullable(x.astype(np.float32), miss, pa.float32()))
        else:
            ids = rank
            if thr and day and fp.head < fp.size:
                moved = mul_mix64(rank, hash_ints(fp.index, day)) < thr
                moved &= rank >= fp.head
                ids = np.where(moved, rank + fp.size * day, rank)
            cat_cols.append(_nullable(ids, miss, pa.int64()))
    if aware:  # pairs whose smaller dim is D_p: those among dim >= D_p, less those among > D_p
        pair = np.zeros(n, np.float32)
        for p in range(len(dims_l)):
            pair += np.einsum("ij,ij->i", a_sum[p], a_sum[p]) - qa[p]
            pair -= np.einsum("ij,ij->i", b_sum[p], b_sum[p]) - qb[p]
        pair *= 0.5
    else:
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
    return Block(lin, pair, cols)


def blocks(model: TrueModel, day: int, rows: int, values: bool = True) -> Iterator[Block]:
    for k, start in enumerate(range(0, rows, BLOCK_ROWS)):
        ss = np.random.SeedSequence([model.seed, day, k, _TAG_ROWS])
        rng = np.random.Generator(np.random.SFC64(ss))
        yield _block(model, rng, min(BLOCK_ROWS, rows - start), day, values)


def block_table(schema: pa.Schema, blk: Block) -> pa.Table:
    return pa.Table.from_arrays(blk.columns, schema=schema)

"""Feature levels from occurrence counts (DESIGN §4, RaFM Eq. 17) and deterministic factor init.

RaFM Eq. 17 puts feature i at ``k_i = argmin_k |log n_i - log(c D_k)|``. On a log scale the
boundary between ranks D_k and D_{k+1} is their geometric mean, so the rule is the threshold rule
``k_i = #{k : n_i >= t_k}`` with ``t_1 = 1`` and ``t_{k+1} = c sqrt(D_k D_{k+1})``; an unseen
feature (n = 0) has level 0. Explicit ``level_min_count`` replaces these thresholds. The same
thresholds drive ``online`` promotion.

Factor initialisation is a function of (seed, key, level, coordinate) only — a counter-based
normal draw — so a key gets the same initial factors on any shard, in any order, in any process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psfm.hashing import mix64

__all__ = ["counted_first", "level_thresholds", "levels_from_counts", "init_factors"]


def counted_first(policy: str, levels: int, admit_min_count: float) -> bool:
    """Whether a run counts its keys in a statistics pass before training: static levels of
    a model with two or more, or static admission (every key is then stored by that pass)."""
    return policy == "static" and (levels >= 2 or admit_min_count > 1)


def level_thresholds(
    ranks: Sequence[int], count_per_dim: float = 1.0, level_min_count: Sequence[float] = ()
) -> np.ndarray:
    """``t_1..t_m`` (float64): a feature is in ``F_k`` when its count is ``>= t_k``."""
    if level_min_count:
        return np.asarray(level_min_count, dtype=np.float64)
    d = np.asarray(ranks, dtype=np.float64)
    if d.size == 0:
        return np.zeros(0)
    return np.concatenate([[1.0], count_per_dim * np.sqrt(d[:-1] * d[1:])])


def levels_from_counts(counts: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``k_i = #{k : n_i >= t_k}`` as int8 (thresholds are non-decreasing)."""
    c = np.asarray(counts, dtype=np.float64)
    return np.searchsorted(thresholds, c, side="right").astype(np.int8)


_TWO_PI = np.float32(2.0 * np.pi)
_INV24 = np.float32(1.0 / float(1 << 24))
_HALF = np.float32(0.5)


def init_factors(
    keys: np.ndarray, salt_level: int, dim: int, std: float, seed: int, first_col: int = 0
) -> np.ndarray:
    """(len(keys), dim) float32 draws of N(0, std^2), a pure function of
    (seed, key, salt_level, first_col + column).

    Box-Muller on both of its outputs: columns 2j and 2j + 1 are ``r cos(a)`` and ``r sin(a)``
    of one 64-bit hash of (key, j) (24 bits for each uniform), so a key's row costs
    ``dim / 2`` hashes, logs and square roots, in float32."""
    if std == 0 or keys.size == 0:
        return np.zeros((keys.size, dim), dtype=np.float32)
    p0, p1 = first_col // 2, (first_col + dim + 1) // 2  # column pairs covering the columns
    pairs = np.arange(p0, p1, dtype=np.uint64)
    base = np.array([seed * 0x10001 + salt_level * 0x1000], dtype=np.uint64)
    pair_salt = mix64(mix64(base) ^ pairs)  # (pairs,)
    h = mix64(np.asarray(keys, dtype=np.uint64)[:, None] ^ pair_salt[None, :])  # (n, pairs)
    u1 = (h >> np.uint64(40)).astype(np.float32)
    u1 += _HALF
    u1 *= _INV24
    a = (h & np.uint64(0xFFFFFF)).astype(np.float32)
    a += _HALF
    a *= _INV24 * _TWO_PI
    r = np.log(u1)
    r *= np.float32(-2.0)
    np.sqrt(r, out=r)
    r *= np.float32(std)
    out = np.empty((keys.size, p1 - p0, 2), np.float32)  # (n, pairs, cos | sin)
    np.multiply(r, np.cos(a), out=out[:, :, 0])
    np.multiply(r, np.sin(a), out=out[:, :, 1])
    lo = first_col - 2 * p0
    return out.reshape(keys.size, -1)[:, lo : lo + dim]

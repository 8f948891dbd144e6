"""Stable 64-bit feature keys for (field, value) pairs, vectorized.

A key must be the same in every process, run and machine, so Python's salted ``hash`` is never
used. Integers are mixed with the SplitMix64 finalizer (Steele et al. 2014); strings (Arrow
``string``/``large_string``, any length) get a polynomial hash over their UTF-8 bytes computed for
all strings of an array at once with one cumulative sum (no per-string loop)::

    h(s) = sum_j s[j] * P^j  (mod 2^64)
         = (C[end] - C[start]) * P^-start,   C[t] = sum_{t' < t} data[t'] * P^t'

(P odd, so it is invertible mod 2^64), then finalized with SplitMix64 together with the length.
A key is ``mix(value_hash ^ field_salt)`` where ``field_salt = mix(hash(field name))``: the same
value in two fields gives two keys. Key 0 is reserved for the bias (no real feature maps to it:
``mix`` is a bijection and the rare hit is remapped).

The other stable integer primitives live here too, so that no module keeps its own copy:
:func:`fmix64` (the bare SplitMix64 finalizer), :func:`hash_ints` (a chained hash of a few
integers), :func:`mul_mix64` (a cheaper two-multiply mixer), :func:`criteo_bucket` (the numeric
bucket ``floor(ln(x)^2)``) and :func:`string_buffers` (zero-copy bytes and offsets of an Arrow
string array).

Worked example::

    >>> k = field_keys("C1", np.array([7, 7, 3]))   # equal values, equal keys
    >>> bool(k[0] == k[1]), bool(k[0] == k[2]), k.dtype.name
    (True, False, 'uint64')
    >>> bool(field_keys("C2", np.array([7]))[0] == k[0])   # the column is part of the key
    False
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "BIAS_KEY",
    "mix64",
    "fmix64",
    "hash_ints",
    "mul_mix64",
    "criteo_bucket",
    "string_buffers",
    "field_salt",
    "hash_strings",
    "field_keys",
    "numeric_field_key",
]

BIAS_KEY = np.uint64(0)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_P = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so invertible mod 2^64
_P_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_MASK64 = (1 << 64) - 1


def _finalize(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a bijection on uint64 with full avalanche (vectorized)."""
    return _finalize(np.asarray(x, dtype=np.uint64) + _GOLDEN)


def fmix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finalizer without the golden-ratio increment of :func:`mix64`:
    ``mix64(x) == fmix64(x + 0x9E3779B97F4A7C15)`` (wrapping)."""
    return _finalize(np.asarray(z, dtype=np.uint64))


def hash_ints(*parts: int) -> np.uint64:
    """A stable 64-bit hash of a short tuple of integers (each taken mod 2^64)::

        z_0 = 0,   z_{k+1} = fmix64(z_k ^ parts[k]) + 0x9E3779B97F4A7C15

    e.g. the salt of one (field, day) pair. A loop over the parts, not over data."""
    z = np.zeros(1, dtype=np.uint64)
    for p in parts:
        z = _finalize(z ^ np.uint64(p & _MASK64)) + _GOLDEN
    return np.uint64(z[0])


def mul_mix64(x: np.ndarray, salt: np.uint64) -> np.ndarray:
    """A cheaper mixer than :func:`mix64` for deciding by threshold (``h < t`` with
    probability ``t / 2^64``): ``h = x ^ salt; h *= M1; h ^= h >> 32; h *= M2`` with the
    SplitMix64 multipliers, in place on one new array (the result). A bijection, but without
    the first and last xorshift its low bits mix poorly: compare whole values, never use
    them as keys. ``x`` is read as uint64 (an int64 array is viewed, not converted)."""
    x = np.asarray(x)
    h = (x.view(np.uint64) if x.dtype == np.int64 else x.astype(np.uint64, copy=False)) ^ salt
    h *= _M1
    h ^= h >> _S32
    h *= _M2
    return h


def criteo_bucket(x: np.ndarray) -> np.ndarray:
    """The Criteo-winner transform of numeric values: ``floor(ln(x)^2)`` if x > 2 else
    ``floor(x)`` (int64). :func:`psfm.data.batch.log_bucket` is this plus ``2^32`` on the
    ``x > 2`` branch (so the two branches never collide in one key space)."""
    x = np.asarray(x, dtype=np.float64)
    big = x > 2
    return np.floor(np.where(big, np.square(np.log(np.where(big, x, 3.0))), x)).astype(np.int64)


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(data, offsets)`` of a ``string`` array (or ``large_string``, ``large_binary``),
    zero-copy: the bytes of all its strings (uint8) and the ``len(arr) + 1`` offsets into them
    (int64, the first 0): string ``i`` is ``data[offsets[i]:offsets[i + 1]]``. Nulls are
    empty strings."""
    off_dtype: type[np.signedinteger[Any]]
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        off_dtype = np.int64
    else:
        off_dtype = np.int32
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_dtype, count=n + 1 + arr.offset)[arr.offset :]
    start, end = int(offsets[0]), int(offsets[-1])
    data = (
        np.frombuffer(bufs[2], dtype=np.uint8, count=end)[start:end]
        if end > start
        else (np.zeros(0, np.uint8))
    )
    return data, offsets.astype(np.int64) - start


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.full(n, base, dtype=np.uint64)
    if n:
        out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


def hash_strings(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint64 hash of every string in an Arrow string array (nulls hash like ``""``)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not (pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)):
        arr = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
    data, rel = string_buffers(arr)
    # C[t] = sum_{t'<t} data[t'] * P^t'  (prefix sums with wraparound)
    weighted = data.astype(np.uint64) * _powers(_P, data.size)
    csum = np.zeros(data.size + 1, dtype=np.uint64)
    np.cumsum(weighted, out=csum[1:])
    h = (csum[rel[1:]] - csum[rel[:-1]]) * _powers(_P_INV, data.size + 1)[rel[:-1]]
    lengths = (rel[1:] - rel[:-1]).astype(np.uint64)
    return mix64(h ^ mix64(lengths))


@functools.lru_cache(maxsize=4096)
def field_salt(field: str) -> np.uint64:
    """The per-field salt: a stable hash of the field name (cached per name)."""
    return mix64(hash_strings(pa.array([field], pa.string())))[0]


def _remap_bias(keys: np.ndarray) -> np.ndarray:
    keys[keys == BIAS_KEY] = np.uint64(1)
    return keys


def field_keys(field: str, values: np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Keys of (field, value) for a whole column of integer or string values.

    Nulls are not handled here (the batch builder masks them); their key is arbitrary.
    """
    salt = field_salt(field)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        t = values.type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
            return _remap_bias(mix64(hash_strings(values) ^ salt))
        if pa.types.is_dictionary(t):
            return field_keys(field, values.cast(t.value_type))
        values = pc.fill_null(values, 0).to_numpy(zero_copy_only=False)
    v = np.asarray(values)
    if v.dtype.kind not in "iub":
        raise TypeError(f"field_keys needs integer or string values, got dtype {v.dtype}")
    return _remap_bias(mix64(v.astype(np.int64).view(np.uint64) ^ salt))


def numeric_field_key(field: str) -> np.uint64:
    """The one key of a numeric field used with ``numeric_transform = "raw"``."""
    return field_keys(field, pa.array(["\x00raw"]))[0]

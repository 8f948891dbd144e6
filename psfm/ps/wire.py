"""One contiguous buffer for a list of arrays: the message format between workers and shards.

Ray serializes every task argument and result on its own; a push of a batch is half a dozen
arrays (keys, counts, levels, gradients per level) and a pull answer three or more, and on a
small machine the per-object cost is a good part of a call. :func:`pack` lays the arrays out in
one ``uint8`` buffer and :func:`unpack` returns views into it (no copy). Layout::

    int64 header: [k, code_1, rows_1, cols_1, ..., code_k, rows_k, cols_k]
    array 1 bytes, padded to 8 | array 2 bytes, padded to 8 | ...

``cols`` is 0 for a 1-D array. Only plain numeric arrays are carried (no pickle).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pack", "pack_into", "packed_size", "pad", "unpack"]

_DTYPES = [np.dtype(t) for t in (np.uint64, np.int64, np.float32, np.float64, np.int8, np.int32)]
_CODE = {d: i for i, d in enumerate(_DTYPES)}


def pad(n: int) -> int:
    """``n`` rounded up to a multiple of 8 (every array starts 8-byte aligned)."""
    return -(-n // 8) * 8


def _header(arrays: Sequence[np.ndarray]) -> np.ndarray:
    head = [len(arrays)]
    for a in arrays:
        if a.dtype not in _CODE or a.ndim not in (1, 2):
            raise TypeError(
                f"pack carries 1-D/2-D arrays of {[str(d) for d in _DTYPES]}; got "
                f"{a.dtype} with shape {a.shape}"
            )
        head += [_CODE[a.dtype], a.shape[0], a.shape[1] if a.ndim == 2 else 0]
    return np.asarray(head, np.int64)


def packed_size(arrays: Sequence[np.ndarray]) -> int:
    """Bytes :func:`pack` needs for ``arrays``."""
    return 8 * (1 + 3 * len(arrays)) + sum(pad(a.nbytes) for a in arrays)


def pack_into(arrays: Sequence[np.ndarray], out: np.ndarray) -> int:
    """Write the :func:`pack` layout of ``arrays`` at the start of the uint8 buffer ``out``
    (a shared-memory slot, say); returns the bytes written."""
    hdr = _header(arrays)
    size = hdr.nbytes + sum(pad(a.nbytes) for a in arrays)
    if size > out.size:
        raise ValueError(f"pack_into needs {size} bytes; the buffer has {out.size}")
    out[: hdr.nbytes] = hdr.view(np.uint8)
    off = hdr.nbytes
    for a in arrays:
        out[off : off + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        off += pad(a.nbytes)
    return size


def pack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Arrays (1-D or 2-D, of the dtypes above) -> one uint8 buffer."""
    buf = np.empty(packed_size(arrays), np.uint8)
    pack_into(arrays, buf)
    return buf


def unpack(buf: np.ndarray) -> list[np.ndarray]:
    """The arrays of a :func:`pack` buffer, as views into it."""
    k = int(np.frombuffer(buf, np.int64, 1)[0])
    hdr = np.frombuffer(buf, np.int64, 1 + 3 * k)
    off, out = hdr.nbytes, []
    for i in range(k):
        code, rows, cols = (int(v) for v in hdr[1 + 3 * i : 4 + 3 * i])
        dt = _DTYPES[code]
        n = rows * max(cols, 1)
        a = np.frombuffer(buf, dt, n, off)
        out.append(a.reshape(rows, cols) if cols else a)
        off += pad(n * dt.itemsize)
    return out

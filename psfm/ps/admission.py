"""Fixed-memory occurrence counting for feature admission (McMahan et al. 2013 §5).

A key gets parameter storage only after ``admit_min_count`` occurrences. Until then its count
lives in a count-min sketch (Cormode & Muthukrishnan 2005): ``depth`` rows of ``width`` counters,
one hashed counter per row; the estimate is the minimum over rows, never below the true count.
"""

from __future__ import annotations

import numpy as np

from psfm.hashing import mix64

__all__ = ["CountMinSketch"]


class CountMinSketch:
    """``depth x width`` float32 counters (width a power of two)."""

    def __init__(self, width: int = 1 << 20, depth: int = 4, seed: int = 0) -> None:
        if width & (width - 1):
            raise ValueError(f"CountMinSketch width must be a power of two; got {width}.")
        self.table = np.zeros((depth, width), dtype=np.float32)
        self.salts = mix64(np.arange(1, depth + 1, dtype=np.uint64) * np.uint64(seed + 7919))
        self.mask = np.uint64(width - 1)

    def _cells(self, keys: np.ndarray) -> np.ndarray:
        h = mix64(np.asarray(keys, dtype=np.uint64)[None, :] ^ self.salts[:, None])
        return (h & self.mask).astype(np.int64)  # (depth, n)

    def add(self, keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Add ``counts`` to ``keys`` and return their new estimates."""
        cells = self._cells(keys)
        for d in range(self.table.shape[0]):
            np.add.at(self.table[d], cells[d], counts)
        return self.table[np.arange(self.table.shape[0])[:, None], cells].min(axis=0)

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

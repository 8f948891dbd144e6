"""Gather the model from every shard into key-sorted arrays (for export and comparison).

``gather_model`` returns ``keys`` (n,) uint64 sorted, ``w`` (n,), ``level`` (n,) and for each level
p ``rows{p}`` — indices into ``keys`` of the keys with a stored row at level p, ascending — with
``v{p}``: (len(rows{p}), D_p) their factors. Only what the shards store is included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["gather_model"]


def gather_model(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Merge :meth:`ParameterShard.weights` outputs of all shards, sorted by key."""
    keys = np.concatenate([p["keys"] for p in parts])
    order = np.argsort(keys, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    out = {
        "keys": keys[order],
        "w": np.concatenate([p["w"] for p in parts])[order],
        "level": np.concatenate([p["level"] for p in parts])[order],
    }
    offsets = np.cumsum([0] + [p["keys"].size for p in parts])
    p_ = 1
    while f"rows{p_}" in parts[0]:
        glob = np.concatenate([rank[offsets[i] + p[f"rows{p_}"]] for i, p in enumerate(parts)])
        vals = np.concatenate([p[f"v{p_}"] for p in parts])
        o = np.argsort(glob, kind="stable")
        out[f"rows{p_}"] = glob[o]
        out[f"v{p_}"] = vals[o]
        p_ += 1
    return out

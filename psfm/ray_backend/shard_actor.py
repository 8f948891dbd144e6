"""The shard actor, ``ShardActor = ray.remote(MeteredShard)``, in a module of its own that does
not import torch: a shard process imports only what its class needs (measured: importing
:mod:`psfm.ray_backend.actors`, whose workers need torch, takes 1.7 s of CPU, 1.1 s of it
torch's, which the shards of a run paid at start-up alongside the workers on the same cores).
"""

from __future__ import annotations

import ray

from psfm.ray_backend.server import ShardServer

__all__ = ["MeteredShard", "ShardActor"]


class MeteredShard(ShardServer):
    """A :class:`ShardServer` whose day end also reports ``ps_bytes``, the bytes its arrays
    hold (``ShardStats.ps_bytes`` without the O(model) non-zero counts of ``stats()``), for
    the driver's ``psfm_shard_ps_bytes`` gauge."""

    def end_day(self, day: int) -> dict[str, int]:
        out = super().end_day(day)
        sketch = self.shard.sketch
        out["ps_bytes"] = self.shard.store.nbytes + (sketch.nbytes if sketch is not None else 0)
        return out


ShardActor = ray.remote(MeteredShard)

"""What the run loop asks of a place to run (DESIGN §7): the :class:`Backend` protocol and the
one value every backend hands back per work unit, :class:`UnitReport`. Two backends implement
it: :mod:`psfm.local_backend` (in this process) and :mod:`psfm.ray_backend.driver` (Ray)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from psfm.data.parquet import WorkUnit
from psfm.ps.messages import ShardStats

__all__ = ["Backend", "UnitReport", "OnUnit", "States"]

States = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class UnitReport:
    """What one worker did with one work unit (in synchronous steps: its slice of the unit),
    the one value every backend hands the loop. Plain numbers and arrays, so it crosses a Ray
    boundary as it is.

    ``acc_state`` / ``acc_low_state``: :meth:`MetricAccumulator.state` of the unit's
    predictions (progressive when training) and of the RaFM-low output ``b + Σ w x + B_{1,1}``;
    None where not measured. ``predictions``: (3, rows) = (probs, probs_low, labels), only
    when the caller asked for them (the exact test AUC). ``cpu_seconds``: CPU time of the
    process that ran the unit, all its threads, while it ran (a Ray worker: its own; in
    process: the whole process, shards included)."""

    unit: str
    rows: int
    skipped: int
    loss: float
    seconds: float
    acc_state: dict[str, np.ndarray] | None = None
    acc_low_state: dict[str, np.ndarray] | None = None
    bytes_pulled: int = 0
    bytes_pushed: int = 0
    predictions: np.ndarray | None = None
    cached: bool = False  # replayed from the worker's pass cache, not read from the file
    cpu_seconds: float = 0.0


OnUnit = Callable[[UnitReport], None]


class Backend(Protocol):
    """Shards and workers, in this process or on Ray. ``start`` makes empty shards and the
    workers; ``close`` releases them (idempotent); ``start`` after ``close`` starts afresh.

    ``train`` / ``evaluate`` run every unit once and call ``on_unit`` with each report as it
    arrives (in the order units finish), so progress is logged during the pass; ``warmup``
    units are trained first by one worker alone (moot with one worker). ``count`` runs the
    statistics pass and returns the rows counted (``on_rows`` hears each unit's rows as it
    finishes); ``finish_counts`` sets the levels and
    returns ``keys`` and ``not_admitted`` summed over shards. ``end_day(n)``: ``n`` training
    days (counted over all passes) are done (decay, eviction); it returns ``keys`` (stored
    after it) and ``evicted``, summed over shards. ``checkpoint`` writes every
    shard's file and then the manifest with ``meta``; ``restore`` loads shard states in shard
    order; ``snapshot`` returns them (copies, in shard order: early stopping without a run
    directory keeps the best pass's state in memory with it). ``lost(error)``: why ``error``
    means a lost shard or worker that a restore and replay recovers from (e.g.
    ``"an actor died"``), or None when it is anything else. ``workers``: how many train at
    once. ``reuse``: the units will be read again in this run, so the workers keep their
    batches in the pass cache (:mod:`psfm.data.cache`); a unit read again goes to the worker
    that kept it where the backend can choose."""

    workers: int

    def start(self) -> None: ...

    def close(self) -> None: ...

    def lost(self, error: BaseException) -> str | None: ...

    def count(
        self,
        units: Sequence[WorkUnit],
        reuse: bool = False,
        on_rows: Callable[[int], None] | None = None,
    ) -> int: ...

    def finish_counts(self) -> dict[str, int]: ...

    def train(
        self, units: Sequence[WorkUnit], warmup: int, on_unit: OnUnit, reuse: bool = False
    ) -> None: ...

    def evaluate(
        self,
        units: Sequence[WorkUnit],
        keep_predictions: bool,
        on_unit: OnUnit,
        reuse: bool = False,
    ) -> None: ...

    def end_day(self, days_done: int) -> dict[str, int]:
        """Day end on every shard (decay, eviction, compaction): the keys stored after it
        and how many the day end evicted, summed over the shards."""
        ...

    def checkpoint(self, ckpt_dir: str, meta: dict[str, Any]) -> None: ...

    def restore(self, states: States) -> None: ...

    def snapshot(self) -> States: ...

    def stats(self) -> ShardStats: ...

    def memory(self) -> dict[str, Any] | None:
        """The report's ``memory`` section (:func:`psfm.memory.memory_report`) of the live
        processes, or None when it could not be measured."""
        ...

    def train_cpu(self) -> float | None:
        """CPU seconds the shard processes spent during :meth:`train` calls so far, summed
        over shards (what sizing a cluster needs: :mod:`psfm.sizing`); None where the shards
        share the workers' process (their time is in the units' ``cpu_seconds``)."""
        ...

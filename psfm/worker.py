"""The worker logic: read a work unit, and per batch pull -> forward/backward -> push.

A plain class over any :class:`~psfm.ps.client.PsClient` (in-process shards or Ray actors). Every
batch is scored with the weights it pulled *before* its gradient is pushed (progressive
validation), so training-day logloss and AUC come for free.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from psfm.config import Config
from psfm.data.batch import Batch, FeatureSchema, batch_of, decode_rows, resolve_schema
from psfm.data.cache import PassCache
from psfm.data.parquet import Cursor, WorkUnit, open_parquet, read_unit, row_group_starts
from psfm.metrics import MetricAccumulator
from psfm.models.family import FamilyInputs, FamilyOutput, FamilySpec, forward_backward
from psfm.ps.client import PsClient
from psfm.ps.messages import PullResult, PushRequest
from psfm.steps import AUTO_MAX_BATCH

__all__ = ["Worker", "UnitResult", "resolve_device", "family_spec", "push_request"]

log = logging.getLogger(__name__)

_CHUNK_ROWS = 1 << 16  # rows decoded at once (a whole number of batches)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU; ``cuda`` without one is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from psfm.errors import ConfigError

        raise ConfigError("train.device = 'cuda' but torch sees no CUDA device on this node.")
    return torch.device(device)


def family_spec(cfg: Config) -> FamilySpec:
    m = cfg.model
    return FamilySpec(
        tuple(m.ranks),
        m.tied,
        tuple(m.dependent_lr_coef),
        m.loss,
        exact_sums=cfg.ps.mode == "sync",
        sum_sq=cfg.ftrl.accumulate == "sum_of_squares",
    )


def push_request(batch: Batch, level: np.ndarray, out: FamilyOutput) -> PushRequest:
    """The push of a batch's backward pass (``level``: what its pull returned)."""

    def host(t: torch.Tensor) -> np.ndarray:
        return t.cpu().numpy()

    return PushRequest(
        batch.uniq,
        batch.counts,
        level,
        host(out.grad_w),
        [host(g) for g in out.grad_tables],
        None if out.sq_w is None else host(out.sq_w),
        None if out.sq_tables is None else [host(g) for g in out.sq_tables],
    )


@dataclass
class UnitResult:
    """What one work unit did."""

    rows: int = 0
    skipped: int = 0
    loss: float = 0.0
    seconds: float = 0.0
    cursor: Cursor | None = None
    predictions: list[np.ndarray] = field(default_factory=list)  # (probs, probs_low, labels)
    cached: bool = False  # replayed from the pass cache


class Worker:
    """Turns work units into pulls, gradients and pushes."""

    def __init__(self, config: Config, batch_rows: int | None = None) -> None:
        self.cfg = config
        # data.batch_size = 0 (auto) is resolved by the run loop from the pass size; a worker
        # made outside a run (benchmarks, tools) takes the largest automatic size.
        self.batch_rows = batch_rows or config.data.batch_size or AUTO_MAX_BATCH
        self.spec = family_spec(config)
        self.device = resolve_device(config.train.device)
        self._schemas: dict[str, FeatureSchema] = {}
        d = config.data
        self.cache = PassCache(d.cache_mb << 20, d.cache_disk_mb << 20, d.cache_dir)

    def schema_of(self, file: str) -> FeatureSchema:
        if file not in self._schemas:
            self._schemas[file] = resolve_schema(
                self.cfg.data, open_parquet(file).schema_arrow, file
            )
        return self._schemas[file]

    def batches(
        self,
        unit: WorkUnit,
        start: Cursor | None = None,
        part: int = 0,
        parts: int = 1,
        reuse: bool = False,
    ) -> Iterator[tuple[Batch, Cursor]]:
        """Batches of a unit with the cursor after each. With ``parts > 1`` (synchronous
        data-parallel steps) this worker takes rows ``[part*B/parts, (part+1)*B/parts)`` of
        every global batch of ``B = data.batch_size`` rows.

        A whole unit read before with ``reuse`` is replayed from the pass cache
        (:mod:`psfm.data.cache`); ``reuse`` says it will be read again, so this read keeps it
        (or, replayed, keeps it kept)."""
        key = self._cache_key(unit, part, parts)
        if start is None and key in self.cache:
            return self.cache.replay(key, last=not reuse)
        read = self._read(unit, start, part, parts)
        if start is None and reuse:
            return self.cache.record(key, read)
        return read

    def _cache_key(self, unit: WorkUnit, part: int = 0, parts: int = 1) -> tuple:
        return (unit.uid, self.batch_rows, part, parts)

    def _read(
        self, unit: WorkUnit, start: Cursor | None, part: int, parts: int
    ) -> Iterator[tuple[Batch, Cursor]]:
        """Rows are read and hashed a chunk of whole batches at a time (about a row group),
        then cut into batches: per-column costs are paid once per chunk, not once per batch."""
        schema = self.schema_of(unit.file)
        d = self.cfg.data
        where = f"File '{unit.file}'"
        pf = open_parquet(unit.file)
        starts = np.asarray(row_group_starts(pf))
        size = self.batch_rows
        chunk_rows = size * max(1, _CHUNK_ROWS // size)
        for table, cursor, first in read_unit(unit, chunk_rows, schema.columns, start, pf):
            rows = decode_rows(table, schema, self.cfg.model.loss, d.bad_rows, where, first, starts)
            n = rows.num_rows
            for lo in range(0, n, size):
                hi = min(lo + size, n)
                if hi == n:
                    after = cursor
                else:  # the row group holding the batch's last row, and the offset after it
                    rg = int(np.searchsorted(starts, first + hi - 1, "right")) - 1
                    after = Cursor(unit.file, rg, first + hi - int(starts[rg]))
                a, b = lo, hi
                if parts > 1:
                    a, b = lo + (hi - lo) * part // parts, lo + (hi - lo) * (part + 1) // parts
                yield batch_of(rows, a, b), after

    def _inputs(self, batch: Batch, pulled: PullResult) -> FamilyInputs:
        dev = self.device

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(dev, non_blocking=True)

        return FamilyInputs(
            occ_sample=t(batch.occ_sample),
            occ_uniq=t(batch.occ_uniq),
            occ_value=t(batch.occ_value),
            labels=t(batch.labels),
            weights=None if batch.weights is None else t(batch.weights),
            w=t(pulled.w),
            level=t(pulled.level.astype(np.int64)),
            tables=[t(x) for x in pulled.tables],
            sample_offsets=t(batch.sample_offsets),
            occ_order=t(batch.occ_order),
            uniq_offsets=t(batch.uniq_offsets),
            unit_values=batch.unit_values,
        )

    def _score(
        self, batch: Batch, pulled: PullResult, train: bool
    ) -> tuple[tuple[np.ndarray, np.ndarray, float], PushRequest | None]:
        """Forward (and backward) of a batch on the weights it pulled. Returns (predictions,
        RaFM-low predictions, summed loss) and, when training, the push arguments."""
        with warnings.catch_warnings():  # pulled arrays may be read-only (Ray object store)
            warnings.simplefilter("ignore", UserWarning)
            x = self._inputs(batch, pulled)
        out = forward_backward(self.spec, x, compute_grad=train)
        push = push_request(batch, pulled.level, out) if train else None
        link = self.spec.loss_fn.link_torch  # probabilities (logistic), logits (squared)
        preds = link(out.logits).cpu().numpy(), link(out.logits_low).cpu().numpy(), out.loss
        return preds, push

    def step(
        self, batch: Batch, client: PsClient, train: bool
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """One batch: pull, score, and (training) push. Returns (predictions, RaFM-low
        predictions, summed loss); the predictions use the weights pulled *before* the
        update (progressive validation)."""
        if batch.size == 0:
            z = np.zeros(0, np.float32)
            return z, z, 0.0
        preds, push = self._score(batch, client.pull(batch.uniq, create=train), train)
        if push is not None:
            client.push(push)
        return preds

    def _record(
        self, res: UnitResult, batch: Batch, cursor: Cursor, out, acc, acc_low, keep: bool
    ) -> None:
        probs, low, loss = out
        res.skipped += batch.skipped
        res.rows += batch.size
        res.loss += loss
        res.cursor = cursor
        if batch.size == 0:
            return
        if acc is not None:
            acc.update(batch.labels, probs, batch.weights)
        if acc_low is not None:
            acc_low.update(batch.labels, low, batch.weights)
        if keep:
            res.predictions.append(np.stack([probs, low, batch.labels]))

    def run_unit(
        self,
        unit: WorkUnit,
        client: PsClient,
        train: bool,
        acc: MetricAccumulator | None = None,
        acc_low: MetricAccumulator | None = None,
        keep_predictions: bool = False,
        start: Cursor | None = None,
        pipeline: str = "none",
        reuse: bool = False,
    ) -> UnitResult:
        """Train on (or score) a unit; metrics go into ``acc`` / ``acc_low``.

        ``pipeline``: ``"overlap"`` reads and builds batch t+1 while the pull of batch t is in
        flight, and pushes t and pulls t+1 in one call per shard (a worker always sees its own
        updates); ``"prefetch"`` also sends the pull of t+1 before
        computing t (one batch staler, more overlap); ``"none"`` is strictly sequential.
        ``reuse``: the unit will be read again (:meth:`batches`)."""
        res = UnitResult()
        t0 = time.perf_counter()
        res.cached = start is None and self._cache_key(unit) in self.cache
        batches = self.batches(unit, start, reuse=reuse)
        if pipeline == "none":
            for batch, cursor in batches:
                out = self.step(batch, client, train)
                self._record(res, batch, cursor, out, acc, acc_low, keep_predictions)
        else:

            def pull(item):
                return client.pull_async(item[0].uniq, create=train) if item[0].size else None

            fused = pipeline == "overlap"  # one call per shard and batch: push t, pull t + 1
            cur = next(batches, None)
            handle = pull(cur) if cur is not None else None
            while cur is not None:
                nxt = next(batches, None)  # read and hash while the pull is in flight
                nxt_handle = pull(nxt) if nxt is not None and pipeline == "prefetch" else None
                batch, cursor = cur
                push = None
                if handle is None:
                    out = self.step(batch, client, train)
                else:
                    out, push = self._score(batch, client.wait_pull(handle), train)
                self._record(res, batch, cursor, out, acc, acc_low, keep_predictions)
                if push is not None and fused and nxt is not None and nxt[0].size:
                    nxt_handle = client.push_pull(push, nxt[0].uniq, create=train)
                    push = None
                if push is not None:
                    client.push(push)
                if nxt is not None and pipeline != "prefetch" and nxt_handle is None:
                    nxt_handle = pull(nxt)
                cur, handle = nxt, nxt_handle
        client.flush()
        res.seconds = time.perf_counter() - t0
        return res

    def count_unit(self, unit: WorkUnit, client: PsClient, reuse: bool = False) -> int:
        """Statistics pass: push the unit's key occurrence counts to the shards."""
        rows = 0
        for batch, _ in self.batches(unit, reuse=reuse):
            client.add_counts(batch.uniq, batch.counts)
            rows += batch.size
        return rows

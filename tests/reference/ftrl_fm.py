"""Per-sample FTRL-Proximal FM in plain numpy: a slow, exact reference for psfm's trainer.

psfm trains in minibatches: one FTRL step per key per batch, on weights frozen within the batch.
DESIGN §3 asks that a batch move a coordinate about as far as its per-sample steps would, and that
the accumulation rule be chosen by measurement against a per-sample reference. This is that
reference: the alphaFM update order, one row at a time, nothing batched across rows.

For each training row, in file/row order (McMahan et al. 2013, Algorithm 1; Rendle 2010, Eq. 5)::

    w  = 0 if |z| <= l1 else -(z - sgn(z) l1) / ((beta + sqrt(n)) / alpha + l2)   (row's coords)
    S  = sum_i v_i x_i                                                            (D,)
    y^ = b + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j
       = b + sum_i w_i x_i + 1/2 (||S||^2 - sum_i ||v_i x_i||^2)                 (O(kD))
    g  = sigmoid(y^) - y               (times the row's importance weight, when there is one)
    grads: b: g;  w_i: g x_i;  v_i[f]: g x_i (S[f] - v_i[f] x_i)
    every active coordinate:  sigma = (sqrt(n + g^2) - sqrt(n)) / alpha;  z += g - sigma w;
                              n += g^2

A key present twice in one row gets the sum of its occurrences' gradients (one FTRL step).

Parameters: the bias is an ordinary coordinate with l1 = l2 = 0 (as in psfm's shard), linear
weights use ``linear`` and factor coordinates ``factor`` (:class:`~psfm.optim.ftrl.FtrlParams`).
A key gets state the first time it is seen: linear ``z = n = 0``; factors ``v0 ~ N(0,
init_std^2)`` stored as ``z0 = -(v0 (beta/alpha + l2) + sgn(v0) l1)``, ``n = 0``
(:func:`~psfm.optim.ftrl.ftrl_init_z`). ``v0`` is psfm's counter-based draw
(:func:`~psfm.ps.levels.init_factors` salted by the rank, as psfm draws), a pure function of
(seed, key): with psfm's seed both start from the same factors, so a difference between them is
the optimiser's, and giving a key its state when its chunk of rows is read equals giving it at
its first row. Prediction on test rows is predict-only: unseen keys contribute 0 and no state
is created.

State: float64 ``state[slot] = (z, n)``, shape (slots, 2, 1 + D); column 0 is the linear weight
and columns 1..D the factors, so one gather and one scatter per row serve both, with (1 + D,)
vectors of per-column hyperparameters. Slot 0 is the all-zero state of unseen keys (w = 0,
v = 0). A dict maps keys to slots, looked up once per chunk for its distinct keys. Rows come as
:class:`Rows` (flat occurrences, row-major) built from psfm's own decoder
(:func:`~psfm.data.batch.decode_rows`, :func:`~psfm.data.batch.batch_of`), so the reference sees
exactly the keys psfm sees. About 25 small numpy operations per row: tens of microseconds.

Example::

    >>> m = PerSampleFtrlFM(FtrlParams(), FtrlParams(), dim=2, init_std=0.1, seed=0)
    >>> m.fit([[11, 12], [12]], None, [1.0, 0.0])    # progressive predictions
    >>> m.predict([[11, 13]], None)                  # 13 unseen: contributes 0
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from psfm.config import Config, load_config
from psfm.data.batch import Batch, batch_of, decode_rows, resolve_schema
from psfm.data.parquet import open_parquet, read_unit, row_group_starts, work_units
from psfm.errors import ConfigError, DataError
from psfm.hashing import BIAS_KEY
from psfm.metrics import auc_exact, logloss
from psfm.optim.ftrl import FtrlParams, ftrl_init_z
from psfm.ps.levels import init_factors
from psfm.steps import resolve_ftrl

__all__ = ["PerSampleFtrlFM", "Rows", "rows_of_batch", "iter_rows", "run_reference"]

CHUNK_ROWS = 1 << 16  # rows read, decoded and slot-mapped at a time


@dataclass
class Rows:
    """Rows as flat feature occurrences, row-major, the bias left out (every row has it once).

    ``keys`` (N,) uint64; ``values`` (N,) float64, or None where every x is 1; ``offsets``
    (n + 1,) int64: row r's occurrences are ``[offsets[r], offsets[r + 1])``; ``labels`` (n,)
    float64; ``weights`` (n,) float64 importance weights or None."""

    keys: np.ndarray
    values: np.ndarray | None
    offsets: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_lists(
        cls,
        keys_list: Sequence[Sequence[int]],
        values_list: Sequence[Sequence[float]] | None = None,
        labels: Sequence[float] | None = None,
        weights: Sequence[float] | None = None,
    ) -> Rows:
        """Rows from one key sequence per row (and optionally one value sequence per row).
        Occurrences of ``BIAS_KEY`` are dropped: the bias is implicit."""
        n = len(keys_list)
        lab = np.zeros(n) if labels is None else np.asarray(labels, dtype=np.float64)
        if lab.shape != (n,):
            raise DataError(f"labels must hold one value per row ({n}). Got {lab.shape} instead.")
        ks = [np.asarray(k, dtype=np.uint64).reshape(-1) for k in keys_list]
        vs = None
        if values_list is not None:
            vs = [np.asarray(v, dtype=np.float64).reshape(-1) for v in values_list]
            bad = [i for i in range(n) if i >= len(vs) or vs[i].shape != ks[i].shape]
            if len(vs) != n or bad:
                raise DataError(
                    f"values_list must match keys_list row by row. Row "
                    f"{bad[0] if bad else n} differs."
                )
        keep = [k != BIAS_KEY for k in ks]
        flat = np.concatenate([k[m] for k, m in zip(ks, keep)] or [np.zeros(0, np.uint64)])
        vals = None
        if vs is not None:
            vals = np.concatenate([v[m] for v, m in zip(vs, keep)] or [np.zeros(0)])
        counts = np.array([int(m.sum()) for m in keep], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        w = None if weights is None else np.asarray(weights, dtype=np.float64)
        return cls(flat, vals, offsets, lab, w)


def rows_of_batch(batch: Batch) -> Rows:
    """The :class:`Rows` of a psfm :class:`~psfm.data.batch.Batch`: its occurrences
    (``keys[mask]``, row-major, what psfm pulls) without the bias column."""
    flat = batch.keys[batch.mask]
    keep = flat != BIAS_KEY
    counts = np.bincount(batch.occ_sample[keep], minlength=batch.size)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    values = None if batch.unit_values else batch.occ_value[keep].astype(np.float64)
    weights = None if batch.weights is None else batch.weights.astype(np.float64)
    return Rows(flat[keep], values, offsets, batch.labels.astype(np.float64), weights)


def iter_rows(
    cfg: Config, root: str, days: Sequence[str], chunk_rows: int = CHUNK_ROWS
) -> Iterator[Rows]:
    """The rows of ``days`` in psfm's order (days, then files, then rows), decoded by psfm's
    reader with ``cfg.data`` (layout, columns, ``bad_rows``), ``chunk_rows`` at a time."""
    for day in days:
        for unit in work_units(root, day, cfg.data.rows_per_unit):
            pf = open_parquet(unit.file)
            schema = resolve_schema(cfg.data, pf.schema_arrow, unit.file)
            starts = np.asarray(row_group_starts(pf))
            for table, _cursor, first in read_unit(unit, chunk_rows, schema.columns, None, pf):
                decoded = decode_rows(
                    table,
                    schema,
                    cfg.model.loss,
                    cfg.data.bad_rows,
                    f"File '{unit.file}'",
                    first,
                    starts,
                )
                yield rows_of_batch(batch_of(decoded))


def _sigmoid(t: float) -> float:
    if t >= 0.0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


def _sigmoid_array(t: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(t))
    return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class PerSampleFtrlFM:
    """FTRL-Proximal FM(D) (``dim = 0``: logistic regression), trained one row at a time.

    ``fit`` returns the progressive predictions (each row scored before its update);
    ``predict`` never changes the state."""

    def __init__(
        self,
        linear: FtrlParams,
        factor: FtrlParams,
        dim: int = 8,
        init_std: float = 0.05,
        seed: int = 0,
    ) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise ConfigError(
                f"The 'dim' parameter of PerSampleFtrlFM must be an int >= 0. Got {dim!r} instead."
            )
        if not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std >= 0):
            raise ConfigError(
                f"The 'init_std' parameter of PerSampleFtrlFM must be a float "
                f">= 0. Got {init_std!r} instead."
            )
        self.linear, self.factor, self.dim = linear, factor, dim
        self.init_std, self.seed = float(init_std), int(seed)
        cols = [linear] + [factor] * dim  # per-column hyperparameters, (1 + D,)
        self._l1 = np.array([p.l1 for p in cols])
        self._neg_l1 = -self._l1
        self._beta = np.array([p.beta for p in cols])
        self._l2 = np.array([p.l2 for p in cols])
        self._inv_alpha = np.array([1.0 / p.alpha for p in cols])
        self._bias = FtrlParams(linear.alpha, linear.beta, 0.0, 0.0)
        self._zb = self._nb = 0.0
        self._state = np.zeros((1024, 2, 1 + dim))  # slot 0: unseen keys, never updated
        self._used = 1
        self._slots: dict[int, int] = {}

    # ------------------------------------------------------------------------- inspection

    @property
    def num_keys(self) -> int:
        """Keys with state (the bias not counted)."""
        return len(self._slots)

    def bias_state(self) -> tuple[float, float]:
        """``(z, n)`` of the bias."""
        return self._zb, self._nb

    def state_of(self, key: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(z, n)`` of a key, each (1 + D,): linear, then factors; None if never seen."""
        s = self._slots.get(int(key))
        return None if s is None else (self._state[s, 0].copy(), self._state[s, 1].copy())

    def weights_of(self, keys: Sequence[int] | np.ndarray) -> np.ndarray:
        """(k, 1 + D) weights of ``keys`` (w, then v); 0 for unseen keys."""
        slots = self._lookup(np.asarray(keys, dtype=np.uint64), create=False)
        return self._closed_form(self._state[slots])

    def bias_weight(self) -> float:
        p = self._bias
        return -self._zb / ((p.beta + math.sqrt(self._nb)) / p.alpha)

    # ------------------------------------------------------------------------- public API

    def fit(
        self,
        keys_list: Sequence[Sequence[int]],
        values_list: Sequence[Sequence[float]] | None,
        labels: Sequence[float],
        weights: Sequence[float] | None = None,
    ) -> np.ndarray:
        """One pass over rows given as key lists (``values_list`` None: every x = 1)."""
        return self.fit_rows(Rows.from_lists(keys_list, values_list, labels, weights))

    def predict(
        self,
        keys_list: Sequence[Sequence[int]],
        values_list: Sequence[Sequence[float]] | None = None,
    ) -> np.ndarray:
        """Click probabilities of rows given as key lists (predict-only)."""
        return self.predict_rows(Rows.from_lists(keys_list, values_list))

    def fit_rows(self, rows: Rows) -> np.ndarray:
        """One FTRL pass over ``rows`` in order; returns the progressive predictions (n,)."""
        slots, dup_rows = self._prepare(rows, create=True)
        off = rows.offsets.tolist()
        ys = rows.labels.tolist()
        ws = None if rows.weights is None else rows.weights.tolist()
        xs = rows.values
        out = [0.0] * rows.num_rows
        for r in range(rows.num_rows):
            a, b = off[r], off[r + 1]
            out[r] = self._step(
                slots[a:b],
                None if xs is None else xs[a:b],
                ys[r],
                1.0 if ws is None else ws[r],
                r in dup_rows,
            )
        return np.asarray(out)

    def predict_rows(self, rows: Rows) -> np.ndarray:
        """Click probabilities (n,); the state does not change. Vectorized over rows (the
        weights are fixed), with the same formula as training."""
        n = rows.num_rows
        slots, _ = self._prepare(rows, create=False)
        xw = self._closed_form(self._state[slots])  # (N, 1 + D)
        if rows.values is not None:
            xw *= rows.values[:, None]
        counts = np.diff(rows.offsets)
        row_of = np.repeat(np.arange(n), counts)
        t = self.bias_weight() + np.bincount(row_of, weights=xw[:, 0], minlength=n)
        starts = rows.offsets[:-1][counts > 0]
        if self.dim and starts.size:
            v = xw[:, 1:]  # (N, D)
            s = np.add.reduceat(v, starts, axis=0)  # (rows with keys, D)
            q = np.add.reduceat(np.einsum("ij,ij->i", v, v), starts)
            t[counts > 0] += 0.5 * (np.einsum("ij,ij->i", s, s) - q)
        return _sigmoid_array(t)

    # ------------------------------------------------------------------------- internals

    def _closed_form(self, st: np.ndarray) -> np.ndarray:
        """Weights of states ``st`` (..., 2, 1 + D)."""
        z, n = st[..., 0, :], st[..., 1, :]
        w = np.minimum(np.maximum(z, self._neg_l1), self._l1)  # clip(z, -l1, l1) - z
        w -= z
        return w / ((np.sqrt(n) + self._beta) * self._inv_alpha + self._l2)

    def _reserve(self, size: int) -> None:
        if size > self._state.shape[0]:
            grown = np.zeros((max(size, 2 * self._state.shape[0]),) + self._state.shape[1:])
            grown[: self._used] = self._state[: self._used]
            self._state = grown

    def _lookup(self, keys: np.ndarray, create: bool) -> np.ndarray:
        """Slots of distinct ``keys``: new keys get fresh state (``create``) or slot 0."""
        get = self._slots.get
        slots = np.fromiter((get(k, 0) for k in keys.tolist()), np.int64, keys.size)
        if not create:
            return slots
        new = np.flatnonzero(slots == 0)
        if new.size:
            lo, hi = self._used, self._used + new.size
            self._reserve(hi)
            slots[new] = np.arange(lo, hi)
            self._slots.update(zip(keys[new].tolist(), range(lo, hi)))
            if self.dim:
                v0 = init_factors(keys[new], self.dim, self.dim, self.init_std, self.seed)
                self._state[lo:hi, 0, 1:] = ftrl_init_z(v0.astype(np.float64), self.factor)
            self._used = hi
        return slots

    def _prepare(self, rows: Rows, create: bool) -> tuple[np.ndarray, set[int]]:
        """Each occurrence's slot and the rows holding a key more than once."""
        uniq, inv = np.unique(rows.keys, return_inverse=True)
        slots = self._lookup(uniq, create)[inv]
        row_of = np.repeat(np.arange(rows.num_rows, dtype=np.int64), np.diff(rows.offsets))
        code = np.sort(row_of * max(uniq.size, 1) + inv)
        dup = code[1:][code[1:] == code[:-1]]
        return slots, set((dup // max(uniq.size, 1)).tolist())

    def _step(
        self, s: np.ndarray, x: np.ndarray | None, y: float, weight: float, dup: bool
    ) -> float:
        """Score one row (slots ``s``, values ``x``), then one FTRL step; returns p."""
        st = np.take(self._state, s, axis=0)  # (k, 2, 1 + D), a copy
        z, nn = st[:, 0], st[:, 1]  # views into st
        sq = np.sqrt(nn)
        w = np.maximum(z, self._neg_l1)  # clip(z, -l1, l1) - z: -sgn(z) (|z| - l1)_+
        np.minimum(w, self._l1, out=w)
        w -= z
        den = sq + self._beta
        den *= self._inv_alpha
        den += self._l2
        w /= den  # (k, 1 + D): w_i, v_i
        xw = w if x is None else w * x[:, None]
        pb = self._bias
        sqb = math.sqrt(self._nb)
        wb = -self._zb / ((pb.beta + sqb) / pb.alpha)
        t = wb + float(xw[:, 0].sum())
        if self.dim:
            v = xw[:, 1:]  # (k, D): v_i x_i
            sv = v.sum(0)  # (D,): S
            t += 0.5 * (float(sv @ sv) - float(np.vdot(v, v)))
        p = _sigmoid(t)
        g = (p - y) * weight
        grad = np.empty_like(w)  # (k, 1 + D)
        grad[:, 0] = g
        if self.dim:
            np.subtract(sv, v, out=grad[:, 1:])
            grad[:, 1:] *= g
        if x is not None:
            grad *= x[:, None]
        if dup:  # one step per key, with the sum over its occurrences
            s, first, inv = np.unique(s, return_index=True, return_inverse=True)
            summed = np.zeros((s.size, grad.shape[1]))
            np.add.at(summed, inv, grad)
            grad, st, sq, w = summed, st[first], sq[first], w[first]
            z, nn = st[:, 0], st[:, 1]
        g2 = grad * grad
        sigma = nn + g2
        np.sqrt(sigma, out=sigma)
        sigma -= sq
        sigma *= self._inv_alpha
        sigma *= w
        z += grad
        z -= sigma
        nn += g2
        self._state[s] = st
        nb = self._nb + g * g
        self._zb += g - (math.sqrt(nb) - sqb) / pb.alpha * wb
        self._nb = nb
        return p


def run_reference(
    root: str,
    train_days: Sequence[str],
    test_days: Sequence[str],
    *,
    linear: FtrlParams | None = None,
    factor: FtrlParams | None = None,
    dim: int = 8,
    init_std: float | None = None,
    seed: int | None = None,
    config: Config | None = None,
) -> dict[str, Any]:
    """One per-sample pass over ``train_days`` of the log at ``root`` (file/row order), then a
    predict-only pass over ``test_days``. Hyperparameters left None come from ``config``
    (default: psfm's default config with ``data.root = root``): ``ftrl.linear``,
    ``ftrl.factor``, ``model.init_std``, ``train.seed``. ``config.data`` says how rows are
    decoded. Returns test ``auc`` (exact), ``logloss``, ``rows``, and ``train_rows``,
    ``progressive_auc``, ``keys``, ``seconds`` (all), ``fit_seconds`` (the per-row loop, I/O
    excluded) and ``us_per_row`` (``fit_seconds`` per training row)."""
    cfg = (
        config if config is not None else load_config(None, [f"data.root={json.dumps(str(root))}"])
    )
    if cfg.model.loss != "logistic":
        raise ConfigError(
            f"The reference trains the logistic loss only. Got model.loss = "
            f"{cfg.model.loss!r} instead."
        )
    ftrl = resolve_ftrl(cfg.ftrl, 1)  # rates left to auto: those of the smallest batches
    model = PerSampleFtrlFM(
        ftrl.linear if linear is None else linear,
        ftrl.factor if factor is None else factor,
        dim,
        cfg.model.init_std if init_std is None else init_std,
        cfg.train.seed if seed is None else seed,
    )
    t0 = time.perf_counter()
    fit_s = 0.0
    prog: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    for rows in iter_rows(cfg, str(root), train_days):
        t1 = time.perf_counter()
        prog.append((rows.labels, model.fit_rows(rows), rows.weights))
        fit_s += time.perf_counter() - t1
    test = [
        (rows.labels, model.predict_rows(rows), rows.weights)
        for rows in iter_rows(cfg, str(root), test_days)
    ]
    seconds = time.perf_counter() - t0

    def cat(parts: list, i: int) -> np.ndarray | None:
        if any(p[i] is None for p in parts):
            return None
        return np.concatenate([p[i] for p in parts]) if parts else np.zeros(0)

    y, p, w = cat(test, 0), cat(test, 1), cat(test, 2)
    train_rows = int(sum(len(t[0]) for t in prog))
    return {
        "auc": auc_exact(y, p, w),
        "logloss": logloss(y, p, w),
        "rows": int(y.size),
        "train_rows": train_rows,
        "progressive_auc": auc_exact(cat(prog, 0), cat(prog, 1), cat(prog, 2)),
        "keys": model.num_keys,
        "seconds": seconds,
        "fit_seconds": fit_s,
        "us_per_row": 1e6 * fit_s / max(train_rows, 1),
    }

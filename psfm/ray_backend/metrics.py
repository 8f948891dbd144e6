"""psfm's live metrics on Ray's metrics API (``ray.util.metrics``): what a CTR engineer watches
while a run trains, on the Ray dashboard and in Prometheus / Grafana
(``cluster/grafana_psfm.json``).

=========================  =======  =================  ======================================
metric                     kind     tags (besides run)  set by, when
=========================  =======  =================  ======================================
``psfm_rows_total``        counter  worker, phase      a worker, per work unit (phase: train,
                                                       eval, count)
``psfm_bytes_total``       counter  worker, direction  a worker, per work unit (pull, push)
``psfm_samples_per_s``     gauge                       the driver, per work unit: training rows
                                                       of the current day / its seconds so far
``psfm_train_auc``,        gauge                       the driver, per work unit: progressive
``psfm_train_logloss``                                 AUC / logloss of the current training
                                                       day (each batch scored before its update)
``psfm_days_done``         gauge                       the driver, per day end: training days
                                                       done, over all passes
``psfm_shard_keys``,       gauge    shard              the driver, per day end: keys a shard
``psfm_shard_ps_bytes``                                stores, bytes its arrays hold
``psfm_test_auc``,         gauge    day                the driver, per scored day: histogram
``psfm_test_logloss``                                  AUC / logloss of the day's latest
                                                       predict-only scoring (the next-day
                                                       score, a validation, the test)
=========================  =======  =================  ======================================

Every metric carries the tag ``run``: :func:`run_tag` of the run directory (its last path
component), or a random ``run-XXXXXXXX`` (:func:`new_run_tag`) for a run without one, chosen
once per run so a replayed day keeps it. Ray exports each metric with the prefix ``ray_``
(``psfm_train_auc`` is ``ray_psfm_train_auc`` on a node's metrics endpoint; a counter keeps
its ``_total``). Nothing is published per batch: a worker adds to its counters after each
unit; the driver sets its gauges from the unit reports it hears anyway and at day ends (a
shard's day end reports its bytes with its keys), and refreshes them while the run lives
(:class:`RunMetrics`). With metrics collection off the calls export nothing.
"""

from __future__ import annotations

import math
import posixpath
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ray.util import metrics as ray_metrics

from psfm.backend import UnitReport
from psfm.metrics import MetricAccumulator

__all__ = [
    "MetricSpec",
    "METRICS",
    "RUN_TAG",
    "run_tag",
    "new_run_tag",
    "DayTally",
    "WorkerMetrics",
    "RunMetrics",
    "GAUGE_REFRESH_S",
]

RUN_TAG = "run"
# Ray evicts a gauge not set for two export intervals (2 x metrics_report_interval_ms, 10 s by
# default): the driver sets its gauges again at this interval.
GAUGE_REFRESH_S = 5.0
DAY_GAUGES_EVERY_S = 1.0  # the current day's gauges are computed at most this often


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name (Ray exports it as ``ray_`` + name), kind, description and the
    tag keys it has besides ``run``."""

    name: str
    kind: str  # "counter" | "gauge"
    description: str
    tags: tuple[str, ...] = ()

    def make(self, run: str) -> ray_metrics.Counter | ray_metrics.Gauge:
        """The Ray metric, its ``run`` tag set to ``run``."""
        cls = ray_metrics.Counter if self.kind == "counter" else ray_metrics.Gauge
        metric = cls(self.name, self.description, tag_keys=(RUN_TAG, *self.tags))
        metric.set_default_tags({RUN_TAG: run})
        return metric

    def counter(self, run: str) -> ray_metrics.Counter:
        metric = self.make(run)
        assert isinstance(metric, ray_metrics.Counter), self.name
        return metric

    def gauge(self, run: str) -> ray_metrics.Gauge:
        metric = self.make(run)
        assert isinstance(metric, ray_metrics.Gauge), self.name
        return metric


ROWS = MetricSpec(
    "psfm_rows_total", "counter", "rows workers processed (train, eval, count)", ("worker", "phase")
)
BYTES = MetricSpec(
    "psfm_bytes_total", "counter", "bytes workers pulled and pushed", ("worker", "direction")
)
SAMPLES_PER_S = MetricSpec(
    "psfm_samples_per_s", "gauge", "training rows per second of the current day"
)
TRAIN_AUC = MetricSpec("psfm_train_auc", "gauge", "progressive AUC of the current training day")
TRAIN_LOGLOSS = MetricSpec(
    "psfm_train_logloss", "gauge", "progressive logloss of the current training day"
)
DAYS_DONE = MetricSpec("psfm_days_done", "gauge", "training days done, over all passes")
SHARD_KEYS = MetricSpec("psfm_shard_keys", "gauge", "keys a shard stores", ("shard",))
SHARD_BYTES = MetricSpec("psfm_shard_ps_bytes", "gauge", "bytes a shard's arrays hold", ("shard",))
TEST_AUC = MetricSpec(
    "psfm_test_auc", "gauge", "AUC of a scored day (test, validation, next day)", ("day",)
)
TEST_LOGLOSS = MetricSpec(
    "psfm_test_logloss", "gauge", "logloss of a scored day (test, validation, next day)", ("day",)
)
METRICS = (
    ROWS,
    BYTES,
    SAMPLES_PER_S,
    TRAIN_AUC,
    TRAIN_LOGLOSS,
    DAYS_DONE,
    SHARD_KEYS,
    SHARD_BYTES,
    TEST_AUC,
    TEST_LOGLOSS,
)


def run_tag(run_dir: str) -> str:
    """The ``run`` tag of a run directory: its last path component (``runs/rafm-8/`` ->
    ``rafm-8``, ``s3://bucket/runs/fm`` -> ``fm``); ``""`` for no run directory."""
    return posixpath.basename(run_dir.split("://", 1)[-1].rstrip("/"))


def new_run_tag() -> str:
    """A ``run`` tag for a run without a run directory: ``run-`` and 8 random hex digits."""
    return f"run-{uuid.uuid4().hex[:8]}"


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if math.isfinite(v)}


class DayTally:
    """The current training day's rows, seconds and progressive metrics, from the unit
    reports: what the driver's gauges show. ``clock``: seconds (``time.perf_counter``).
    The metrics are computed at most every ``every_s`` (the histogram AUC of a day took
    about 7 ms, merging a unit's accumulator about 1 ms)."""

    def __init__(
        self, clock: Callable[[], float] = time.perf_counter, every_s: float = DAY_GAUGES_EVERY_S
    ) -> None:
        self.clock, self.every_s = clock, every_s
        self.reset()

    def reset(self) -> None:
        """A new day starts with the next report."""
        self.rows = 0
        self.t0: float | None = None
        self.last = -math.inf
        self.acc = MetricAccumulator()

    def add(self, r: UnitReport) -> dict[str, float]:
        """Add a unit's report; returns :meth:`values` when ``every_s`` has passed since they
        were last computed, else ``{}``."""
        now = self.clock()
        if self.t0 is None:  # the day's first unit: its time started when it was handed out
            self.t0 = now - r.seconds
        self.rows += r.rows
        if r.acc_state is not None:
            self.acc.merge(MetricAccumulator.from_state(r.acc_state))
        return self.values() if now - self.last >= self.every_s else {}

    def values(self) -> dict[str, float]:
        """The gauges' values by metric name (those defined: none before the first report)."""
        if self.t0 is None:
            return {}
        self.last = now = self.clock()
        res = self.acc.result()
        return _finite(
            {
                SAMPLES_PER_S.name: self.rows / max(now - self.t0, 1e-9),
                TRAIN_AUC.name: res["auc"],
                TRAIN_LOGLOSS.name: res["logloss"],
            }
        )


class WorkerMetrics:
    """A worker's counters: rows and bytes, added per work unit."""

    def __init__(self, run: str, worker: int) -> None:
        self.rows, self.bytes = ROWS.counter(run), BYTES.counter(run)
        self.worker = str(worker)

    def unit(self, rows: int, phase: str, pulled: int, pushed: int) -> None:
        """A unit's rows (``phase``: train, eval, count) and bytes pulled / pushed for it
        (Ray counters take only values > 0)."""
        for metric, value, tags in (
            (self.rows, rows, {"phase": phase}),
            (self.bytes, pulled, {"direction": "pull"}),
            (self.bytes, pushed, {"direction": "push"}),
        ):
            if value > 0:
                metric.inc(value, {"worker": self.worker, **tags})


class RunMetrics:
    """The driver's gauges of one run: the current training day (per unit report), days done
    and the shards' keys and bytes (per day end), scored days (per scoring pass).

    Ray drops a gauge from its metrics endpoint when it has not been set for two export
    intervals (measured: about 20 s with Ray 2.60's default ``metrics_report_interval_ms``,
    10 s), even while the process that set it lives; so between :meth:`start` and
    :meth:`stop` a daemon thread sets every gauge to its last value again every
    ``refresh_s`` seconds."""

    def __init__(self, run: str, refresh_s: float = GAUGE_REFRESH_S) -> None:
        self.run, self.refresh_s = run, refresh_s
        self.day = DayTally()
        self._gauges = {s.name: s.gauge(run) for s in METRICS if s.kind == "gauge"}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, name: str, value: float, **tags: str) -> None:
        """Set gauge ``name`` (tagged ``run`` and ``tags``); kept for the refresher."""
        with self._lock:
            self._last[name, tuple(sorted(tags.items()))] = float(value)
        self._gauges[name].set(float(value), tags)

    def train_unit(self, r: UnitReport) -> None:
        for name, value in self.day.add(r).items():
            self.set(name, value)

    def end_day(self, days_done: int, shards: Sequence[Mapping[str, int]] = ()) -> None:
        """A training day ended: ``days_done`` over all passes, and each shard's ``keys`` and
        ``ps_bytes`` (in shard order). The day's gauges are set to the whole day's values and
        keep them until the next day's first unit."""
        for name, value in self.day.values().items():
            self.set(name, value)
        self.day.reset()
        self.set(DAYS_DONE.name, days_done)
        for i, info in enumerate(shards):
            self.set(SHARD_KEYS.name, info["keys"], shard=str(i))
            if "ps_bytes" in info:
                self.set(SHARD_BYTES.name, info["ps_bytes"], shard=str(i))

    def scored(self, days: Mapping[str, MetricAccumulator]) -> None:
        """The metrics of each scored day (its predict-only pass's rows)."""
        for day, acc in days.items():
            res = acc.result()
            for name, value in ((TEST_AUC.name, res["auc"]), (TEST_LOGLOSS.name, res["logloss"])):
                if math.isfinite(value):
                    self.set(name, value, day=day)

    def start(self) -> None:
        """Start refreshing the gauges (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._refresh, name="psfm-gauges", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing: the gauges leave the endpoint two export intervals later."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            with self._lock:
                last = list(self._last.items())
            for (name, tags), value in last:
                self._gauges[name].set(value, dict(tags))

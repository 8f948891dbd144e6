"""The pass cache (psfm.data.cache): replayed batches equal read ones, runs with it train bit
for bit as runs without it, memory and disk bounds hold, and units go back to the worker that
keeps them (psfm.data.parquet.UnitQueue)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from psfm.config import load_config
from psfm.data.batch import Batch, DecodedRows, batch_of
from psfm.data.cache import PassCache, compact, expand
from psfm.data.parquet import UnitQueue, WorkUnit, work_units
from psfm.datasets.gen import GenSpec, generate
from psfm.local_backend import LocalBackend
from psfm.runloop import run
from psfm.trainer import train_local
from psfm.worker import Worker
from tests.unit.test_trainer import _final_model

ROWS = 6000  # per day


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_logs")
    generate(root, days=3, rows_per_day=ROWS, spec=GenSpec.small(), seed=11, row_group_rows=1000)
    return root


def _cfg(root, *sets):
    return load_config(
        None,
        [
            f"data.root={json.dumps(str(root))}",
            'data.train_days="1..2"',
            'data.test_days="3"',
            "data.rows_per_unit=2000",
            "data.batch_size=256",
            *sets,
        ],
    )


# every field training reads (the key matrix and mask are not kept)
FIELDS = [f.name for f in dataclasses.fields(Batch) if f.name not in ("keys", "mask", "meta")]


@pytest.mark.parametrize("transform", ["log_bucket", "raw"])
def test_a_replayed_batch_equals_the_read_one_in_value_and_dtype(data, transform):
    cfg = _cfg(data, f'data.numeric_transform="{transform}"')
    worker = Worker(cfg)
    unit = work_units(str(data), "1", cfg.data.rows_per_unit)[0]
    read = [b for b, _ in worker.batches(unit)]
    assert len(read) == 8 and all(b.size for b in read)
    assert any(not b.unit_values for b in read) == (transform == "raw")
    for b in read:
        c = compact(b)
        assert c["occ_uniq"].dtype == np.int32  # kept small ...
        r = expand(c)  # ... and given back as read
        for name in FIELDS:
            x, y = getattr(b, name), getattr(r, name)
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype and np.array_equal(x, y), name
            else:
                assert x == y, name
        # what training does not read is not kept
        assert "occ_value" not in c or transform == "raw"


def test_a_prefetched_unit_is_replayed_as_read_and_dropped_after_its_last_read(data):
    """Worker.prefetch decodes a unit into the cache, training nothing; the unit's next read
    replays the same batches and cursors, and a last read drops it. With the cache off, or
    the unit already kept, prefetch keeps nothing."""
    cfg = _cfg(data)
    unit = work_units(str(data), "1", cfg.data.rows_per_unit)[1]
    read = list(Worker(cfg).batches(unit))
    worker = Worker(cfg)
    assert worker.prefetch(unit) == unit.rows == 2000
    assert worker.prefetch(unit) == 0  # already kept
    replayed = list(worker.batches(unit))  # a last read (reuse=False)
    assert len(replayed) == len(read) and (unit.uid, 256, 0, 1) not in worker.cache
    for (b, c), (r, d) in zip(read, replayed):
        assert c == d and np.array_equal(b.uniq, r.uniq) and np.array_equal(b.labels, r.labels)
        assert np.array_equal(b.occ_uniq, r.occ_uniq)
    off = Worker(_cfg(data, "data.cache_mb=0", "data.cache_disk_mb=0"))
    assert off.prefetch(unit) == 0 and not off.cache.stored


def _timed(key: str) -> bool:
    return "second" in key or key.endswith("_per_s") or "_cpu_" in key


def _strip(report):
    """A report without its timings and CPU times (they differ from run to run)."""
    out = json.loads(json.dumps(report))
    out.pop("seconds", None)
    out.pop("config")  # the cache settings and the run directory differ
    out.pop("timing")
    out.pop("memory")  # what the process holds: not the model's
    for sec in ("train", "test"):
        for k in [k for k in out.get(sec, {}) if _timed(k)]:
            out[sec].pop(k)
    for d in out["train"]["per_day"]:
        for k in [k for k in d if _timed(k) or k in ("started", "cached_rows")]:
            d.pop(k)
    return out


@pytest.mark.parametrize(
    "kind, stats_pass", [('model.kind="fm"', False), ('model.kind="rafm"', True)]
)
def test_passes_replay_from_the_cache_and_train_bit_for_bit_as_reading(
    data, tmp_path, kind, stats_pass
):
    runs = {}
    for name, sets in (
        ("memory", []),
        ("disk", ["data.cache_mb=0", f"data.cache_dir={json.dumps(str(tmp_path / 'spill'))}"]),
        ("off", ["data.cache_mb=0", "data.cache_disk_mb=0"]),
    ):
        (tmp_path / "spill").mkdir(exist_ok=True)
        cfg = _cfg(data, kind, "train.passes=3", f'train.run_dir="{tmp_path / name}"', *sets)
        runs[name] = train_local(cfg)
        assert os.listdir(tmp_path / "spill") == []  # disk entries are never left behind
    cached = {k: [d["cached_rows"] for d in r["train"]["per_day"]] for k, r in runs.items()}
    first = [ROWS, ROWS] if stats_pass else [0, 0]  # the statistics pass read pass 1's units
    assert cached["memory"] == cached["disk"] == first + [ROWS] * 4
    assert cached["off"] == [0] * 6
    models = {k: _final_model(tmp_path / k) for k in runs}
    assert models["off"]["keys"].size > 500
    for k in models["off"]:
        assert np.array_equal(models["memory"][k], models["off"][k]), k
        assert np.array_equal(models["disk"][k], models["off"][k]), k
    assert _strip(runs["memory"]) == _strip(runs["off"]) == _strip(runs["disk"])


def test_validation_days_are_replayed_too_and_the_last_pass_keeps_nothing(data, tmp_path):
    cfg = _cfg(
        data,
        'model.kind="fm"',
        'data.train_days="1"',
        'data.valid_days="2"',
        "train.passes=2",
        'train.run_dir=""',
    )
    worker_caches = []

    class Watched(LocalBackend):
        def close(self):  # look at the cache before the backend lets it go
            worker_caches.append((self.worker.cache.hits, len(self.worker.cache._entries)))
            super().close()

    rep = run(cfg, Watched)
    assert rep["train"]["per_day"][1]["cached_rows"] == ROWS
    # 3 training units and 3 validation units replayed once each; all dropped after
    assert worker_caches == [(6, 0)]


def _batches(n, rows=100, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        keys = rng.integers(0, 10_000, size=(rows, 5)).astype(np.uint64)
        rows_ = DecodedRows(
            keys=keys,
            mask=np.ones(keys.shape, bool),
            values=None,
            labels=rng.integers(0, 2, rows).astype(np.float32),
            weights=None,
            bad=np.zeros(rows, bool),
        )
        out.append((batch_of(rows_), None))
    return out


def test_budgets_are_kept_and_an_unfinished_read_keeps_nothing(tmp_path):
    items = _batches(10)
    one = sum(v.nbytes for v in compact(items[0][0]).values() if isinstance(v, np.ndarray))
    cache = PassCache(memory_bytes=25 * one, disk_bytes=15 * one, directory=str(tmp_path))
    for u in range(4):  # 10 batches a unit: 2 units in memory, 1 on disk, 1 refused
        list(cache.record(("u", u), iter(items)))
    assert [("u", u) in cache for u in range(4)] == [True, True, True, False]
    assert cache.memory_used <= 25 * one and cache.disk_used <= 15 * one
    assert cache.refused == 1 and cache.stored == 3
    assert os.listdir(tmp_path) == []  # the disk entry's file is unlinked while open
    for u in range(3):  # replayed equal, from memory and from disk
        replayed = list(cache.replay(("u", u), last=True))
        assert len(replayed) == len(items)
        for (a, _), (b, _) in zip(items, replayed):
            assert np.array_equal(a.occ_uniq, b.occ_uniq) and np.array_equal(a.uniq, b.uniq)
    assert cache.memory_used == cache.disk_used == 0  # dropped after the last read
    # A read that stops early (an error in the unit) keeps nothing and holds nothing.
    gen = cache.record(("v", 0), iter(items))
    next(gen), next(gen)
    gen.close()
    assert ("v", 0) not in cache and cache.memory_used == 0


def _units(n):
    return [WorkUnit("1", f"f{i}", 0, 1, 10) for i in range(n)]


def test_units_go_back_to_the_worker_that_read_them():
    units, home = _units(6), {}
    q = UnitQueue(units, home, 2)
    first = [(w, q.take(w).file) for w in (0, 1, 0, 1, 1, 1)]
    # the first pass: in order, to whoever is free
    assert first == [(0, "f0"), (1, "f1"), (0, "f2"), (1, "f3"), (1, "f4"), (1, "f5")]
    # a later pass in another order: each worker takes its own units first ...
    shuffled = [units[i] for i in (5, 2, 4, 0, 3, 1)]
    q = UnitQueue(shuffled, home, 2)
    assert [q.take(0).file for _ in range(2)] == ["f2", "f0"]
    assert [q.take(1).file for _ in range(3)] == ["f5", "f4", "f3"]
    # ... and, its own done, takes what is left (worker 1's f1 here): none is lost
    assert q.take(0).file == "f1" and q.take(0) is None and q.take(1) is None
    assert home[units[1].uid] == 0
    # units no worker read come before another worker's units
    q = UnitQueue([*units[:2], WorkUnit("1", "new", 0, 1, 10)], home, 2)
    assert q.take(1).file == "new"


def test_a_folder_in_memory_is_not_used_as_disk(caplog):
    from psfm.data.cache import in_memory

    if not os.path.isdir("/dev/shm") or not in_memory("/dev/shm"):
        pytest.skip("no tmpfs at /dev/shm on this machine")
    items = _batches(3)
    cache = PassCache(memory_bytes=0, disk_bytes=1 << 30, directory="/dev/shm")
    list(cache.record(("u", 0), iter(items)))
    assert ("u", 0) not in cache and cache.refused == 1 and cache.disk_used == 0
    assert "is in memory (tmpfs), not on disk" in caplog.text

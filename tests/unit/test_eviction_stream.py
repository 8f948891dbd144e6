"""A 20-day stream whose tail vocabulary drifts: with ``levels.ttl_days = 3`` the stored keys
stay bounded while they grow every day without eviction, and the test AUC does not suffer."""

from __future__ import annotations

import dataclasses
import json

import pytest

from psfm.config import load_config
from psfm.datasets.gen import GenSpec, generate
from psfm.trainer import train_local

DAYS = 20


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    spec = dataclasses.replace(GenSpec.small(), drift=0.5)  # half the tail ids are new each day
    generate(root, days=DAYS, rows_per_day=10_000, spec=spec, seed=3, row_group_rows=4096)
    return root


def _run(root, ttl):
    train = ",".join(str(d) for d in range(1, DAYS))
    cfg = load_config(
        None,
        [
            f"data.root={json.dumps(str(root))}",
            'model.kind="fm"',
            f'data.train_days="{train}"',
            f'data.test_days="{DAYS}"',
            f"levels.ttl_days={ttl}",
        ],
    )
    return train_local(cfg)


def test_eviction_bounds_the_keys_of_a_drifting_stream_at_no_cost_in_auc(stream):
    keep = _run(stream, 0)
    evict = _run(stream, 3)
    k0 = [d["keys"] for d in keep["train"]["per_day"]]
    k3 = [d["keys"] for d in evict["train"]["per_day"]]
    ev = [d["evicted"] for d in evict["train"]["per_day"]]
    assert len(k0) == len(k3) == DAYS - 1
    # without eviction every day adds keys; the last day holds over 3x day 4's
    assert all(b > a for a, b in zip(k0, k0[1:])) and k0[-1] > 3 * k0[3]
    assert sum(d["evicted"] for d in keep["train"]["per_day"]) == 0
    # with a 3-day TTL the first 3 days are equal, then the store stays at day 4's size
    assert k3[:3] == k0[:3]
    assert max(k3[3:]) <= 1.05 * k3[3] and min(k3[3:]) >= 0.95 * k3[3], k3
    assert all(e > 0 for e in ev[4:]) and sum(ev[:3]) == 0
    assert evict["model"]["ps_bytes"] < 0.5 * keep["model"]["ps_bytes"]
    assert abs(evict["test"]["auc"] - keep["test"]["auc"]) <= 0.003, (
        evict["test"]["auc"],
        keep["test"]["auc"],
    )

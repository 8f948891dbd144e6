"""A real local Ray for the integration tests: one per module, CPUs pinned."""

from __future__ import annotations

import pytest

NUM_CPUS = 6  # logical: 3 shards + 2 workers + driver-side tasks on this 2-core machine


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=NUM_CPUS,
        include_dashboard=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()

"""A real local Ray for the integration tests: one per module, CPUs pinned."""

from __future__ import annotations

import pytest

NUM_CPUS = 6  # logical: 3 shards + 2 workers + driver-side tasks on this 2-core machine


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from psfm.ray_backend.driver import actor_environment

    if ray.is_initialized():
        ray.shutdown()
    with actor_environment():  # one thread per actor, as psfm's own local Ray
        ray.init(num_cpus=NUM_CPUS, include_dashboard=False)
    yield ray
    ray.shutdown()

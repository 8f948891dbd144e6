"""The placement check that turns "waits forever for resources" into a one-line error before any
actor is created (pure: nodes' resources as Ray reports them)."""

from __future__ import annotations

import pytest

from psfm.config import load_config
from psfm.errors import ConfigError
from psfm.ray_backend.placement import check_placement


def _cfg(*sets):
    return load_config(None, ["ps.shards=2", "train.workers=2", *sets])


def test_two_shards_and_two_workers_do_not_fit_a_2_cpu_head():
    with pytest.raises(ConfigError) as e:
        check_placement(_cfg(), [{"CPU": 2.0}], 0.0)
    msg = str(e.value)
    assert "1 node(s), 2 CPUs" in msg and "need 4 CPUs in all" in msg
    assert "--set ray.shard_cpus=0.5" in msg and "\n" not in msg


def test_what_fits_passes():
    check_placement(_cfg(), [{"CPU": 4.0}], 0.0)
    check_placement(_cfg("ray.shard_cpus=0.5", "ray.worker_cpus=0.5"), [{"CPU": 2.0}], 0.0)
    check_placement(_cfg(), [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 2.0}], 0.0)


def test_packing_per_node_is_checked_not_only_the_sum():
    # 4 CPUs in all, but no node holds a 2-CPU actor
    with pytest.raises(ConfigError, match="on any one node, as packed"):
        check_placement(_cfg("ray.worker_cpus=2", "ray.shard_cpus=0"), [{"CPU": 1.0}] * 4, 0.0)


def test_cuda_workers_on_a_cluster_without_gpus_are_refused():
    with pytest.raises(ConfigError, match=r"train.device = 'cuda' asks 2 GPU\(s\) .* has 0"):
        check_placement(_cfg('train.device="cuda"'), [{"CPU": 8.0}], 1.0)
    check_placement(_cfg('train.device="cuda"'), [{"CPU": 8.0, "GPU": 2.0}], 1.0)
    with pytest.raises(ConfigError, match="on any one node"):  # GPUs on a node without CPUs left
        check_placement(_cfg('train.device="cuda"'), [{"CPU": 4.0}, {"CPU": 0.0, "GPU": 2.0}], 1.0)


def test_an_unauthenticated_local_ray_is_warned_about(monkeypatch, caplog):
    from psfm.ray_backend import driver

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    driver.check_local_ray_security()
    assert "RAY_AUTH_MODE=disabled: the local Ray psfm starts accepts calls" in caplog.text
    caplog.clear()
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setattr(driver, "_ray_version", lambda: (2, 45))
    driver.check_local_ray_security()
    assert "starts it without authentication" in caplog.text
    caplog.clear()
    monkeypatch.setattr(driver, "_ray_version", lambda: (2, 60))
    driver.check_local_ray_security()  # on by default there: nothing to say
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    driver.check_local_ray_security()
    assert caplog.text == ""


def test_an_embedded_ray_is_sized_for_the_largest_run(monkeypatch):
    from psfm.ray_backend import driver

    monkeypatch.setattr(driver.os, "cpu_count", lambda: 2)
    assert driver.local_cpus([_cfg("ps.shards=1", "train.workers=1")]) == 2  # the machine's
    # a study of 1+2 and 2+2 runs: the 2+2 run's four CPUs (runs then wait for room)
    assert driver.local_cpus([_cfg("ps.shards=1"), _cfg()]) == 4
    assert driver.local_cpus([_cfg("ray.worker_cpus=0.5")]) == 3  # 2 + 2 x 0.5
    assert driver.local_cpus([]) == 2


def test_a_shard_says_whether_it_sees_the_drivers_run_directory(tmp_path):
    from psfm.config import FtrlConfig, LevelConfig, ModelConfig
    from psfm.ray_backend.server import ShardServer

    shard = ShardServer(ModelConfig(kind="lr"), FtrlConfig(), LevelConfig(), shard_id=3, n_shards=4)
    probe = tmp_path / ".psfm-reach-x"
    probe.write_bytes(b"token")
    assert shard.reach(str(probe), b"token") == ""
    assert (tmp_path / ".psfm-reach-x.shard-3").read_bytes() == b"token"  # written back
    # a node whose folder of that name is its own: another file, or none
    assert "reads another file" in shard.reach(str(probe), b"other")
    gone = shard.reach(str(tmp_path / "elsewhere" / ".psfm-reach-x"), b"token")
    assert gone.startswith("shard 3 on ") and "cannot read the driver's file" in gone

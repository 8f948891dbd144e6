"""The local Ray psfm starts listens on 127.0.0.1 only and refuses callers without its token: a
client without it is refused, one with it gets in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.integration.sockets import assert_loopback_only, listening

# A client on this machine: Ray would turn the loopback address into the host's routable IP,
# where the embedded Ray does not listen, so it keeps the address as psfm's driver does.
CLIENT = (
    "from ray._private import services; services.resolve_ip_for_localhost = lambda h: h; "
    "import ray; ray.init(address={gcs!r}); print('CONNECTED')"
)


def _client(gcs: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"} | env
    return subprocess.run(
        [sys.executable, "-c", CLIENT.format(gcs=gcs)],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_embedded_ray_refuses_clients_without_its_token():
    import ray

    from psfm.ray_backend.driver import TOKEN_AUTH_LOCAL_DEFAULT, _ray_version, connect

    if _ray_version() < TOKEN_AUTH_LOCAL_DEFAULT:
        pytest.skip(f"ray {ray.__version__} starts a local Ray without token authentication")
    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.pop("RAY_AUTH_MODE", None)
    try:
        connect(num_cpus=1)
        token = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
        assert os.stat(token).st_mode & 0o777 == 0o600  # the owner's alone
        # every server of the embedded Ray (GCS, raylet, agents) on 127.0.0.1 alone, with
        # metrics and dashboard off (test_ray_metrics: the dashboard's and exporter's, on)
        if shutil.which("ss"):
            assert_loopback_only(listening())
        gcs = ray.get_runtime_context().gcs_address
        refused = _client(gcs, RAY_AUTH_MODE="disabled")
        assert refused.returncode != 0 and "CONNECTED" not in refused.stdout
        assert "token" in (refused.stdout + refused.stderr).lower()
        allowed = _client(gcs, RAY_AUTH_MODE="token")  # the user's own token file
        assert allowed.returncode == 0 and "CONNECTED" in allowed.stdout, allowed.stderr[-2000:]
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved

"""cluster/local_cluster.sh end to end: a real head + 2 worker-node Ray cluster on this machine.

Starts the cluster into a temporary directory (its own free ports and Ray temp dirs, so Ray
instances of other tests are left alone), then checks from separate client processes:

* 3 alive nodes, all on 127.0.0.1, the head with ``psfm_driver``, each worker node with
  ``psfm_shard`` + ``psfm_worker`` and 1 CPU; a task that needs ``{"psfm_shard": 1}`` runs on a
  worker node (client environment from ``local_cluster.sh env``, i.e. the token file);
* token authentication: a client with no token and one with a wrong token are refused by the GCS,
  and the dashboard answers 401 without the token;
* ``stop`` leaves no process of the cluster behind (and does not touch a bystander process that
  looks like Ray), and is idempotent.

Every Ray client runs in a subprocess, so this pytest process never changes its own Ray config.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "local_cluster.sh"

if not sys.platform.startswith("linux") or shutil.which("setsid") is None:
    pytest.skip("local_cluster.sh needs Linux and setsid", allow_module_level=True)

_RAY_VARS = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
)


def _base_env(home: Path) -> dict[str, str]:
    """This process's environment without any Ray address/auth setting, HOME pointing at an
    empty directory (so no ~/.ray/auth_token of another Ray instance can be picked up)."""
    env = {k: v for k, v in os.environ.items() if k not in _RAY_VARS}
    env["HOME"] = str(home)
    env["PYTHON"] = sys.executable
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _script(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _state(cluster_dir: Path) -> dict[str, str]:
    out = {}
    for line in (cluster_dir / "cluster.env").read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


def _cluster_processes(sids: set[int], root: str) -> list[str]:
    """Live processes in the nodes' sessions or naming the cluster's Ray temp dir."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if fields[0] != "Z" and (int(fields[3]) in sids or f"{root}/" in cmdline):
            found.append(f"{d} {cmdline[:120]}")
    return found


CLIENT_OK = r"""
import json, ray
ray.init(logging_level="ERROR", log_to_driver=False)          # RAY_ADDRESS from `env`
nodes = [{"id": n["NodeID"], "alive": n["Alive"], "ip": n["NodeManagerAddress"],
          "resources": n["Resources"]} for n in ray.nodes()]

@ray.remote(num_cpus=1, resources={"psfm_shard": 1})
def where():
    return ray.get_runtime_context().get_node_id()

print("RESULT " + json.dumps({"nodes": nodes, "task_node": ray.get(where.remote(), timeout=60)}))
"""

CLIENT_REFUSED = r"""
import sys, ray
try:
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
except Exception as e:
    print(f"REFUSED {type(e).__name__}: {e} / {e.__cause__!r}")
    sys.exit(3)
print("CONNECTED", len(ray.nodes()))
"""


def test_local_cluster_script(tmp_path: Path) -> None:
    t0 = time.monotonic()
    cluster_dir = tmp_path / "cluster"
    home = tmp_path / "home"
    home.mkdir()
    env = _base_env(home)
    # A process that looks like Ray to name-based killers (`ray stop`); stop must spare it.
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "raylet", "gcs_server", "ray::IDLE"]
    )
    sids: set[int] = set()
    root = ""
    try:
        start = _script(
            env,
            "start",
            "--workers",
            "2",
            "--cpus-per-node",
            "1",
            "--dir",
            str(cluster_dir),
            "--timeout",
            "60",
            timeout=80,
        )
        assert start.returncode == 0, start.stdout + start.stderr
        state = _state(cluster_dir)
        root = state["RAY_TMP_ROOT"]
        sids = {int(p.read_text()) for p in (cluster_dir / "pids").glob("node*.pid")}
        assert len(sids) == 3
        address = state["GCS_ADDRESS"]
        assert start.stdout.strip() == address and address.startswith("127.0.0.1:")
        addr = _script(env, "address", "--dir", str(cluster_dir), timeout=10)
        assert addr.stdout.strip() == address
        token_file = cluster_dir / "auth_token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert len(token) == 64

        # Refused clients (in the background while the good client runs): no token at all, and
        # token mode with a wrong token. Few GCS connect retries so a refusal is quick.
        refused_env = dict(
            env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_NUM_REDIS_GET_RETRIES="3"
        )
        wrong_env = dict(refused_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
        refused = [
            subprocess.Popen(
                [sys.executable, "-c", CLIENT_REFUSED, address],
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for e in (refused_env, wrong_env)
        ]

        # The good client takes its environment from `local_cluster.sh env`.
        ok = subprocess.run(
            [
                "bash",
                "-c",
                'eval "$(bash "$0" env --dir "$1")" && exec "$2" -c "$3"',
                str(SCRIPT),
                str(cluster_dir),
                sys.executable,
                CLIENT_OK,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        result = json.loads(
            next(line for line in ok.stdout.splitlines() if line.startswith("RESULT "))[
                len("RESULT ") :
            ]
        )
        nodes = [n for n in result["nodes"] if n["alive"]]
        assert len(nodes) == 3, result
        assert {n["ip"] for n in nodes} == {"127.0.0.1"}
        heads = [n for n in nodes if n["resources"].get("psfm_driver") == 1]
        workers = [
            n
            for n in nodes
            if n["resources"].get("psfm_shard") == 1 and n["resources"].get("psfm_worker") == 1
        ]
        assert len(heads) == 1 and "psfm_shard" not in heads[0]["resources"]
        assert len(workers) == 2 and all(n["resources"]["CPU"] == 1 for n in workers)
        assert result["task_node"] in {n["id"] for n in workers}

        for proc in refused:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 3, out
            assert "REFUSED" in out and (
                "Unauthenticated" in out
                or "InvalidAuthToken" in out
                or "AuthenticationError" in out
            ), out

        # The dashboard (job API) wants the token too.
        url = f"{state['DASHBOARD_URL']}/api/version"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=10)
        assert err.value.code == 401
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

        stop = _script(env, "stop", "--dir", str(cluster_dir), timeout=40)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert _cluster_processes(sids, root) == []
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=2)
        assert not token_file.exists()
        assert bystander.poll() is None, "stop killed a process that is not the cluster's"
        again = _script(env, "stop", "--dir", str(cluster_dir), "--purge", timeout=20)
        assert again.returncode == 0, again.stdout + again.stderr
        assert not Path(root).exists()
    finally:
        if sids or cluster_dir.exists():
            _script(env, "stop", "--dir", str(cluster_dir), "--purge", timeout=40)
        bystander.kill()
        bystander.wait()
        if root:
            shutil.rmtree(root, ignore_errors=True)
    assert _cluster_processes(sids, root) == []
    assert time.monotonic() - t0 < 90

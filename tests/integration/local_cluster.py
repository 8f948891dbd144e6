"""``cluster/local_cluster.sh`` from the tests: start a head and N worker nodes in a folder of
the test's, read the environment its clients need, stop it whatever happens."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "local_cluster.sh"


def cluster_env(state: Path) -> dict[str, str]:
    """This process's environment with the cluster's (``local_cluster.sh env``) on top:
    ``RAY_ADDRESS``, the token path, the loopback switch; what it unsets is left out."""
    out = subprocess.run(
        [str(SCRIPT), "env", "--dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export ") :].partition("=")
            env[k] = shlex.split(v)[0] if v else ""
        elif line.startswith("unset "):
            for k in line.split()[1:]:
                env.pop(k, None)
    return env


@contextlib.contextmanager
def local_cluster(state: Path, workers: int, cpus_per_node: int = 2) -> Iterator[dict[str, str]]:
    """A running head + ``workers`` worker nodes of ``cpus_per_node`` CPUs with their state in
    ``state``; yields :func:`cluster_env`; stopped on the way out."""
    start = subprocess.run(
        [str(SCRIPT), "start", "--workers", str(workers), "--dir", str(state)]
        + ["--cpus-per-node", str(cpus_per_node)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        yield cluster_env(state)
    finally:
        subprocess.run([str(SCRIPT), "stop", "--dir", str(state)], capture_output=True, timeout=120)

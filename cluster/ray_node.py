"""``ray start`` for psfm's local multi-node cluster, with every node kept on 127.0.0.1.

Usage (what ``cluster/local_cluster.sh`` runs, once per node)::

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python cluster/ray_node.py --block \\
        --node-ip-address=127.0.0.1 [--head ... | --address=127.0.0.1:PORT ...]

The arguments are those of ``ray start``. Why a wrapper: on Linux the ``ray start`` CLI of Ray
2.60 deliberately rewrites a loopback ``--node-ip-address``/``--address`` to the host's
routable IP (``ray._private.services.resolve_ip_for_localhost``), so ``ray start
--node-ip-address=127.0.0.1`` still advertises e.g. 192.0.2.2 and its gRPC servers listen on
every interface. Two things keep the nodes on loopback:

* in this process, ``resolve_ip_for_localhost`` is wrapped to leave 127.0.0.1 as it is. With
  node IP 127.0.0.1 the GCS, raylets, object managers, agents, dashboard and client server bind
  127.0.0.1 only;
* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the environment of the node (inherited by every
  process it spawns: job drivers, workers) and of every client makes Ray's Python side resolve
  "this host" to 127.0.0.1, so ``ray.init(address="127.0.0.1:PORT")`` and ``ray job submit``
  connect to 127.0.0.1 instead of the rewritten routable IP. The flag also makes ``ray start``
  refuse to add worker nodes ("multi-node clusters are not supported on Windows and OSX"), so
  this process sets it back to on for itself.

Both rely on Ray internals checked here; if a Ray upgrade moves them, this exits with an error
instead of silently starting a cluster on the routable IP.
"""

from __future__ import annotations

import os
import sys

LOOPBACK = "127.0.0.1"


def _pin_loopback() -> None:
    from ray._private import ray_constants, services

    if not hasattr(services, "resolve_ip_for_localhost") or not hasattr(
        ray_constants, "ENABLE_RAY_CLUSTER"
    ):
        sys.exit(
            "cluster/ray_node.py: this Ray version has no "
            "ray._private.services.resolve_ip_for_localhost / "
            "ray_constants.ENABLE_RAY_CLUSTER; cannot keep nodes on 127.0.0.1"
        )
    if os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR) != "0":
        sys.exit(
            "cluster/ray_node.py: run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the "
            "environment (the node's processes and job drivers need it to reach 127.0.0.1)"
        )
    original = services.resolve_ip_for_localhost

    def keep_loopback(host: str) -> str:
        return host if host == LOOPBACK else original(host)

    services.resolve_ip_for_localhost = keep_loopback
    # This process starts worker nodes too: undo the single-host switch for it alone.
    ray_constants.ENABLE_RAY_CLUSTER = True


def main() -> None:
    args = sys.argv[1:]
    if f"--node-ip-address={LOOPBACK}" not in args:
        sys.exit(f"cluster/ray_node.py: pass --node-ip-address={LOOPBACK}")
    _pin_loopback()
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", "start", *args]
    ray_main()


if __name__ == "__main__":
    main()

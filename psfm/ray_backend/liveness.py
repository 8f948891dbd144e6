"""Waits on Ray that never wait forever.

A shard or worker that dies surfaces as an actor error on the next ``ray.get`` (the failure
policy restarts it), and a node of a cluster that dies takes its actors with it. What Ray does
not turn into an error is the loss of the local Ray the driver started itself: with its raylet
or GCS killed, a pending ``ray.get`` / ``ray.wait`` blocks for good (measured: 9+ minutes,
until killed). So every wait of the driver goes through :func:`wait` / :func:`get`, which wait
in slices of :data:`LIVENESS_S` seconds and after each check the embedded Ray's own processes
(:func:`check_local_ray`); a dead one ends the wait with :class:`RayStopped`. (A killed raylet
does not stop a run at once: actor calls go from process to process, and the GCS declares the
node dead only after its heartbeats stop, about 12 s later, when every actor on it dies.)
"""

from __future__ import annotations

from typing import Any

import ray

from psfm.errors import RunStopped

__all__ = ["LIVENESS_S", "RayStopped", "check_local_ray", "get", "wait"]

LIVENESS_S = 5.0  # a wait checks the local Ray's processes this often
_WATCHED = ("raylet", "gcs_server")  # ray_constants.PROCESS_TYPE_RAYLET / _GCS_SERVER


class RayStopped(RunStopped):
    """The local Ray this process started has lost its raylet or GCS: nothing on it can
    finish, and the run ends (its checkpoints stay; ``--resume`` continues it)."""


def check_local_ray() -> None:
    """Raise :class:`RayStopped` when a raylet or GCS this process started has exited.
    Nothing to check when this process joined a cluster (it started no Ray process)."""
    node = getattr(ray._private.worker, "_global_node", None)
    procs = getattr(node, "all_processes", None) or {}
    for kind in _WATCHED:
        for info in procs.get(kind, ()):
            proc = getattr(info, "process", None)
            code = proc.poll() if proc is not None else None
            if code is not None:
                raise RayStopped(
                    f"The local Ray stopped: its {kind} (pid {proc.pid}) exited with code "
                    f"{code}, so no task on it can finish"
                )


def wait(refs: list, num_returns: int | None = None) -> tuple[list, list]:
    """``ray.wait(refs, num_returns)`` (default: all) that checks the local Ray every
    :data:`LIVENESS_S` seconds while it waits."""
    want = len(refs) if num_returns is None else num_returns
    while True:
        done, rest = ray.wait(refs, num_returns=want, timeout=LIVENESS_S)
        # after every wait, not only a timed-out one: actor calls go straight to the actors,
        # so a run goes on for a while on a raylet that is gone (two waitpid calls)
        check_local_ray()
        if len(done) >= want:
            return done, rest


def get(refs: Any) -> Any:
    """``ray.get`` of a ref or a list of refs, waiting through :func:`wait`."""
    many = isinstance(refs, list)
    wait(refs if many else [refs])
    return ray.get(refs)

"""The embedded Ray's processes go when the driver goes, even by ``kill -9``.

Ray ties its GCS and raylet to the process that started them (they die with it), but not the
raylet's children: measured, a driver killed with SIGKILL left the dashboard agent and the
runtime-env agent running for 40-60 s (each waits on the dead GCS before it exits), on top of
whatever actors had not noticed yet. So when psfm starts a local Ray it also starts this
small watcher in a session of its own, holding the read end of a pipe whose write end only
the driver has. The pipe closes when the driver exits, however it exits; the watcher then
gives Ray a second to stop by itself and kills with SIGKILL what is left of that Ray: the
processes Ray started for the node (checked by their start time, so a reused pid is never
hit) and every process whose environment names that node's raylet (``RAY_RAYLET_PID``: the
agents, actors and idle workers). Linux only (``/proc``); elsewhere it is not started.

The watcher reads JSON lines, ``{"raylet": PID, "procs": [[PID, START], ...]}``, one for each
local Ray the driver starts (a Python session may start several, one after another)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from psfm.memory import pss_sum, start_time

__all__ = ["start_reaper", "ray_own_pss", "main"]

GRACE_S = 1.0  # after the driver is gone: Ray's own shutdown goes first
_reaper: subprocess.Popen | None = None  # this driver's watcher (its stdin: our pipe end)


def _children_of(raylet: int) -> list[int]:
    """Processes whose environment says they belong to the raylet ``raylet``."""
    want = f"RAY_RAYLET_PID={raylet}".encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if want in env:
            out.append(int(d))
    return out


def _node_processes(node: Any) -> tuple[list[list[int]], int | None]:
    """``([[pid, start time], ...], raylet pid)`` of the processes Ray started for ``node``
    (``ray._private.worker._global_node``: None, or none, when this process joined a
    cluster)."""
    procs, raylet = [], None
    for kind, infos in (getattr(node, "all_processes", None) or {}).items():
        for info in infos:
            proc = getattr(info, "process", None)
            if proc is None:
                continue
            start = start_time(proc.pid)
            if start is not None:
                procs.append([proc.pid, start])
            if kind == "raylet":
                raylet = proc.pid
    return procs, raylet


def ray_own_pss(exclude: set[int]) -> int | None:
    """The summed PSS (:mod:`psfm.memory`) of the local Ray this process started: its node's
    processes and every process of its raylet (agents, idle workers), without ``exclude``
    (the run's actors, counted apart); None when this process started no Ray."""
    import ray

    procs, raylet = _node_processes(getattr(ray._private.worker, "_global_node", None))
    if raylet is None or not sys.platform.startswith("linux"):
        return None
    return pss_sum(({p for p, _ in procs} | set(_children_of(raylet))) - exclude)


def start_reaper(node: Any) -> None:
    """Watch the local Ray ``node`` (``ray._private.worker._global_node``) started by this
    process (one watcher a process; Linux only)."""
    global _reaper
    if not sys.platform.startswith("linux"):
        return
    procs, raylet = _node_processes(node)
    if _reaper is None or _reaper.poll() is not None:
        _reaper = subprocess.Popen(
            [sys.executable, "-m", "psfm.ray_backend.reaper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in the driver's process group: a killpg leaves it
        )
    assert _reaper.stdin is not None
    _reaper.stdin.write(json.dumps({"raylet": raylet, "procs": procs}).encode() + b"\n")
    _reaper.stdin.flush()  # kept open: its end is the driver's death


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the driver's
    orders = [json.loads(line) for line in sys.stdin.buffer]  # until the driver exits
    time.sleep(GRACE_S)
    victims: set[int] = set()
    for order in orders:
        victims.update(pid for pid, start in order["procs"] if start_time(pid) == start)
        if order["raylet"]:
            victims.update(_children_of(int(order["raylet"])))
    victims.discard(os.getpid())
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    main()

"""What TCP sockets the Ray this test process started listens on (``ss`` over the process
tree: the embedded Ray's GCS, raylet, dashboard, agents and workers descend from the driver)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (the embedded Ray's GCS, raylet, dashboard, agents
    and workers all descend from the driver)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    tree, grew = {pid}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= new
        grew = bool(new)
    return tree


def listening() -> list[str]:
    """``local-address process`` of every TCP socket this process's tree listens on."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("no ss on this machine")
    out = subprocess.run([ss, "-ltnpH"], capture_output=True, text=True, check=True).stdout
    tree = descendants(os.getpid())
    mine = []
    for line in out.splitlines():
        m = re.search(r"pid=(\d+),", line)
        if m and int(m.group(1)) in tree:
            mine.append(f"{line.split()[3]} {line.split('users:', 1)[-1]}")
    return mine


def assert_loopback_only(listening: list[str]) -> None:
    assert listening, "found no listening socket of this process's Ray"
    elsewhere = [ln for ln in listening if not ln.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))]
    assert elsewhere == [], elsewhere

"""keep_freed_memory: a training process keeps freed heap memory instead of faulting it in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Three 4 MiB arrays made and freed, ten times: glibc's default trims the heap's free top each
# time (it passes twice the largest freed block), so every round faults its pages in again.
_ROUNDS = """
import resource, sys
import numpy as np
from psfm.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def rounds(k):
    for _ in range(k):
        a = [np.ones(1 << 19) for _ in range(3)]
        del a
rounds(2)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
"""


def _faults_per_round(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc only",
)
def test_freed_arrays_are_reused_without_page_faults():
    default = _faults_per_round("default")
    kept = _faults_per_round("keep")
    assert default > 500  # 12 MiB = 3,072 pages a round, most faulted in again
    assert kept < 20


def test_it_says_whether_it_was_set():
    from psfm.memory import keep_freed_memory

    assert keep_freed_memory() is (
        sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    )

"""psfm.allocator: batch-sized temporaries come from a kept heap, not from fresh mmaps."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# mallinfo2().hblks: blocks glibc currently serves with mmap. A live 8 MB numpy array is one
# of them under the default settings and none once the allocator is tuned.
_PROBE = """
import ctypes, sys
import numpy as np
from psfm.allocator import tune_allocator

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
tuned = tune_allocator() if sys.argv[1] == "tune" else False
before = libc.mallinfo2().hblks
a = np.ones(1 << 20)  # 8 MB
again = tune_allocator() == tuned if sys.argv[1] == "tune" else True  # once per process
print(int(tuned), libc.mallinfo2().hblks - before, int(again))
"""


def _probe(mode: str, **env: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True)
    return [int(x) for x in out.stdout.split()]


@glibc
def test_tuned_process_serves_batch_temporaries_from_the_heap():
    assert _probe("plain") == [0, 1, 1]  # default glibc: the 8 MB array is an mmap
    assert _probe("tune") == [1, 0, 1]  # tuned (and idempotent): from the kept heap


@glibc
def test_opt_out_and_user_malloc_settings_are_respected():
    assert _probe("tune", PSFM_TUNE_MALLOC="0") == [0, 1, 1]
    assert _probe("tune", MALLOC_TRIM_THRESHOLD_="1000000")[0] == 0

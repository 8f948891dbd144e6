"""The pure core (math, data, shards, in-process trainer) never imports Ray."""

from __future__ import annotations

import subprocess
import sys


def test_core_modules_do_not_import_ray():
    code = (
        "import sys, psfm, psfm.trainer, psfm.ps.shard, psfm.ps.table, psfm.ps.routing, "
        "psfm.models.family, psfm.optim.ftrl, psfm.data.batch, psfm.metrics, psfm.checkpoint, "
        "psfm.cli; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

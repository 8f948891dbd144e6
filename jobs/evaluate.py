"""Ray job entry point: score days with a run's latest checkpoint.

ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
    python jobs/evaluate.py --run-dir RUN_DIR --days 8
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's psfm

from psfm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))

"""Ray job entry point: run a model-size study (a grid of psfm runs) and write its tables and plot.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/study.py --config jobs/configs/study_small.toml \
        --data s3://bucket/ctr --out s3://bucket/studies/small

Inside a Ray job ``RAY_ADDRESS`` is set, so every run of the study joins the job's cluster; the
runs go one after another, or ``--concurrency N`` at once (each waits for room for all its
actors). ``python jobs/study.py report STUDY_DIR`` re-renders the outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's psfm

from psfm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))

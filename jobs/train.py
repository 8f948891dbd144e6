"""Ray job entry point: train on the configured days, evaluate the test days, write the report.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/train.py --config jobs/configs/rafm.toml \
        --set data.root=s3://bucket/ctr --set train.run_dir=s3://bucket/runs/rafm

(``cluster/runtime_env.yaml`` keeps local data, runs, models and checkpoints out of the upload.)

Inside a Ray job ``RAY_ADDRESS`` is set, so the driver joins the job's cluster.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's psfm

from psfm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

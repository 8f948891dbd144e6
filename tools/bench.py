"""The psfm benchmark suite: writes BENCHMARKS.md and bench.json (see :mod:`psfm.bench`).

python tools/bench.py --quick          # ~300k rows, a few minutes
python tools/bench.py                  # the full run: 2M rows, up to 50M keys
"""

from __future__ import annotations

import sys

from psfm.bench import main

if __name__ == "__main__":
    sys.exit(main())

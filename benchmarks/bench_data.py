"""Loader vs training-step throughput on a small generated dataset, in one run (same as `posevla bench data`).

  * loader samples/s (decode, resize-pad, priors, tokenisation, collate) with 1 and 2 worker processes,
    first epoch (cold caches) and second epoch (warm);
  * samples/s the stage-1 tiny training step consumes (forward + backward + AdamW) on the same batches;
  * their ratio (loader with 1 worker / trainer).

Usage: python benchmarks/bench_data.py [--num-scenes 24] [--workers 1 2] [--threads 0] [--json]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

from posevla.bench.data import main

if __name__ == "__main__":
    main(sys.argv[1:])

"""Time posevla.sim.tabletop.generate_dataset with 1 and 2 workers.

Usage: python benchmarks/bench_generate.py [N] [--width 256 --height 192 --workers 1 2]

Prints scenes/s per worker count and the projected time for 2,000 scenes (target <= 5 min on 2 cores).
On a shared machine the figures are lower bounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

os.environ.setdefault("MUJOCO_GL", "egl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=200, help="scenes per run (default 200)")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from posevla.sim.objects import load_catalogue
    from posevla.sim.tabletop import generate_dataset

    load_catalogue()  # warm the mesh cache so it is not timed
    print(f"generate_dataset: {args.n} scenes x 3 views at {args.width}x{args.height}, cpus={os.cpu_count()}")
    rates = {}
    for w in args.workers:
        root = tempfile.mkdtemp(prefix=f"posevla_bench_w{w}_")
        try:
            s = generate_dataset(root, args.n, seed=args.seed, width=args.width, height=args.height,
                                 workers=w, progress=False)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        rates[w] = s["scenes_per_s"]
        proj = 2000 / s["scenes_per_s"]
        print(
            f"workers={w}: {s['scenes']} scenes, {s['images']} images, {s['annotations']} annotations in "
            f"{s['seconds']:.1f} s -> {s['scenes_per_s']:.2f} scenes/s ({3 * s['scenes_per_s']:.1f} images/s); "
            f"projected 2,000 scenes: {proj / 60:.1f} min ({'meets' if proj <= 300 else 'misses'} the 5 min target)"
        )
    if len(rates) > 1:
        base = args.workers[0]
        for w in args.workers[1:]:
            print(f"speed-up workers={w} vs workers={base}: {rates[w] / rates[base]:.2f}x")


if __name__ == "__main__":
    main()

"""Run the whole corpus outside pytest and print the outcome counts by category, and every message.

    .venv/bin/python tests/corpus/tally.py [--only PREFIX] [--messages FILE.md] [--case-timeout S]

With ``--case-timeout`` a case still running after S seconds (it started real work on bad input: generating,
training) is stopped and counted as ``silent``; useful to measure an older checkout (``PYTHONPATH=OLD/src``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _StillRunning(BaseException):
    """Raised by the alarm in a case that outlived --case-timeout (a BaseException: no `except Exception` eats it)."""


def _alarm(signum, frame):
    raise _StillRunning


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from corpus import OUTCOMES, Result, all_cases, run_case
    from corpus.workspace import Workspace

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run the cases whose id starts with this")
    ap.add_argument("--messages", help="write every case's outcome and message to this markdown file")
    ap.add_argument("--workspace", help="reuse this folder for the datasets and runs (default: a temporary one)")
    ap.add_argument("--case-timeout", type=int, default=0, help="stop a case after this many seconds (0: never)")
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    cases = [c for c in all_cases() if c.id.startswith(args.only)]
    with tempfile.TemporaryDirectory(prefix="posevla-corpus-") as tmp:
        ws = Workspace(args.workspace or tmp)
        counts: Counter = Counter()
        lines = []
        t0 = time.perf_counter()
        for c in cases:
            t = time.perf_counter()
            signal.alarm(args.case_timeout)
            try:
                res = run_case(c, ws)
            except _StillRunning:
                res = Result("silent", f"still running after {args.case_timeout} s: the bad input started real work")
            finally:
                signal.alarm(0)
            counts[c.category, res.outcome] += 1
            dt = time.perf_counter() - t
            lines.append(f"### {c.id}: {res.outcome} ({dt:.2f} s)\n\n```\n{res.message.strip()[:3000]}\n```\n")
            if res.outcome != "clear":
                print(f"{res.outcome:9s} {c.id}\n    {res.message.strip()[-600:]}")
        cats = sorted({c.category for c in cases}, key=[c.category for c in cases].index)
        print(f"\n{len(cases)} cases in {time.perf_counter() - t0:.0f} s\n")
        print("| category | cases | " + " | ".join(OUTCOMES) + " |")
        print("|---|---:|" + "---:|" * len(OUTCOMES))
        for cat in cats + ["all"]:
            per = [sum(v for (k, o), v in counts.items() if o == out and cat in (k, "all")) for out in OUTCOMES]
            print(f"| {cat} | {sum(per)} | " + " | ".join(map(str, per)) + " |")
        if args.messages:
            Path(args.messages).write_text("# Corpus messages\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()

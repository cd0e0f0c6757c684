"""Real-time chunking vs naive chunk switching in MetaWorld, closed loop through the policy server.

Both modes run the same checkpoint, the same environment seeds and the same per-request noise seeds, with a
simulated inference delay (`posevla.serving.robot.ChunkExecutor`): a chunk requested with the observation of
step k becomes usable at step k + d, the old chunk runs meanwhile, and the next request follows s steps after
the previous one. ``naive`` switches to the new chunk at index d; ``rtc`` also sends the rest of the old chunk
as ``action_prefix`` (guided inpainting, `posevla.models.rtc`). A ``naive`` run with d = 0 (no delay) is the
reference (``--skip-reference`` leaves it out). Measured per mode: the action jump at chunk seams
(‖a_new[first] − a_old[would-have-been]‖), the seam delta (‖a_new[first] − last executed action‖), the mean
step-to-step action change, success rate (Wilson 95 %), and request latency.

    .venv/bin/python benchmarks/bench_rtc.py --checkpoint /tmp/rtc/run --task reach-v3 --episodes 10 \\
        --execution-horizon 8 --inference-delay 2 --out /tmp/rtc/bench_rtc.json

``--in-process`` calls `Policy.infer` directly instead of going through `posevla.serving.server`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


class _Recorder:
    """Wraps an ``obs -> action`` policy and keeps every action of the current run (for smoothness)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.episodes, self._cur = inner, [], []

    def reset(self) -> None:
        if self._cur:
            self.episodes.append(np.stack(self._cur))
        self._cur = []
        self.inner.reset()

    def __call__(self, obs: Any) -> np.ndarray:
        a = self.inner(obs)
        self._cur.append(np.asarray(a, np.float64))
        return a

    def step_delta(self) -> float:
        eps = self.episodes + ([np.stack(self._cur)] if self._cur else [])
        d = [np.linalg.norm(np.diff(e, axis=0), axis=1) for e in eps if len(e) > 1]
        return float(np.mean(np.concatenate(d))) if d else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from posevla.eval.card import wilson_interval
    from posevla.eval.rollout import rollout
    from posevla.policy import Policy
    from posevla.serving.robot import ChunkExecutor
    from posevla.sim import make_env

    policy = Policy.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision, seed=0)
    H = policy.chunk_size
    s, d = args.execution_horizon, args.inference_delay
    if s + d > H:
        raise SystemExit(f"execution horizon {s} + delay {d} exceed the chunk size {H}")
    w, h = policy.image_sizes.get(policy.cameras[0], (128, 128))
    runs = ([] if args.skip_reference else [("naive", 0)]) + [("naive", d), ("rtc", d)]
    stack = contextlib.ExitStack()
    if args.in_process:
        policy_fn, transport = policy.infer, "in-process Policy.infer"
    else:
        from posevla.serving.client import PolicyClient
        from posevla.serving.server import serve_in_thread

        handle = stack.enter_context(serve_in_thread(policy, host="127.0.0.1", port=0))
        client = PolicyClient(handle.url)
        stack.callback(client.close)
        policy_fn, transport = client.infer, f"server {handle.url} + PolicyClient"
    results: dict[str, Any] = {
        "checkpoint": str(policy.checkpoint), "task": args.task, "episodes": args.episodes, "seed": args.seed,
        "chunk_size": H, "execution_horizon": s, "max_steps": args.max_steps, "num_steps": args.num_steps,
        "max_guidance": 5.0, "transport": transport, "runs": [],
    }
    env = make_env("metaworld", args.task, image_size=(int(h), int(w)), max_steps=args.max_steps)
    try:
        with stack:
            for mode, delay in runs:
                kw = {} if args.num_steps is None else {"num_steps": args.num_steps}
                ex = ChunkExecutor(policy_fn, mode=mode, execution_horizon=s, inference_delay=delay, seed=0,
                                   **kw)
                rec = _Recorder(ex)
                t0 = time.perf_counter()
                res = rollout(env, rec, seeds=args.seed, episodes=args.episodes, stop_on_success=True)
                wall = time.perf_counter() - t0
                lat = [r.latency_s for rq, _ in ex.history for r in rq] + [r.latency_s for r in ex.requests]
                lat = [x for x in lat if x is not None]
                row = {
                    "mode": mode, "inference_delay": delay, **ex.summary(),
                    "mean_step_delta": rec.step_delta(),
                    "successes": res.successes, "success_rate": res.rate,
                    "ci95": list(wilson_interval(res.successes, len(res.episodes))),
                    "mean_steps": float(np.mean([e.steps for e in res.episodes])),
                    "per_seed_success": {e.seed: e.success for e in res.episodes},
                    "request_latency_ms_mean": 1e3 * float(np.mean(lat)) if lat else None,
                    "wall_s": wall,
                }
                results["runs"].append(row)
                print(f"[bench_rtc] {mode} d={delay}: {res.successes}/{len(res.episodes)} success, mean jump "
                      f"{row['mean_jump']}, {wall:.0f}s", flush=True)
    finally:
        env.close()
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"task {results['task']}, {results['episodes']} episodes from seed {results['seed']}, chunk H = "
        f"{results['chunk_size']}, s = {results['execution_horizon']}, transport: {results['transport']}",
        "| mode | d | mean jump | max jump | mean seam delta | mean step delta | success | Wilson 95 % | "
        "latency ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in results["runs"]:
        lat = "-" if r["request_latency_ms_mean"] is None else f"{r['request_latency_ms_mean']:.0f}"
        lines.append(
            f"| {r['mode']} | {r['inference_delay']} | {f(r['mean_jump'])} | {f(r['max_jump'])} | "
            f"{f(r['mean_seam_delta'])} | {f(r['mean_step_delta'])} | "
            f"{r['successes']}/{results['episodes']} | "
            f"{r['ci95'][0]:.2f}–{r['ci95'][1]:.2f} | {lat} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--task", default="reach-v3")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--execution-horizon", type=int, default=8)
    p.add_argument("--inference-delay", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--num-steps", type=int, default=None, help="Euler steps per chunk (default: config's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--in-process", action="store_true", help="call Policy.infer directly, no server")
    p.add_argument("--skip-reference", action="store_true", help="skip the naive d = 0 (no delay) run")
    p.add_argument("--out", default="bench_rtc.json")
    args = p.parse_args(argv)
    results = run(args)
    print(table(results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

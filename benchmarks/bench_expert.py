"""Action-chunk latency: PoseVLA.sample_actions vs transformers' PI0ForConditionalGeneration.

Usage: python benchmarks/bench_expert.py [--configs parity tiny] [--reps 30] [--threads 1] [--json]

Both models share the architecture and the weights (copied with `load_pi0_state_dict`), take the same prefix,
state and noise, and integrate 10 Euler steps. Repetitions alternate between the two models so that load from
other processes hits both alike; on a shared machine the absolute times are inflated, the ratio is the result.
Configs: ``parity`` is the one of the π0 parity test (2 views of 32 px, 12-token prompt, chunk 4, 8-dim
state/action); ``tiny`` is the tiny VLM at its defaults with the tiny expert (chunk 16, 32-dim).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference π0 lives with the tests

PROMPTS = ["pick up the cup", "open the drawer", "stack"]


def _build(name: str):
    from reference.pi0 import build_pi0_reference

    from posevla.models.config import get_expert_config, get_model_config
    from posevla.models.pi0_weights import load_pi0_state_dict
    from posevla.models.pose_vla import PoseVLA

    if name == "parity":
        vlm = get_model_config("tiny", image_size=32, num_views=2, prompt_len=12, use_priors=False, pose_tags=False)
        expert = get_expert_config("tiny", chunk_size=4, max_state_dim=8, max_action_dim=8)
    elif name == "tiny":
        vlm, expert = get_model_config("tiny", use_priors=False, pose_tags=False), get_expert_config("tiny")
    else:
        raise SystemExit(f"unknown config {name!r}; valid: parity, tiny")
    torch.manual_seed(1)
    ours = PoseVLA.build(vlm, expert).eval()
    torch.manual_seed(2)
    ref = build_pi0_reference(ours)
    load_pi0_state_dict(ours, ref.state_dict())
    return ours, ref


def _inputs(ours, batch_size: int):
    tok, cfg, e = ours.vlm.tokenizer, ours.vlm.cfg, ours.cfg
    ex = [
        tok.build_example(PROMPTS[i % 3], None, n_image_tokens=cfg.n_image_tokens, prompt_len=cfg.prompt_len)
        for i in range(batch_size)
    ]
    batch = tok.collate(ex)
    g = torch.Generator().manual_seed(0)
    S = cfg.image_size
    batch["pixel_values"] = torch.rand(batch_size, cfg.num_views, 3, S, S, generator=g) * 2 - 1
    batch["state"] = torch.randn(batch_size, e.max_state_dim, generator=g)
    noise = torch.randn(batch_size, e.chunk_size, e.max_action_dim, generator=g)
    return batch, noise


def _stats(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"median_ms": statistics.median(s), "p95_ms": s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]}


def bench(name: str, reps: int, warmup: int, steps: int, batch_size: int) -> dict:
    ours, ref = _build(name)
    batch, noise = _inputs(ours, batch_size)
    common = {
        "input_ids": batch["input_ids"],
        "pixel_values": batch["pixel_values"],
        "attention_mask": batch["attention_mask"],
        "pixel_attention_mask": torch.ones(batch_size, ours.vlm.cfg.num_views, dtype=torch.bool),
    }
    runs = {
        "ours": lambda: ours.sample_actions(batch, noise=noise, num_steps=steps),
        "transformers": lambda: ref.sample_actions(
            state=batch["state"], noise=noise, num_steps=steps, **common
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        out = {k: f() for k, f in runs.items()}
        for _ in range(warmup - 1):
            for f in runs.values():
                f()
        for _ in range(reps):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append(1e3 * (time.perf_counter() - t0))
    res = {k: _stats(v) for k, v in times.items()}
    e = ours.cfg
    return {
        "config": name,
        "shape": f"B={batch_size} prefix={batch['input_ids'].shape[1]} H={e.chunk_size} A={e.max_action_dim} "
        f"expert={e.hidden}x{e.layers}",
        **res,
        "ratio": res["ours"]["median_ms"] / res["transformers"]["median_ms"],
        "ratio_p95": res["ours"]["p95_ms"] / res["transformers"]["p95_ms"],
        "max_abs_diff": (out["ours"] - out["transformers"]).abs().max().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["parity", "tiny"], choices=["parity", "tiny"])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="Euler steps per chunk")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = {"threads": args.threads, "reps": args.reps, "steps": args.steps, "torch": torch.__version__}
    results = [bench(c, args.reps, max(1, args.warmup), args.steps, args.batch) for c in args.configs]
    if args.json:
        print(json.dumps({**meta, "results": results}, indent=2))
        return
    print(f"sample_actions, {args.steps} Euler steps, {args.reps} reps, threads={args.threads}")
    print(f"{'config':<8} {'model':<13} {'median ms':>10} {'p95 ms':>9}")
    for r in results:
        for k in ("ours", "transformers"):
            print(f"{r['config']:<8} {k:<13} {r[k]['median_ms']:>10.2f} {r[k]['p95_ms']:>9.2f}")
        print(f"{r['config']}: {r['shape']}; max |Δaction| = {r['max_abs_diff']:.2g}")
        print(
            f"{r['config']}: ratio = ours / transformers = {r['ratio']:.3f} (median), "
            f"{r['ratio_p95']:.3f} (p95)"
        )


if __name__ == "__main__":
    main()

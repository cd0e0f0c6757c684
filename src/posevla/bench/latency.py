"""Action-chunk latency (`posevla bench latency`): ours vs transformers' π0, and the server round trip.

Benchmarks live in `posevla.bench`, beside the packages they measure, not inside them. Every figure is a ratio
against a baseline measured in the same run, with the repetitions of the two alternating, so that load from
other processes on a shared machine hits both alike; absolute milliseconds are only context.

* **Part A, the expert** (``--configs parity tiny``): `PoseVLA.sample_actions` against transformers'
  `PI0ForConditionalGeneration.sample_actions` (the reference of the π0 parity tests,
  ``tests/reference/pi0.py`` of a repo checkout) at equal architecture, weights (copied with
  `load_pi0_state_dict`), prefix, state and noise, 10 Euler steps. Both run in fp32 and under bf16
  autocast (``--precisions``); the table gives median / p95 ms, ``ours / transformers`` at each precision
  and with each model at its faster precision, and max |Δaction| between the two models' chunks.
  ``--compile`` adds ours with the flow step through ``torch.compile`` (the compile time is reported on its
  own, not in the medians). ``parity`` is the parity test's size (2 views of 32 px, 12-token prompt,
  chunk 4, 8-dim state/action); ``tiny`` the tiny VLM at its defaults with the tiny expert (chunk 16,
  32 dims).
* **Part B, serving** (``--part server`` or ``all``): `Policy.infer` in process against the same policy behind
  `posevla.serving.server.serve_in_thread` + `PolicyClient.infer` (msgpack over a local websocket), on one
  tiny post-trained checkpoint (``--checkpoint``, else a ``posttrain-tiny`` run of ``--posttrain-steps`` steps
  on the LeRobot fixture) and one observation of its data, with the same noise seed; ``server / in-process``
  of the median and of the p95.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch

from posevla.bench.timing import alternate, cpu_autocast
from posevla.errors import ConfigError

__all__ = ["BenchLatencyArgs", "run_bench_latency", "format_bench_latency", "main", "find_reference"]

#: The repo checkout this module runs from (src/posevla/bench/latency.py → the root), when there is one.
REPO = Path(__file__).resolve().parents[3]
PROMPTS = ("pick up the cup", "open the drawer", "stack")


@dataclasses.dataclass(frozen=True)
class BenchLatencyArgs:
    """Options of `posevla bench latency`."""

    part: Literal["all", "expert", "server"] = "all"
    """What to time: the expert against transformers' π0 (A), the server round trip (B), or both."""
    configs: tuple[Literal["parity", "tiny"], ...] = ("parity", "tiny")
    """Part A sizes (module docstring)."""
    precisions: tuple[Literal["fp32", "bf16"], ...] = ("fp32", "bf16")
    """Part A precisions: fp32, and bf16 autocast (both models alike)."""
    compile: bool = False
    """Part A: also time ours with the flow step through torch.compile (fp32)."""
    reps: int = 30
    """Timed repetitions per model (alternating), after the warm-up."""
    warmup: int = 3
    steps: int = 10
    """Euler steps per chunk."""
    batch: int = 1
    threads: int = 1
    """torch intra-op threads (0 = torch's default)."""
    checkpoint: str | None = None
    """Part B: a post-training checkpoint (run or step dir); default: train a tiny one in a temporary dir."""
    posttrain_steps: int = 2
    """Part B: steps of the tiny post-training run made when no --checkpoint is given."""
    data: str | None = None
    """Part B: the LeRobot v3 dataset of the observation (and of the tiny run); default: the test fixture."""
    server_reps: int = 20
    """Part B: timed repetitions of each call (alternating)."""
    json: str | None = None
    """Write the figures as JSON to this file."""


# -- shared -------------------------------------------------------------------------------------------------


# -- part A: the expert against transformers' π0 ------------------------------------------------------------


def find_reference() -> ModuleType:
    """The reference π0 module (``tests/reference/pi0.py``), found from the repo checkout or the working dir.

    Raises:
        ConfigError: when neither has it (an installed package ships no tests).
    """
    tried = []
    for root in (REPO, Path.cwd()):
        path = root / "tests" / "reference" / "pi0.py"
        tried.append(str(path))
        if path.is_file():
            spec = importlib.util.spec_from_file_location("posevla_bench_reference_pi0", path)
            if spec is None or spec.loader is None:
                continue
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    raise ConfigError(
        "the expert benchmark compares with the reference π0 of the test suite, tests/reference/pi0.py, "
        f"which is not here (looked at {', '.join(tried)}): run it from a posevla repo checkout "
        "(or from its root directory), or time only the server with `posevla bench latency --part server`"
    )


def _build_pair(name: str, reference: ModuleType) -> tuple[Any, Any]:
    """Ours and transformers' π0 of one size, with the same weights (ours' copied from the reference)."""
    from posevla.models.config import get_expert_config, get_model_config
    from posevla.models.pi0_weights import load_pi0_state_dict
    from posevla.models.pose_vla import PoseVLA

    if name == "parity":
        vlm = get_model_config(
            "tiny", image_size=32, num_views=2, prompt_len=12, use_priors=False, pose_tags=False
        )
        expert = get_expert_config("tiny", chunk_size=4, max_state_dim=8, max_action_dim=8)
    elif name == "tiny":
        vlm, expert = get_model_config("tiny", use_priors=False, pose_tags=False), get_expert_config("tiny")
    else:
        raise ConfigError(f"unknown config {name!r}; valid: parity, tiny")
    torch.manual_seed(1)
    ours = PoseVLA.build(vlm, expert).eval()
    torch.manual_seed(2)
    ref = reference.build_pi0_reference(ours)
    load_pi0_state_dict(ours, ref.state_dict())
    return ours, ref


def _expert_inputs(ours: Any, batch_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A prefix batch (right-padded prompts, random images), a state and the starting noise (seed 0)."""
    tok, cfg, e = ours.vlm.tokenizer, ours.vlm.cfg, ours.cfg
    ex = [
        tok.build_example(PROMPTS[i % 3], None, n_image_tokens=cfg.n_image_tokens, prompt_len=cfg.prompt_len)
        for i in range(batch_size)
    ]
    batch = tok.collate(ex)
    g = torch.Generator().manual_seed(0)
    S = cfg.image_size
    batch["pixel_values"] = torch.rand(batch_size, cfg.num_views, 3, S, S, generator=g) * 2 - 1  # (B,V,3,S,S)
    batch["state"] = torch.randn(batch_size, e.max_state_dim, generator=g)  # (B, Ds)
    noise = torch.randn(batch_size, e.chunk_size, e.max_action_dim, generator=g)  # (B, H, A)
    return batch, noise


def bench_expert(name: str, args: BenchLatencyArgs, reference: ModuleType) -> dict[str, Any]:
    """Part A at one size: both models at every precision (alternating), agreement, optional compile."""
    ours, ref = _build_pair(name, reference)
    batch, noise = _expert_inputs(ours, args.batch)
    common = {
        "input_ids": batch["input_ids"],
        "pixel_values": batch["pixel_values"],
        "attention_mask": batch["attention_mask"],
        "pixel_attention_mask": torch.ones(args.batch, ours.vlm.cfg.num_views, dtype=torch.bool),
    }

    def run_ours(precision: str, compile: bool = False) -> Callable[[], torch.Tensor]:
        def f() -> torch.Tensor:
            with cpu_autocast(precision):
                return ours.sample_actions(batch, noise=noise, num_steps=args.steps, compile=compile)

        return f

    def run_ref(precision: str) -> Callable[[], torch.Tensor]:
        def f() -> torch.Tensor:
            with torch.no_grad(), cpu_autocast(precision):
                return ref.sample_actions(state=batch["state"], noise=noise, num_steps=args.steps, **common)

        return f

    runs: dict[str, Callable[[], torch.Tensor]] = {}
    for p in args.precisions:
        runs[f"ours/{p}"] = run_ours(p)
        runs[f"transformers/{p}"] = run_ref(p)
    compile_s = None
    if args.compile:
        f = run_ours("fp32", compile=True)
        t0 = time.perf_counter()
        f()  # the first call compiles
        compile_s = time.perf_counter() - t0
        runs["ours+compile/fp32"] = f
    with torch.no_grad():
        out = {k: f().float() for k, f in runs.items()}
        timing = alternate(runs, args.reps, max(0, args.warmup - 1))
    e = ours.cfg
    res: dict[str, Any] = {
        "config": name,
        "shape": f"B={args.batch} prefix={batch['input_ids'].shape[1]} H={e.chunk_size} A={e.max_action_dim} "
        f"expert={e.hidden}x{e.layers}",
        "timing": timing,
        "ratios": {},
        "max_abs_diff": {},
        "max_abs_action": out[next(iter(out))].abs().max().item(),
        "compile_s": compile_s,
    }
    def diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a - b).abs().max().item()

    def ratio(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        return {"median": a["median_ms"] / b["median_ms"], "p95": a["p95_ms"] / b["p95_ms"]}

    for p in args.precisions:
        res["ratios"][p] = ratio(timing[f"ours/{p}"], timing[f"transformers/{p}"])
        res["max_abs_diff"][f"ours vs transformers, {p}"] = diff(out[f"ours/{p}"], out[f"transformers/{p}"])
    if "fp32" in args.precisions and "bf16" in args.precisions:
        for who in ("ours", "transformers"):
            res["max_abs_diff"][f"{who} bf16 vs fp32"] = diff(out[f"{who}/bf16"], out[f"{who}/fp32"])
    best = {who: min((k for k in timing if k.startswith(who + "/")), key=lambda k: timing[k]["median_ms"])
            for who in ("ours", "transformers")}
    res["best"] = {
        "ours": best["ours"],
        "transformers": best["transformers"],
        "median": timing[best["ours"]]["median_ms"] / timing[best["transformers"]]["median_ms"],
        "p95": timing[best["ours"]]["p95_ms"] / timing[best["transformers"]]["p95_ms"],
    }
    if args.compile:
        with torch.no_grad():
            plain = run_ours("fp32")()
            res["max_abs_diff"]["ours+compile vs ours, fp32"] = diff(out["ours+compile/fp32"], plain)
        if "transformers/fp32" in timing:
            res["ratios"]["fp32+compile"] = ratio(timing["ours+compile/fp32"], timing["transformers/fp32"])
    return res


# -- part B: the server round trip against Policy.infer ------------------------------------------------------


def _tiny_checkpoint(data: Path, steps: int, out: Path) -> Path:
    """A ``posttrain-tiny`` run of `steps` steps on `data` in the config's own action space, its constant dims
    found in the data (centred, not z-scored, as the demo does)."""
    from posevla.bench.serve import tiny_checkpoint
    from posevla.data.actions import constant_dims
    from posevla.data.formats.lerobot import load_lerobot_v3
    from posevla.training.configs import get_config

    base = get_config("posttrain-tiny").action
    constant = constant_dims(load_lerobot_v3(data), base)
    action = dataclasses.replace(base, constant_dims=tuple(base.constant_dims) + constant)
    return tiny_checkpoint(out, data=data, steps=steps, action=action)


def bench_server(args: BenchLatencyArgs) -> dict[str, Any]:
    """Part B: `Policy.infer` in process vs through a local server (alternating; same observation, seeds)."""
    import numpy as np

    from posevla.data.actions import ActionDataset
    from posevla.data.formats.lerobot import load_lerobot_v3
    from posevla.policy import Policy

    from posevla.serving.client import PolicyClient
    from posevla.serving.server import serve_in_thread

    data = Path(args.data) if args.data else REPO / "tests" / "fixtures" / "lerobot_v3_tiny"
    if not data.is_dir():
        raise ConfigError(
            f"no LeRobot v3 dataset at {data} for the observation (the default is the test fixture of a repo "
            "checkout): pass --data DIR"
        )
    tmp = None
    t0 = time.perf_counter()
    try:
        if args.checkpoint is None:
            tmp = tempfile.TemporaryDirectory(prefix="posevla-bench-latency-")
            ckpt: Path = _tiny_checkpoint(data, args.posttrain_steps, Path(tmp.name) / "run")
        else:
            ckpt = Path(args.checkpoint)
        train_s = time.perf_counter() - t0
        policy = Policy.from_checkpoint(ckpt, device="cpu", precision="fp32")
        ds = ActionDataset(load_lerobot_v3(data), policy.action_cfg, policy.spec, policy.stats)
        obs = ds.observation(0, 1)
        seeds = iter(range(10**6))
        last: dict[str, Any] = {}

        def local() -> None:
            last["local"] = policy.infer(dict(obs), seed=next(seeds))["actions"]

        with serve_in_thread(policy, host="127.0.0.1", port=0) as handle:
            client = PolicyClient(handle.url)
            try:
                def remote() -> None:
                    last["server"] = client.infer({**obs, "seed": next(seeds)})["actions"]

                runs = {"in_process": local, "server": remote}
                timing = alternate(runs, args.server_reps, max(0, args.warmup))
                # agreement: the same seed through both
                a = policy.infer(dict(obs), seed=123)["actions"]
                reply = client.infer({**obs, "seed": 123})
                b = np.asarray(reply["actions"])
                server_timing = reply.get("server_timing", {})
            finally:
                client.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    i, s = timing["in_process"], timing["server"]
    return {
        "checkpoint": None if tmp is not None else str(ckpt),
        "posttrain_steps": args.posttrain_steps if tmp is not None else None,
        "train_s": round(train_s, 2) if tmp is not None else None,
        "data": str(data),
        "actions_shape": list(np.shape(a)),
        "timing": timing,
        "ratio": {"median": s["median_ms"] / i["median_ms"], "p95": s["p95_ms"] / i["p95_ms"]},
        "max_abs_diff": float(np.abs(np.asarray(a) - b).max()),
        "server_timing_ms": {k: float(v) for k, v in server_timing.items()},
    }


# -- the run ----------------------------------------------------------------------------------------------


def run_bench_latency(args: BenchLatencyArgs) -> dict[str, Any]:
    """Run the requested parts (module docstring); returns the figures."""
    limits = (
        ("--reps", args.reps, 1),
        ("--server-reps", args.server_reps, 1),
        ("--steps", args.steps, 1),
        ("--batch", args.batch, 1),
        ("--warmup", args.warmup, 0),
        ("--threads", args.threads, 0),
        ("--posttrain-steps", args.posttrain_steps, 1),
    )
    for flag, v, lo in limits:
        if v < lo:
            raise ConfigError(f"{flag} must be >= {lo}, got {v}")
    if args.part in ("all", "expert") and (not args.configs or not args.precisions):
        raise ConfigError("--configs and --precisions need at least one value each")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "reps": args.reps,
        "steps": args.steps,
        "batch": args.batch,
    }
    if args.part in ("all", "expert"):
        reference = find_reference()
        res["expert"] = [bench_expert(c, args, reference) for c in args.configs]
    if args.part in ("all", "server"):
        res["server"] = bench_server(args)
    return res


def format_bench_latency(res: dict[str, Any]) -> str:
    """The figures as text tables."""
    lines = [f"torch {res['torch']}, {res['threads']} torch thread(s), {res['cpu_count']} CPUs"]
    if "expert" in res:
        lines += [
            f"A. sample_actions, {res['steps']} Euler steps, {res['reps']} reps (alternating), "
            f"batch {res['batch']}",
            f"{'config':<8} {'model/precision':<22} {'median ms':>10} {'p95 ms':>9}",
        ]
        for r in res["expert"]:
            for k, t in r["timing"].items():
                lines.append(f"{r['config']:<8} {k:<22} {t['median_ms']:>10.2f} {t['p95_ms']:>9.2f}")
            if r["compile_s"] is not None:
                took = f"{r['compile_s']:.1f} s (1st call)"
                lines.append(f"{r['config']}: torch.compile of the flow step: {took}")
            lines.append(f"{r['config']}: {r['shape']}; max |action| {r['max_abs_action']:.3g}")
            for k, d in r["max_abs_diff"].items():
                lines.append(f"{r['config']}:   max |Δaction| {k}: {d:.2g}")
            for p, q in r["ratios"].items():
                lines.append(
                    f"{r['config']}: ours / transformers, {p}: {q['median']:.3f} (median), "
                    f"{q['p95']:.3f} (p95)"
                )
            b = r["best"]
            lines.append(
                f"{r['config']}: each at its faster precision ({b['ours']} vs {b['transformers']}): "
                f"{b['median']:.3f} (median), {b['p95']:.3f} (p95)"
            )
    if "server" in res:
        s = res["server"]
        src = s["checkpoint"] or f"a fresh posttrain-tiny run, {s['posttrain_steps']} steps, {s['train_s']} s"
        lines += [
            f"B. Policy.infer in process vs through the server (same policy, observation and seeds); {src}",
            f"{'call':<12} {'median ms':>10} {'p95 ms':>9}",
        ]
        for k, t in s["timing"].items():
            lines.append(f"{k:<12} {t['median_ms']:>10.2f} {t['p95_ms']:>9.2f}")
        lines.append(f"actions {tuple(s['actions_shape'])}; max |Δaction| in process vs server: "
                     f"{s['max_abs_diff']:.2g}")
        if s["server_timing_ms"]:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in s["server_timing_ms"].items())
            lines.append(f"server_timing (last call): {parts}")
        q = s["ratio"]
        lines.append(f"server / in-process: {q['median']:.3f} (median), {q['p95']:.3f} (p95)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`posevla bench latency [--part all|expert|server] [--configs parity tiny] [--json OUT] ...`."""
    import tyro

    args = tyro.cli(BenchLatencyArgs, args=argv, prog="posevla bench latency")
    res = run_bench_latency(args)
    print(format_bench_latency(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")

"""Train-step speed (`posevla bench train`): ours vs transformers' π0, FLOP/s against the CPU's peak, ranks.

Benchmarks live in `posevla.bench`, beside the packages they measure, not inside them. As in
`posevla.bench.latency`, every speed figure is a ratio against a baseline measured in the same run, the
repetitions of the alternatives interleaved so that load from other processes hits them alike.

* **Step** (``--configs parity tiny``): one training step (forward + backward + AdamW step) of the
  post-training policy (`posevla.models.factory.build_policy`, loss `PoseVLA.compute_loss`) against
  transformers' `PI0ForConditionalGeneration` (``tests/reference/pi0.py`` of a repo checkout, its ``loss``
  with ``actions`` given) at equal architecture and weights (ours copied from it with `load_pi0_state_dict`),
  on identical inputs: the same prefix, state, actions, noise ε and flow time τ (``noise=``/``time=`` of
  ours, ``noise=``/``timestep=`` of theirs; actions and state span every dim, so both losses are the mean
  over the same entries). Each model runs in fp32 and under bf16 autocast (``--precisions``); the table
  gives median / p95 ms per step and ``ours / transformers`` at each precision and with each model at its
  faster one. ``|Δloss|`` of the two models on the first batch, before any update, is the check that both
  do the same work. ``--fused-adamw`` adds ours with ``torch.optim.AdamW(fused=True)``; ``--compile`` ours
  with ``compute_loss`` through ``torch.compile`` (compile time reported on its own).
* **FLOP/s**: the matmul FLOPs of our step (forward + backward, counted once with
  `torch.utils.flop_counter.FlopCounterMode`; theirs too, for the work each does) over our best median, as a
  fraction of this CPU's bf16 matmul peak, timed in the same run (``torch.matmul`` of two
  ``--peak-size``² bf16 matrices at the bench's thread count; fp32 too, for context).
* **Ranks** (``--ranks 1 2``): tokens/s of stage-1 training (``--rank-config``, default ``stage1-tiny``) with
  each number of ranks, launched as ``torchrun --standalone --nproc_per_node R -m posevla.cli train CONFIG
  --parallel ddp`` on a small generated dataset; the time per step comes from the run's ``metrics.jsonl``
  (``time_s`` of each ``step``, the first ``--rank-warmup`` steps left out) and a step trains on ``batch ×
  L`` tokens (L = the padded sequence length of the config's batches: image tokens + prompt + answer).

``parity`` is the parity tests' size (tiny VLM with 2 views of 32 px, 12-token prompt; tiny expert with
chunk 4 and 8-dim state/action); ``tiny`` the tiny VLM at its defaults (3 views of 128 px, 40-token prompt)
with the tiny expert (chunk 16, 32 dims). Priors and pose tags are off: π0 has neither.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch

from posevla.bench.timing import alternate, cpu_autocast
from posevla.bench.latency import find_reference
from posevla.errors import ConfigError

__all__ = ["BenchTrainArgs", "format_bench_train", "main", "matmul_peak", "rank_tokens_per_s", "run_bench_train"]

PROMPTS = ("pick up the cup", "open the drawer", "stack")


@dataclasses.dataclass(frozen=True)
class BenchTrainArgs:
    """Options of `posevla bench train`."""

    configs: tuple[Literal["parity", "tiny"], ...] = ("parity", "tiny")
    """Step sizes (module docstring); none = skip the step part."""
    precisions: tuple[Literal["fp32", "bf16"], ...] = ("fp32", "bf16")
    """fp32, and bf16 autocast (both models alike)."""
    batch: int = 8
    reps: int = 10
    """Timed steps per alternative (interleaved), after the warm-up."""
    warmup: int = 2
    threads: int = 1
    """torch intra-op threads (0 = torch's default)."""
    fused_adamw: bool = True
    """Also time ours with torch's fused AdamW (``fused=True``) at each precision."""
    compile: bool = False
    """Also time ours with ``compute_loss`` through ``torch.compile`` (at each precision; with the fused AdamW
    when ``--fused-adamw``)."""
    lr: float = 1e-5
    """AdamW learning rate of every alternative (the figures do not depend on it)."""
    peak_size: int = 2048
    """Side of the square matrices of the matmul peak (0 = do not measure it)."""
    peak_reps: int = 5
    ranks: tuple[int, ...] = ()
    """Rank counts of the tokens/s part (e.g. 1 2); empty = skip it."""
    rank_config: str = "stage1-tiny"
    rank_steps: int = 30
    rank_warmup: int = 5
    """Steps at the start of each rank run left out of its time."""
    rank_batch: int | None = None
    """Global batch of the rank runs (default: the config's)."""
    rank_scenes: int = 16
    """Scenes generated for the rank runs."""
    rank_timeout_s: int = 600
    out: str | None = None
    """Write the figures as JSON to this file."""


# -- timing -------------------------------------------------------------------------------------------------


def matmul_peak(size: int, dtype: torch.dtype, reps: int = 5) -> float:
    """Best FLOP/s of ``torch.matmul`` of two (size, size) matrices of `dtype` (2·size³ FLOPs a product)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    torch.matmul(a, b)  # warm-up (kernel selection, AMX tile set-up)
    best = float("inf")
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


# -- the step part ------------------------------------------------------------------------------------------


def _configs(name: str) -> tuple[Any, Any]:
    from posevla.models.config import get_expert_config, get_model_config

    if name == "parity":
        vlm = get_model_config("tiny", image_size=32, num_views=2, prompt_len=12, use_priors=False, pose_tags=False)
        return vlm, get_expert_config("tiny", chunk_size=4, max_state_dim=8, max_action_dim=8)
    if name == "tiny":
        return get_model_config("tiny", use_priors=False, pose_tags=False), get_expert_config("tiny")
    raise ConfigError(f"unknown config {name!r}; valid: parity, tiny")


def build_pair(name: str, reference: ModuleType) -> tuple[Any, Any]:
    """Our policy (`build_policy`, uniform tiny bins) and transformers' π0 of one size, same weights, train mode."""
    from posevla.models.factory import build_policy
    from posevla.models.pi0_weights import load_pi0_state_dict
    from posevla.tokens import BinCounts

    vlm, expert = _configs(name)
    torch.manual_seed(1)
    ours = build_policy(vlm, expert, BinCounts.tiny().uniform())
    torch.manual_seed(2)
    ref = reference.build_pi0_reference(ours)
    load_pi0_state_dict(ours, ref.state_dict())
    return ours.train(), ref.train()


def step_inputs(ours: Any, batch_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A training batch (right-padded prompts, random images, state, actions), its noise ε and flow time τ."""
    tok, cfg, e = ours.vlm.tokenizer, ours.vlm.cfg, ours.cfg
    ex = [
        tok.build_example(PROMPTS[i % 3], None, n_image_tokens=cfg.n_image_tokens, prompt_len=cfg.prompt_len)
        for i in range(batch_size)
    ]
    batch = {k: v for k, v in tok.collate(ex).items() if k in ("input_ids", "attention_mask")}  # (B, P) each
    g = torch.Generator().manual_seed(0)
    B, S, H, A = batch_size, cfg.image_size, e.chunk_size, e.max_action_dim
    batch["pixel_values"] = torch.rand(B, cfg.num_views, 3, S, S, generator=g) * 2 - 1  # (B, V, 3, S, S)
    batch["state"] = torch.randn(B, e.max_state_dim, generator=g)  # (B, Ds)
    batch["actions"] = torch.randn(B, H, A, generator=g)  # (B, H, A): every dim real, no padding
    noise = torch.randn(B, H, A, generator=g)  # (B, H, A) ε
    tau = e.time_min + (1 - e.time_min) * torch.rand(B, generator=g)  # (B,) τ
    return batch, noise, tau


def _losses(ours: Any, ref: Any, batch: dict[str, torch.Tensor], noise: torch.Tensor, tau: torch.Tensor,
            compile: bool = False) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """The two loss closures on the same batch, noise and time."""
    views = batch["pixel_values"].shape[1]
    pixel_mask = torch.ones(batch["input_ids"].shape[0], views, dtype=torch.bool)  # (B, V) every camera real
    ours_loss = torch.compile(ours.compute_loss) if compile else ours.compute_loss

    def theirs() -> torch.Tensor:
        return ref(state=batch["state"], noise=noise, timestep=tau, actions=batch["actions"],
                   input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["pixel_values"], pixel_attention_mask=pixel_mask).loss

    return (lambda: ours_loss(batch, noise=noise, time=tau)["loss"]), theirs


def _step_fn(loss: Callable[[], torch.Tensor], opt: torch.optim.Optimizer, precision: str) -> Callable[[], float]:
    """One training step as a closure: the loss at `precision`, zeroed gradients, backward, `opt.step()`."""

    def step() -> float:
        with cpu_autocast(precision):
            value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return float(value.detach())

    return step


def _flops(loss: Callable[[], torch.Tensor], model: torch.nn.Module) -> int:
    """Matmul FLOPs of one forward + backward (fp32; FlopCounterMode counts mm/bmm/addmm/conv/attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def bench_step(name: str, args: BenchTrainArgs, reference: ModuleType) -> dict[str, Any]:
    """The step part at one size: every alternative interleaved, the loss check and the FLOP counts."""
    ours, ref = build_pair(name, reference)
    batch, noise, tau = step_inputs(ours, args.batch)
    loss_ours, loss_ref = _losses(ours, ref, batch, noise, tau)
    check: dict[str, Any] = {}
    for p in args.precisions:  # before any update: the same weights; with gradients on, as the timed steps run
        with cpu_autocast(p):
            a, b = float(loss_ours().detach()), float(loss_ref().detach())
        check[p] = {"ours": a, "transformers": b, "abs_diff": abs(a - b)}
    flops = {"ours": _flops(loss_ours, ours), "transformers": _flops(loss_ref, ref)}

    def adamw(model: torch.nn.Module, fused: bool = False) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=args.lr, fused=True if fused else None)

    runs: dict[str, Callable[[], float]] = {}
    compile_s: dict[str, float] = {}
    for p in args.precisions:
        runs[f"ours/{p}"] = _step_fn(loss_ours, adamw(ours), p)
        runs[f"transformers/{p}"] = _step_fn(loss_ref, adamw(ref), p)
        if args.fused_adamw:
            runs[f"ours+fused/{p}"] = _step_fn(loss_ours, adamw(ours, fused=True), p)
        if args.compile:  # with the fused optimizer when that is timed too
            f = _step_fn(_losses(ours, ref, batch, noise, tau, compile=True)[0], adamw(ours, args.fused_adamw), p)
            t0 = time.perf_counter()
            f()  # the first call compiles
            compile_s[p] = time.perf_counter() - t0
            runs[f"ours+compile{'+fused' if args.fused_adamw else ''}/{p}"] = f
    timing = alternate(runs, args.reps, args.warmup)
    e, P = ours.cfg, batch["input_ids"].shape[1]
    kept = int(batch["attention_mask"].bool().any(0).sum())
    res: dict[str, Any] = {
        "config": name,
        "shape": f"B={args.batch} prefix={P} (ours keeps {kept}: columns padded in every sample dropped) "
        f"H={e.chunk_size} A={e.max_action_dim} expert={e.hidden}x{e.layers}",
        "params": {"ours": sum(q.numel() for q in ours.parameters()),
                   "transformers": sum(q.numel() for q in ref.parameters())},
        "timing": timing,
        "loss_check": check,
        "flops_per_step": flops,
        "compile_s": compile_s or None,
        "ratios": {},
    }

    def ratio(a: str, b: str) -> dict[str, float]:
        return {"median": timing[a]["median_ms"] / timing[b]["median_ms"],
                "p95": timing[a]["p95_ms"] / timing[b]["p95_ms"]}

    for p in args.precisions:
        res["ratios"][p] = ratio(f"ours/{p}", f"transformers/{p}")
    best = {who: min((k for k in timing if k.split("/")[0] == who), key=lambda k: timing[k]["median_ms"])
            for who in ("ours", "transformers")}
    best["ours_any"] = min((k for k in timing if k.startswith("ours")), key=lambda k: timing[k]["median_ms"])
    res["best"] = {**best, **ratio(best["ours"], best["transformers"]),
                   "with_levers": ratio(best["ours_any"], best["transformers"])}
    return res


# -- the ranks part -----------------------------------------------------------------------------------------


def _sequence_length(config: str, data: Path) -> tuple[int, int]:
    """(batch size, padded sequence length L) of the config's stage-1 batches on `data`."""
    from posevla.data.collate import ExampleSpec
    from posevla.data.mixture import build_mixture
    from posevla.data.sources import SourceSpec, fit_source_bins, load_source
    from posevla.models.factory import build_vlm
    from posevla.tokens import PoseCodec
    from posevla.training.configs import get_config

    cfg = get_config(config)
    loaded = [load_source(SourceSpec("generated", str(data)))]
    bins = fit_source_bins(loaded, cfg.bins)
    model = build_vlm(cfg.model.resolve(), bins)
    m = build_mixture(loaded, ExampleSpec.from_model(model.cfg), batch_size=cfg.batch_size, seed=cfg.seed,
                      negative_prob=cfg.data.negative_prob)
    batch = m.batch(0, PoseCodec(bins), model.tokenizer)
    return cfg.batch_size, int(batch["input_ids"].shape[1])


def rank_tokens_per_s(metrics: Path, tokens_per_step: int, warmup: int) -> dict[str, float]:
    """Steps/s and tokens/s of a run from its ``metrics.jsonl`` (rows with ``step`` and cumulative ``time_s``).

    Raises:
        ConfigError: fewer than two rows after the warm-up steps.
    """
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step" in r and "time_s" in r and r["step"] > warmup]
    if len(rows) < 2:
        raise ConfigError(f"{metrics} has {len(rows)} timed rows after step {warmup}; run more --rank-steps")
    a, b = rows[0], rows[-1]
    step_s = (b["time_s"] - a["time_s"]) / (b["step"] - a["step"])
    return {"step_s": step_s, "steps_per_s": 1.0 / step_s, "tokens_per_s": tokens_per_step / step_s}


def bench_ranks(args: BenchTrainArgs) -> dict[str, Any]:
    """Tokens/s of stage-1 training with each number of ranks (torchrun subprocesses; module docstring)."""
    from posevla.sim.tabletop import generate_dataset

    res: dict[str, Any] = {"config": args.rank_config, "steps": args.rank_steps, "runs": []}
    with tempfile.TemporaryDirectory(prefix="posevla-bench-train-") as tmp:
        data = Path(tmp) / "data"
        generate_dataset(str(data), args.rank_scenes, seed=0, workers=1, progress=False)
        batch, L = _sequence_length(args.rank_config, data)
        batch = args.rank_batch or batch
        res.update(batch=batch, seq_len=L, tokens_per_step=batch * L)
        threads = max(1, (os.cpu_count() or 1) // max(args.ranks))  # the same cores for every rank count
        for r in args.ranks:
            out = Path(tmp) / f"ranks{r}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(r),
                   "-m", "posevla.cli", "train", args.rank_config, "--parallel", "ddp",
                   "--data.train-data", str(data), "--out-dir", str(out), "--steps", str(args.rank_steps),
                   "--batch-size", str(batch), "--log-every", "1", "--save-every", str(10 * args.rank_steps),
                   "--num-threads", str(threads), "--no-progress"]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.rank_timeout_s, check=False)
            if p.returncode != 0:
                text = p.stdout + p.stderr
                said = [ln for ln in text.splitlines() if "error" in ln.lower() and "ChildFailedError" not in ln]
                hint = ("\n(does this trainer support torchrun and --parallel ddp yet?)"
                        if "parallel" in text and "unrecognized" in text.lower() else "")
                raise ConfigError(f"the {r}-rank run failed (exit {p.returncode}): {' '.join(cmd)}\n"
                                  + "\n".join(said[:12] or text.splitlines()[-20:]) + hint)
            figures = rank_tokens_per_s(out / "metrics.jsonl", batch * L, args.rank_warmup)
            res["runs"].append({"ranks": r, "threads_per_rank": threads, "wall_s": time.perf_counter() - t0,
                                **figures})
    base = res["runs"][0]["tokens_per_s"]
    for run in res["runs"]:
        run["speedup"] = run["tokens_per_s"] / base
    return res


# -- the run ------------------------------------------------------------------------------------------------


def run_bench_train(args: BenchTrainArgs) -> dict[str, Any]:
    """Run the requested parts (module docstring); returns the figures."""
    for flag, v, lo in (("--batch", args.batch, 1), ("--reps", args.reps, 1), ("--warmup", args.warmup, 0),
                        ("--threads", args.threads, 0), ("--peak-size", args.peak_size, 0),
                        ("--rank-steps", args.rank_steps, 2), ("--rank-warmup", args.rank_warmup, 0)):
        if v < lo:
            raise ConfigError(f"{flag} must be >= {lo}, got {v}")
    if args.configs and not args.precisions:
        raise ConfigError("--precisions needs at least one of fp32, bf16")
    if args.ranks and (min(args.ranks) < 1 or args.rank_steps <= args.rank_warmup + 1):
        raise ConfigError(f"--ranks must be >= 1 and --rank-steps > --rank-warmup + 1, got {args.ranks}, "
                          f"{args.rank_steps}, {args.rank_warmup}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res: dict[str, Any] = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "batch": args.batch, "reps": args.reps, "warmup": args.warmup}
    if args.peak_size:
        res["peak_flops"] = {"size": args.peak_size,
                             "bf16": matmul_peak(args.peak_size, torch.bfloat16, args.peak_reps),
                             "fp32": matmul_peak(args.peak_size, torch.float32, args.peak_reps)}
    if args.configs:
        reference = find_reference()
        res["step"] = []
        for c in args.configs:
            r = bench_step(c, args, reference)
            best_ms = r["timing"][r["best"]["ours_any"]]["median_ms"]
            r["achieved_flops"] = r["flops_per_step"]["ours"] / (best_ms / 1e3)
            if "peak_flops" in res:
                r["fraction_of_bf16_peak"] = r["achieved_flops"] / res["peak_flops"]["bf16"]
            res["step"].append(r)
    if args.ranks:
        res["ranks"] = bench_ranks(args)
    return res


def format_bench_train(res: dict[str, Any]) -> str:
    """The figures as text tables."""
    lines = [f"torch {res['torch']}, {res['threads']} torch thread(s), {res['cpu_count']} CPUs"]
    pk = res.get("peak_flops")
    if pk:
        lines.append(f"matmul peak ({pk['size']}² matrices): bf16 {pk['bf16'] / 1e9:.0f} GFLOP/s, "
                     f"fp32 {pk['fp32'] / 1e9:.0f} GFLOP/s")
    for r in res.get("step", []):
        lines += [
            f"train step, {r['config']}: {r['shape']}; {res['reps']} reps interleaved after {res['warmup']} warm-up",
            f"{'model/precision':<24} {'median ms':>10} {'p95 ms':>9}",
        ]
        lines += [f"{k:<24} {t['median_ms']:>10.1f} {t['p95_ms']:>9.1f}" for k, t in r["timing"].items()]
        for p, c in r["loss_check"].items():
            lines.append(f"  loss, same weights/inputs, {p}: ours {c['ours']:.6f}, transformers "
                         f"{c['transformers']:.6f} (|Δ| {c['abs_diff']:.2g})")
        for p, q in r["ratios"].items():
            lines.append(f"  ours / transformers, {p}: {q['median']:.3f} (median), {q['p95']:.3f} (p95)")
        b = r["best"]
        lines.append(f"  best vs best ({b['ours']} vs {b['transformers']}): {b['median']:.3f} (median), "
                     f"{b['p95']:.3f} (p95)")
        if b["ours_any"] != b["ours"]:
            w = b["with_levers"]
            lines.append(f"  with the opt-in levers ({b['ours_any']}): {w['median']:.3f} (median), "
                         f"{w['p95']:.3f} (p95)")
        f = r["flops_per_step"]
        frac = f", {100 * r['fraction_of_bf16_peak']:.1f} % of the bf16 peak" if "fraction_of_bf16_peak" in r else ""
        lines.append(f"  matmul FLOPs per step (fwd+bwd): ours {f['ours'] / 1e9:.2f} G, transformers "
                     f"{f['transformers'] / 1e9:.2f} G; ours achieves {r['achieved_flops'] / 1e9:.1f} GFLOP/s{frac}")
        if r["compile_s"]:
            took = ", ".join(f"{p} {s:.1f} s" for p, s in r["compile_s"].items())
            lines.append(f"  torch.compile (1st call): {took}")
    if "ranks" in res:
        k = res["ranks"]
        lines += [(f"stage-1 training ({k['config']}, global batch {k['batch']} × L={k['seq_len']} tokens = "
                   f"{k['tokens_per_step']} tokens/step, torchrun + DDP, {k['steps']} steps)"),
                  f"{'ranks':>5} {'threads/rank':>12} {'s/step':>8} {'tokens/s':>10} {'speedup':>8}"]
        lines += [f"{x['ranks']:>5} {x['threads_per_rank']:>12} {x['step_s']:>8.3f} {x['tokens_per_s']:>10.0f} "
                  f"{x['speedup']:>8.2f}" for x in k["runs"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`posevla bench train [--configs parity tiny] [--ranks 1 2] [--out OUT.json] ...`."""
    import tyro

    args = tyro.cli(BenchTrainArgs, args=argv, prog="posevla bench train")
    res = run_bench_train(args)
    print(format_bench_train(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")

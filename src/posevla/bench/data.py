"""Loader vs trainer throughput: can the data pipeline feed the training step? (`posevla bench data`)

Benchmarks live in `posevla.bench`, beside the packages they measure, not inside them.

One run measures, on the same generated dataset and the same batches:

* **loader** samples/s of the full pipeline the trainer uses (:class:`posevla.data.mixture.Mixture`: PNG
  decoding, resize-pad, ray / depth priors, negatives, answer serialisation, tokenisation, collate) with
  each requested number of worker processes. A fresh loader (empty view caches) is timed over one epoch
  (``cold``: every image decoded once per worker) and then over the next epoch (``warm``: views cached);
* **trainer** samples/s of the stage-1 training step (forward + backward + grad-clip + AdamW, the
  config's precision) on batches from that loader;
* ``ratio`` = warm loader samples/s with one worker / trainer samples/s. Below ~3 the loader risks
  stalling training once both share the CPU.

The two are timed one after the other, each with the whole machine; while training, the loader workers
and the training step share the cores.

**Paper size** (``--size paligemma-3b``): the same loader at the paper model's layout (224 px, 3 views,
256 image tokens per view, 64-token prompt, the paper's token counts) on scenes rendered at ``--width`` ×
``--height`` (default 640 × 480, Omni3D-like), every stored image shown as **3 pseudo-views** (random crops,
spec §2.1) with the depth and ray-map priors. It reports samples/s of one loader worker process as at the
paper's scale (≈ 234k Omni3D images, of which a per-worker LRU of 512 MB holds a fraction of a percent): every
sample decodes its image once and its three crops share it (timed with a cache of about one image). No 3B
step runs on a CPU; instead the samples/s one GPU consumes is estimated from the step's FLOPs:

* FLOPs per sample ≈ 6 · N · T + attention: N = the Pose-VLM's parameters (`posevla.models.counts`:
  SigLIP + projector + Gemma with its tied embedding + priors + pose rows ≈ 2.95 B), T = the padded tokens of
  a sample (3 × 256 image + 64 prompt + answer, from the loader's batches), 6 = 2 (multiply-add) × 3
  (forward + backward); attention adds 3 × 4 · T² · d_attn per Gemma layer (QKᵀ and PV, forward +
  backward; d_attn = heads × head_dim) and 3 × 4 · 256² · d_vision per SigLIP layer and view;
* samples/s per GPU = MFU × peak / FLOPs per sample (``--mfu`` 0.40 of ``--gpu-tflops`` 989, an H100's dense
  bf16) ≈ 25;
* workers per GPU = ⌈ samples/s per GPU / samples/s per worker ⌉ (the paper-scale figure), against the target
  ``--max-workers-per-gpu`` (6). ``--profile`` adds where one worker's time goes (cProfile of the batch
  function in this process, top entries by cumulative time).

The tokenizer is the scratch BPE with the pose tokens (PaliGemma's own needs its weights); prompts and answers
are a few dozen tokens either way, a small share of a sample's cost next to the images.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from posevla.data.collate import ExampleSpec
from posevla.data.sources import SourceSpec, fit_source_bins, load_source
from posevla.data.mixture import build_mixture
from posevla.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BenchDataArgs:
    """Options of `posevla bench data`."""

    data: str | None = None
    """A generated dataset directory; default: generate `num_scenes` scenes in a temporary directory."""
    num_scenes: int = 24
    width: int = 256
    height: int = 192
    """Image size of generated scenes (the demo's)."""
    config: str = "stage1-tiny"
    """Training config whose model, batch size, bins and precision are used."""
    workers: tuple[int, ...] = (1, 2)
    """Loader worker counts to time (0 = in the training process, with the prefetch thread)."""
    train_steps: int = 6
    """Training steps timed (after one warm-up step)."""
    threads: int = 0
    """torch intra-op threads of the training step (0 = torch's default)."""
    json: bool = False
    """Print the figures as one JSON object."""
    size: str | None = None
    """A model size (``paligemma-3b``): time the stage-1 loader at that layout with pseudo-views and estimate
    the workers one GPU needs (module docstring); the scenes default to 640 × 480 then."""
    batch_size: int = 8
    """--size: examples per timed batch (samples/s does not depend on it)."""
    batches: int = 8
    """--size: batches timed per loader (after one warm-up batch)."""
    gpu_tflops: float = 989.0
    """--size: the GPU's dense bf16 peak (TFLOP/s; an H100 SXM)."""
    mfu: float = 0.40
    """--size: the model FLOPs utilisation the GPU step reaches."""
    max_workers_per_gpu: int = 6
    profile: bool = False
    """--size: also profile the batch function (cProfile, top entries)."""


def _time_loader(mixture: Any, codec: Any, tokenizer: Any, workers: int, per_epoch: int) -> dict[str, float]:
    """Samples/s of a fresh loader over its first epoch (cold caches) and its second (warm)."""
    B = mixture.batch_size
    t0 = time.perf_counter()
    stream = mixture.batches(0, codec, tokenizer, num_workers=workers)
    try:
        for _ in range(per_epoch):
            next(stream)
        t1 = time.perf_counter()
        for _ in range(per_epoch):
            next(stream)
        t2 = time.perf_counter()
    finally:
        stream.close()
    return {
        "workers": workers,
        "cold_samples_per_s": per_epoch * B / (t1 - t0),
        "warm_samples_per_s": per_epoch * B / (t2 - t1),
    }


def run_bench_data(args: BenchDataArgs) -> dict[str, Any]:
    """Measure loader and training-step throughput (see the module docstring); returns the figures."""
    from posevla.models.factory import build_vlm
    from posevla.runtime import autocast_context, pick_device_and_precision
    from posevla.sim.tabletop import generate_dataset
    from posevla.tokens import PoseCodec
    from posevla.training.configs import get_config

    if not args.workers or min(args.workers) < 0:
        raise ConfigError(f"--workers needs one or more counts >= 0, got {args.workers}")
    if args.train_steps < 1:
        raise ConfigError(f"--train-steps must be >= 1, got {args.train_steps}")
    if args.data is None and args.num_scenes < 1:
        raise ConfigError(f"--num-scenes must be >= 1 (the scenes generated to time on), got {args.num_scenes}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = get_config(args.config)
    tmp = None
    data = args.data
    t = time.perf_counter()
    if data is None:
        tmp = tempfile.TemporaryDirectory(prefix="posevla-bench-")
        data = tmp.name
        generate_dataset(data, args.num_scenes, seed=0, width=args.width, height=args.height, workers=1,
                         progress=False)
    gen_s = time.perf_counter() - t
    try:
        loaded = [load_source(SourceSpec("generated", str(data)))]
        bins = fit_source_bins(loaded, cfg.bins)
        torch.manual_seed(cfg.seed)
        device, use_bf16, _ = pick_device_and_precision(cfg.device, cfg.precision)
        model = build_vlm(cfg.model.resolve(), bins)
        codec, tokenizer = PoseCodec(bins), model.tokenizer
        spec = ExampleSpec.from_model(model.cfg)

        def mixture():  # fresh datasets: empty caches, nothing inherited by forked workers
            return build_mixture(loaded, spec, batch_size=cfg.batch_size, seed=cfg.seed,
                                 negative_prob=cfg.data.negative_prob)

        m = mixture()
        per_epoch = max(1, len(m.datasets[0]) // cfg.batch_size)
        loader = [_time_loader(mixture(), codec, tokenizer, w, per_epoch) for w in args.workers]

        batches = [m.batch(k, codec, tokenizer) for k in range(args.train_steps + 1)]
        model.to(device).train()
        o = cfg.optim
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        times = []
        for k, batch in enumerate(batches):
            batch = {key: v.to(device) for key, v in batch.items()}
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with autocast_context(device, use_bf16):
                loss = model.compute_loss(batch, ordinal_sigma=cfg.ordinal_sigma)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k > 0:  # step 0 is the warm-up
                times.append(time.perf_counter() - t)
        step_s = statistics.median(times)
    finally:
        if tmp is not None:
            tmp.cleanup()
    trainer_sps = cfg.batch_size / step_s
    one = next((r for r in loader if r["workers"] == 1), loader[0])
    return {
        "dataset": {"path": None if tmp is not None else str(data), "scenes": len(loaded[0].scenes),
                    "entries": len(m.datasets[0]), "image": [args.width, args.height] if tmp is not None else None,
                    "generate_s": round(gen_s, 2) if tmp is not None else None},
        "config": cfg.name,
        "batch_size": cfg.batch_size,
        "batches_per_epoch": per_epoch,
        "device": str(device),
        "precision": "bf16 autocast" if use_bf16 else "fp32",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loader": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in loader],
        "trainer": {"step_s": round(step_s, 4), "samples_per_s": round(trainer_sps, 2)},
        "ratio_workers": one["workers"],
        "ratio": round(one["warm_samples_per_s"] / trainer_sps, 2),
        "ratio_cold": round(one["cold_samples_per_s"] / trainer_sps, 2),
    }


# -- paper size: one worker's samples/s and the workers one GPU needs ---------------------------------------


def gpu_samples_per_s(params: int, tokens: int, cfg: Any, gpu_tflops: float, mfu: float) -> dict[str, Any]:
    """The samples/s one GPU consumes in training (module docstring: 6·N·T + attention FLOPs per sample).

    Args:
        params: N, the model's parameters.
        tokens: T, the padded sequence length of a sample.
        cfg: the model's `PoseVLMConfig` (layers, widths, views, tokens per view).
    """
    dense = 6 * params * tokens
    lm_attn = 3 * 4 * tokens**2 * cfg.text_heads * cfg.head_dim * cfg.text_layers
    vis_attn = 3 * 4 * cfg.tokens_per_view**2 * cfg.vision_hidden * cfg.vision_layers * cfg.num_views
    flops = dense + lm_attn + vis_attn
    sps = mfu * gpu_tflops * 1e12 / flops
    return {"params": params, "tokens": tokens, "dense_flops": dense, "attention_flops": lm_attn + vis_attn,
            "flops_per_sample": flops, "gpu_tflops": gpu_tflops, "mfu": mfu, "samples_per_s": sps}


def _paper_mixture(loaded: Any, spec: ExampleSpec, batch_size: int, seed: int, cache_mb: float) -> Any:
    """The stage-1 mixture of `loaded` (pseudo-views from every stored image) with a `cache_mb` source cache."""
    from posevla.data.datasets import GroundingDataset
    from posevla.data.mixture import Mixture
    from posevla.data.views import DEFAULT_CROPS

    src = loaded[0]
    ds = GroundingDataset(src.scenes, spec, label_filter=src.spec.label_filter(), negative_prob=0.1, seed=seed,
                          pseudo_views=DEFAULT_CROPS, source_cache_mb=cache_mb)
    return Mixture([ds], [src.spec.label], batch_size=batch_size, seed=seed)


#: Source-image cache of the paper-scale timing: about one decoded 640 × 480 image (RGB + depth), so every
#: sample decodes its image once and its three crops share it, as when the images outnumber any cache.
PAPER_SCALE_MB = 4.0


def _time_worker(mixture: Any, codec: Any, tokenizer: Any, batches: int) -> float:
    """Samples/s of one loader worker process over `batches` batches, after one warm-up batch."""
    stream = mixture.batches(0, codec, tokenizer, num_workers=1, prefetch=1)
    try:
        next(stream)  # the worker's start-up and first batch
        t0 = time.perf_counter()
        for _ in range(batches):
            next(stream)
        return batches * mixture.batch_size / (time.perf_counter() - t0)
    finally:
        stream.close()


def _profile(mixture: Any, codec: Any, tokenizer: Any, batches: int, top: int = 14) -> list[dict[str, Any]]:
    """cProfile of `batches` calls of the batch function in this process: the top entries by cumulative time."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for k in range(batches):
        mixture.batch(1000 + k, codec, tokenizer)
    prof.disable()
    st = pstats.Stats(prof)
    total = max(st.total_tt, 1e-9)
    rows = []
    for (file, line, fn), (_, calls, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][3]):
        if "posevla" not in file and not rows:
            continue  # start at the pipeline's own entry
        rows.append({"function": f"{Path(file).name}:{line}({fn})", "calls": calls,
                     "cum_s": round(ct, 3), "self_s": round(tt, 3), "cum_share": round(ct / total, 3)})
        if len(rows) == top:
            break
    return rows


def run_bench_data_paper(args: BenchDataArgs) -> dict[str, Any]:
    """The loader at a paper-size layout and the workers one GPU needs (module docstring); returns the figures."""
    import math

    from posevla.models.config import get_model_config
    from posevla.models.counts import analytic_counts
    from posevla.models.text import PoseTextTokenizer
    from posevla.sim.tabletop import generate_dataset
    from posevla.tokens import BinCounts, PoseCodec

    if args.size != "paligemma-3b":
        raise ConfigError(f"--size {args.size!r}: the paper-size loader bench knows paligemma-3b")
    for flag, v in (("--batch-size", args.batch_size), ("--batches", args.batches),
                    ("--max-workers-per-gpu", args.max_workers_per_gpu)):
        if v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    if not (0 < args.mfu <= 1 and args.gpu_tflops > 0):
        raise ConfigError(f"--mfu must be in (0, 1] and --gpu-tflops > 0, got {args.mfu}, {args.gpu_tflops}")
    cfg = get_model_config(args.size, base="checkpoints/paligemma-3b-pt-224")  # the paper's vocabulary size
    counts = BinCounts()  # the paper's token counts
    spec = ExampleSpec.from_model(cfg)
    width, height = (640, 480) if (args.width, args.height) == (256, 192) else (args.width, args.height)
    tmp, data = None, args.data
    t = time.perf_counter()
    if data is None:
        tmp = tempfile.TemporaryDirectory(prefix="posevla-bench-")
        data = tmp.name
        generate_dataset(data, args.num_scenes, seed=0, width=width, height=height, workers=1, progress=False)
    gen_s = time.perf_counter() - t
    try:
        loaded = [load_source(SourceSpec("generated", str(data), pseudo_views=True))]
        bins = fit_source_bins(loaded, counts)
        codec = PoseCodec(bins)
        tokenizer = PoseTextTokenizer.build_scratch()
        tokenizer.add_pose_tokens(codec.vocabulary())
        probe = _paper_mixture(loaded, spec, args.batch_size, 0, PAPER_SCALE_MB)
        tokens = int(probe.batch(0, codec, tokenizer)["input_ids"].shape[1])  # T, padded
        sps = _time_worker(_paper_mixture(loaded, spec, args.batch_size, 0, PAPER_SCALE_MB), codec, tokenizer,
                           args.batches)
        prof = _profile(_paper_mixture(loaded, spec, args.batch_size, 0, PAPER_SCALE_MB), codec, tokenizer,
                        max(1, args.batches // 2)) if args.profile else None
    finally:
        if tmp is not None:
            tmp.cleanup()
    params = analytic_counts(cfg, bins=counts).total
    gpu = gpu_samples_per_s(params, tokens, cfg, args.gpu_tflops, args.mfu)
    workers = math.ceil(gpu["samples_per_s"] / sps)
    return {
        "size": args.size,
        "layout": {"image_size": spec.image_size, "views": spec.num_views, "tokens_per_view": spec.n_image_tokens,
                   "prompt_len": spec.prompt_len, "pseudo_views": True, "priors": ["depth", "ray"]},
        "dataset": {"scenes": len(loaded[0].scenes), "stored_images": sum(len(s.views) for s in loaded[0].scenes),
                    "entries": len(probe.datasets[0]), "image": [width, height],
                    "generate_s": round(gen_s, 2) if tmp is not None else None},
        "batch_size": args.batch_size,
        "batches_timed": args.batches,
        "cpu_count": os.cpu_count(),
        "worker_samples_per_s": round(sps, 2),
        "gpu": gpu,
        "workers_per_gpu": workers,
        "max_workers_per_gpu": args.max_workers_per_gpu,
        "within_target": workers <= args.max_workers_per_gpu,
        "profile": prof,
    }


def format_bench_data_paper(res: dict[str, Any]) -> str:
    """The paper-size figures and the arithmetic behind the workers per GPU."""
    lay, d, g, w = res["layout"], res["dataset"], res["gpu"], res["worker_samples_per_s"]
    lines = [
        (f"stage-1 loader at {res['size']}: {lay['views']} pseudo-views × {lay['image_size']} px "
         f"({lay['tokens_per_view']} tokens each) + depth & ray priors, prompt {lay['prompt_len']}; "
         f"{d['stored_images']} stored {d['image'][0]}×{d['image'][1]} images, {d['entries']} entries, "
         f"batch {res['batch_size']}, {res['batches_timed']} batches; {res['cpu_count']} CPUs"),
        f"one loader worker: {w:.1f} samples/s (every sample decodes its image once, as at the paper's scale)",
        (f"GPU step: FLOPs/sample ≈ 6 · N · T + attention = 6 · {g['params'] / 1e9:.3f} B · {g['tokens']} + "
         f"{g['attention_flops'] / 1e12:.2f} T = {g['flops_per_sample'] / 1e12:.2f} TFLOP"),
        (f"  samples/s per GPU = {g['mfu']:.0%} MFU · {g['gpu_tflops']:.0f} TFLOP/s / "
         f"{g['flops_per_sample'] / 1e12:.2f} TFLOP = {g['samples_per_s']:.1f}"),
        (f"workers per GPU = ⌈{g['samples_per_s']:.1f} / {w:.1f}⌉ = {res['workers_per_gpu']} "
         f"(target ≤ {res['max_workers_per_gpu']}: {'met' if res['within_target'] else 'NOT met'})"),
    ]
    if res["profile"]:
        lines.append("where one worker's time goes (cProfile, cumulative):")
        lines += [f"  {r['cum_share']:>6.1%} {r['cum_s']:>7.3f} s  {r['calls']:>6}×  {r['function']}"
                  for r in res["profile"]]
    return "\n".join(lines)


def format_bench_data(res: dict[str, Any]) -> str:
    """The figures as a small text table."""
    d = res["dataset"]
    lines = [
        f"data: {d['scenes']} scenes, {d['entries']} (scene, category) entries, batch {res['batch_size']} "
        f"({res['batches_per_epoch']} batches/epoch); {res['device']}, {res['precision']}, "
        f"{res['torch_threads']} torch threads, {res['cpu_count']} CPUs",
        "what                               samples/s",
    ]
    for r in res["loader"]:
        who = f"loader, {r['workers']} worker(s)" if r["workers"] else "loader, in-process"
        lines.append(f"{who + ', cold (1st epoch)':<34} {r['cold_samples_per_s']:>9.1f}")
        lines.append(f"{who + ', warm (2nd epoch)':<34} {r['warm_samples_per_s']:>9.1f}")
    lines.append(f"{'trainer step (' + res['config'] + ')':<34} {res['trainer']['samples_per_s']:>9.1f}")
    lines.append(
        f"loader / trainer ({res['ratio_workers']} worker): {res['ratio']:.1f}x warm, {res['ratio_cold']:.1f}x cold"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import json

    import tyro

    args = tyro.cli(BenchDataArgs, args=argv, prog="posevla bench data")
    if args.size is not None:
        res = run_bench_data_paper(args)
        print(json.dumps(res, indent=2) if args.json else format_bench_data_paper(res))
        return
    res = run_bench_data(args)
    print(json.dumps(res, indent=2) if args.json else format_bench_data(res))

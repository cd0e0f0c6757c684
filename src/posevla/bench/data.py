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
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
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
    res = run_bench_data(args)
    print(json.dumps(res, indent=2) if args.json else format_bench_data(res))

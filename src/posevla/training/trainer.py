"""The one training loop: set up → train steps → atomic checkpoints → loss curve.

Features (and their trade-offs):
  * One loop for every stage: the objective (`posevla.training.objectives`: tokens for stages 1 and 2,
    actions for post-training) supplies the data, the model, the loss and extra metrics; the loop has no
    branch on which one it runs.
  * AdamW (β = 0.9, 0.95), linear warm-up then cosine decay to ``optim.min_lr``, grad-clip (spec §2.4).
  * bf16 autocast where the hardware supports it (faster on AVX512-BF16 CPUs and on GPUs); the loss is
    computed in fp32. The choice and its reason are logged once at start-up.
  * Exact resume: the batch order is a function of (seed, step) and the RNG states are checkpointed, so N/2
    steps + resume gives the same losses as N straight steps; batches are built in ``data.num_workers``
    processes or in-process (with a prefetch thread), identically.
  * Checkpoints are read only through `load_checkpoint`: a resumed run continues the architecture its
    checkpoint saved; an initialised one starts from the checkpoint's saved architecture.
  * A non-finite loss stops the run with TrainingError before the optimizer step; the last good checkpoint
    stays untouched.
  * JSONL metrics (`metrics.jsonl`), tqdm progress, a loss-curve PNG at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from posevla.data.streaming import stream_batches
from posevla.errors import CheckpointError, TrainingError, given_as
from posevla.runtime import autocast_context, pick_device_and_precision
from posevla.training.checkpoint import (
    Checkpoint,
    clean_leftovers,
    discard_checkpoint,
    load_checkpoint,
    load_training_state,
    promote_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from posevla.training.config import TrainConfig
from posevla.training.curves import plot_loss_curve
from posevla.training.dist_checkpoint import save_distributed_checkpoint
from posevla.training.objectives import Objective, make_objective
from posevla.training import distributed

__all__ = ["TrainResult", "train"]


@dataclasses.dataclass
class TrainResult:
    """What a finished run left: its folder, last checkpoint, steps, final loss, wall time and logged rows."""

    out_dir: Path
    checkpoint: Path
    steps: int
    final_loss: float
    seconds: float
    history: list[dict[str, Any]]


def train(
    cfg: TrainConfig, *, resume: bool = False, loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None
) -> TrainResult:
    """Run (or resume) a training run described by `cfg`.

    Args:
        cfg: the resolved config.
        resume: continue from `out_dir/checkpoints/latest.json` (exactly).
        loss_hook: test hook `(step, loss) -> loss`, e.g. to inject a non-finite loss.
    """
    t0 = time.time()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    out_dir = Path(cfg.out_dir)
    device, use_bf16, reason = pick_device_and_precision(cfg.device, cfg.precision)
    ctx, device = distributed.setup(cfg.parallel, device, cfg.batch_size)
    try:
        return _train(cfg, ctx, device, use_bf16, reason, out_dir, t0, resume, loss_hook)
    finally:
        distributed.shutdown()


def _train(cfg: TrainConfig, ctx: distributed.DistContext, device: torch.device, use_bf16: bool, reason: str,
           out_dir: Path, t0: float, resume: bool,
           loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None) -> TrainResult:
    say = print if ctx.is_main else _quiet
    if distributed.restart_count() > 0 and not resume:
        say(f"[posevla] torchrun restart {distributed.restart_count()}: resuming from the latest checkpoint")
        resume = True
    if ctx.is_main:
        _prepare_out_dir(out_dir)
        for path, size in clean_leftovers(out_dir):
            say(f"[posevla] removed {path} ({size / 1e6:.1f} MB): an unfinished checkpoint of an interrupted run")
    ctx.barrier()
    say(f"[posevla] device={device} precision={'bf16 autocast' if use_bf16 else 'fp32'} ({reason})")
    if ctx.distributed:
        say(f"[posevla] {ctx.parallel}: {ctx.world_size} rank(s), global batch {cfg.batch_size} "
            f"({cfg.batch_size // ctx.world_size} per rank)")

    # -- setup: data, checkpoints, bins, model, optimizer ----------------------------------------------
    objective = make_objective(cfg, log=say)
    objective.load_data()
    resumed = _resume_checkpoint(out_dir) if resume else None
    init = None
    if resumed is None and cfg.init_checkpoint:
        with given_as("--init-checkpoint"):
            init = load_checkpoint(cfg.init_checkpoint)
    bins = objective.bins(resumed or init)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = objective.build_model(bins, resumed, init)
    model.to(device)
    model.train()
    engine = distributed.wrap(model, ctx, device, use_bf16=use_bf16,
                              activation_checkpointing=cfg.activation_checkpointing)
    optimizer, scheduler = _optimizer(engine, cfg)
    start_step = 0
    if resumed is not None:
        state = load_training_state(resumed.dir, optimizer, scheduler, model=engine)
        start_step = int(state["step"])
        # The schedule follows the *current* config (e.g. a run resumed with a larger --steps).
        for g, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            g["lr"] = base_lr * cfg.optim.lr_multiplier(cfg.steps)(start_step)
        say(f"[posevla] resumed from {resumed.dir} at step {start_step}")
    make_batch = objective.batches(model, bins, resumed)
    if ctx.world_size > 1:
        make_batch = distributed.RankShare(make_batch, *distributed.batch_rows(cfg.batch_size, ctx))
    metrics_path = out_dir / "metrics.jsonl"
    history = _read_history(metrics_path, start_step + 1)
    if ctx.is_main:
        (out_dir / "config.json").write_text(json.dumps(objective.resolved, indent=2, default=str))
        bins.save(out_dir / "bins.json")
        with open(metrics_path, "w") as f:  # drop lines a killed run wrote after its last checkpoint
            f.writelines(json.dumps(r) + "\n" for r in history)

    def checkpoint(step: int, last: dict[str, Any]) -> Path:
        """Write the checkpoint of `step`, not yet `latest` (it is promoted once the next loss is finite)."""
        if not distributed.all_finite(list(engine.parameters()), ctx):
            raise TrainingError(
                f"the parameters are no longer finite after step {step}; no checkpoint was written. "
                f"{_last_good(last_ckpt)}. Lower --optim.lr or use --precision fp32"
            )
        if ctx.distributed:
            return save_distributed_checkpoint(
                out_dir, step, engine=engine, optimizer=optimizer, scheduler=scheduler, ctx=ctx,
                config=objective.resolved, bins_json=bins.to_dict(), tokenizer=_tokenizer(model),
                trainer_state={"data_position": {"seed": cfg.seed, "next_step": step}, "last": last,
                               "world_size": ctx.world_size, "parallel": ctx.parallel},
                norm_stats=objective.norm_stats,
            )
        return save_checkpoint(
            out_dir,
            step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            config=objective.resolved,
            bins_json=bins.to_dict(),
            tokenizer=_tokenizer(model),
            trainer_state={"data_position": {"seed": cfg.seed, "next_step": step}, "last": last},
            keep=cfg.keep_checkpoints,
            norm_stats=objective.norm_stats,
            promote=False,
        )

    # -- steps ------------------------------------------------------------------------------------
    last: dict[str, Any] = {}
    last_ckpt = resumed.dir if resumed is not None else None
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (cfg.progress and ctx.is_main), desc=cfg.name,
               unit="step")
    promote = (lambda p: promote_checkpoint(p, keep=cfg.keep_checkpoints)) if ctx.is_main else (lambda p: None)
    batches = stream_batches(make_batch, start_step, num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    t_steps = time.time()
    step = start_step
    pending: Path | None = None  # written, not yet `latest`: the next step's loss decides
    try:
        with open(metrics_path, "a") if ctx.is_main else open(os.devnull, "w") as mf:
            while step < cfg.steps:
                _, batch = next(batches)
                if cfg.debug_kill_at_step == step and ctx.rank == ctx.world_size - 1 and distributed.restart_count() == 0:
                    os.kill(os.getpid(), signal.SIGKILL)  # testing only: a rank dies mid-run (torchrun restarts)
                row, extra = _step(objective, engine, optimizer, scheduler, batch, step, cfg, device, use_bf16,
                                   loss_hook, ctx)
                if pending is not None:
                    promote(pending)
                    ctx.barrier()
                    last_ckpt, pending = pending, None
                step += 1
                last = {**row, "time_s": round(time.time() - t_steps, 3), **extra}
                if step % cfg.log_every == 0 or step == cfg.steps:
                    mf.write(json.dumps(last) + "\n")
                    mf.flush()
                    history.append(last)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['token_acc']:.2f}")
                if step % cfg.save_every == 0 or step == cfg.steps:
                    pending = checkpoint(step, last)
            if pending is not None:  # the last checkpoint: the loss of the next batch decides (no update)
                _probe(objective, engine, next(batches)[1], step, cfg, device, use_bf16, ctx)
                promote(pending)
                ctx.barrier()
                last_ckpt, pending = pending, None
    except _Diverged as e:
        if pending is not None and ctx.is_main:
            discard_checkpoint(pending)
        raise TrainingError(
            f"non-finite loss ({e.loss}) at step {e.step}; stopping before the optimizer step. "
            + (f"The checkpoint of step {step}, whose weights gave this loss, was discarded. " if pending is not None
               else "")
            + f"{_last_good(last_ckpt)}. Lower --optim.lr, check the data with `posevla doctor`, or use --precision fp32."
        ) from None
    finally:
        batches.close()  # stops the prefetch thread / loader workers
        bar.close()

    # -- save ---------------------------------------------------------------------------------------
    if last_ckpt is None:  # steps == start_step: nothing trained, still leave a usable checkpoint
        last_ckpt = checkpoint(step, last)
        promote(last_ckpt)
        ctx.barrier()
    if ctx.is_main:
        try:
            plot_loss_curve(history, out_dir / "loss_curve.png")
        except Exception as e:  # plotting must never lose a finished run
            say(f"[posevla] loss curve not written: {e}")
    return TrainResult(
        out_dir=out_dir,
        checkpoint=last_ckpt,
        steps=step,
        final_loss=last.get("loss", float("nan")),
        seconds=time.time() - t0,
        history=history,
    )


def _step(
    objective: Objective,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: dict[str, torch.Tensor],
    step: int,
    cfg: TrainConfig,
    device: torch.device,
    use_bf16: bool,
    loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None,
    ctx: distributed.DistContext = distributed.DistContext(),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One optimizer step; returns its metrics (the step number is the one *after* it) and the objective's.

    Several ranks: each rank's mean loss is weighted by its share of the loss's terms, so the gradient the
    wrapper averages and the logged loss are those of the whole global batch (`distributed.global_mean`).

    Raises:
        _Diverged: the loss is not finite (nothing was updated).
    """
    out, loss, (global_loss, local_n, total_n) = _loss(objective, model, batch, step, cfg, device, use_bf16,
                                                       loss_hook, ctx)
    optimizer.zero_grad(set_to_none=True)
    scale = 1.0 if ctx.world_size == 1 else float(local_n * ctx.world_size / total_n)
    (loss * scale).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    scheduler.step()
    acc = out.get("token_acc", torch.tensor(float("nan")))
    if ctx.world_size > 1 and bool(torch.isfinite(acc)):
        acc, _ = distributed.global_mean(acc.float(), local_n, ctx)
    row = {
        "step": step + 1,
        "loss": float(global_loss.item()),
        "token_acc": float(acc.item()),
        "grad_norm": float(grad_norm.item()),
        "lr": float(scheduler.get_last_lr()[0]),
    }
    return row, objective.metrics(out, batch, reduce=ctx.all_reduce_sum if ctx.world_size > 1 else None)


class _Diverged(Exception):
    def __init__(self, loss: float, step: int) -> None:
        super().__init__(f"non-finite loss {loss} at step {step}")
        self.loss, self.step = loss, step


def _loss(
    objective: Objective,
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    step: int,
    cfg: TrainConfig,
    device: torch.device,
    use_bf16: bool,
    loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ctx: distributed.DistContext = distributed.DistContext(),
) -> tuple[dict[str, torch.Tensor], torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The objective's output, this rank's loss and (global loss, this rank's count, the global count) on
    `batch` (``--debug-nan-at-step`` and the test hook applied). Every rank raises together."""
    batch = {k: v.to(device) for k, v in batch.items()}
    with autocast_context(device, use_bf16):
        out = objective.loss(model, batch)
    loss = out["loss"]
    if cfg.debug_nan_at_step == step:
        loss = loss * float("nan")
    if loss_hook is not None:
        loss = loss_hook(step, loss)
    if ctx.world_size == 1:
        n = torch.ones((), dtype=torch.float64)
        global_loss, total = loss.detach(), n
    else:
        n = objective.loss_count(out, batch).detach().cpu()
        global_loss, total = distributed.global_mean(loss.float(), n, ctx)
    if not torch.isfinite(global_loss):
        raise _Diverged(float(global_loss.item()), step)
    return out, loss, (global_loss, n, total)


@torch.no_grad()
def _probe(objective: Objective, model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int,
           cfg: TrainConfig, device: torch.device, use_bf16: bool,
           ctx: distributed.DistContext = distributed.DistContext()) -> None:
    """The loss of the step after the last one, without an update: a diverged model fails here (_Diverged)."""
    _loss(objective, model, batch, step, cfg, device, use_bf16, None, ctx)


def _quiet(*_: Any, **__: Any) -> None:
    """The log of ranks other than 0."""


def _last_good(ckpt: Path | None) -> str:
    return f"Last good checkpoint: {ckpt}" if ckpt else "No good checkpoint exists yet"


def _prepare_out_dir(out_dir: Path) -> None:
    """Create `out_dir` and make sure it can be written; TrainingError naming the path and the cause."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"--out-dir {out_dir} is a file, not a folder; pass a folder path (it is created)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainingError(
            f"cannot write to --out-dir {out_dir}: {e.strerror or e}; pass a folder you can write to (check its "
            "permissions and the free disk space)"
        ) from None


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (no weight decay on biases and norms) and the warm-up + cosine schedule."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr,
        betas=o.betas,
        eps=o.eps,
        fused=True if cfg.fused_adamw else None,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, o.lr_multiplier(cfg.steps))


def _resume_checkpoint(out_dir: Path) -> Checkpoint | None:
    try:
        resolve_checkpoint(out_dir)
    except CheckpointError:
        print(f"[posevla] --resume: no checkpoint in {out_dir}, starting from step 0")
        return None
    return load_checkpoint(out_dir)


def _tokenizer(model: torch.nn.Module) -> Any:
    return getattr(model, "vlm", model).tokenizer


def _read_history(path: Path, upto_step: int) -> list[dict[str, Any]]:
    """The logged rows of a run before `upto_step`; lines a killed run cut short are dropped (and reported)."""
    if not path.exists():
        return []
    rows, bad = [], []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(n)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(n)
    if bad:
        print(f"[posevla] {path}: dropped {len(bad)} unreadable line(s) ({', '.join(map(str, bad[:5]))}), "
              "written by a run that was killed mid-line")
    return [r for r in rows if isinstance(r.get("step"), int) and r["step"] < upto_step]

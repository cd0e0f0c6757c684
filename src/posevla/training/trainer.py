"""The one training loop: setup → train steps → atomic checkpoints → loss curve.

Features (and their trade-offs):
  * AdamW (β = 0.9, 0.95), linear warm-up then cosine decay to `min_lr`, grad-clip (spec §2.4).
  * bf16 autocast where the hardware supports it (faster on AVX512-BF16 CPUs and on GPUs); the loss
    is computed in fp32. The choice and its reason are logged once at start-up.
  * Exact resume: the batch order is a function of (seed, step) and the RNG states are checkpointed,
    so N/2 steps + resume gives the same losses as N straight steps.
  * Data: a weighted mixture of sources (`posevla.data.mixture`: generated / Omni3D / BOP grounding,
    LeRobot trajectories), each checked by the data doctor at start-up (errors stop the run); per-source
    loss and token accuracy in the metrics; batches built in `num_workers` processes or in-process.
  * A non-finite loss stops the run with TrainingError before the optimizer step; the last good
    checkpoint stays untouched.
  * JSONL metrics (`metrics.jsonl`), tqdm progress, a loss-curve PNG at the end.
Stages differ only by their TrainConfig (data, initial weights, bins); there is no second loop.
Post-training (objective ``actions``, spec §2.3) swaps in a LeRobot v3 dataset cut into action chunks
(`posevla.data.actions`), a `PoseVLAPolicyModel` (VLM initialised from ``init_checkpoint`` or from scratch,
fresh action expert) and its flow-matching loss; its checkpoints also hold the expert config, the action
config and ``norm_stats.json``, everything `posevla.policy.Policy` needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from posevla.data.actions import ActionDataset, iterate_action_batches
from posevla.data.normalize import NormStats, load_norm_stats, norm_stats_json
from posevla.data.formats.lerobot import load_lerobot_v3
from posevla.data.collate import ExampleSpec
from posevla.data.sources import bins_coverage, check_sources, fit_source_bins, load_source
from posevla.data.mixture import build_mixture, per_source_metrics
from posevla.errors import CheckpointError, TrainingError
from posevla.models import PoseTextTokenizer, PoseVLM, get_model_config
from posevla.models.action_expert import ActionExpertConfig, get_expert_config
from posevla.models.pose_vla import PoseVLAPolicyModel
from posevla.tokens import BinSpec, PoseCodec
from posevla.training.checkpoint import (
    load_model_weights,
    load_training_state,
    read_checkpoint_meta,
    resolve_checkpoint,
    save_checkpoint,
)
from posevla.training.config import TrainConfig
from posevla.runtime import autocast_context, pick_device_and_precision


def dataset_json(path: str | Path) -> Path:
    p = Path(path)
    return p / "dataset.json" if p.is_dir() else p


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of cfg.lr at a given step: linear warm-up, cosine decay to min_lr."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        t = min(1.0, t)
        floor = cfg.min_lr / cfg.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


@dataclasses.dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    steps: int
    final_loss: float
    seconds: float
    history: list[dict[str, Any]]


def model_config(cfg: TrainConfig):
    """The run's `PoseVLMConfig`: the named size with the run's `base` and `num_views`."""
    mcfg = get_model_config(cfg.model)
    if cfg.base != "scratch":
        mcfg = dataclasses.replace(mcfg, base=cfg.base)
    if cfg.num_views is not None:
        mcfg = dataclasses.replace(mcfg, num_views=cfg.num_views)
    return mcfg


def build_model(cfg: TrainConfig, bins: BinSpec, tokenizer_dir: Path | None = None):
    """Model config, tokenizer (with pose tokens) and PoseVLM for `cfg`; same path for scratch and HF dirs."""
    mcfg = model_config(cfg)
    codec = PoseCodec(bins)
    tokenizer = PoseTextTokenizer.load(tokenizer_dir) if tokenizer_dir is not None else None
    model = PoseVLM.build(mcfg, tokenizer, codec.vocabulary(), bins=bins)
    return mcfg, codec, model, model.tokenizer


def build_policy_model(
    cfg: TrainConfig, bins: BinSpec, tokenizer_dir: Path | None = None
) -> tuple[Any, PoseCodec, PoseVLAPolicyModel, PoseTextTokenizer, ActionExpertConfig]:
    """Post-training model for `cfg`: the VLM as `build_model` makes it + a fresh `cfg.expert` action expert.

    The expert's chunk size is ``cfg.action.chunk_size``. Used by the trainer and by `posevla.policy.Policy`.
    """
    mcfg = model_config(cfg)
    codec = PoseCodec(bins)
    tokenizer = PoseTextTokenizer.load(tokenizer_dir) if tokenizer_dir is not None else None
    ecfg = get_expert_config(cfg.expert, chunk_size=cfg.action.chunk_size)
    model = PoseVLAPolicyModel.build(mcfg, ecfg, tokenizer, codec.vocabulary(), bins=bins)
    return mcfg, codec, model, model.vlm.tokenizer, ecfg


def uniform_bins(cfg: TrainConfig) -> BinSpec:
    """Bins for a post-training run from scratch: uniform over a table-top workspace.

    Without pose pre-training the pose tokens are never trained; the bins only fix the vocabulary (same token
    counts as a pose-pretrained model of the same config) and what `Policy(return_poses=True)` decodes.
    """
    return BinSpec(
        np.linspace(-2.0, 2.0, cfg.n_trans_xy + 1),
        np.linspace(0.0, 4.0, cfg.n_trans_z + 1),
        np.linspace(0.0, 2.0, cfg.n_size + 1),
        n_rot=cfg.n_rot,
        n_loc=cfg.n_loc,
        description="uniform (post-training from scratch: no pose pre-training)",
    )


def _load_initial_weights(model: torch.nn.Module, init_dir: Path, meta: dict[str, Any], resumed: bool) -> None:
    """Resume: the whole model. Post-training from a VLM checkpoint (stage 1/2): its weights into ``model.vlm``."""
    if isinstance(model, PoseVLAPolicyModel) and not resumed:
        if meta["config"].get("train", {}).get("objective", "tokens") != "actions":
            load_model_weights(model.vlm, init_dir)
            print(f"[posevla] VLM initialised from {init_dir}; action expert from scratch")
            return
    load_model_weights(model, init_dir)


def _read_history(path: Path, upto_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("step", -1) < upto_step]


def train(cfg: TrainConfig, *, resume: bool = False, loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> TrainResult:
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
    out_dir.mkdir(parents=True, exist_ok=True)
    device, use_bf16, reason = pick_device_and_precision(cfg.device, cfg.precision)
    print(f"[posevla] device={device} precision={'bf16 autocast' if use_bf16 else 'fp32'} ({reason})")

    actions = cfg.objective == "actions"
    robot_data = load_lerobot_v3(cfg.train_data) if actions else None
    sources = () if actions else cfg.data_sources()
    if sources and cfg.doctor:
        check_sources(sources)  # TrainingError with the doctor's table on errors
    elif sources:
        print("[posevla] data doctor skipped (--no-doctor): the sources were not checked")
    loaded = [load_source(s) for s in sources]
    ckpt_dir: Path | None = None
    if resume:
        try:
            ckpt_dir = resolve_checkpoint(out_dir)
        except CheckpointError:
            ckpt_dir = None
            print(f"[posevla] --resume: no checkpoint in {out_dir}, starting from step 0")
    init_dir = ckpt_dir or (resolve_checkpoint(cfg.init_checkpoint) if cfg.init_checkpoint else None)
    meta: dict[str, Any] = {}
    if init_dir is not None:
        meta = read_checkpoint_meta(init_dir)
        bins = BinSpec.from_dict(meta["bins"])
        tokenizer_dir = init_dir / "tokenizer"
    elif actions:
        bins, tokenizer_dir = uniform_bins(cfg), None
    elif cfg.bins is not None:
        bins, tokenizer_dir = BinSpec.load(cfg.bins), None
    else:  # quantiles of every source's labels: stage-1 boxes and stage-2 waypoints (open question 1)
        bins = fit_source_bins(
            loaded,
            n_trans_xy=cfg.n_trans_xy,
            n_trans_z=cfg.n_trans_z,
            n_size=cfg.n_size,
            n_rot=cfg.n_rot,
            n_loc=cfg.n_loc,
        )
        tokenizer_dir = None
    if init_dir is not None and cfg.bins is not None and BinSpec.load(cfg.bins).to_dict() != bins.to_dict():
        raise TrainingError(
            f"--bins {cfg.bins} differs from the bin spec of the checkpoint {init_dir}, whose tokens the model "
            "was trained with. Drop --bins (the checkpoint's bins are used) or start without --init-checkpoint."
        )
    if loaded and (init_dir is not None or cfg.bins is not None):  # bins not fitted on these sources
        for warning in bins_coverage(loaded, bins):
            print(f"[posevla] warning: {warning}")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if actions:
        mcfg, codec, model, tokenizer, ecfg = build_policy_model(cfg, bins, tokenizer_dir)
    else:
        mcfg, codec, model, tokenizer = build_model(cfg, bins, tokenizer_dir)
    if init_dir is not None:
        _load_initial_weights(model, init_dir, meta, resumed=ckpt_dir is not None)
    model.to(device)
    model.train()

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    start_step = 0
    if ckpt_dir is not None:
        state = load_training_state(ckpt_dir, optimizer, scheduler)
        start_step = int(state["step"])
        # The schedule follows the *current* config (e.g. a run resumed with a larger --steps).
        for g, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            g["lr"] = base_lr * lr_lambda(cfg)(start_step)
        print(f"[posevla] resumed from {ckpt_dir} at step {start_step}")

    spec = ExampleSpec(
        image_size=mcfg.image_size,
        num_views=mcfg.num_views,
        n_image_tokens=mcfg.tokens_per_view,
        prompt_len=mcfg.prompt_len,
    )
    norm_doc: dict[str, Any] | None = None
    if actions:
        # A resumed run keeps its checkpoint's statistics; a new run computes them on its dataset.
        stats: dict[str, NormStats] | None = load_norm_stats(ckpt_dir)[0] if ckpt_dir is not None else None
        act_data = ActionDataset(robot_data, cfg.action, spec, stats)
        norm_doc = norm_stats_json(act_data.stats, action_space=cfg.action.space)
        resolved = {
            "train": dataclasses.asdict(cfg),
            "model": mcfg.to_dict(),
            "expert": ecfg.to_dict(),
            "data": act_data.describe(),
        }
    else:
        mixture = build_mixture(
            loaded,
            spec,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            negative_prob=cfg.negative_prob,
            exponent=cfg.weight_exponent,
        )
        print(f"[posevla] data: {len(mixture)} source(s), {cfg.num_workers} loader worker(s)\n{mixture.table()}")
        resolved = {
            "train": dataclasses.asdict(cfg),
            "model": mcfg.to_dict(),
            "categories": mixture.categories,
            "sources": mixture.describe(),
        }
    (out_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    bins.save(out_dir / "bins.json")

    metrics_path = out_dir / "metrics.jsonl"
    history = _read_history(metrics_path, start_step + 1)
    with open(metrics_path, "w") as f:  # drop lines a killed run wrote after its last checkpoint
        f.writelines(json.dumps(r) + "\n" for r in history)

    def checkpoint(step: int, last: dict[str, Any]) -> Path:
        return save_checkpoint(
            out_dir,
            step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            config=resolved,
            bins_json=bins.to_dict(),
            tokenizer=tokenizer,
            trainer_state={"data_position": {"seed": cfg.seed, "next_step": step}, "last": last},
            keep=cfg.keep_checkpoints,
            norm_stats=norm_doc,
        )

    last: dict[str, Any] = {}
    last_ckpt = ckpt_dir
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not cfg.progress, desc=cfg.name, unit="step")
    if actions:
        batches = iterate_action_batches(
            act_data,
            cfg.batch_size,
            cfg.seed,
            start_step,
            tokenizer,
            max_state_dim=ecfg.max_state_dim,
            max_action_dim=ecfg.max_action_dim,
        )
    else:
        batches = mixture.batches(
            start_step, codec, tokenizer, num_workers=cfg.num_workers, pin_memory=device.type == "cuda"
        )
    t_steps = time.time()
    step = start_step
    with open(metrics_path, "a") as mf:
        while step < cfg.steps:
            _, batch = next(batches)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(device, use_bf16):
                if actions:  # flow matching only (spec §2.3: no token loss in post-training)
                    out = model.compute_loss(batch)
                else:
                    out = model.compute_loss(batch, ordinal_sigma=cfg.ordinal_sigma)
            loss = out["loss"]
            if loss_hook is not None:
                loss = loss_hook(step, loss)
            if not torch.isfinite(loss):
                bar.close()
                where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at step {step}; stopping before the optimizer step. "
                    f"{where}. Lower --lr, check the data with `posevla doctor`, or use --precision fp32."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            last = {
                "step": step,
                "loss": float(loss.item()),
                "token_acc": float(out.get("token_acc", torch.tensor(float("nan"))).item()),
                "grad_norm": float(grad_norm.item()),
                "lr": float(scheduler.get_last_lr()[0]),
                "time_s": round(time.time() - t_steps, 3),
            }
            if not actions:  # per-source mean loss / token accuracy over the batch's answer tokens
                last["sources"] = per_source_metrics(out, batch["source"], mixture.names)
            if step % cfg.log_every == 0 or step == cfg.steps:
                mf.write(json.dumps(last) + "\n")
                mf.flush()
                history.append(last)
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['token_acc']:.2f}")
            if step % cfg.save_every == 0 or step == cfg.steps:
                last_ckpt = checkpoint(step, last)
    batches.close()  # stops the prefetch thread / loader workers
    bar.close()
    if last_ckpt is None:  # steps == start_step: nothing trained, still leave a usable checkpoint
        last_ckpt = checkpoint(step, last)
    try:
        from posevla.eval.report import plot_loss_curve

        plot_loss_curve(history, out_dir / "loss_curve.png")
    except Exception as e:  # plotting must never lose a finished run
        print(f"[posevla] loss curve not written: {e}")
    return TrainResult(
        out_dir=out_dir,
        checkpoint=last_ckpt,
        steps=step,
        final_loss=last.get("loss", float("nan")),
        seconds=time.time() - t0,
        history=history,
    )

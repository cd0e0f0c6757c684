"""Named training configs, and lookup with "did you mean".

``posevla train NAME [--flags]`` starts from one of these and overrides any field from the CLI. Stages differ
only in their config: stage 1 (3D grounding) and stage 2 (robot waypoints, from the stage-1 checkpoint, with
the stage-1 scenes mixed back in) use the token objective; post-training uses the action objective.

* ``stage1-tiny`` / ``stage2-tiny`` / ``posttrain-tiny``: the CPU demo's stages (tiny model and expert);
* ``stage1-paligemma-3b`` / ``posttrain-paligemma-3b``: the paper's backbone and π0's 300M expert (spec §2.4);
* ``debug``: 4 tiny steps, for tests.
"""

from __future__ import annotations

import dataclasses
import difflib

from posevla.data.action_space import ActionConfig
from posevla.data.sources import SourceSpec
from posevla.errors import ConfigError
from posevla.tokens import BinCounts
from posevla.training.config import DataConfig, ModelChoice, OptimConfig, TrainConfig

__all__ = ["CONFIGS", "get_config"]


def _stage1_tiny() -> TrainConfig:
    # Coarser token families than the paper's (BinCounts.tiny): a from-scratch model on a CPU budget sees each
    # bin far more often. Quantisation error stays well under the IoU tolerances (`posevla tokens report`).
    return TrainConfig(
        name="stage1-tiny",
        steps=2000,
        batch_size=8,
        optim=OptimConfig(lr=2e-3, warmup_steps=50),
        ordinal_sigma=1.0,
        bins=BinCounts.tiny(),
    )


def _stage1_paligemma() -> TrainConfig:
    # Spec §2.4: AdamW(0.9, 0.95), 1k warm-up, cosine to 2.5e-6, peak 5e-5, global batch 112.
    return TrainConfig(
        name="stage1-paligemma-3b",
        model=ModelChoice(size="paligemma-3b", base="checkpoints/paligemma-3b-pt-224"),
        out_dir="runs/stage1-paligemma-3b",
        steps=100_000,
        batch_size=7,
        optim=OptimConfig(lr=5e-5, min_lr=2.5e-6, warmup_steps=1000),
        save_every=2000,
    )


def _debug() -> TrainConfig:
    return TrainConfig(
        name="debug",
        out_dir="runs/debug",
        steps=4,
        batch_size=2,
        optim=OptimConfig(lr=1e-3, warmup_steps=1),
        log_every=1,
        save_every=2,
        bins=BinCounts(trans_xy=64, trans_z=64, size=64, rot=72),
        progress=False,
    )


def _stage2_tiny() -> TrainConfig:
    # Stage 2 (spec §2.2, open question 4): continue from the stage-1 checkpoint (its bins and tokenizer)
    # on camera-frame TCP waypoints of robot demos, with the stage-1 scenes mixed back in (n^0.43 weights)
    # against forgetting; half the stage-1 peak learning rate. MetaWorld demos run at 80 fps, so a stride
    # of 16 frames puts the 5 waypoints 0.2 s apart.
    return dataclasses.replace(
        _stage1_tiny(),
        name="stage2-tiny",
        init_checkpoint="runs/stage1-tiny",
        out_dir="runs/stage2-tiny",
        data=DataConfig(
            sources=(
                SourceSpec("lerobot", "runs/demo/data/lerobot", stride=16),
                SourceSpec("generated", "runs/demo/data/train"),
            )
        ),
        steps=500,
        optim=OptimConfig(lr=1e-3, warmup_steps=20),
    )


def _posttrain_tiny() -> TrainConfig:
    # Spec §2.3 on the CPU budget: the tiny VLM from the stage-2 run (stage 1 works too; `--init-checkpoint
    # None` gives the "PaliGemma+Expert" from-scratch comparison), the tiny expert, chunk H = 16, every
    # parameter trained with the flow-matching loss only. Token counts as stage1-tiny so a from-scratch
    # model has the same vocabulary as a pose-pretrained one. Actions: the demos' recorded `action` feature
    # (MetaWorld's [dx, dy, dz, grip], directly executable in the closed-loop evaluation); the spec's
    # absolute EE pose is `--action.space ee_pose` (an environment then needs a pose controller).
    return TrainConfig(
        name="posttrain-tiny",
        objective="actions",
        init_checkpoint="runs/stage2-tiny",
        data=DataConfig(train_data="runs/demo/data/lerobot"),
        out_dir="runs/posttrain-tiny",
        expert="tiny",
        action=ActionConfig(space="joints", joint_key="action", chunk_size=16),
        steps=2000,
        batch_size=8,
        optim=OptimConfig(lr=5e-4, min_lr=2.5e-5, warmup_steps=50),
        bins=BinCounts.tiny(),
    )


def _posttrain_paligemma() -> TrainConfig:
    # Spec §2.3/§2.4: PoseVLM (paligemma-3b) + π0's 300M Gemma expert, absolute EE-pose actions, chunk 16,
    # priors off (RoboTwin), all parameters trained; lr 2.5e-5 -> 2.5e-6, global batch 32, 80k steps.
    return TrainConfig(
        name="posttrain-paligemma-3b",
        objective="actions",
        model=ModelChoice(size="paligemma-3b", base="checkpoints/paligemma-3b-pt-224"),
        init_checkpoint="runs/stage2-paligemma-3b",
        data=DataConfig(train_data="data/robotwin-lerobot"),
        out_dir="runs/posttrain-paligemma-3b",
        expert="300m",
        action=ActionConfig(space="ee_pose", chunk_size=16, priors=False),
        steps=80_000,
        batch_size=32,
        optim=OptimConfig(lr=2.5e-5, min_lr=2.5e-6, warmup_steps=1000),
        save_every=2000,
    )


CONFIGS: dict[str, TrainConfig] = {
    "stage1-tiny": _stage1_tiny(),
    "stage1-paligemma-3b": _stage1_paligemma(),
    "stage2-tiny": _stage2_tiny(),
    "debug": _debug(),
    "posttrain-tiny": _posttrain_tiny(),
    "posttrain-paligemma-3b": _posttrain_paligemma(),
}


def get_config(name: str) -> TrainConfig:
    """The named config, or a ConfigError listing close names."""
    if name in CONFIGS:
        return CONFIGS[name]
    close = difflib.get_close_matches(name, CONFIGS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown training config '{name}'.{hint} Valid: {', '.join(CONFIGS)}")

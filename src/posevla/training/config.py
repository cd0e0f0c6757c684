"""Training configs: one frozen dataclass, named stage configs, and lookup with "did you mean".

A stage is a config, not a code path: stage 1 (3D grounding) differs from later stages only in the
data it reads (`sources`, a weighted mixture: posevla.data.mixture), which parameters train, and the
loss weights. Every field can be overridden from
the CLI (`posevla train stage1-tiny --steps 2000 --batch-size 8`), and the resolved config is saved
as JSON in every checkpoint.

Post-training (spec §2.3) is the objective ``actions``: the VLM (from ``init_checkpoint``, a stage-1/2
checkpoint, or from scratch with ``--init-checkpoint None``) plus a flow-matching action expert
(``expert``), all parameters trained with the action loss only, on a LeRobot v3 dataset (``train_data``)
cut into chunks as ``action`` says (`posevla.data.action_space.ActionConfig`, e.g. ``--action.space joints``).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Literal

from posevla.data.action_space import ActionConfig
from posevla.data.sources import SourceSpec
from posevla.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, apart from the data on disk."""

    name: str = "stage1-tiny"
    """Config name (informational once resolved)."""
    model: str = "tiny"
    """Named model size (`posevla.models.MODEL_CONFIGS`)."""
    num_views: int | None = None
    """Image slots per sample (None = the model size's, 3). The weights do not depend on it, so a checkpoint
    trained with 1 slot initialises a 3-slot stage (the demo's stage 1 uses the head camera only)."""
    base: str = "scratch"
    """`scratch`, or a local directory with a paligemma-3b-pt-224-format checkpoint to start from."""
    init_checkpoint: str | None = None
    """A posevla checkpoint directory whose weights initialise the model (e.g. stage 2 from stage 1)."""
    train_data: str = "runs/demo/data/train"
    """Dataset directory (dataset.json inside) or a dataset.json path; the one source when `sources` is empty."""
    sources: tuple[SourceSpec, ...] = ()
    """Data sources mixed with weights n^0.43 (posevla.data.mixture); empty = one `generated` source at train_data."""
    weight_exponent: float = 0.43
    """Default source weight n^weight_exponent (n = source size, spec §2.1)."""
    bins: str | None = None
    """A bins.json to tokenise with instead of fitting bins on the sources (e.g. `posevla fit-bins` over stage-1 + stage-2 data)."""
    num_workers: int = 0
    """Processes building batches (0 = in the training process with a prefetch thread); batches are identical."""
    doctor: bool = True
    """Run the data doctor on every source at start-up and refuse to train on errors (--no-doctor skips it, logged)."""
    out_dir: str = "runs/stage1-tiny"
    """Where checkpoints, metrics.jsonl and plots go."""
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 2.5e-5
    warmup_steps: int = 100
    weight_decay: float = 1e-10
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto` = bf16 autocast where the CPU/GPU supports it, else fp32."""
    seed: int = 42
    negative_prob: float = 0.1
    ordinal_sigma: float = 0.0
    """0 = plain next-token CE (paper); > 0 = Gaussian soft targets (std in bins) on pose-value tokens."""
    n_trans_xy: int = 2048
    n_trans_z: int = 2048
    n_size: int = 2048
    n_rot: int = 360
    n_loc: int = 1024
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    num_threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu` or `cuda`."""
    progress: bool = True
    objective: Literal["tokens", "actions"] = "tokens"
    """`tokens`: next-token CE on pose answers (stages 1, 2); `actions`: flow matching (post-training)."""
    expert: str = "tiny"
    """Named action-expert size (`posevla.models.action_expert.EXPERT_CONFIGS`) when objective is `actions`."""
    action: ActionConfig = ActionConfig()
    """Action space, chunk size H and normalisation of post-training (objective `actions`)."""

    def __post_init__(self) -> None:
        # A config read back from a checkpoint's JSON has plain dicts / lists for the nested fields.
        if isinstance(self.action, dict):
            object.__setattr__(self, "action", ActionConfig.from_dict(self.action))
        if self.objective not in ("tokens", "actions"):
            raise ConfigError(f"objective {self.objective!r} is unknown; use 'tokens' or 'actions'")
        if self.sources and isinstance(self.sources[0], dict):  # read back from a checkpoint's JSON
            object.__setattr__(self, "sources", tuple(SourceSpec(**s) for s in self.sources))

    def data_sources(self) -> tuple[SourceSpec, ...]:
        """The token objective's data sources; `train_data` as one `generated` source when none are named."""
        return self.sources or (SourceSpec("generated", self.train_data),)


def _stage1_tiny() -> TrainConfig:
    return TrainConfig(
        name="stage1-tiny",
        model="tiny",
        steps=2000,
        batch_size=8,
        lr=2e-3,
        warmup_steps=50,
        ordinal_sigma=1.0,
        # Coarser token families than the paper's (1024 loc / 2048 / 2048 / 2048 / 360): a from-scratch
        # model on a CPU budget sees each bin far more often. Quantisation error stays well under the
        # IoU tolerances (see `posevla tokens report`).
        n_loc=128,
        n_trans_xy=64,
        n_trans_z=64,
        n_size=64,
        n_rot=72,
    )


def _stage1_paligemma() -> TrainConfig:
    # Spec §2.4: AdamW(0.9, 0.95), 1k warm-up, cosine to 2.5e-6, peak 5e-5, global batch 112.
    return TrainConfig(
        name="stage1-paligemma-3b",
        model="paligemma-3b",
        base="checkpoints/paligemma-3b-pt-224",
        out_dir="runs/stage1-paligemma-3b",
        steps=100_000,
        batch_size=7,
        lr=5e-5,
        min_lr=2.5e-6,
        warmup_steps=1000,
        save_every=2000,
    )


def _debug() -> TrainConfig:
    return TrainConfig(
        name="debug",
        model="tiny",
        out_dir="runs/debug",
        steps=4,
        batch_size=2,
        lr=1e-3,
        warmup_steps=1,
        log_every=1,
        save_every=2,
        n_trans_xy=64,
        n_trans_z=64,
        n_size=64,
        n_rot=72,
        progress=False,
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
        model="tiny",
        init_checkpoint="runs/stage2-tiny",
        train_data="runs/demo/data/lerobot",
        out_dir="runs/posttrain-tiny",
        objective="actions",
        expert="tiny",
        action=ActionConfig(space="joints", joint_key="action", chunk_size=16),
        steps=2000,
        batch_size=8,
        lr=5e-4,
        min_lr=2.5e-5,
        warmup_steps=50,
        n_loc=128,
        n_trans_xy=64,
        n_trans_z=64,
        n_size=64,
        n_rot=72,
    )


def _posttrain_paligemma() -> TrainConfig:
    # Spec §2.3/§2.4: PoseVLM (paligemma-3b) + π0's 300M Gemma expert, absolute EE-pose actions, chunk 16,
    # priors off (RoboTwin), all parameters trained; lr 2.5e-5 -> 2.5e-6, global batch 32, 80k steps.
    return TrainConfig(
        name="posttrain-paligemma-3b",
        model="paligemma-3b",
        base="checkpoints/paligemma-3b-pt-224",
        init_checkpoint="runs/stage2-paligemma-3b",
        train_data="data/robotwin-lerobot",
        out_dir="runs/posttrain-paligemma-3b",
        objective="actions",
        expert="300m",
        action=ActionConfig(space="ee_pose", chunk_size=16, priors=False),
        steps=80_000,
        batch_size=32,
        lr=2.5e-5,
        min_lr=2.5e-6,
        warmup_steps=1000,
        save_every=2000,
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
        sources=(
            SourceSpec("lerobot", "runs/demo/data/lerobot", stride=16),
            SourceSpec("generated", "runs/demo/data/train"),
        ),
        steps=500,
        lr=1e-3,
        warmup_steps=20,
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

"""Training configs: one frozen dataclass, named stage configs, and lookup with "did you mean".

A stage is a config, not a code path: stage 1 (3D grounding) differs from later stages only in the
data it reads, which parameters train, and the loss weights. Every field can be overridden from
the CLI (`posevla train stage1-tiny --steps 2000 --batch-size 8`), and the resolved config is saved
as JSON in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Literal

from posevla.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, apart from the data on disk."""

    name: str = "stage1-tiny"
    """Config name (informational once resolved)."""
    model: str = "tiny"
    """Named model size (`posevla.models.MODEL_CONFIGS`)."""
    base: str = "scratch"
    """`scratch`, or a local directory with a paligemma-3b-pt-224-format checkpoint to start from."""
    init_checkpoint: str | None = None
    """A posevla checkpoint directory whose weights initialise the model (e.g. stage 2 from stage 1)."""
    train_data: str = "runs/demo/data/train"
    """Dataset directory (dataset.json inside) or a dataset.json path."""
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


CONFIGS: dict[str, TrainConfig] = {
    "stage1-tiny": _stage1_tiny(),
    "stage1-paligemma-3b": _stage1_paligemma(),
    "debug": _debug(),
}


def get_config(name: str) -> TrainConfig:
    """The named config, or a ConfigError listing close names."""
    if name in CONFIGS:
        return CONFIGS[name]
    close = difflib.get_close_matches(name, CONFIGS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown training config '{name}'.{hint} Valid: {', '.join(CONFIGS)}")

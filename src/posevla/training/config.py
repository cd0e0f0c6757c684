"""The training config: one frozen, nested dataclass that round-trips through a checkpoint's JSON.

A stage is a config, not a code path. `TrainConfig` groups what a run needs, apart from the data on disk:

* ``objective``: ``tokens`` (next-token CE on pose answers: stages 1 and 2) or ``actions`` (flow matching of
  action chunks: post-training, spec §2.3); `posevla.training.objectives` turns it into data, model and loss;
* ``model`` (`ModelChoice`: a named size with run-level overrides) and ``expert`` (a named action-expert size,
  post-training only; its chunk size is ``action.chunk_size``);
* ``data`` (`DataConfig`: the sources and how batches are built), ``action`` (`ActionConfig`: action space and
  chunking), ``bins`` (`BinCounts`) or ``bins_file``, ``optim`` (`OptimConfig`), and the run's schedule.

Every field can be overridden from the CLI by its dotted path (``posevla train stage1-tiny --steps 2000
--optim.lr 2e-3 --model.num-views 1 --data.train-data DIR``), and the resolved config is saved as the
``train`` section of every checkpoint's ``config.json``. `TrainConfig.from_dict` reads it back, also in the flat layout written before the config
was nested (``lr``, ``n_loc``, ``model: "tiny"``, ... side by side), so older checkpoints still load.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from posevla.data.action_space import ActionConfig
from posevla.data.sources import SourceSpec
from posevla.errors import ConfigError, check_float, check_int
from posevla.runtime import check_device
from posevla.models.config import EXPERT_CONFIGS, MODEL_CONFIGS, PoseVLMConfig, get_model_config
from posevla.tokens import BinCounts

__all__ = ["OptimConfig", "ModelChoice", "DataConfig", "TrainConfig"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, then cosine decay to ``min_lr``, and gradient clipping (spec §2.4)."""

    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 2.5e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    weight_decay: float = 1e-10
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Max global gradient norm."""

    def __post_init__(self) -> None:
        check_float(self.lr, "--optim.lr", lo=0.0, lo_open=True)
        check_float(self.min_lr, "--optim.min-lr", lo=0.0, hi=float(self.lr))
        check_int(self.warmup_steps, "--optim.warmup-steps", lo=0)
        check_float(self.weight_decay, "--optim.weight-decay", lo=0.0)
        check_float(self.eps, "--optim.eps", lo=0.0, lo_open=True)
        check_float(self.grad_clip, "--optim.grad-clip", lo=0.0, lo_open=True)
        if len(self.betas) != 2:
            raise ConfigError(f"--optim.betas must be two numbers (beta1 beta2), got {list(self.betas)}")
        for b in self.betas:
            check_float(b, "--optim.betas", lo=0.0, hi=0.999999)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))  # JSON gives a list

    def lr_multiplier(self, steps: int) -> Callable[[int], float]:
        """Multiplier of ``lr`` at a step of a ``steps``-step run: linear warm-up, cosine decay to ``min_lr``."""

        def f(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / max(1, self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / max(1, steps - self.warmup_steps))
            floor = self.min_lr / self.lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        return f


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """Which Pose-VLM a *new* run builds: a named size (`posevla.models.MODEL_CONFIGS`) with overrides.

    A run that starts from a checkpoint (``--init-checkpoint`` or ``--resume``) takes the architecture the
    checkpoint saved instead; only ``num_views`` applies to it (a new run), and ``size`` must name the
    checkpoint's size.
    """

    size: str = "tiny"
    """Named model size (`posevla.models.MODEL_CONFIGS`)."""
    base: str = "scratch"
    """`scratch`, or a local directory with a paligemma-3b-pt-224-format checkpoint to start from."""
    num_views: int | None = None
    """Image slots per sample (None = the size's, 3). The weights do not depend on it, so a checkpoint
    trained with 1 slot initialises a 3-slot stage (the demo's stage 1 uses the head camera only)."""

    def __post_init__(self) -> None:
        if self.size not in MODEL_CONFIGS:
            raise ConfigError(f"--model.size {self.size!r} is unknown; valid sizes: {', '.join(sorted(MODEL_CONFIGS))}")
        if self.num_views is not None:
            check_int(self.num_views, "--model.num-views", lo=1, hi=16)

    def views(self) -> int:
        """The image slots of this run."""
        return self.num_views if self.num_views is not None else get_model_config(self.size).num_views

    def resolve(self) -> PoseVLMConfig:
        """The architecture of a new run: the named size with ``base`` and ``num_views``."""
        mcfg = get_model_config(self.size)
        if self.base != "scratch":
            mcfg = mcfg.replace(base=self.base)
        return mcfg.replace(num_views=self.views()) if self.num_views is not None else mcfg


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how batches are built."""

    train_data: str = "runs/demo/data/train"
    """Dataset directory: the one source of the token objective when `sources` is empty (a generated
    dataset.json folder), or the LeRobot v3 dataset of the action objective."""
    sources: tuple[SourceSpec, ...] = ()
    """Token objective: data sources mixed with weights n^weight_exponent (posevla.data.mixture)."""
    weight_exponent: float = 0.43
    """Default source weight n^weight_exponent (n = source size, spec §2.1)."""
    negative_prob: float = 0.1
    """Probability that a grounding entry becomes a negative sample (a category the scene lacks)."""
    num_workers: int = 0
    """Processes building batches (0 = in the training process with a prefetch thread); batches are identical."""
    doctor: bool = True
    """Run the data doctor on every source at start-up and refuse to train on errors (--no-doctor skips it)."""
    omni3d: tuple[str, ...] = ()
    """Token objective: Omni3D jsons added as sources (e.g. datasets/Omni3D/KITTI_train.json SUNRGBD_train.json)."""
    image_root: str | None = None
    """The folder the `omni3d` jsons' file_path s start from (the official layout's `datasets/`)."""
    depth_encoding: str | None = None
    """How the `omni3d` sources' depth PNGs encode metres (default: each source's own, e.g. sunrgbd-toolbox)."""
    cameras: str | None = None
    """Action objective: a camera calibration json for a LeRobot dataset that records none (only the stage-2
    trajectories need K and T_world_cam; post-training does not)."""

    def __post_init__(self) -> None:
        check_float(self.weight_exponent, "--data.weight-exponent", lo=0.0, hi=2.0)
        check_float(self.negative_prob, "--data.negative-prob", lo=0.0, hi=1.0)
        check_int(self.num_workers, "--data.num-workers", lo=0, hi=256)
        # read back from a checkpoint's JSON: a list of dicts
        sources = tuple(_build(SourceSpec, s, "data.sources") if isinstance(s, Mapping) else s for s in self.sources)
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "omni3d", tuple(str(p) for p in self.omni3d))
        self.token_sources()  # checks the omni3d sources' settings (ConfigError naming them)

    def token_sources(self) -> tuple[SourceSpec, ...]:
        """The token objective's sources (`sources`, then the `omni3d` jsons); `train_data` as one `generated`
        source when none are named."""
        extra = tuple(SourceSpec("omni3d", p, image_root=self.image_root, depth_encoding=self.depth_encoding)
                      for p in self.omni3d)
        return (self.sources + extra) or (SourceSpec("generated", self.train_data),)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, apart from the data on disk."""

    name: str = "stage1-tiny"
    """Config name (informational once resolved)."""
    objective: Literal["tokens", "actions"] = "tokens"
    """`tokens`: next-token CE on pose answers (stages 1, 2); `actions`: flow matching (post-training)."""
    model: ModelChoice = ModelChoice()
    expert: str = "tiny"
    """Named action-expert size (`posevla.models.EXPERT_CONFIGS`) of the `actions` objective."""
    init_checkpoint: str | None = None
    """A posevla checkpoint whose weights initialise the model (e.g. stage 2 from stage 1)."""
    expert_base: str | None = None
    """Objective `actions`, new expert: a local π0 checkpoint (openpi's or LeRobot's PyTorch layout) whose
    action-expert weights initialise it (`posevla.models.init_expert_from_pi0`)."""
    data: DataConfig = DataConfig()
    action: ActionConfig = ActionConfig()
    """Action space, chunk size H and normalisation of post-training (objective `actions`)."""
    bins: BinCounts = BinCounts()
    """Token counts of the pose families when the bins are fitted here (or made uniform)."""
    bins_file: str | None = None
    """A bins.json to tokenise with instead of fitting bins on the sources (e.g. `posevla fit-bins` over
    stage-1 + stage-2 data)."""
    optim: OptimConfig = OptimConfig()
    ordinal_sigma: float = 0.0
    """Token objective: 0 = plain next-token CE (paper); > 0 = Gaussian soft targets (std in bins)."""
    steps: int = 2000
    batch_size: int = 16
    """The global batch: split evenly over the ranks of a distributed run (so it must divide by their number);
    every world size trains on the same batches."""
    seed: int = 42
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto` = bf16 autocast where the CPU/GPU supports it, else fp32."""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu` or `cuda`."""
    num_threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    """How the ranks of `torchrun` share the model: `ddp` (a replica each, gradients all-reduced) or `fsdp`
    (FSDP2 `fully_shard` per transformer layer). `none` = one process."""
    activation_checkpointing: bool = False
    """Recompute each transformer layer's activations in the backward pass (less memory, ~30 % more compute)."""
    fused_adamw: bool = False
    """torch's fused AdamW kernel (one kernel over all parameters; fastest on GPUs)."""
    out_dir: str = "runs/stage1-tiny"
    """Where checkpoints, metrics.jsonl and plots go."""
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    progress: bool = True
    debug_kill_at_step: int | None = None
    """Testing only: the last rank of a torchrun run kills itself (SIGKILL) before this step, on the first
    attempt only, so `torchrun --max-restarts` restarts the run and it resumes from the latest checkpoint."""
    debug_nan_at_step: int | None = None
    """Testing only: make the loss computed after this many updates non-finite (0 = the first batch), to exercise
    the divergence guard: the checkpoint of that step is discarded, the one before stays `latest`."""

    def __post_init__(self) -> None:
        if self.objective not in ("tokens", "actions"):
            raise ConfigError(f"objective {self.objective!r} is unknown; use 'tokens' or 'actions'")
        for name, kind in (("model", ModelChoice), ("data", DataConfig), ("bins", BinCounts), ("optim", OptimConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):  # read back from a checkpoint's JSON
                object.__setattr__(self, name, _build(kind, value, f"train.{name}"))
        if isinstance(self.action, Mapping):
            object.__setattr__(self, "action", ActionConfig.from_dict(self.action))
        if self.expert not in EXPERT_CONFIGS:
            raise ConfigError(f"--expert {self.expert!r} is unknown; valid sizes: {', '.join(sorted(EXPERT_CONFIGS))}")
        check_device(self.device)
        if self.parallel not in ("none", "ddp", "fsdp"):
            raise ConfigError(f"--parallel {self.parallel!r} is unknown; use none, ddp or fsdp")
        check_int(self.steps, "--steps", lo=0)
        check_int(self.batch_size, "--batch-size", lo=1)
        check_int(self.seed, "--seed", lo=0, hi=2**32 - 1)
        check_int(self.num_threads, "--num-threads", lo=0)
        check_int(self.log_every, "--log-every", lo=1)
        check_int(self.save_every, "--save-every", lo=1)
        check_int(self.keep_checkpoints, "--keep-checkpoints", lo=1)
        check_float(self.ordinal_sigma, "--ordinal-sigma", lo=0.0)
        if self.debug_kill_at_step is not None:
            check_int(self.debug_kill_at_step, "--debug-kill-at-step", lo=0)
        if self.debug_nan_at_step is not None:
            check_int(self.debug_nan_at_step, "--debug-nan-at-step", lo=0)

    # -- JSON --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``train`` section of a checkpoint's config.json (JSON types only)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; also reads the flat layout of checkpoints written before the nesting.

        Raises:
            ConfigError: an unknown key (named, with the valid ones) or a value the config refuses.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"a train config is a JSON object, got {type(d).__name__}; pass the dict "
                              "TrainConfig.to_dict() writes (the 'train' section of a checkpoint's config.json)")
        d = dict(d)
        if _is_flat(d):
            d = _unflatten(d)
        return _build(cls, d, "train")


def _build(kind: type, d: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    try:
        return kind(**d)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# -- the flat layout of checkpoints written before the config was nested --------------------------------------

_FLAT_MODEL = {"model": "size", "base": "base", "num_views": "num_views"}
_FLAT_DATA = ("train_data", "sources", "weight_exponent", "negative_prob", "num_workers", "doctor")
_FLAT_BINS = {"n_loc": "loc", "n_trans_xy": "trans_xy", "n_trans_z": "trans_z", "n_size": "size", "n_rot": "rot"}
_FLAT_OPTIM = ("lr", "min_lr", "warmup_steps", "weight_decay", "betas", "eps", "grad_clip")


def _is_flat(d: Mapping[str, Any]) -> bool:
    return isinstance(d.get("model"), str) or any(k in d for k in (*_FLAT_OPTIM, *_FLAT_BINS))


def _unflatten(d: dict[str, Any]) -> dict[str, Any]:
    """The nested form of a flat (pre-nesting) train section."""
    out = {k: v for k, v in d.items() if k not in (*_FLAT_MODEL, *_FLAT_DATA, *_FLAT_BINS, *_FLAT_OPTIM, "bins")}
    out["model"] = {new: d[old] for old, new in _FLAT_MODEL.items() if old in d}
    out["data"] = {k: d[k] for k in _FLAT_DATA if k in d}
    out["bins"] = {new: d[old] for old, new in _FLAT_BINS.items() if old in d}
    out["optim"] = {k: d[k] for k in _FLAT_OPTIM if k in d}
    if d.get("bins") is not None:
        out["bins_file"] = d["bins"]
    return out

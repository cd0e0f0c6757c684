"""The two training objectives: what the one loop trains on, what model it builds and what loss it takes.

* :class:`TokenObjective` (stages 1 and 2, ``objective="tokens"``): a weighted mixture of grounding and
  trajectory sources (`posevla.data.mixture`), each checked by the data doctor at start-up; bins fitted on
  every source's labels (or given); a `PoseVLM`; next-token cross-entropy on the pose answers (optionally with
  ordinal soft targets); per-source loss and token accuracy in the metrics.
* :class:`ActionObjective` (post-training, ``objective="actions"``, spec §2.3): a LeRobot v3 dataset cut into
  normalised action chunks (`posevla.data.actions`); the VLM from a stage-1/2 checkpoint (or from scratch,
  with uniform bins) plus a fresh flow-matching action expert (`PoseVLA`); the flow-matching loss only. Its
  checkpoints also hold the expert config, the action config and ``norm_stats.json``.

Both give the loop a pure batch function ``make_batch(step)`` that `posevla.data.streaming.stream_batches`
runs in the training process or in ``--data.num-workers`` processes, with identical batches.

Where the architecture comes from: a resumed run takes the one its checkpoint saved; a run initialised from a
checkpoint takes the checkpoint's saved architecture with the run's own number of image slots (and, for
post-training from a VLM checkpoint, a fresh expert of the run's size); a new run resolves its
`ModelChoice` (the named size with overrides).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from posevla.data.actions import ActionBatches, ActionDataset
from posevla.data.collate import ExampleSpec
from posevla.data.doctor import detect_format
from posevla.data.formats.lerobot import load_lerobot_v3
from posevla.data.mixture import build_mixture, per_source_metrics
from posevla.data.normalize import norm_stats_json
from posevla.data.sources import bins_coverage, check_sources, fit_source_bins, load_source
from posevla.errors import ConfigError, DataError, TrainingError, given_as
from posevla.models.config import ActionExpertConfig, PoseVLMConfig, check_expert_pairing, get_expert_config
from posevla.models.factory import build_policy, build_vlm
from posevla.tokens import BinSpec, PoseCodec
from posevla.training.checkpoint import Checkpoint, load_model_weights
from posevla.training.config import TrainConfig

__all__ = ["Objective", "TokenObjective", "ActionObjective", "make_objective"]

Log = Callable[[str], None]


class Objective:
    """What differs between stages: data, bins, model, loss and metrics (the loop is the same)."""

    def __init__(self, cfg: TrainConfig, log: Log = print) -> None:
        self.cfg = cfg
        self.log = log
        self.resolved: dict[str, Any] = {}
        """The checkpoint's config.json (set by :meth:`batches`)."""
        self.norm_stats: dict[str, Any] | None = None
        """The checkpoint's norm_stats.json document, for objectives that normalise (set by :meth:`batches`)."""

    # -- steps of the set-up, in the order the loop calls them --------------------------------------
    def load_data(self) -> None:
        """Read (and check) the data before any checkpoint is touched."""
        raise NotImplementedError

    def bins(self, start: Checkpoint | None) -> BinSpec:
        """The pose-token bins: the starting checkpoint's, else ``--bins-file``'s, else fitted / uniform."""
        cfg = self.cfg
        if start is not None:
            with given_as("--bins-file"):
                given = BinSpec.load(cfg.bins_file) if cfg.bins_file is not None else None
            if given is not None and given != start.bins:
                raise TrainingError(
                    f"--bins-file {cfg.bins_file} differs from the bin spec of the checkpoint {start.dir}, whose "
                    "tokens the model was trained with. Drop --bins-file (the checkpoint's bins are used) or "
                    "start without --init-checkpoint."
                )
            return start.bins
        if cfg.bins_file is not None:
            with given_as("--bins-file"):
                return BinSpec.load(cfg.bins_file)
        return self.new_bins()

    def new_bins(self) -> BinSpec:
        raise NotImplementedError

    def build_model(self, bins: BinSpec, resume: Checkpoint | None, init: Checkpoint | None) -> torch.nn.Module:
        """The model with its initial weights (the resumed checkpoint's, the init checkpoint's, or random)."""
        raise NotImplementedError

    def batches(
        self, model: torch.nn.Module, bins: BinSpec, resume: Checkpoint | None
    ) -> Callable[[int], dict[str, torch.Tensor]]:
        """The pure batch function ``make_batch(step)``; also sets :attr:`resolved` (and :attr:`norm_stats`)."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss_count(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """How many terms ``out["loss"]`` averages (float64 scalar): a distributed run weights each rank's
        mean by it, so the loss and the gradient are those of the whole global batch."""
        raise NotImplementedError

    def metrics(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        """Extra per-step metrics (written to metrics.jsonl next to the loss). `reduce` sums a tensor over the
        ranks of a distributed run, whose ranks each hold part of the global batch."""
        return {}

    # -- shared ------------------------------------------------------------------------------------
    def vlm_architecture(self, resume: Checkpoint | None, init: Checkpoint | None) -> PoseVLMConfig:
        """The Pose-VLM architecture (module docstring: resumed / initialised / new)."""
        choice = self.cfg.model
        start = resume or init
        if start is None:
            return choice.resolve()
        if choice.size != start.model.name:
            raise ConfigError(
                f"the checkpoint {start.dir} holds a {start.model.name!r} model but this config builds "
                f"{choice.size!r}; pass --model.size {start.model.name} (the architecture comes from the checkpoint)"
            )
        if resume is not None:
            if choice.num_views is not None and choice.num_views != resume.model.num_views:
                raise ConfigError(
                    f"cannot resume {resume.dir} with --model.num-views {choice.num_views}: it was trained with "
                    f"{resume.model.num_views}; drop the flag or start a new run with --init-checkpoint"
                )
            return resume.model
        return init.model.replace(num_views=choice.views())

    def spec(self, model: torch.nn.Module) -> ExampleSpec:
        vlm = getattr(model, "vlm", model)
        return ExampleSpec.from_model(vlm.cfg)


class TokenObjective(Objective):
    """Next-token cross-entropy on pose answers over a mixture of sources (stages 1, 2)."""

    def load_data(self) -> None:
        cfg = self.cfg
        self.sources = cfg.data.token_sources()
        if cfg.data.doctor:
            check_sources(self.sources, log=self.log)  # TrainingError with the doctor's table on errors
        else:
            self.log("[posevla] data doctor skipped (--no-doctor): the sources were not checked")
        self.loaded = [load_source(s) for s in self.sources]

    def bins(self, start: Checkpoint | None) -> BinSpec:
        bins = super().bins(start)
        if start is not None or self.cfg.bins_file is not None:  # bins not fitted on these sources
            for warning in bins_coverage(self.loaded, bins):
                self.log(f"[posevla] warning: {warning}")
        return bins

    def new_bins(self) -> BinSpec:
        # quantiles of every source's labels: stage-1 boxes and stage-2 waypoints (open question 1)
        return fit_source_bins(self.loaded, self.cfg.bins)

    def build_model(self, bins: BinSpec, resume: Checkpoint | None, init: Checkpoint | None) -> torch.nn.Module:
        start = resume or init
        mcfg = self.vlm_architecture(resume, init)
        if start is None:
            return build_vlm(mcfg, bins)
        if start.expert is not None:
            raise ConfigError(
                f"{start.dir} is a post-training checkpoint (objective 'actions'); the token objective starts "
                "from a stage-1/2 checkpoint"
            )
        model = build_vlm(mcfg, bins, start.tokenizer(), embedding_rows=start.embedding_rows())
        load_model_weights(model, start.dir)
        return model

    def batches(
        self, model: torch.nn.Module, bins: BinSpec, resume: Checkpoint | None
    ) -> Callable[[int], dict[str, torch.Tensor]]:
        cfg = self.cfg
        mixture = build_mixture(
            self.loaded,
            self.spec(model),
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            negative_prob=cfg.data.negative_prob,
            exponent=cfg.data.weight_exponent,
        )
        self.mixture = mixture
        workers = cfg.data.num_workers
        self.log(f"[posevla] data: {len(mixture)} source(s), {workers} loader worker(s)\n{mixture.table()}")
        self.resolved = {
            "train": cfg.to_dict(),
            "model": model.cfg.to_dict(),
            "data": {"categories": mixture.categories, "sources": mixture.describe()},
        }
        return mixture.batch_fn(PoseCodec(bins), model.tokenizer)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return model(batch, ordinal_sigma=self.cfg.ordinal_sigma)  # the forward, which DDP / FSDP wrappers hook

    def loss_count(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return out["n_tokens"].to(torch.float64)  # the loss is the mean over the answer tokens

    def metrics(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        # per-source mean loss / token accuracy over the batch's answer tokens
        return {"sources": per_source_metrics(out, batch["source"], self.mixture.names, reduce)}


class ActionObjective(Objective):
    """Flow matching of normalised action chunks with the VLM + action expert (post-training)."""

    def load_data(self) -> None:
        path = Path(self.cfg.data.train_data)
        try:
            kind = detect_format(path)[0]
        except DataError:  # not a dataset at all: the LeRobot reader below names what is missing
            kind = "lerobot"
        if kind != "lerobot":
            raise ConfigError(
                f"--data.train-data {path} is a 3D grounding dataset ({kind}), but post-training (objective "
                "'actions') reads robot episodes: pass a LeRobot v3 dataset (a folder with meta/info.json, e.g. from "
                "`posevla metaworld-demos`); grounding data trains stage 1 (`posevla train stage1-tiny`)"
            )
        cameras = self.cfg.data.cameras
        with given_as("--data.cameras" if cameras is not None and not Path(cameras).is_file() else "--data.train-data"):
            self.robot = load_lerobot_v3(path, camera_config=cameras)
        action = self.cfg.action.resolve(self.robot.features, source=str(path / "meta" / "info.json"))
        if action != self.cfg.action:  # `--action.space auto`: the checkpoint stores the space it resolved to
            self.log(f"[posevla] action space: {action.space}"
                     + (f" on '{action.joint_key}', state '{action.resolved_state_key}'" if action.space == "joints"
                        else f" on {list(action.ee_keys)}") + f" (auto, from the features of {path})")
            self.cfg = dataclasses.replace(self.cfg, action=action)

    def new_bins(self) -> BinSpec:
        # Without pose pre-training the pose tokens are never trained: uniform bins only fix the vocabulary.
        return self.cfg.bins.uniform("uniform (post-training from scratch: no pose pre-training)")

    def expert_architecture(self, vlm: PoseVLMConfig, start: Checkpoint | None) -> ActionExpertConfig:
        cfg = self.cfg
        if start is not None and start.expert is not None:
            if cfg.expert != start.expert.name or cfg.action.chunk_size != start.expert.chunk_size:
                raise ConfigError(
                    f"the checkpoint {start.dir} holds a {start.expert.name!r} expert with chunks of "
                    f"{start.expert.chunk_size}; this config asks for {cfg.expert!r} with chunks of "
                    f"{cfg.action.chunk_size}. Pass --expert {start.expert.name} --action.chunk-size "
                    f"{start.expert.chunk_size}"
                )
            return start.expert
        ecfg = get_expert_config(cfg.expert, chunk_size=cfg.action.chunk_size)
        check_expert_pairing(ecfg, vlm)
        return ecfg

    def build_model(self, bins: BinSpec, resume: Checkpoint | None, init: Checkpoint | None) -> torch.nn.Module:
        start = resume or init
        mcfg = self.vlm_architecture(resume, init)
        ecfg = self.expert_architecture(mcfg, start)
        if start is None:
            return self._init_expert(build_policy(mcfg, ecfg, bins))
        model = build_policy(mcfg, ecfg, bins, start.tokenizer(), embedding_rows=start.embedding_rows())
        if start.expert is None:  # a stage-1/2 checkpoint: its weights initialise the VLM, the expert is new
            load_model_weights(model.vlm, start.dir)
            self.log(f"[posevla] VLM initialised from {start.dir}; action expert "
                     + (f"from the π0 checkpoint {self.cfg.expert_base}" if self.cfg.expert_base else "from scratch"))
            return self._init_expert(model)
        load_model_weights(model, start.dir)
        return model

    def _init_expert(self, model: torch.nn.Module) -> torch.nn.Module:
        """A new expert takes the π0 weights of ``--expert-base`` when it is given."""
        if self.cfg.expert_base:
            from posevla.models import init_expert_from_pi0

            with given_as("--expert-base"):
                init_expert_from_pi0(model, self.cfg.expert_base)
        return model

    def batches(
        self, model: torch.nn.Module, bins: BinSpec, resume: Checkpoint | None
    ) -> Callable[[int], dict[str, torch.Tensor]]:
        cfg = self.cfg
        # A resumed run keeps its checkpoint's statistics; a new run computes them on its dataset.
        stats = resume.norm_stats if resume is not None else None
        data = ActionDataset(self.robot, cfg.action, self.spec(model), stats)
        self.norm_stats = norm_stats_json(data.stats, action_space=cfg.action.space)
        self.resolved = {
            "train": cfg.to_dict(),
            "model": model.vlm.cfg.to_dict(),
            "expert": model.cfg.to_dict(),
            "data": data.describe(),
        }
        self.log(f"[posevla] data: {len(data)} action chunks, {cfg.data.num_workers} loader worker(s)")
        e = model.cfg
        return ActionBatches(data, cfg.batch_size, cfg.seed, model.vlm.tokenizer, e.max_state_dim, e.max_action_dim,
                             flow_beta=tuple(e.time_beta), flow_time_min=e.time_min)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # flow matching only (spec §2.3: no token loss in post-training); the noise and flow time come with
        # the batch (a function of seed, step and row), so every world size draws the same
        return model(batch, noise=batch["flow_noise"], time=batch["flow_time"])

    def loss_count(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # flow_matching_loss averages over the chunk steps inside the episode and the real action dims
        steps = (~batch["action_is_pad"]).sum() if "action_is_pad" in batch else batch["actions"].shape[:2].numel()
        return torch.as_tensor(steps * batch["actions"].shape[-1], dtype=torch.float64)


def make_objective(cfg: TrainConfig, log: Log = print) -> Objective:
    """The objective object of ``cfg.objective``."""
    kinds = {"tokens": TokenObjective, "actions": ActionObjective}
    return kinds[cfg.objective](cfg, log)


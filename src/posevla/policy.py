"""The inference wrapper of a post-trained Pose-VLA: observation in, de-normalised action chunk out.

`Policy.from_checkpoint(dir)` rebuilds everything from the checkpoint alone (it is self-describing): the
resolved train config (model size, expert, `ActionConfig`), the bins and tokenizer, the weights, the state /
action statistics (``norm_stats.json``) and the training data's cameras, image sizes and camera config.

`Policy.infer(obs)` takes the observation format of :mod:`posevla.sim` / a recorded LeRobot frame (a flat
dict: ``observation.images.<cam>`` (H, W, 3) uint8 for every training camera, optional
``observation.depth.<cam>`` (H, W) metres, ``observation.cameras.<cam>.K`` (3, 3) -- or the static K of the
training camera config --, optional ``observation.cameras.<cam>.T_world_cam``, the state features of the
action space, and ``task`` (or ``instruction``)) and runs **the same input chain as training**
(:func:`posevla.data.actions.observation_inputs` + :func:`~posevla.data.actions.collate_actions`: the same
resize-pad, priors, prompt layout and state normalisation), then ``num_steps`` Euler steps of the flow from
seeded noise, then de-normalises. It returns::

    {"actions": (H, A) float32,          # in the action space of training (names in "action_names")
     "action_names": [...], "action_space": "ee_pose" | "joints",
     "ee_pose": (H, arms, 7) float32,    # "ee_pose" space only: xyz + quaternion wxyz per arm
     "num_steps": int, "seed": int | None,
     "latency_ms": {"preprocess", "model", "plan", "total"},
     "pose_tokens": [...]}               # return_poses=True: the VLM's waypoint plan per view

Invalid observations raise :class:`~posevla.errors.DataError` naming the key (missing camera / state /
instruction, wrong image size or dtype, NaN / inf in the state); non-finite actions raise
:class:`~posevla.errors.InferenceError` and are never returned. Device and precision are picked here (the
edge), once, and logged with the reason.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posevla.data.action_space import EE_DIM_NAMES, ActionConfig, ee_vector_to_pose
from posevla.data.normalize import NormStats, load_norm_stats
from posevla.data.actions import camera_T_world_cam, collate_actions, observation_inputs
from posevla.data.formats.lerobot import CameraConfig
from posevla.data.collate import ExampleSpec
from posevla.errors import CheckpointError, ConfigError, DataError, InferenceError

__all__ = ["Policy", "ActionChunker"]


class Policy:
    """A post-trained `PoseVLAPolicyModel` with its input/output transforms. Build with `from_checkpoint`.

    Attributes:
        model: the policy model (eval mode, on `device`).
        action_cfg: the `ActionConfig` it was trained with.
        stats: ``{"state", "actions"}`` normalisation statistics.
        cameras: camera names in view order; image_sizes: their training (width, height).
        chunk_size, action_dim: H and A of the returned chunk.
        latencies_ms: total latency of every `infer` call so far.
    """

    def __init__(
        self,
        model: Any,
        *,
        train_config: Any,
        stats: Mapping[str, NormStats],
        data: Mapping[str, Any],
        codec: Any,
        device: torch.device,
        use_bf16: bool,
        checkpoint: Path | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.train_config = train_config
        self.action_cfg: ActionConfig = train_config.action
        self.stats = dict(stats)
        self.data = dict(data)
        self.codec = codec
        self.tokenizer = model.vlm.tokenizer
        self.device = device
        self.use_bf16 = use_bf16
        self.checkpoint = checkpoint
        mcfg = model.vlm.cfg
        self.spec = ExampleSpec(
            image_size=mcfg.image_size,
            num_views=mcfg.num_views,
            n_image_tokens=mcfg.tokens_per_view,
            prompt_len=mcfg.prompt_len,
        )
        self.cameras: list[str] = list(self.data["cameras"])
        self.image_sizes = {c: tuple(int(v) for v in s) for c, s in self.data.get("image_sizes", {}).items()}
        cc = self.data.get("camera_config")
        self.camera_config = CameraConfig.from_dict(cc) if cc is not None else None
        self.chunk_size = int(model.cfg.chunk_size)
        self.action_dim = self.stats["actions"].dim
        self.action_names = list(self.stats["actions"].names)
        self.latencies_ms: list[float] = []
        self._generator = torch.Generator().manual_seed(int(seed))
        self._grammar = None

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", precision: str = "auto", *, seed: int = 0
    ) -> Policy:
        """Load a post-training checkpoint (a step dir, or a run dir with ``checkpoints/latest.json``).

        Args:
            path: the checkpoint.
            device: ``auto`` (cuda when available), ``cpu`` or ``cuda``.
            precision: ``auto`` (bf16 autocast where supported), ``bf16`` or ``fp32``.
            seed: seeds the noise of calls that pass no seed of their own.

        Raises:
            CheckpointError: not a post-training checkpoint, missing / invalid ``norm_stats.json``, or a
                config that does not match the statistics or the weights.
        """
        from posevla.tokens import BinSpec
        from posevla.training.checkpoint import load_model_weights, read_checkpoint_meta
        from posevla.training.config import TrainConfig
        from posevla.runtime import pick_device_and_precision
        from posevla.training.trainer import build_policy_model

        meta = read_checkpoint_meta(path)
        d: Path = meta["dir"]
        conf = meta["config"]
        train = dict(conf.get("train", {}))
        if train.get("objective", "tokens") != "actions":
            raise CheckpointError(
                f"{d} is a VLM checkpoint (objective {train.get('objective', 'tokens')!r}), not a "
                "post-trained "
                "policy: it has no action expert. Post-train it first (`posevla train posttrain-tiny "
                f"--init-checkpoint {d}`) and load that checkpoint"
            )
        for key in ("expert", "data"):
            if key not in conf:
                raise CheckpointError(
                    f"{d / 'config.json'} has no '{key}' section; the checkpoint is incomplete"
                )
        stats, space = load_norm_stats(d)
        try:
            if "betas" in train:
                train["betas"] = tuple(train["betas"])
            cfg = TrainConfig(**train)
        except (TypeError, ConfigError) as e:
            raise CheckpointError(f"{d / 'config.json'}: the train config cannot be rebuilt ({e})") from e
        if space != cfg.action.space:
            raise CheckpointError(
                f"{d / 'norm_stats.json'} is for action space {space!r} but the config says "
                f"{cfg.action.space!r}; the statistics belong to another run"
            )
        data = conf["data"]
        for feature, key in (("actions", "action_names"), ("state", "state_names")):
            if key in data and list(data[key]) != list(stats[feature].names):
                raise CheckpointError(
                    f"{d / 'norm_stats.json'}: {feature} dims {list(stats[feature].names)} differ from the "
                    f"training data's {data[key]}; the statistics belong to another run"
                )
        bins = BinSpec.from_dict(meta["bins"])
        _, codec, model, _, ecfg = build_policy_model(cfg, bins, d / "tokenizer")
        if ecfg.to_dict() != conf["expert"]:
            raise CheckpointError(
                f"{d / 'config.json'}: the expert config rebuilt from the train config ({ecfg.to_dict()}) "
                "differs "
                f"from the saved one ({conf['expert']}); was EXPERT_CONFIGS[{cfg.expert!r}] changed?"
            )
        load_model_weights(model, d)
        dev, use_bf16, reason = pick_device_and_precision(device, precision)
        print(f"[posevla] policy on {dev}, {'bf16 autocast' if use_bf16 else 'fp32'} ({reason})")
        model.to(dev).eval()
        return cls(
            model,
            train_config=cfg,
            stats=stats,
            data=data,
            codec=codec,
            device=dev,
            use_bf16=use_bf16,
            checkpoint=d,
            seed=seed,
        )

    # -- inference ---------------------------------------------------------------------------------
    def _noise(self, seed: int | None) -> torch.Tensor:
        cfg = self.model.cfg
        gen = self._generator if seed is None else torch.Generator().manual_seed(int(seed))
        return torch.randn((1, cfg.chunk_size, cfg.max_action_dim), generator=gen)  # (1, H, A_max), CPU

    def preprocess(self, obs: Mapping[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
        """(inputs, batch on the device) of one observation, through the training transform chain."""
        if not isinstance(obs, Mapping):
            raise DataError(
                f"an observation is a dict of LeRobot feature names, got {type(obs).__name__}",
                field="observation",
                fix="pass the dict an environment returns (see posevla.sim)",
            )
        inputs = observation_inputs(
            obs,
            cfg=self.action_cfg,
            stats=self.stats,
            cameras=self.cameras,
            image_size=self.spec.image_size,
            num_views=self.spec.num_views,
            camera_config=self.camera_config,
            image_sizes=self.image_sizes,
        )
        batch = collate_actions(
            [inputs],
            self.tokenizer,
            self.spec,
            max_state_dim=self.model.cfg.max_state_dim,
            priors=self.action_cfg.priors,
        )
        return inputs, {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def infer(
        self,
        obs: Mapping[str, Any],
        *,
        num_steps: int | None = None,
        seed: int | None = None,
        return_poses: bool = False,
    ) -> dict[str, Any]:
        """The de-normalised action chunk for one observation (module docstring for keys and errors).

        Args:
            obs: the observation dict.
            num_steps: Euler steps of the flow (default: the expert config's, 10).
            seed: seed of the initial noise (same seed + observation → same chunk); None draws from the
                policy's own generator (seeded at construction).
            return_poses: also decode the VLM's stage-2 waypoint plan per view (grammar-constrained).
        """
        from posevla.runtime import autocast_context

        t0 = time.perf_counter()
        inputs, batch = self.preprocess(obs)
        t1 = time.perf_counter()
        noise = self._noise(seed).to(self.device)
        with autocast_context(self.device, self.use_bf16):
            z = self.model.sample_actions(batch, noise=noise, num_steps=num_steps, action_dim=self.action_dim)
        z = z[0].float().cpu()  # (H, A) normalised
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        if not torch.isfinite(z).all():
            bad = torch.nonzero(~torch.isfinite(z))[0].tolist()
            raise InferenceError(
                f"the model produced a non-finite action (step {bad[0]}, dim {bad[1]} "
                f"'{self.action_names[bad[1]]}'); nothing is returned. Check the checkpoint (a diverged "
                "run?) "
                "and the observation; try precision='fp32'"
            )
        actions = self.stats["actions"].denormalize(z.numpy()).astype(np.float32)  # (H, A)
        if not np.all(np.isfinite(actions)):
            raise InferenceError(
                "de-normalised actions are not finite (statistics overflow); nothing is returned"
            )
        out: dict[str, Any] = {
            "actions": actions,
            "action_names": list(self.action_names),
            "action_space": self.action_cfg.space,
            "num_steps": int(num_steps if num_steps is not None else self.model.cfg.num_inference_steps),
            "seed": seed,
        }
        if self.action_cfg.space == "ee_pose":
            out["ee_pose"] = self._ee_poses(actions)
        t3 = time.perf_counter()
        if return_poses:
            out["pose_tokens"] = self._plan(batch, obs, inputs.cameras)
        t4 = time.perf_counter()
        out["latency_ms"] = {
            "preprocess": round(1e3 * (t1 - t0), 3),
            "model": round(1e3 * (t2 - t1), 3),
            "plan": round(1e3 * (t4 - t3), 3),
            "total": round(1e3 * (t4 - t0), 3),
        }
        self.latencies_ms.append(out["latency_ms"]["total"])
        return out

    def _ee_poses(self, actions: np.ndarray) -> np.ndarray:
        """(H, A) ``"ee_pose"`` actions -> (H, arms, 7) xyz + quaternion wxyz."""
        per_arm = self.action_dim // len(self.action_cfg.ee_keys)
        poses = [
            ee_vector_to_pose(actions[:, i * per_arm : i * per_arm + len(EE_DIM_NAMES)])
            for i in range(len(self.action_cfg.ee_keys))
        ]
        return np.stack(poses, axis=1).astype(np.float32)

    def _waypoint_grammar(self) -> Any:
        if self._grammar is None:
            from posevla.tokens import PoseGrammar

            names = self.action_cfg.plan_names()
            tok = self.tokenizer
            self._grammar = PoseGrammar(
                tok.pose_token_ids(self.codec.vocabulary() + [";"]),
                tok.eos_id,
                tok.name_ids(names + list(self.action_cfg.plan_arms)),
                num_views=self.spec.num_views,
                kind="waypoint",
                allow_negative=True,
                allow_empty_view=False,
                max_entries_per_view=len(names),
            )
        return self._grammar

    def _plan(
        self, batch: Mapping[str, torch.Tensor], obs: Mapping[str, Any], cams: list[str | None]
    ) -> list[dict]:
        """The VLM's greedy, grammar-constrained waypoint answer, parsed, per view (camera frame + world)."""
        from posevla.runtime import autocast_context

        grammar = self._waypoint_grammar()
        prefix = {
            k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "ray", "depth", "prior_mask")
        }
        with autocast_context(self.device, self.use_bf16):
            res = self.model.vlm.generate(prefix, [grammar], grammar.max_length())[0]
        text = self.tokenizer.decode(res.ids)
        views = self.codec.parse(text)
        out = []
        for va, cam in zip(views, cams, strict=True):
            T_wc = None if cam is None else camera_T_world_cam(obs, cam, self.camera_config)
            entries = []
            for e in va.entries:
                item: dict[str, Any] = {
                    "name": e.name,
                    "anchor": np.asarray(e.anchor, np.float64),  # normalised model-input (u, v)
                    "translation": np.asarray(e.translation, np.float64),  # camera frame, metres
                    "euler_xyz": np.asarray(e.euler_xyz, np.float64),
                }
                if T_wc is not None:
                    item["position_world"] = (T_wc @ np.append(item["translation"], 1.0))[:3]
                entries.append(item)
            out.append({"camera": cam, "entries": entries, "no_object": va.no_object is not None})
        return out

    def __call__(self, obs: Mapping[str, Any]) -> Any:
        """``obs -> PolicyOutput(actions (H, A))`` for `posevla.eval.rollout.rollout` (latency in info)."""
        from posevla.sim import PolicyOutput

        out = self.infer(obs)
        return PolicyOutput(actions=out["actions"], info={"latency_ms": out["latency_ms"]})

    def reset(self) -> None:
        """Called at the start of every episode by the rollout loop (the policy keeps no episode state)."""


class ActionChunker:
    """Executes action chunks open-loop and re-queries the policy every `replan_every` steps.

    Args:
        policy: ``obs -> dict`` with ``"actions"`` (H, A) (a `Policy`'s `infer`), or ``obs -> (H, A)``.
        replan_every: actions executed from each chunk before the next query. Default None = the whole
            chunk (H steps), as the paper's deployment wrapper does (spec §1.4: "executes the whole 16-step
            chunk"); smaller values react faster at the cost of more queries (the released RoboTwin
            checkpoint runs 12 of 16).
        **infer_kwargs: passed to every call (e.g. ``num_steps=5``).

    Call it once per control step: ``action = chunker(obs)`` returns one (A,) action; ``reset()`` at the
    start of an episode. ``queries`` counts the policy calls.
    """

    def __init__(
        self,
        policy: Callable[..., Any],
        replan_every: int | None = None,
        **infer_kwargs: Any,
    ) -> None:
        if replan_every is not None and (
            isinstance(replan_every, bool)
            or not isinstance(replan_every, (int, np.integer))
            or replan_every < 1
        ):
            raise ConfigError(
                f"replan_every must be an integer >= 1 or None (whole chunk), got {replan_every!r}"
            )
        self.policy = policy.infer if isinstance(policy, Policy) else policy
        self.replan_every = None if replan_every is None else int(replan_every)
        self.infer_kwargs = infer_kwargs
        self.queries = 0
        self.last_output: Any = None
        self._queue: deque[np.ndarray] = deque()

    def reset(self) -> None:
        """Drop the rest of the current chunk (start of an episode)."""
        self._queue.clear()
        self.last_output = None

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The next action (A,); queries the policy when the executed part of the chunk is used up."""
        if not self._queue:
            out = self.policy(obs, **self.infer_kwargs)
            chunk = np.asarray(out["actions"] if isinstance(out, Mapping) else out)
            if chunk.ndim != 2 or chunk.shape[0] < 1 or not np.all(np.isfinite(chunk)):
                raise InferenceError(f"the policy returned an unusable chunk of shape {chunk.shape}")
            n = chunk.shape[0] if self.replan_every is None else min(self.replan_every, chunk.shape[0])
            self._queue.extend(chunk[:n])
            self.queries += 1
            self.last_output = out
        return self._queue.popleft()

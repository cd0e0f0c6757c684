"""Post-training examples (spec §2.3): camera views + instruction + state → a normalised action chunk.

One example is a frame ``t`` of a LeRobot v3 episode (:class:`~posevla.data.lerobot.LeRobotV3Dataset`):

* **Views**: the cameras of the dataset's camera config (or ``ActionConfig.cameras``), in order, through the
  one transform chain of training and inference (:func:`posevla.data.sample.prepare_view`: aspect-preserving
  resize + centred zero padding, pixels in [−1, 1], ray map from the frame's ``K``, optional depth prior);
  missing slots are zero images, exactly as in stage 1 / 2. The text prefix is built by the stage-1/2
  collate (:func:`posevla.data.loader.collate` without an answer); prompt = the episode's instruction.
* **Observation format**: a frame is read as an *observation*, the flat dict of LeRobot feature names that
  :mod:`posevla.envs` environments return (``observation.images.<cam>``, ``observation.depth.<cam>``,
  ``observation.cameras.<cam>.K`` / ``.T_world_cam``, ``observation.ee_pose``, ``observation.gripper``,
  ``observation.joints``, ``observation.state``, ``task``). Training (:meth:`ActionDataset.observation`) and
  serving (:class:`posevla.serving.Policy`) both go through :func:`observation_inputs`, so there is no
  train/serve skew in the views, the prompt or the state.
* **Action spaces** (``ActionConfig.space``):

  - ``"ee_pose"``: absolute end-effector pose in the dataset's world (robot base) frame, per arm
    ``[x, y, z, R00, R10, R20, R01, R11, R21, gripper…]`` = position (metres), the **6D rotation** (first
    two columns of the rotation matrix, from ``observation.ee_pose``'s quaternion wxyz) and the gripper
    feature. 6D is continuous and unique (a quaternion has the q/−q ambiguity, Euler angles and axis-angle
    wrap at ±π), so a z-score and an MSE on it are well behaved; :func:`ee_vector_to_pose` maps a predicted
    vector back to xyz + quaternion wxyz (Gram–Schmidt, always a proper rotation). The flange pose is used
    as recorded (no TCP offset).
  - ``"joints"``: the vector of feature ``ActionConfig.joint_key``: ``observation.joints`` (absolute joint
    positions) by default, or the dataset's own ``action`` feature (whatever the robot was commanded, e.g.
    joint targets, or MetaWorld's ``[dx, dy, dz, grip]``).

* **Chunk**: ``H = chunk_size`` actions ``a[t], a[t+1], …`` spaced ``stride`` frames apart. An *observed*
  feature (key ``observation.*``) is a target: action ``k`` is the observation at frame ``t + (k+1)·stride``
  (the pose the robot reached next). A *commanded* feature (any other key, e.g. ``action``) is used as
  recorded: action ``k`` is the value at frame ``t + k·stride``. Indices past the episode end repeat the
  last frame's value and are flagged ``action_is_pad`` (excluded from the loss). Frames whose whole chunk
  would be padding (the last ``stride`` frames for observed targets) are not examples.
* **State**: for ``"ee_pose"`` the same 6D EE vector at frame t (spec: "state normalised the same way");
  for ``"joints"`` the joint feature at t when it is an observation, else ``observation.state``
  (``ActionConfig.state_key`` overrides both).
* **Normalisation**: z-score with :class:`NormStats` (mean / std per dim over every frame of the dataset),
  saved in the checkpoint as ``norm_stats.json``. A dim with std < ``std_eps`` raises :class:`DataError`
  unless it matches a ``constant_dims`` pattern (then its std is stored as 1: the value is only centred).

The collate (:func:`collate_actions`) gives exactly the keys of
:meth:`posevla.models.pose_vla.PoseVLAPolicyModel.compute_loss`: the prefix keys, ``state (B, max_state_dim)``
zero-padded, ``actions (B, H, Da)`` and ``action_is_pad (B, H)``. Actions stay at their real width Da: the
model zero-pads them to ``max_action_dim`` itself and its loss averages over the real Da dims only.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from posevla.data.lerobot import (
    DEPTH_PREFIX,
    EE_POSE_KEY,
    IMAGE_PREFIX,
    CameraConfig,
    LeRobotV3Dataset,
    camera_K_key,
    camera_T_key,
)
from posevla.data.loader import ExampleSpec, batch_indices, collate
from posevla.data.sample import PreparedView, empty_view, prepare_view
from posevla.errors import CheckpointError, ConfigError, DataError
from posevla.geometry import matrix_to_quat_wxyz, matrix_to_rot6d, quat_wxyz_to_matrix, rot6d_to_matrix

__all__ = [
    "ActionConfig",
    "NormStats",
    "ActionInputs",
    "ActionExample",
    "ActionDataset",
    "EE_DIM_NAMES",
    "NORM_STATS_FILE",
    "action_names",
    "state_names",
    "action_vectors",
    "state_vectors",
    "chunk_indices",
    "ee_vector",
    "ee_vector_to_pose",
    "observation_inputs",
    "compute_norm_stats",
    "norm_stats_json",
    "save_norm_stats",
    "load_norm_stats",
    "collate_actions",
    "iterate_action_batches",
]

GRIPPER_KEY = "observation.gripper"
#: Names of the 9 pose dims of one arm in the ``"ee_pose"`` space (the gripper dims follow).
EE_DIM_NAMES = ("x", "y", "z", "R00", "R10", "R20", "R01", "R11", "R21")
NORM_STATS_FILE = "norm_stats.json"
_NORM_FORMAT = "posevla.norm_stats"
_NORM_VERSION = 1


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ActionConfig:
    """What the action expert predicts and how examples are cut from episodes (module docstring).

    Attributes:
        space: ``"ee_pose"`` (absolute EE pose, 6D rotation, + gripper) or ``"joints"``.
        chunk_size: H, actions per chunk (spec: 16 for RoboTwin post-training).
        stride: frames between consecutive actions of a chunk (RoboTwin: 3).
        ee_keys: end-effector pose features, one per arm (``"ee_pose"`` space).
        gripper_keys: gripper features, one per arm, or empty for no gripper dims (``"ee_pose"`` space).
        joint_key: the ``"joints"`` space feature: ``observation.joints`` or the dataset's ``action``.
        state_key: feature used as the state instead of the default (see the module docstring).
        constant_dims: dims allowed to be constant (std < ``std_eps``): exact names or fnmatch patterns,
            matched against the bare dim name (``"z"``, ``"R20"``, ``"action[3]"``) and the qualified one
            (``"actions.z"``, ``"state.z"``). Their std is stored as 1.
        std_eps: smallest std a dim may have without being listed in ``constant_dims``.
        cameras: camera names in view order (default: the dataset's camera config).
        priors: feed the depth / ray priors (spec: off for RoboTwin post-training).
        plan_arms, plan_horizon: names (``"arm"`` → ``"arm 0"``…) and waypoints per arm of the stage-2
            plan the VLM decodes when a :class:`~posevla.serving.Policy` is asked for ``return_poses``.
    """

    space: Literal["ee_pose", "joints"] = "ee_pose"
    chunk_size: int = 16
    stride: int = 1
    ee_keys: tuple[str, ...] = (EE_POSE_KEY,)
    gripper_keys: tuple[str, ...] = (GRIPPER_KEY,)
    joint_key: str = "observation.joints"
    state_key: str | None = None
    constant_dims: tuple[str, ...] = ()
    std_eps: float = 1e-6
    cameras: tuple[str, ...] | None = None
    priors: bool = True
    plan_arms: tuple[str, ...] = ("arm",)
    plan_horizon: int = 5

    def __post_init__(self) -> None:
        if self.space not in ("ee_pose", "joints"):
            raise ConfigError(f"action space {self.space!r} is unknown; use 'ee_pose' or 'joints'")
        for name in ("chunk_size", "stride", "plan_horizon"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"ActionConfig.{name} must be an integer >= 1, got {v!r}")
        if self.space == "ee_pose":
            if not self.ee_keys:
                raise ConfigError("ActionConfig.ee_keys is empty; name the ee-pose feature of each arm")
            if self.gripper_keys and len(self.gripper_keys) != len(self.ee_keys):
                raise ConfigError(
                    f"ActionConfig.gripper_keys {self.gripper_keys} must be empty or one per arm of "
                    f"ee_keys {self.ee_keys}"
                )
        if not self.std_eps > 0:
            raise ConfigError(f"ActionConfig.std_eps must be positive, got {self.std_eps!r}")
        # JSON round trips give lists; keep the dataclass hashable and comparable.
        for name in ("ee_keys", "gripper_keys", "constant_dims", "plan_arms"):
            object.__setattr__(self, name, tuple(str(x) for x in getattr(self, name)))
        if self.cameras is not None:
            object.__setattr__(self, "cameras", tuple(str(c) for c in self.cameras))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ActionConfig fields {unknown}; valid fields: {sorted(known)}")
        return cls(**d)

    # -- derived -------------------------------------------------------------------------------
    @property
    def resolved_state_key(self) -> str | None:
        """The state feature of the ``"joints"`` space (None: the ``"ee_pose"`` vector is the state)."""
        if self.state_key is not None:
            return self.state_key
        if self.space == "ee_pose":
            return None
        return self.joint_key if _is_observed(self.joint_key) else "observation.state"

    def plan_names(self) -> list[str]:
        """Waypoint names of the stage-2 plan (``"arm 0"`` … in answer order)."""
        return [f"{arm} {k}" for arm in self.plan_arms for k in range(self.plan_horizon)]


def _is_observed(key: str) -> bool:
    """True for observation features (targets, read one stride ahead); False for commanded ones."""
    return key.startswith("observation.")


def _arm_label(key: str, i: int, n: int) -> str:
    if n == 1:
        return ""
    tail = key[len(EE_POSE_KEY) + 1 :] if key.startswith(EE_POSE_KEY + ".") else f"arm{i}"
    return tail + "."


# ----------------------------------------------------------------------------------------------
# vectors
# ----------------------------------------------------------------------------------------------


def _require(features: Mapping[str, Any], key: str, record: str, what: str) -> np.ndarray:
    if key not in features:
        have = sorted(k for k in features if not k.startswith((IMAGE_PREFIX, DEPTH_PREFIX)))
        raise DataError(
            f"{what} needs feature '{key}', which is missing (have {have[:12]})",
            record=record,
            field=key,
            fix="add the feature, or change ActionConfig (space / ee_keys / gripper_keys / joint_key / "
            "state_key) to features the data has",
        )
    arr = np.asarray(features[key])
    if arr.dtype.kind not in "biuf":
        raise DataError(f"feature '{key}' must be numeric, got dtype {arr.dtype}", record=record, field=key)
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        where = np.argwhere(bad)[0].tolist()
        raise DataError(
            f"feature '{key}' holds a non-finite value ({arr[tuple(where)]}) at index {where}",
            record=record,
            field=key,
            fix="clean the recording (NaN / inf cannot be normalised or learned)",
        )
    return arr


def ee_vector(ee_pose: np.ndarray, gripper: np.ndarray | None = None) -> np.ndarray:
    """Poses (..., 7) xyz + quaternion wxyz (+ gripper (..., G)) -> (..., 9 + G) ``[xyz, 6D, gripper]``."""
    p = np.asarray(ee_pose, np.float64)
    if p.shape[-1] != 7:
        raise DataError(
            f"an ee pose is xyz + quaternion wxyz (7 numbers), got shape {p.shape}", field="ee_pose"
        )
    q = p[..., 3:7]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    parts = [p[..., :3], np.asarray(matrix_to_rot6d(quat_wxyz_to_matrix(q)), np.float64)]
    if gripper is not None:
        parts.append(np.asarray(gripper, np.float64))
    return np.concatenate(parts, axis=-1)


def ee_vector_to_pose(vec: np.ndarray) -> np.ndarray:
    """(..., 9 + G) ``[xyz, 6D, gripper]`` -> (..., 7) xyz + quaternion wxyz (w ≥ 0); drops the gripper."""
    v = np.asarray(vec, np.float64)
    R = np.asarray(rot6d_to_matrix(v[..., 3:9]), np.float64)
    return np.concatenate([v[..., :3], np.asarray(matrix_to_quat_wxyz(R), np.float64)], axis=-1)


def _ee_vectors(features: Mapping[str, Any], cfg: ActionConfig, record: str) -> np.ndarray:
    """(T, Da) ``"ee_pose"`` vectors of every arm, concatenated."""
    parts = []
    for i, key in enumerate(cfg.ee_keys):
        pose = _require(features, key, record, "the 'ee_pose' action space")
        grip = None
        if cfg.gripper_keys:
            grip = _require(features, cfg.gripper_keys[i], record, "the 'ee_pose' action space")
            grip = grip[:, None] if grip.ndim == 1 else grip
        parts.append(ee_vector(pose, grip))
    return np.concatenate(parts, axis=-1)


def _feature_vectors(features: Mapping[str, Any], key: str, record: str, what: str) -> np.ndarray:
    arr = _require(features, key, record, what)
    return arr[:, None] if arr.ndim == 1 else arr.reshape(arr.shape[0], -1)


def action_vectors(features: Mapping[str, Any], cfg: ActionConfig, record: str = "episode") -> np.ndarray:
    """Per-frame action-space vectors (T, Da) of an episode's features (leading dim T), unnormalised."""
    if cfg.space == "ee_pose":
        return _ee_vectors(features, cfg, record)
    return _feature_vectors(features, cfg.joint_key, record, "the 'joints' action space")


def state_vectors(features: Mapping[str, Any], cfg: ActionConfig, record: str = "episode") -> np.ndarray:
    """Per-frame state vectors (T, Ds) of features with leading dim T, unnormalised."""
    key = cfg.resolved_state_key
    if key is None:
        return _ee_vectors(features, cfg, record)
    return _feature_vectors(features, key, record, "the state")


def _gripper_width(features: Mapping[str, Any], cfg: ActionConfig, i: int) -> int:
    if not cfg.gripper_keys:
        return 0
    g = np.asarray(features[cfg.gripper_keys[i]])
    return 1 if g.ndim == 1 else int(np.prod(g.shape[1:]))


def _ee_names(features: Mapping[str, Any], cfg: ActionConfig) -> list[str]:
    names = []
    for i, key in enumerate(cfg.ee_keys):
        label = _arm_label(key, i, len(cfg.ee_keys))
        names += [label + n for n in EE_DIM_NAMES]
        G = _gripper_width(features, cfg, i)
        names += [label + ("gripper" if G == 1 else f"gripper[{g}]") for g in range(G)]
    return names


def _vector_names(key: str, width: int) -> list[str]:
    return [f"{key}[{i}]" for i in range(width)]


def action_names(features: Mapping[str, Any], cfg: ActionConfig) -> list[str]:
    """Names of the action dims (e.g. ``x … R21 gripper`` or ``action[0] …``)."""
    if cfg.space == "ee_pose":
        return _ee_names(features, cfg)
    return _vector_names(cfg.joint_key, action_vectors(features, cfg).shape[-1])


def state_names(features: Mapping[str, Any], cfg: ActionConfig) -> list[str]:
    """Names of the state dims."""
    key = cfg.resolved_state_key
    if key is None:
        return _ee_names(features, cfg)
    return _vector_names(key, state_vectors(features, cfg).shape[-1])


def chunk_indices(
    t: int, length: int, cfg: ActionConfig, key_observed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices (H,), is_pad (H,)) of the chunk at frame t of an episode of `length` frames.

    Observed targets are read one stride ahead (``t + (k+1)·stride``), commanded actions at
    ``t + k·stride``; indices past the end are clamped to the last frame and flagged as padding.
    """
    k = np.arange(cfg.chunk_size, dtype=np.int64) + (1 if key_observed else 0)
    idx = t + k * cfg.stride
    return np.minimum(idx, length - 1), idx > length - 1


def _action_source_observed(cfg: ActionConfig) -> bool:
    return True if cfg.space == "ee_pose" else _is_observed(cfg.joint_key)


# ----------------------------------------------------------------------------------------------
# normalisation statistics
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-dim z-score statistics of one vector feature (``"state"`` or ``"actions"``).

    ``normalize(x) = (x − mean) / std``; ``denormalize`` inverts it. Dims listed in ``constant`` were
    (nearly) constant in the data and explicitly allowed to be; their std is 1.
    """

    feature: str
    names: tuple[str, ...]
    mean: np.ndarray  # (D,) float64
    std: np.ndarray  # (D,) float64, > 0
    constant: tuple[bool, ...]

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, np.float64).reshape(-1)
        std = np.asarray(self.std, np.float64).reshape(-1)
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "constant", tuple(bool(c) for c in self.constant))
        D = len(self.names)
        if mean.shape != (D,) or std.shape != (D,) or len(self.constant) != D:
            raise DataError(
                f"{self.feature} statistics disagree in size: {D} names, mean {mean.shape}, std {std.shape}, "
                f"{len(self.constant)} constant flags",
                field=self.feature,
                fix="recompute the statistics",
            )
        for arr, what in ((mean, "mean"), (std, "std")):
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                i = int(bad[0])
                raise DataError(
                    f"{self.feature} {what} of dim {i} ('{self.names[i]}') is {arr[i]}",
                    field=f"{self.feature}.{self.names[i]}",
                    fix="recompute the statistics from finite data",
                )
        bad = np.flatnonzero(std <= 0)
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{self.feature} std of dim {i} ('{self.names[i]}') is {std[i]}; it must be > 0",
                field=f"{self.feature}.{self.names[i]}",
                fix="recompute the statistics (constant dims are stored with std 1)",
            )
        mean.setflags(write=False)
        std.setflags(write=False)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def dim(self) -> int:
        return len(self.names)

    def _check(self, x: np.ndarray | torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise DataError(
                f"{self.feature} has {x.shape[-1]} dims but its statistics have {self.dim} "
                f"({list(self.names)})",
                field=self.feature,
                fix="use the statistics computed for this action space / dataset",
            )

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(..., D) raw values -> z-scores (float64 numpy)."""
        x = np.asarray(x, np.float64)
        self._check(x)
        return (x - self.mean) / self.std

    def denormalize(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """(..., D) z-scores -> raw values (float64 numpy)."""
        z = z.detach().float().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z, np.float64)
        self._check(z)
        return np.asarray(z, np.float64) * self.std + self.mean

    @classmethod
    def compute(
        cls,
        feature: str,
        values: np.ndarray,
        names: Sequence[str],
        *,
        constant_dims: Sequence[str] = (),
        std_eps: float = 1e-6,
        source: str = "",
    ) -> NormStats:
        """Mean / std per dim of ``values`` (N, D); raises DataError on NaN or undeclared constant dims."""
        x = np.asarray(values, np.float64)
        if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] < 1:
            raise DataError(
                f"{feature} values of shape {x.shape} do not match {len(names)} dim names",
                file=source or None,
                field=feature,
            )
        bad = np.argwhere(~np.isfinite(x))
        if bad.size:
            r, c = bad[0].tolist()
            raise DataError(
                f"{feature} dim {c} ('{names[c]}') is {x[r, c]} at sample {r}",
                file=source or None,
                field=f"{feature}.{names[c]}",
                fix="clean the recording: statistics need finite values",
            )
        mean, std = x.mean(0), x.std(0)
        constant = []
        for i, name in enumerate(names):
            qualified = f"{feature}.{name}"
            allowed = any(  # exact names first: "action[3]" would be a character class as a pattern
                p in (name, qualified) or fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(qualified, p)
                for p in constant_dims
            )
            degenerate = not std[i] >= std_eps
            if degenerate and not allowed:
                raise DataError(
                    f"{feature} dim {i} ('{name}') is constant in the data (std {std[i]:.3g} < {std_eps:g}, "
                    f"value {mean[i]:.6g}); a z-score would divide by ~0",
                    file=source or None,
                    field=f"{feature}.{name}",
                    fix="if it is constant by design, list it in ActionConfig.constant_dims "
                    f"(e.g. '{name}'); "
                    "otherwise add data where it varies or pick another action space",
                )
            constant.append(bool(degenerate and allowed))
        std = np.where(constant, 1.0, std)
        return cls(feature, tuple(names), mean, std, tuple(constant))

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "constant": list(self.constant),
        }

    @classmethod
    def from_dict(cls, feature: str, d: Any, *, file: str | None = None) -> NormStats:
        """Validate and build from :meth:`to_dict`'s form; problems raise CheckpointError naming the dim."""
        if not isinstance(d, Mapping):
            raise CheckpointError(
                f"{file}: '{feature}' statistics must be a json object, got {type(d).__name__}"
            )
        missing = [k for k in ("names", "mean", "std") if k not in d]
        if missing:
            raise CheckpointError(
                f"{file}: '{feature}' statistics lack {missing}; the file is incomplete. Re-save the "
                "checkpoint "
                "or recompute the statistics from the training dataset"
            )
        names = list(d["names"])
        try:
            return cls(
                feature,
                tuple(names),
                np.asarray(d["mean"], np.float64),
                np.asarray(d["std"], np.float64),
                tuple(d.get("constant", [False] * len(names))),
            )
        except (DataError, ValueError, TypeError) as e:
            raise CheckpointError(f"{file}: invalid '{feature}' statistics: {e}") from e


def compute_norm_stats(
    episodes: Sequence[Mapping[str, Any]], cfg: ActionConfig, *, source: str = ""
) -> dict[str, NormStats]:
    """``{"state", "actions"}`` statistics over every frame of `episodes` (feature dicts, leading dim T)."""
    if not episodes:
        raise DataError("no episodes to compute normalisation statistics on", file=source or None)
    acts = np.concatenate([action_vectors(f, cfg, f"episode {i}") for i, f in enumerate(episodes)])
    states = np.concatenate([state_vectors(f, cfg, f"episode {i}") for i, f in enumerate(episodes)])
    kw = dict(constant_dims=cfg.constant_dims, std_eps=cfg.std_eps, source=source)
    return {
        "state": NormStats.compute("state", states, state_names(episodes[0], cfg), **kw),
        "actions": NormStats.compute("actions", acts, action_names(episodes[0], cfg), **kw),
    }


def norm_stats_json(stats: Mapping[str, NormStats], *, action_space: str) -> dict[str, Any]:
    """The ``norm_stats.json`` document: format, version, action space, per-feature mean/std/constant."""
    return {
        "format": _NORM_FORMAT,
        "version": _NORM_VERSION,
        "action_space": action_space,
        "stats": {k: v.to_dict() for k, v in stats.items()},
    }


def save_norm_stats(path: str | os.PathLike, stats: Mapping[str, NormStats], *, action_space: str) -> Path:
    """Write :func:`norm_stats_json` to `path` (a file, or a checkpoint directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / NORM_STATS_FILE
    p.write_text(json.dumps(norm_stats_json(stats, action_space=action_space), indent=2) + "\n")
    return p


def load_norm_stats(path: str | os.PathLike) -> tuple[dict[str, NormStats], str]:
    """(``{"state", "actions"}`` stats, action space) of ``norm_stats.json``; CheckpointError if unusable."""
    p = Path(path)
    if p.is_dir():
        p = p / NORM_STATS_FILE
    if not p.is_file():
        raise CheckpointError(
            f"{p} is missing: the checkpoint has no normalisation statistics for state/actions, so actions "
            "cannot be de-normalised. Use a post-training checkpoint (`posevla train posttrain-tiny ...`), "
            "or recompute them with posevla.data.actions.compute_norm_stats on the training dataset and "
            "save_norm_stats into the checkpoint directory"
        )
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p} is not valid JSON ({e}); the checkpoint is corrupt") from e
    if not isinstance(doc, dict) or doc.get("format") != _NORM_FORMAT:
        raise CheckpointError(f"{p} is not a posevla normalisation-statistics file (format {_NORM_FORMAT!r})")
    stats = doc.get("stats")
    if not isinstance(stats, dict):
        raise CheckpointError(f"{p} has no 'stats' object")
    out = {}
    for feature in ("state", "actions"):
        if feature not in stats:
            raise CheckpointError(
                f"{p} has no '{feature}' statistics (has {sorted(stats)}); recompute them on the training "
                "dataset"
            )
        out[feature] = NormStats.from_dict(feature, stats[feature], file=str(p))
    return out, str(doc.get("action_space", ""))


# ----------------------------------------------------------------------------------------------
# observation -> model inputs (shared by training and serving)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ActionInputs:
    """The model inputs of one observation (what :func:`collate_actions` needs besides the actions)."""

    prompt: str
    prepared: list[PreparedView]
    cameras: list[str | None]  # camera of each view slot (None = empty slot)
    state: np.ndarray  # (Ds,) float32, normalised
    state_raw: np.ndarray  # (Ds,) float64


@dataclasses.dataclass
class ActionExample(ActionInputs):
    """One post-training sample: inputs + the normalised action chunk."""

    actions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (H, Da)
    action_is_pad: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), bool))  # (H,)
    episode_index: int = -1
    frame_index: int = -1


def camera_K(obs: Mapping[str, Any], cam: str, camera_config: CameraConfig | None, record: str) -> np.ndarray:
    """Camera `cam`'s (3, 3) intrinsics from the observation, else the camera config's static K."""
    key = camera_K_key(cam)
    if key in obs:
        K = np.asarray(obs[key], np.float64)
    elif camera_config is not None and camera_config.static_K(cam) is not None:
        K = camera_config.static_K(cam)
    else:
        raise DataError(
            f"no intrinsics for camera '{cam}'",
            record=record,
            field=key,
            fix=f"pass '{key}' (3x3 K of the image as given, pixel centres at integer coordinates)",
        )
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise DataError(
            f"intrinsics must be a finite 3x3 matrix with fx, fy > 0, got shape {K.shape}",
            record=record,
            field=key,
        )
    return K


def camera_T_world_cam(
    obs: Mapping[str, Any], cam: str, camera_config: CameraConfig | None
) -> np.ndarray | None:
    """Camera `cam`'s (4, 4) pose from the observation, else the static one, else None."""
    key = camera_T_key(cam)
    if key in obs:
        return np.asarray(obs[key], np.float64)
    return None if camera_config is None else camera_config.static_T_world_cam(cam)


def observation_inputs(
    obs: Mapping[str, Any],
    *,
    cfg: ActionConfig,
    stats: Mapping[str, NormStats],
    cameras: Sequence[str],
    image_size: int,
    num_views: int,
    camera_config: CameraConfig | None = None,
    image_sizes: Mapping[str, Sequence[int]] | None = None,
    record: str = "observation",
) -> ActionInputs:
    """Views, prompt and normalised state of one observation (the flat LeRobot-key dict, module docstring).

    Args:
        obs: ``observation.images.<cam>`` (H, W, 3) uint8 per camera, optional ``observation.depth.<cam>``
            (H, W) metres, ``observation.cameras.<cam>.K`` (or a static K in `camera_config`), the state
            features of `cfg`, and the instruction under ``task`` (or ``instruction``).
        cameras: camera names in view order; cameras beyond `num_views` are dropped, free slots are empty.
        image_sizes: expected (width, height) per camera (the training data's); a different size raises.

    Raises:
        DataError naming the key for a missing camera / state / instruction, a wrong image size or dtype,
        and a non-finite state.
    """
    task = obs.get("task", obs.get("instruction"))
    if not isinstance(task, str) or not task.strip():
        raise DataError(
            f"the instruction must be a non-empty string, got {task!r}",
            record=record,
            field="task",
            fix="pass the task instruction under 'task' (or 'instruction')",
        )
    prepared: list[PreparedView] = []
    slots: list[str | None] = []
    for i in range(num_views):
        if i >= len(cameras):
            prepared.append(empty_view(image_size))
            slots.append(None)
            continue
        cam = cameras[i]
        img_key, depth_key = IMAGE_PREFIX + cam, DEPTH_PREFIX + cam
        if img_key not in obs:
            raise DataError(
                f"camera '{cam}' is missing from the observation (have "
                f"{sorted(k for k in obs if k.startswith(IMAGE_PREFIX))})",
                record=record,
                field=img_key,
                fix=f"pass every camera the policy was trained with: {list(cameras)}",
            )
        rgb = obs[img_key]
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise DataError(
                f"expected an RGB image (H, W, 3) uint8, got {getattr(rgb, 'shape', type(rgb).__name__)} "
                f"{getattr(rgb, 'dtype', '')}",
                record=record,
                field=img_key,
                fix="pass 8-bit RGB images with row 0 at the top",
            )
        if image_sizes is not None and cam in image_sizes:
            w, h = (int(v) for v in image_sizes[cam])
            if rgb.shape[:2] != (h, w):
                raise DataError(
                    f"image is {rgb.shape[1]}x{rgb.shape[0]} but the policy was trained on {w}x{h} images of "
                    f"camera '{cam}'",
                    record=record,
                    field=img_key,
                    fix="render / capture at the training resolution (K must describe the image as given)",
                )
        depth = None
        if cfg.priors and depth_key in obs and obs[depth_key] is not None:
            depth = np.asarray(obs[depth_key], np.float32)
            if depth.ndim == 3 and depth.shape[2] == 1:
                depth = depth[..., 0]
        K = camera_K(obs, cam, camera_config, record)
        prepared.append(prepare_view(rgb, depth, K, image_size))
        slots.append(cam)
    state_feats = {  # one frame as features with a leading T = 1
        k: np.asarray(v)[None]
        for k, v in obs.items()
        if k.startswith("observation.") and not k.startswith((IMAGE_PREFIX, DEPTH_PREFIX))
    }
    state_raw = state_vectors(state_feats, cfg, record)[0]  # (Ds,)
    state = stats["state"].normalize(state_raw).astype(np.float32)
    return ActionInputs(prompt=task, prepared=prepared, cameras=slots, state=state, state_raw=state_raw)


# ----------------------------------------------------------------------------------------------
# dataset, collate, batches
# ----------------------------------------------------------------------------------------------


class ActionDataset:
    """Post-training examples of a LeRobot v3 dataset: one per (episode, frame with ≥ 1 real action).

    Args:
        dataset: the loaded dataset (``load_lerobot_v3``).
        cfg: action space and chunking.
        spec: image size / views / prompt layout of the model.
        stats: normalisation statistics to use (a checkpoint's); computed from `dataset` when None.

    Numeric features are kept in memory; pixels are decoded per example (``frame_images``).
    """

    def __init__(
        self,
        dataset: LeRobotV3Dataset,
        cfg: ActionConfig,
        spec: ExampleSpec,
        stats: Mapping[str, NormStats] | None = None,
    ) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.spec = spec
        cams = list(cfg.cameras if cfg.cameras is not None else dataset.camera_config.cameras)
        for cam in cams:
            dataset.image_size(cam)  # raises DataError naming a camera without images
        self.cameras = cams
        self.image_sizes = {cam: dataset.image_size(cam) for cam in cams}
        self.episodes = [dataset.episode(e, images=False).features for e in range(dataset.num_episodes)]
        src = str(dataset.root)
        self.stats = dict(stats) if stats is not None else compute_norm_stats(self.episodes, cfg, source=src)
        self._actions = [action_vectors(f, cfg, f"episode {e}") for e, f in enumerate(self.episodes)]
        self._states = [state_vectors(f, cfg, f"episode {e}") for e, f in enumerate(self.episodes)]
        self.action_dim = int(self._actions[0].shape[1]) if self._actions else 0
        self.state_dim = int(self._states[0].shape[1]) if self._states else 0
        for name, width, st in (
            ("actions", self.action_dim, self.stats["actions"]),
            ("state", self.state_dim, self.stats["state"]),
        ):
            if width != st.dim:
                raise DataError(
                    f"the data gives {width} {name} dims but the statistics have {st.dim} ({list(st.names)})",
                    file=src,
                    field=name,
                    fix="use statistics of the same action space and robot",
                )
        self._observed = _action_source_observed(cfg)
        first_pad = cfg.stride if self._observed else 0
        self.index: list[tuple[int, int]] = [
            (e, t)
            for e, length in enumerate(dataset.episode_lengths)
            for t in range(int(length))
            if t + first_pad <= int(length) - 1
        ]
        if not self.index:
            raise DataError(
                f"no frame of {dataset.num_episodes} episodes has a future action (stride {cfg.stride})",
                file=src,
                fix="lower ActionConfig.stride or use longer episodes",
            )

    def __len__(self) -> int:
        return len(self.index)

    def observation(self, e: int, t: int) -> dict[str, Any]:
        """Frame t of episode e as the observation dict an environment would return (pixels decoded)."""
        feats = self.episodes[e]
        obs: dict[str, Any] = {k: v[t] for k, v in feats.items()}
        keys = [IMAGE_PREFIX + c for c in self.cameras]
        if self.cfg.priors:
            keys += [k for k in (DEPTH_PREFIX + c for c in self.cameras) if k in self.dataset.pixel_keys()]
        obs.update(self.dataset.frame_images(e, t, keys))
        obs["task"] = self.dataset.episode_tasks[e][0]
        return obs

    def example(self, index: int) -> ActionExample:
        e, t = self.index[index]
        rec = f"episode {e} frame {t}"
        inputs = observation_inputs(
            self.observation(e, t),
            cfg=self.cfg,
            stats=self.stats,
            cameras=self.cameras,
            image_size=self.spec.image_size,
            num_views=self.spec.num_views,
            camera_config=self.dataset.camera_config,
            image_sizes=self.image_sizes,
            record=rec,
        )
        idx, pad = chunk_indices(t, int(self.dataset.episode_lengths[e]), self.cfg, self._observed)
        actions = self.stats["actions"].normalize(self._actions[e][idx]).astype(np.float32)  # (H, Da)
        return ActionExample(
            prompt=inputs.prompt,
            prepared=inputs.prepared,
            cameras=inputs.cameras,
            state=inputs.state,
            state_raw=inputs.state_raw,
            actions=actions,
            action_is_pad=pad,
            episode_index=e,
            frame_index=t,
        )

    def describe(self) -> dict[str, Any]:
        """What a checkpoint must record to rebuild the inputs at serving time."""
        return {
            "cameras": list(self.cameras),
            "image_sizes": {c: list(s) for c, s in self.image_sizes.items()},
            "camera_config": self.dataset.camera_config.to_dict(),
            "action_names": list(self.stats["actions"].names),
            "state_names": list(self.stats["state"].names),
            "action_dim": self.action_dim,
            "state_dim": self.state_dim,
            "dataset": str(self.dataset.root),
            "num_examples": len(self),
        }


def collate_actions(
    examples: Sequence[ActionInputs],
    tokenizer: Any,
    spec: ExampleSpec,
    *,
    max_state_dim: int,
    max_action_dim: int | None = None,
    priors: bool = True,
) -> dict[str, torch.Tensor]:
    """One batch for ``PoseVLAPolicyModel.compute_loss`` (or ``sample_actions`` for plain inputs).

    Keys: ``input_ids, attention_mask, token_type_ids (B, P)`` (prefix only), ``pixel_values, ray, depth
    (B, V, C, S, S)``, ``prior_mask (B, 2)``, ``state (B, max_state_dim)`` float32 zero-padded, and for
    :class:`ActionExample` s ``actions (B, H, Da)`` float32 and ``action_is_pad (B, H)`` bool.
    """
    if not examples:
        raise DataError("collate_actions got no examples")
    batch = collate(examples, None, tokenizer, spec, with_answer=False)
    batch.pop("labels", None)
    if not priors:
        batch["prior_mask"] = torch.zeros_like(batch["prior_mask"])
    Ds = max(len(ex.state) for ex in examples)
    if Ds > max_state_dim:
        raise DataError(
            f"the state has {Ds} dims but the action expert takes at most {max_state_dim}",
            field="state",
            fix="raise ActionExpertConfig.max_state_dim or use a smaller state",
        )
    state = np.zeros((len(examples), max_state_dim), np.float32)
    for i, ex in enumerate(examples):
        state[i, : len(ex.state)] = ex.state
    batch["state"] = torch.from_numpy(state)
    if all(isinstance(ex, ActionExample) for ex in examples):
        acts = np.stack([ex.actions for ex in examples]).astype(np.float32)  # (B, H, Da)
        if max_action_dim is not None and acts.shape[-1] > max_action_dim:
            raise DataError(
                f"actions have {acts.shape[-1]} dims but the action expert takes at most {max_action_dim}",
                field="actions",
                fix="raise ActionExpertConfig.max_action_dim or use a smaller action space",
            )
        batch["actions"] = torch.from_numpy(acts)
        batch["action_is_pad"] = torch.from_numpy(
            np.stack([ex.action_is_pad for ex in examples]).astype(bool)
        )
    return batch


def iterate_action_batches(
    dataset: ActionDataset,
    batch_size: int,
    seed: int,
    start_step: int,
    tokenizer: Any,
    *,
    max_state_dim: int,
    max_action_dim: int,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield (step, batch) forever from `start_step`; the order is a pure function of (seed, step)."""
    step = start_step
    while True:
        _, idx = batch_indices(len(dataset), batch_size, seed, step)
        examples = [dataset.example(int(i)) for i in idx]
        yield (
            step,
            collate_actions(
                examples,
                tokenizer,
                dataset.spec,
                max_state_dim=max_state_dim,
                max_action_dim=max_action_dim,
                priors=dataset.cfg.priors,
            ),
        )
        step += 1

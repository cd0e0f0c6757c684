"""Stage-2 targets: future tool-centre-point waypoints in each camera's frame (spec §2.2, §1.3).

For frame ``t`` of an episode of length ``T`` and a view of camera ``c``:

* waypoint frames ``f_k = min(t + k·stride, T − 1)``, ``k = 0 … K−1`` (``K = horizon``). Near the end of
  an episode the indices are **clamped**: the last recorded pose repeats, i.e. the arm is taken to rest
  at its final pose (the same choice as padding an action chunk with its last action);
* ``T_cam_tcp(k) = inv(T_world_cam(t)) · T_world_ee(f_k) · T_ee_tcp`` -- all waypoints are expressed in
  the camera frame of the *current* frame ``t`` (what the image shows), ``T_world_ee`` comes from the
  observed ``observation.ee_pose`` (xyz + quaternion wxyz), ``T_ee_tcp`` from the dataset's
  :class:`~posevla.data.formats.lerobot.CameraConfig`;
* each waypoint becomes a :class:`~posevla.tokens.PoseEntry` named ``"arm k"`` (``"left arm k"`` /
  ``"right arm k"`` for bimanual data): the anchor is the projected TCP position in the *model input*
  (the view after :func:`posevla.data.grounding.prepare_view`'s resize-pad), normalised to [0, 1] exactly
  like stage-1 boxes; translation in metres; rotation as Euler ``"xyz"``; no size tokens;
* an arm is listed in a view only if its first waypoint is in front of the camera (``z ≥ min_depth``)
  and projects inside the image; later waypoints may leave it (anchors clipped to [0, 1]; a waypoint
  behind the camera is projected with its depth clamped to ``min_depth``, i.e. onto the border in its
  lateral direction). A view that lists no arm answers ``arm<no_object>``.

``PoseCodec.serialize`` of the returned :class:`ViewAnswer` list gives the contracts grammar
(``<image0>arm 0<loc..><loc..><transXY..><transXY..><transZ..><rot..><rot..><rot..>;…</image0>``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from posevla.data.formats.lerobot import DEPTH_PREFIX, EE_POSE_KEY, IMAGE_PREFIX, CameraConfig, Episode, LeRobotV3Dataset, camera_K_key, camera_T_key
from posevla.data.grounding import PreparedView, empty_view, prepare_view
from posevla.errors import DataError
from posevla.geometry import (
    compose_T,
    invert_T,
    make_T,
    matrix_to_euler_xyz,
    project_points,
    quat_wxyz_to_matrix,
)
from posevla.tokens import PoseEntry, ViewAnswer

__all__ = [
    "TrajectoryConfig",
    "TrajectoryExample",
    "ee_pose_to_T",
    "waypoint_frames",
    "camera_waypoints",
    "first_waypoint_visible",
    "waypoint_entries",
    "build_trajectory_example",
    "iter_waypoint_translations",
    "collect_waypoint_translations",
]


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig:
    """How stage-2 answers are built.

    Args:
        horizon: K, waypoints per arm (spec: 5).
        stride: frames between waypoints (AgiBot at 30 Hz: 30, i.e. one per second).
        arms: ``(name, ee-pose feature key)`` per arm, in answer order; bimanual data uses
            ``(("left arm", "observation.ee_pose.left"), ("right arm", "observation.ee_pose.right"))``.
        view_arms: ``(camera, arm names)`` pairs restricting which arms a camera lists (e.g. a left
            wrist camera lists only the left arm); cameras not named list every arm.
        cameras: the views in order (default: the camera config's cameras).
        min_depth: a first waypoint nearer than this (metres, camera z) is not listed.
        no_object_name: the name written before ``<no_object>`` in a view without arms.
    """

    horizon: int = 5
    stride: int = 10
    arms: tuple[tuple[str, str], ...] = (("arm", EE_POSE_KEY),)
    view_arms: tuple[tuple[str, tuple[str, ...]], ...] = ()
    cameras: tuple[str, ...] | None = None
    min_depth: float = 0.01
    no_object_name: str = "arm"

    def __post_init__(self) -> None:
        for name, v in (("horizon", self.horizon), ("stride", self.stride)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise DataError(
                    f"{name} must be a positive integer, got {v!r}",
                    field=name,
                    fix=f"set TrajectoryConfig.{name} >= 1",
                )
        if not self.arms or len({a for a, _ in self.arms}) != len(self.arms):
            raise DataError(
                f"arms must be non-empty with unique names, got {self.arms!r}",
                field="arms",
                fix="e.g. arms=(('arm', 'observation.ee_pose'),)",
            )
        names = {a for a, _ in self.arms}
        for cam, listed in self.view_arms:
            unknown = set(listed) - names
            if unknown:
                raise DataError(
                    f"view_arms of camera {cam!r} names unknown arm(s) {sorted(unknown)}",
                    field="view_arms",
                    fix=f"use arm names from {sorted(names)}",
                )
        if not self.min_depth > 0:
            raise DataError(
                f"min_depth must be positive, got {self.min_depth!r}",
                field="min_depth",
                fix="use e.g. 0.01 m",
            )

    def arms_of(self, cam: str) -> list[tuple[str, str]]:
        """The ``(name, key)`` arms camera ``cam`` lists, in answer order."""
        listed = dict(self.view_arms).get(cam)
        return [a for a in self.arms if listed is None or a[0] in listed]


@dataclasses.dataclass
class TrajectoryExample:
    """One stage-2 sample: what the collate function and the evaluator need (cf. ``GroundingExample``)."""

    episode_index: int
    frame_index: int
    prompt: str
    views: list[ViewAnswer]
    prepared: list[PreparedView]
    cameras: list[str | None]  # camera of each view slot (None = empty slot)
    waypoints: list[dict[str, np.ndarray]]  # per view: listed arm -> (K, 4, 4) T_cam_tcp


def ee_pose_to_T(ee_pose: np.ndarray) -> np.ndarray:
    """End-effector poses (..., 7) xyz + quaternion wxyz -> (..., 4, 4) float64 ``T_world_ee``."""
    p = np.asarray(ee_pose, np.float64)
    return make_T(quat_wxyz_to_matrix(p[..., 3:7]), p[..., :3])


def waypoint_frames(t: int | np.ndarray, length: int, horizon: int, stride: int) -> np.ndarray:
    """Frames ``min(t + k·stride, length − 1)``, k = 0 … horizon−1: (horizon,), or (N, horizon) for t (N,)."""
    t = np.asarray(t, np.int64)
    k = np.arange(horizon, dtype=np.int64) * stride
    return np.minimum(t[..., None] + k, length - 1)


def camera_waypoints(T_world_ee: np.ndarray, T_world_cam: np.ndarray, T_ee_tcp: np.ndarray) -> np.ndarray:
    """``inv(T_world_cam) · T_world_ee · T_ee_tcp``: (..., K, 4, 4) TCP poses in the camera frame.

    ``T_world_ee`` (..., K, 4, 4) are the waypoint poses, ``T_world_cam`` (..., 4, 4) the camera of the
    current frame, ``T_ee_tcp`` (4, 4) the TCP offset.
    """
    return compose_T(invert_T(np.asarray(T_world_cam, np.float64))[..., None, :, :], T_world_ee, T_ee_tcp)


def first_waypoint_visible(
    p_cam: np.ndarray, K: np.ndarray, width: int, height: int, min_depth: float
) -> np.ndarray:
    """Whether camera-frame points (..., 3) are at depth >= min_depth and project inside a W×H image."""
    p = np.asarray(p_cam, np.float64)
    z = p[..., 2]
    uv = project_points(K, np.where((z >= min_depth)[..., None], p, np.array([0.0, 0.0, 1.0])))
    inside = (
        (uv[..., 0] >= -0.5)
        & (uv[..., 0] <= width - 0.5)
        & (uv[..., 1] >= -0.5)
        & (uv[..., 1] <= height - 0.5)
    )
    return (z >= min_depth) & inside


def _anchors(p_cam: np.ndarray, K_model: np.ndarray, image_size: int, min_depth: float) -> np.ndarray:
    """(K, 3) camera-frame points -> (K, 2) normalised model-input anchors in [0, 1]."""
    p = np.array(p_cam, np.float64)
    p[:, 2] = np.maximum(p[:, 2], min_depth)
    uv = project_points(K_model, p)
    return np.clip((uv + 0.5) / image_size, 0.0, 1.0)


def waypoint_entries(
    T_cam_tcp: np.ndarray, name: str, K_model: np.ndarray, image_size: int, min_depth: float = 0.01
) -> list[PoseEntry]:
    """The answer entries ``"{name} k"`` of one arm's waypoints (K, 4, 4) in one view, temporal order."""
    anchors = _anchors(T_cam_tcp[:, :3, 3], K_model, image_size, min_depth)
    euler = np.asarray(matrix_to_euler_xyz(T_cam_tcp[:, :3, :3]), np.float64)
    return [
        PoseEntry(name=f"{name} {k}", anchor=anchors[k], translation=T_cam_tcp[k, :3, 3], euler_xyz=euler[k])
        for k in range(T_cam_tcp.shape[0])
    ]


def _feature(episode: Episode, key: str, record: str) -> np.ndarray:
    if key not in episode.features:
        raise DataError(
            f"the episode has no feature '{key}' (has {sorted(episode.features)[:12]})",
            record=record,
            field=key,
            fix="add it to the episode, or fix TrajectoryConfig.arms / the camera config",
        )
    return episode.features[key]


def build_trajectory_example(
    episode: Episode,
    frame: int,
    *,
    camera_config: CameraConfig,
    image_size: int,
    num_views: int,
    config: TrajectoryConfig | None = None,
    use_depth: bool = True,
    frame_images: Mapping[str, np.ndarray] | None = None,
    episode_index: int = -1,
) -> TrajectoryExample:
    """Views, priors and the waypoint answer for frame ``frame`` of ``episode``; prompt = its instruction.

    Args:
        episode: numeric features (ee poses, per-frame ``K`` / ``T_world_cam``) and, unless
            ``frame_images`` is given, the images (``LeRobotV3Dataset.episode(i)``).
        frame: the current frame t.
        camera_config: the dataset's TCP offset (cameras come from ``config.cameras`` or from here).
        image_size / num_views: the model's input size and view slots; extra slots are empty and
            answer ``<no_object>``, extra cameras are dropped.
        frame_images: the frame's decoded pixels by feature key (``LeRobotV3Dataset.frame_images``),
            to avoid loading whole episodes.
    """
    cfg = config or TrajectoryConfig()
    rec = f"episode {episode_index} frame {frame}"
    T = episode.num_frames
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= int(frame) < T:
        raise DataError(
            f"frame {frame!r} out of range [0, {T - 1}]",
            record=f"episode {episode_index}",
            field="frame_index",
            fix="pick a frame inside the episode",
        )
    t = int(frame)
    frames = waypoint_frames(t, T, cfg.horizon, cfg.stride)  # (K,)
    T_ee_tcp = camera_config.T_ee_tcp()
    cams = list(cfg.cameras if cfg.cameras is not None else camera_config.cameras)[:num_views]
    prepared: list[PreparedView] = []
    answers: list[ViewAnswer] = []
    slots: list[str | None] = []
    waypoints: list[dict[str, np.ndarray]] = []
    for i in range(num_views):
        if i >= len(cams):
            prepared.append(empty_view(image_size))
            answers.append(ViewAnswer(index=i, no_object=cfg.no_object_name))
            slots.append(None)
            waypoints.append({})
            continue
        cam = cams[i]
        img_key, depth_key = IMAGE_PREFIX + cam, DEPTH_PREFIX + cam
        source = (
            frame_images
            if frame_images is not None
            else {k: episode.features[k][t] for k in (img_key, depth_key) if k in episode.features}
        )
        if img_key not in source:
            raise DataError(
                f"no image '{img_key}' for frame {t}",
                record=rec,
                field=img_key,
                fix="load the episode with images, or pass frame_images",
            )
        rgb = np.asarray(source[img_key])
        depth = np.asarray(source[depth_key], np.float32) if use_depth and depth_key in source else None
        K = np.asarray(_feature(episode, camera_K_key(cam), rec)[t], np.float64)
        T_world_cam = np.asarray(_feature(episode, camera_T_key(cam), rec)[t], np.float64)
        pv = prepare_view(rgb, depth, K, image_size)
        height, width = rgb.shape[:2]
        entries: list[PoseEntry] = []
        listed: dict[str, np.ndarray] = {}
        for arm, key in cfg.arms_of(cam):
            T_world_ee = ee_pose_to_T(_feature(episode, key, rec)[frames])  # (K, 4, 4)
            T_cam_tcp = camera_waypoints(T_world_ee, T_world_cam, T_ee_tcp)  # (K, 4, 4)
            if not first_waypoint_visible(T_cam_tcp[0, :3, 3], K, width, height, cfg.min_depth):
                continue
            listed[arm] = T_cam_tcp
            entries += waypoint_entries(T_cam_tcp, arm, pv.K_model, image_size, cfg.min_depth)
        prepared.append(pv)
        answers.append(
            ViewAnswer(index=i, entries=entries, no_object=None if entries else cfg.no_object_name)
        )
        slots.append(cam)
        waypoints.append(listed)
    return TrajectoryExample(
        episode_index=episode_index,
        frame_index=t,
        prompt=episode.task,
        views=answers,
        prepared=prepared,
        cameras=slots,
        waypoints=waypoints,
    )


def iter_waypoint_translations(
    dataset: LeRobotV3Dataset, *, config: TrajectoryConfig | None = None, frame_step: int = 1
) -> Iterator[np.ndarray]:
    """Camera-frame translations (n, 3) of the listed waypoints, per (episode, camera) (for bin fitting).

    Uses the same visibility rule as :func:`build_trajectory_example` (first waypoint in front of the
    camera and inside the image) on every ``frame_step``-th frame; no pixels are read.
    """
    cfg = config or TrajectoryConfig()
    cc = dataset.camera_config
    cams = list(cfg.cameras if cfg.cameras is not None else cc.cameras)
    dataset.require_calibration(cams, "stage-2 waypoints")  # a DataError naming the three ways to calibrate
    T_ee_tcp = cc.T_ee_tcp()
    for e in range(dataset.num_episodes):
        ep = dataset.episode(e, images=False)
        T = ep.num_frames
        ts = np.arange(0, T, frame_step)
        frames = waypoint_frames(ts, T, cfg.horizon, cfg.stride)  # (N, K)
        for cam in cams:
            width, height = dataset.image_size(cam)
            rec = f"episode {e}"
            K = _feature(ep, camera_K_key(cam), rec)[ts].astype(np.float64)  # (N, 3, 3)
            T_world_cam = _feature(ep, camera_T_key(cam), rec)[ts].astype(np.float64)  # (N, 4, 4)
            for _, key in cfg.arms_of(cam):
                T_world_ee = ee_pose_to_T(_feature(ep, key, rec))[frames]  # (N, K, 4, 4)
                T_cam_tcp = camera_waypoints(T_world_ee, T_world_cam, T_ee_tcp)  # (N, K, 4, 4)
                p0 = T_cam_tcp[:, 0, :3, 3]  # (N, 3)
                visible = first_waypoint_visible(p0[:, None, :], K, width, height, cfg.min_depth)[:, 0]
                if visible.any():
                    yield T_cam_tcp[visible][:, :, :3, 3].reshape(-1, 3)


def collect_waypoint_translations(
    datasets: LeRobotV3Dataset | Sequence[LeRobotV3Dataset],
    *,
    config: TrajectoryConfig | None = None,
    frame_step: int = 1,
) -> np.ndarray:
    """All listed waypoints' camera-frame translations of one or more datasets, (N, 3) float64 metres.

    Feed ``[:, :2]`` to the ``trans_xy`` and ``[:, 2]`` to the ``trans_z`` values of ``BinSpec.fit``.
    """
    items = [datasets] if isinstance(datasets, LeRobotV3Dataset) else list(datasets)
    parts = [p for ds in items for p in iter_waypoint_translations(ds, config=config, frame_step=frame_step)]
    if not parts:
        raise DataError(
            f"no visible waypoints in {len(items)} dataset(s)",
            field="ee_pose",
            fix="check the camera poses, K and the TCP offset: no first waypoint projects into any image",
        )
    return np.concatenate(parts).astype(np.float64)

"""MetaWorld v3 (Sawyer, 50 tasks) as a :class:`posevla.sim.ClosedLoopEnv` with calibrated cameras.

``make("pick-place-v3", seed=0, image_size=128)`` returns a :class:`MetaWorldEnv`. Every observation
carries, per camera, an RGB image, metric depth, the intrinsics ``K`` and the camera pose
``T_world_cam``, plus the end-effector pose, the gripper opening, the joint positions and a
natural-language instruction. Keys are the LeRobot feature names of :mod:`posevla.sim`.

Conventions (project contracts):

* Images are uint8 RGB with row 0 at the top. MuJoCo reads the framebuffer bottom row first, so it
  is flipped. MetaWorld's ``corner``, ``corner2``, ``corner3`` and ``corner4`` cameras are mounted
  upside down (their up axis points at the floor, which is why MetaWorld renders "come out upside
  down"). The adapter turns every such camera 180 degrees about its optical axis in the model once,
  so the table is at the bottom of the picture and ``K``/``T_world_cam`` describe exactly the image
  that was rendered (a bare vertical flip would mirror the scene, which no camera pose can express).
* Depth is float32 metres along the optical axis, 0 where nothing was hit (far plane) and on the
  skybox (anything beyond 10 m; MetaWorld's scene is about 2 m across).
* ``K`` follows the MuJoCo fovy formula (:func:`posevla.geometry.K_from_fovy`); ``T_world_cam`` is
  the MuJoCo camera pose converted to the OpenCV frame (x right, y down, z forward). The wrist camera
  ``gripperPOV`` moves with the hand, so its pose is read every step.
* ``observation.ee_pose`` is the hand (flange) body: position and quaternion wxyz (``w >= 0``) in
  the world frame. The tool centre point, midway between the finger pads, sits at
  :data:`TCP_OFFSET` in the hand frame (4.5 cm along the hand's x axis, which points down).
* ``observation.gripper`` is MetaWorld's normalised finger-pad distance (1 open, 0 closed).
* ``observation.state`` is ``[ee xyz, ee quat wxyz, gripper]`` (8); ``observation.joints`` the 7 arm
  joints and 2 finger slides (9). ``observation.environment_state`` is MetaWorld's privileged 39-D
  vector (hand, gripper, object poses, goal) that the scripted experts read.
* Actions are MetaWorld's 4-D ``[dx, dy, dz, grip]`` in [-1, 1]: hand displacement of 1 cm per unit
  per step (mocap), grip effort -1 open / +1 close. Control runs at :data:`FPS` = 80 Hz.

Episodes are deterministic in ``reset(seed)``: the seed draws the object and goal positions from the
task's own randomisation range (MetaWorld's ``seeded_rand_vec``) and picks the instruction template.
The goal is observable in ``environment_state`` (MetaWorld's MT1 setting), as the experts need it.

Rendering uses one offscreen GL context per environment and a CPU fast path: no MSAA
(``offsamples = 0``) and no shadows, set before the first render, and no table reflections (see
:class:`posevla.sim.render.MujocoCameraRenderer`, which also sets ``MUJOCO_GL=egl``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posevla.sim import Observation, PolicyOutput, StepResult, check_int
from posevla.errors import ConfigError, DataError
from posevla.geometry.camera import K_from_fovy
from posevla.geometry.rotations import matrix_to_quat_wxyz
from posevla.geometry.se3 import make_T, opengl_to_opencv_camera
from posevla.sim.metaworld_tasks import TASKS, check_seed, instruction_for, resolve_task
from posevla.sim.render import MujocoCameraRenderer

__all__ = [
    "TASKS",
    "DEFAULT_CAMERAS",
    "TCP_OFFSET",
    "FPS",
    "ACTION_DIM",
    "ACTION_SCALE",
    "JOINT_NAMES",
    "instruction_for",
    "resolve_task",
    "camera_map",
    "image_size_hw",
    "check_options",
    "MetaWorldEnv",
    "make",
    "expert_chunk_policy",
]

#: Hand displacement per unit of action per step (MetaWorld's ``action_scale``), metres.
ACTION_SCALE = 0.01
#: Dataset camera name -> MetaWorld camera: a fixed head view, a second fixed view from the other
#: side of the table, and the camera that moves with the gripper.
DEFAULT_CAMERAS: Mapping[str, str] = {"head": "corner", "side": "corner2", "wrist": "gripperPOV"}
#: Tool centre point (midway between the finger pads) in the hand body frame, metres (measured; the
#: pads' midpoint stays within 0.4 mm of it while the gripper opens and closes).
TCP_OFFSET: np.ndarray = np.array([0.045, 0.0, 0.0])
TCP_OFFSET.setflags(write=False)
FPS = 80  # MetaWorld: frame_skip 5 x timestep 2.5 ms
ACTION_DIM = 4
JOINT_NAMES = tuple(f"right_j{i}" for i in range(7)) + ("r_close", "l_close")
_HAND_BODY = "hand"
_MIN_SIDE, _MAX_SIDE = 16, 2048

def image_size_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``int`` (square) or ``(height, width)`` -> (height, width), range-checked."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        h = w = int(image_size)
    elif isinstance(image_size, Sequence) and len(image_size) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in image_size
    ):
        h, w = int(image_size[0]), int(image_size[1])
    else:
        raise ConfigError(f"image_size (--image-size) must be an int or (height, width) ints, got {image_size!r}")
    if not (_MIN_SIDE <= h <= _MAX_SIDE and _MIN_SIDE <= w <= _MAX_SIDE):
        raise ConfigError(
            f"image_size (--image-size) {(h, w)} out of range: each side must be in [{_MIN_SIDE}, {_MAX_SIDE}] pixels"
        )
    return h, w


def camera_map(cameras: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Normalise the ``cameras`` argument to {dataset name: MuJoCo camera name}."""
    if cameras is None:
        return dict(DEFAULT_CAMERAS)
    if isinstance(cameras, str):
        cameras = (cameras,)
    if isinstance(cameras, Mapping):
        out = {str(k): str(v) for k, v in cameras.items()}
    elif isinstance(cameras, Sequence):
        out = {str(c): str(c) for c in cameras}
    else:
        raise ConfigError(
            f"cameras must be a mapping name -> MetaWorld camera or a list of camera names, got {cameras!r}"
        )
    if not out:
        raise ConfigError("cameras is empty: give at least one camera (the first is the head view)")
    bad = [k for k in out if not k or "." in k or "/" in k]
    if bad:
        raise ConfigError(
            f"camera names {bad} must be non-empty and contain no '.' or '/' (they become feature keys)"
        )
    return out


class MetaWorldEnv:
    """One MetaWorld v3 task with calibrated cameras; see the module docstring for the observation.

    Attributes:
        task_name: MetaWorld v3 name, e.g. ``"pick-place-v3"``.
        cameras: dataset camera names in order (``cameras[0]`` is the head view).
        camera_sources: dataset camera name -> MetaWorld camera name.
        turned_cameras: MetaWorld cameras that were turned 180 degrees about their optical axis.
        height, width: image size in pixels.
        action_dim, fps, max_steps: 4, 80 and the episode step limit (at most MetaWorld's 500).
        robot_type, tcp_offset: ``"sawyer"`` and :data:`TCP_OFFSET` (what recorded demos store).
        instruction: the current episode's instruction (set by :meth:`reset`).
        last_obs: the latest observation (from :meth:`reset` or :meth:`step`), None before the first.
    """

    action_dim: int = ACTION_DIM
    fps: int = FPS
    robot_type: str = "sawyer"
    tcp_offset: np.ndarray = TCP_OFFSET

    def __init__(
        self,
        task_name: str,
        *,
        image_size: int | Sequence[int] = 128,
        cameras: Mapping[str, str] | Sequence[str] | None = None,
        depth: bool = True,
        render: bool = True,
        max_steps: int | None = None,
    ) -> None:
        import mujoco
        import metaworld.env_dict as env_dict
        from metaworld.policies import ENV_POLICY_MAP

        self.mj = mujoco
        self.task_name = resolve_task(task_name)
        if self.task_name not in env_dict.ALL_V3_ENVIRONMENTS:
            raise ConfigError(
                f"task {self.task_name!r} is not in the installed metaworld; install metaworld==3.1.1"
            )
        self.height, self.width = image_size_hw(image_size)
        self.camera_sources = camera_map(cameras)
        self.cameras = tuple(self.camera_sources)
        self.depth, self.render_images = bool(depth), bool(render)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = env_dict.ALL_V3_ENVIRONMENTS[self.task_name]()
        # MT1 setting (goal visible to the expert), seeded per-episode randomisation of object/goal
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached_property depends on observability
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        self._env = env
        self._renderer: MujocoCameraRenderer | None = None
        try:
            self.model, self.data = env.model, env.data
            limit = int(env.max_path_length)
            self.max_steps = limit if max_steps is None else check_int(max_steps, "max_steps", lo=1, hi=limit)
            self._expert = ENV_POLICY_MAP[self.task_name]()

            m = self.model
            available = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(m.ncam)]
            self._cam_ids: dict[str, int] = {}
            for name, src in self.camera_sources.items():
                if src not in available:
                    raise ConfigError(
                        f"camera {name!r} -> {src!r} does not exist in MetaWorld task {self.task_name!r}; "
                        f"use one of the available cameras: {', '.join(available)}"
                    )
                self._cam_ids[name] = available.index(src)
            self.turned_cameras = self._turn_upside_down_cameras()
            self._K = {
                name: K_from_fovy(math.radians(float(m.cam_fovy[i])), self.width, self.height)
                for name, i in self._cam_ids.items()
            }
            self._hand_id = m.body(_HAND_BODY).id
            self._qpos_idx = np.array([m.jnt_qposadr[m.joint(j).id] for j in JOINT_NAMES])
            self._renderer = MujocoCameraRenderer(m, self.width, self.height) if self.render_images else None
        except BaseException:
            env.close()
            raise
        self._t = 0
        self._done = True
        self.seed: int | None = None
        self.last_obs: Observation | None = None
        self.instruction = instruction_for(self.task_name, 0)

    # -- setup ----------------------------------------------------------------------------------
    def _turn_upside_down_cameras(self) -> tuple[str, ...]:
        """Rotate cameras whose up axis points downward by 180 degrees about their optical axis."""
        mj, m, d = self.mj, self.model, self.data
        mj.mj_forward(m, d)
        turned = []
        half_turn = np.array([0.0, 0.0, 0.0, 1.0])  # 180 degrees about the camera's local z
        for i in sorted(set(self._cam_ids.values())):
            up_world = d.cam_xmat[i].reshape(3, 3)[:, 1]
            if up_world[2] < 0:
                q = np.empty(4)
                mj.mju_mulQuat(q, m.cam_quat[i].copy(), half_turn)
                m.cam_quat[i] = q
                turned.append(mj.mj_id2name(m, mj.mjtObj.mjOBJ_CAMERA, i))
        mj.mj_forward(m, d)
        return tuple(turned)

    # -- accessors ------------------------------------------------------------------------------
    def K(self, camera: str) -> np.ndarray:
        """Intrinsics (3, 3) float64 of a dataset camera (constant)."""
        if camera not in self._K:
            raise ConfigError(f"unknown camera {camera!r}; this environment has {', '.join(self.cameras)}")
        return self._K[camera].copy()

    def T_world_cam(self, camera: str) -> np.ndarray:
        """Current pose (4, 4) float64 of a dataset camera, OpenCV axes."""
        if camera not in self._cam_ids:
            raise ConfigError(f"unknown camera {camera!r}; this environment has {', '.join(self.cameras)}")
        i = self._cam_ids[camera]
        T_gl = make_T(self.data.cam_xmat[i].reshape(3, 3).copy(), self.data.cam_xpos[i].copy())
        return opengl_to_opencv_camera(T_gl)

    def ee_pose(self) -> np.ndarray:
        """Hand (flange) pose: (7,) float64 ``[x, y, z, qw, qx, qy, qz]`` in the world frame."""
        R = self.data.xmat[self._hand_id].reshape(3, 3)
        return np.concatenate([self.data.xpos[self._hand_id], matrix_to_quat_wxyz(R.copy())])

    def tcp_position(self) -> np.ndarray:
        """MetaWorld's own TCP (midpoint of the finger pads), (3,) world metres."""
        return np.asarray(self._env.tcp_center, dtype=np.float64).copy()

    @property
    def steps(self) -> int:
        """Steps taken in the current episode."""
        return self._t

    # -- episode --------------------------------------------------------------------------------
    def _observation(self, raw: np.ndarray) -> Observation:
        ee = self.ee_pose()
        gripper = np.array([raw[3]], dtype=np.float64)
        obs: Observation = {"task": self.instruction}
        if self._renderer is not None:
            for name, cam_id in self._cam_ids.items():
                rgb, depth = self._renderer.render(self.data, cam_id, depth=self.depth)
                obs[f"observation.images.{name}"] = rgb
                if depth is not None:
                    obs[f"observation.depth.{name}"] = depth
        for name in self.cameras:
            obs[f"observation.cameras.{name}.K"] = self._K[name].copy()
            obs[f"observation.cameras.{name}.T_world_cam"] = self.T_world_cam(name)
        obs["observation.state"] = np.concatenate([ee, gripper]).astype(np.float32)
        obs["observation.ee_pose"] = ee.astype(np.float32)
        obs["observation.gripper"] = gripper.astype(np.float32)
        obs["observation.joints"] = self.data.qpos[self._qpos_idx].astype(np.float32)
        obs["observation.environment_state"] = np.asarray(raw, dtype=np.float64).copy()
        return obs

    def reset(self, seed: int) -> Observation:
        """Start an episode; object/goal placement and the instruction are functions of ``seed``."""
        seed = check_seed(seed)
        env = self._env
        env.seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw, _ = env.reset()
        self.seed = seed
        self.instruction = instruction_for(self.task_name, seed)
        self._t = 0
        self._done = False
        self.last_obs = self._observation(raw)
        return self.last_obs

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one 4-D action (clipped to [-1, 1]); success is MetaWorld's ``info['success']``."""
        if self._done:
            raise DataError(
                f"step() without an active episode (steps taken: {self._t}, limit {self.max_steps})",
                fix="call reset(seed) first, and again after a StepResult with truncated=True",
            )
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,) or not np.all(np.isfinite(a)):
            raise DataError(
                f"expected a finite action of shape ({ACTION_DIM},) [dx, dy, dz, grip], got shape "
                f"{np.shape(action)}" + ("" if a.size != ACTION_DIM else " with non-finite values"),
                field="action",
                fix="policies for MetaWorld must output 4 numbers per step in [-1, 1]",
            )
        a = np.clip(a, -1.0, 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw, reward, _, _, info = self._env.step(a.astype(np.float32))
        self._t += 1
        truncated = self._t >= self.max_steps
        self._done = truncated
        info = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in info.items()}
        info["sim_unstable"] = bool(self._env._did_see_sim_exception)
        self.last_obs = self._observation(raw)
        return StepResult(self.last_obs, float(reward), bool(info.get("success", False)), truncated, info)

    def expert_action(self, obs: Observation) -> np.ndarray:
        """MetaWorld's scripted expert (``metaworld.policies``): a (4,) float32 action in [-1, 1]."""
        state = obs.get("observation.environment_state") if isinstance(obs, Mapping) else None
        if state is None:
            raise DataError(
                "the scripted expert needs 'observation.environment_state' (MetaWorld's 39-D state)",
                fix="pass an observation returned by reset()/step() of this environment",
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high" on every call
            a = self._expert.get_action(np.asarray(state, dtype=np.float64))
        # the experts' raw actions exceed [-1, 1]; step() would clip them the same way
        return np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)

    def close(self) -> None:
        """Free the renderer and the simulator (idempotent)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        cams = ", ".join(f"{k}={v}" for k, v in self.camera_sources.items())
        return f"MetaWorldEnv({self.task_name!r}, {self.height}x{self.width}, cameras: {cams})"


def check_options(
    *, image_size: int | Sequence[int] = 128, cameras: Mapping[str, str] | Sequence[str] | None = None
) -> None:
    """Raise ConfigError for an image size or camera list :func:`make` would refuse (without loading MetaWorld)."""
    image_size_hw(image_size)
    camera_map(cameras)


def make(
    task_name: str,
    seed: int | None = None,
    *,
    image_size: int | Sequence[int] = 128,
    cameras: Mapping[str, str] | Sequence[str] | None = None,
    depth: bool = True,
    render: bool = True,
    max_steps: int | None = None,
) -> MetaWorldEnv:
    """Create a MetaWorld v3 environment (and reset it to ``seed`` when one is given).

    Args:
        task_name: a MetaWorld v3 task, e.g. ``"pick-place-v3"`` (the ``-v3`` may be left out).
        seed: if given, the environment is reset to this episode seed; call ``env.reset(seed)`` for
            later episodes either way.
        image_size: ``int`` (square) or ``(height, width)``.
        cameras: dataset camera name -> MetaWorld camera (default :data:`DEFAULT_CAMERAS`), or a list
            of MetaWorld camera names used as-is. The first one is the head view.
        depth: render metric depth as well as RGB.
        render: render images at all (False gives a fast state-only environment; K and
            T_world_cam are still reported).
        max_steps: episode step limit, at most MetaWorld's 500 (default 500).

    Raises:
        ConfigError: unknown task or camera, bad image size, seed or step limit.
    """
    env = MetaWorldEnv(
        task_name, image_size=image_size, cameras=cameras, depth=depth, render=render, max_steps=max_steps
    )
    if seed is not None:
        try:
            env.reset(seed)
        except Exception:
            env.close()
            raise
    return env


def expert_chunk_policy(env: MetaWorldEnv, horizon: int = 1):  # noqa: ANN201 - a policy callable
    """The scripted expert as a chunk policy: ``policy(obs) -> PolicyOutput`` with ``horizon`` actions.

    The expert is reactive, so the chunk repeats its current action ``horizon`` times (executing it
    open-loop is what a chunked policy does between re-plans). ``waypoints`` are where the hand would
    go if the chunk were followed exactly: the current position plus the summed displacements.
    """
    horizon = check_int(horizon, "horizon", lo=1)

    def policy(obs: Observation) -> PolicyOutput:
        a = env.expert_action(obs)
        chunk = np.repeat(a[None], int(horizon), axis=0)
        hand = np.asarray(obs["observation.ee_pose"][:3], np.float64)
        waypoints = hand + ACTION_SCALE * np.cumsum(chunk[:, :3].astype(np.float64), axis=0)
        return PolicyOutput(actions=chunk, waypoints=waypoints)

    return policy

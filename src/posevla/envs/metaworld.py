"""MetaWorld v3 (Sawyer, 50 tasks) as a :class:`posevla.envs.ClosedLoopEnv` with calibrated cameras.

``make("pick-place-v3", seed=0, image_size=128)`` returns a :class:`MetaWorldEnv`. Every observation
carries, per camera, an RGB image, metric depth, the intrinsics ``K`` and the camera pose
``T_world_cam``, plus the end-effector pose, the gripper opening, the joint positions and a
natural-language instruction. Keys are the LeRobot feature names of :mod:`posevla.envs`.

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
:class:`MujocoCameraRenderer`). Set ``MUJOCO_GL=egl`` before Python first imports mujoco.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import difflib  # noqa: E402
import math  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from posevla.envs import Observation, PolicyOutput, StepResult, check_int  # noqa: E402
from posevla.errors import ConfigError, DataError  # noqa: E402
from posevla.geometry.camera import K_from_fovy  # noqa: E402
from posevla.geometry.rotations import matrix_to_quat_wxyz  # noqa: E402
from posevla.geometry.se3 import make_T, opengl_to_opencv_camera  # noqa: E402

__all__ = [
    "TASKS",
    "DEFAULT_CAMERAS",
    "TCP_OFFSET",
    "FPS",
    "ACTION_DIM",
    "ACTION_SCALE",
    "JOINT_NAMES",
    "instruction_for",
    "depth_buffer_to_metres",
    "MujocoCameraRenderer",
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

#: Three phrasings per task; ``reset(seed)`` picks ``seed % 3``. Keys are MetaWorld v3 task names.
_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "assembly-v3": (
        "put the ring onto the peg",
        "pick up the nut and slide it over the peg",
        "assemble the ring on the peg",
    ),
    "basketball-v3": (
        "put the ball into the hoop", "pick up the basketball and dunk it", "drop the ball through the hoop"
    ),
    "bin-picking-v3": (
        "move the cube into the other bin",
        "pick the block out of the bin and place it in the empty bin",
        "transfer the cube between the bins",
    ),
    "box-close-v3": (
        "close the box with its lid", "put the lid on the box", "pick up the lid and cover the box"
    ),
    "button-press-topdown-v3": (
        "press the button from above", "push the button down", "press down on the button"
    ),
    "button-press-topdown-wall-v3": (
        "press the button from above behind the wall",
        "reach over the wall and push the button down",
        "press down on the button behind the wall",
    ),
    "button-press-v3": ("press the button", "push the button in", "press the button on the box"),
    "button-press-wall-v3": (
        "press the button behind the wall",
        "reach past the wall and push the button",
        "push in the button behind the wall",
    ),
    "coffee-button-v3": (
        "press the button on the coffee machine",
        "push the coffee machine's button",
        "start the coffee machine",
    ),
    "coffee-pull-v3": (
        "pull the mug away from the coffee machine",
        "slide the cup out from under the coffee machine",
        "move the mug back to the goal",
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine",
        "slide the cup beneath the coffee spout",
        "move the mug to the coffee machine",
    ),
    "dial-turn-v3": ("turn the dial", "rotate the dial", "spin the knob around"),
    "disassemble-v3": (
        "take the ring off the peg", "lift the nut off the peg", "remove the ring from the peg"
    ),
    "door-close-v3": ("close the door", "push the door shut", "shut the safe door"),
    "door-lock-v3": ("lock the door", "turn the lock down", "rotate the knob to lock the door"),
    "door-open-v3": ("open the door", "pull the door open", "swing the safe door open"),
    "door-unlock-v3": ("unlock the door", "turn the lock up", "rotate the knob to unlock the door"),
    "hand-insert-v3": (
        "put the hand into the hole", "insert the gripper into the hole", "reach into the hole in the table"
    ),
    "drawer-close-v3": ("close the drawer", "push the drawer shut", "slide the drawer closed"),
    "drawer-open-v3": ("open the drawer", "pull the drawer open", "slide the drawer out"),
    "faucet-open-v3": ("turn the faucet on", "rotate the faucet handle to open it", "open the tap"),
    "faucet-close-v3": ("turn the faucet off", "rotate the faucet handle to close it", "close the tap"),
    "hammer-v3": (
        "hammer the nail into the wall",
        "pick up the hammer and drive in the nail",
        "use the hammer to hit the nail",
    ),
    "handle-press-side-v3": (
        "press the handle down from the side",
        "push the side handle down",
        "press down on the handle from the side",
    ),
    "handle-press-v3": ("press the handle down", "push down on the handle", "press the handle to the bottom"),
    "handle-pull-side-v3": (
        "pull the handle up from the side", "lift the side handle", "pull up on the handle from the side"
    ),
    "handle-pull-v3": ("pull the handle up", "lift the handle", "pull up on the handle"),
    "lever-pull-v3": ("pull the lever up", "raise the lever", "lift the lever to the top"),
    "pick-place-wall-v3": (
        "pick up the puck and place it at the goal behind the wall",
        "lift the puck over the wall to the target",
        "move the puck past the wall to the goal",
    ),
    "pick-out-of-hole-v3": (
        "pick the peg out of the hole",
        "lift the peg out of the hole",
        "take the peg out of the hole and hold it up",
    ),
    "pick-place-v3": (
        "pick up the puck and place it at the goal",
        "put the puck on the target",
        "move the puck to the goal position",
    ),
    "plate-slide-v3": (
        "slide the plate into the goal",
        "push the plate forward into the net",
        "slide the plate into the cabinet",
    ),
    "plate-slide-side-v3": (
        "slide the plate sideways into the goal",
        "push the plate sideways into the net",
        "slide the plate into the cabinet from the side",
    ),
    "plate-slide-back-v3": (
        "slide the plate back out of the goal",
        "pull the plate back out of the net",
        "slide the plate out of the cabinet",
    ),
    "plate-slide-back-side-v3": (
        "slide the plate sideways out of the goal",
        "pull the plate sideways out of the net",
        "slide the plate out of the cabinet to the side",
    ),
    "peg-insert-side-v3": (
        "insert the peg into the hole from the side",
        "pick up the peg and push it into the hole",
        "put the peg in the side hole",
    ),
    "peg-unplug-side-v3": (
        "unplug the peg from the side", "pull the peg out of the hole", "remove the peg from the side hole"
    ),
    "soccer-v3": (
        "kick the ball into the goal", "push the soccer ball into the net", "score a goal with the ball"
    ),
    "stick-push-v3": (
        "push the bottle with the stick",
        "pick up the stick and push the bottle to the goal",
        "use the stick to push the bottle",
    ),
    "stick-pull-v3": (
        "pull the bottle with the stick",
        "pick up the stick and pull the bottle to the goal",
        "use the stick to pull the bottle",
    ),
    "push-v3": (
        "push the puck to the goal",
        "slide the puck to the target",
        "push the puck across the table to the goal",
    ),
    "push-wall-v3": (
        "push the puck around the wall to the goal",
        "slide the puck past the wall to the target",
        "push the puck to the goal behind the wall",
    ),
    "push-back-v3": (
        "push the puck back to the goal",
        "slide the puck backwards to the target",
        "pull the puck back to the goal",
    ),
    "reach-v3": (
        "reach the goal", "move the gripper to the target", "touch the goal position with the gripper"
    ),
    "reach-wall-v3": (
        "reach the goal behind the wall",
        "move the gripper over the wall to the target",
        "reach past the wall to the goal",
    ),
    "shelf-place-v3": (
        "place the block on the shelf",
        "pick up the cube and put it on the shelf",
        "put the block onto the shelf",
    ),
    "sweep-into-v3": (
        "sweep the puck into the hole",
        "push the puck into the hole",
        "slide the puck into the hole in the table",
    ),
    "sweep-v3": (
        "sweep the puck off the table", "push the puck off the edge", "slide the puck off the table"
    ),
    "window-open-v3": ("open the window", "slide the window open", "push the window open"),
    "window-close-v3": ("close the window", "slide the window shut", "push the window closed"),
}
#: The 50 MetaWorld v3 task names this adapter knows (each with a scripted expert).
TASKS: tuple[str, ...] = tuple(_INSTRUCTIONS)


def _resolve_task(task_name: str) -> str:
    """Exact v3 name, or the same name without the ``-v3`` suffix; else a ConfigError with suggestions."""
    if not isinstance(task_name, str):
        raise ConfigError(
            f"task_name must be a string such as 'pick-place-v3', got {type(task_name).__name__}"
        )
    name = task_name.strip()
    if name in _INSTRUCTIONS:
        return name
    if name + "-v3" in _INSTRUCTIONS:
        return name + "-v3"
    close = difflib.get_close_matches(name, TASKS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"unknown MetaWorld task {task_name!r}.{hint} Valid names (MetaWorld v3): {', '.join(TASKS)}"
    )


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an int in [0, 2**32), got {seed!r} ({type(seed).__name__})")
    if not 0 <= int(seed) < 2**32:
        raise ConfigError(f"seed must be in [0, 2**32) (numpy seeding), got {int(seed)}")
    return int(seed)


def instruction_for(task_name: str, seed: int) -> str:
    """The natural-language instruction of ``task_name`` for an episode seed (template ``seed % 3``)."""
    phrases = _INSTRUCTIONS[_resolve_task(task_name)]
    return phrases[_check_seed(seed) % len(phrases)]


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``int`` (square) or ``(height, width)`` -> (height, width), range-checked."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        h = w = int(image_size)
    elif isinstance(image_size, Sequence) and len(image_size) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in image_size
    ):
        h, w = int(image_size[0]), int(image_size[1])
    else:
        raise ConfigError(f"image_size must be an int or (height, width) ints, got {image_size!r}")
    if not (_MIN_SIDE <= h <= _MAX_SIDE and _MIN_SIDE <= w <= _MAX_SIDE):
        raise ConfigError(
            f"image_size {(h, w)} out of range: each side must be in [{_MIN_SIDE}, {_MAX_SIDE}] pixels"
        )
    return h, w


def depth_buffer_to_metres(raw: np.ndarray, znear: float, zfar: float) -> np.ndarray:
    """MuJoCo's reversed-Z depth buffer (``mjDEPTH_ZEROFAR``) -> metric depth, float32, 0 = nothing hit.

    Args:
        raw: depth read by ``mjr_readPixels`` with ``readDepthMap = mjDEPTH_ZEROFAR`` (0 at the far plane).
        znear: near clip distance in metres (``model.vis.map.znear * model.stat.extent``).
        zfar: far clip distance in metres (``model.vis.map.zfar * model.stat.extent``).

    Returns:
        z along the optical axis in metres; pixels at (or within 0.1 % of) the far plane are 0.
    """
    near, far = np.float32(znear), np.float32(zfar)
    # same maths as mujoco.Renderer for the reversed-Z buffer, kept in float32 like the GL buffer
    c = np.float32(-0.5) * (-(far + near) / (far - near)) - np.float32(0.5)
    dd = np.float32(-0.5) * (-(np.float32(2) * far * near) / (far - near))
    raw = np.asarray(raw, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = dd / (raw + c)
    return np.where((raw > 0) & np.isfinite(z) & (z < 0.999 * far), z, 0.0).astype(np.float32)


class MujocoCameraRenderer:
    """Offscreen RGB + metric depth of cameras of any MuJoCo model, one render per camera.

    CPU fast path: sets ``model.vis.quality.offsamples = 0`` (no MSAA) and ``model.light_castshadow[:] = 0``
    (no shadows) before the GL context exists, and switches off planar reflections (each reflective
    material otherwise renders the scene twice; on llvmpipe this halves the render time). Pixels change
    slightly: aliased edges, no shadows, no mirror image in the table. The model's offscreen buffer
    grows if the image is larger. Call :meth:`close` (or use a ``with`` block) to free the GL context.

    Args:
        model: the ``mujoco.MjModel`` (modified in place as described).
        width, height: image size in pixels.
        max_depth: depths beyond this many metres are stored as 0 (invalid). The skybox is drawn tens
            of metres away and would otherwise appear as a depth; scenes here are a few metres across.
        max_geom: capacity of the visual scene.
    """

    def __init__(
        self, model: Any, width: int, height: int, *, max_depth: float = 10.0, max_geom: int = 2000
    ) -> None:
        import mujoco

        self.mj = mujoco
        self.model = model
        self.width, self.height = int(width), int(height)
        self.max_depth = float(max_depth)
        model.vis.quality.offsamples = 0
        model.light_castshadow[:] = 0
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), self.width)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), self.height)
        try:
            self.gl = mujoco.GLContext(self.width, self.height)
            self.gl.make_current()
            self.ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        except Exception as e:  # mujoco.FatalError, GLFW/EGL errors
            gl = os.environ.get("MUJOCO_GL")
            raise ConfigError(
                f"could not create an offscreen OpenGL context (MUJOCO_GL={gl!r}): {e}. "
                "Set MUJOCO_GL=egl (or osmesa) in the environment before Python first imports mujoco, "
                "and install the EGL/Mesa system packages (scripts/install_system_deps.sh)"
            ) from e
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.ctx)
        self.ctx.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self.scn = mujoco.MjvScene(model, maxgeom=max_geom)
        self.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.opt = mujoco.MjvOption()
        self.cam = mujoco.MjvCamera()
        self.cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self.rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._depth = np.empty((self.height, self.width), np.float32)
        self.znear = float(model.vis.map.znear * model.stat.extent)
        self.zfar = float(model.vis.map.zfar * model.stat.extent)
        self._closed = False

    def render(self, data: Any, cam_id: int, *, depth: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Camera ``cam_id``: RGB uint8 (H, W, 3) row 0 at the top, depth float32 metres (H, W) or None."""
        if self._closed:
            raise DataError("render() on a closed renderer", fix="create a new environment / renderer")
        mj = self.mj
        self.gl.make_current()
        self.cam.fixedcamid = int(cam_id)
        mj.mjv_updateScene(self.model, data, self.opt, None, self.cam, mj.mjtCatBit.mjCAT_ALL, self.scn)
        mj.mjr_render(self.rect, self.scn, self.ctx)
        mj.mjr_readPixels(self._rgb, self._depth if depth else None, self.rect, self.ctx)
        rgb = np.ascontiguousarray(self._rgb[::-1])  # GL rows are bottom-up
        if not depth:
            return rgb, None
        z = depth_buffer_to_metres(self._depth[::-1], self.znear, self.zfar)
        z[z > self.max_depth] = 0.0
        return rgb, z

    def close(self) -> None:
        """Free the GL resources (idempotent)."""
        if not self._closed:
            self._closed = True
            try:
                self.gl.make_current()
                self.ctx.free()
            finally:
                self.gl.free()

    def __enter__(self) -> MujocoCameraRenderer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _camera_map(cameras: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
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
        instruction: the current episode's instruction (set by :meth:`reset`).
        last_obs: the latest observation (from :meth:`reset` or :meth:`step`), None before the first.
    """

    action_dim: int = ACTION_DIM
    fps: int = FPS

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
        self.task_name = _resolve_task(task_name)
        if self.task_name not in env_dict.ALL_V3_ENVIRONMENTS:
            raise ConfigError(
                f"task {self.task_name!r} is not in the installed metaworld; install metaworld==3.1.1"
            )
        self.height, self.width = _image_size(image_size)
        self.camera_sources = _camera_map(cameras)
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
                        f"available cameras: {', '.join(available)}"
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
        self.instruction = _INSTRUCTIONS[self.task_name][0]

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
        seed = _check_seed(seed)
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

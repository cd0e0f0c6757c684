"""Observation and feature key names: the one vocabulary of robot data, environments and the policy.

A recorded frame of a robot episode, an environment's observation and a policy's input are the same flat
``dict`` of LeRobot feature names (plus ``"task"``, the natural-language instruction):

* ``observation.images.<cam>``  (H, W, 3) uint8 RGB, row 0 at the top;
* ``observation.depth.<cam>``   (H, W) float32 metres along the optical axis, 0 = invalid;
* ``observation.cameras.<cam>.K`` (3, 3) intrinsics of the image as given (pixel centres at integers);
* ``observation.cameras.<cam>.T_world_cam`` (4, 4) camera pose, OpenCV axes (x right, y down, z forward);
* ``observation.ee_pose`` (7,) xyz + quaternion wxyz in the world frame (bimanual: ``.left`` / ``.right``);
* ``observation.gripper`` (1,), ``observation.joints`` (J,), ``observation.state`` (D,), ``action`` (A,).

Formats (:mod:`posevla.data.formats.lerobot`), simulators (:mod:`posevla.sim`) and the policy
(:mod:`posevla.policy`) all use these names, so a policy trained on stored episodes sees the same keys at
evaluation and deployment time.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Observation",
    "IMAGE_PREFIX",
    "DEPTH_PREFIX",
    "CAMERA_PREFIX",
    "EE_POSE_KEY",
    "GRIPPER_KEY",
    "JOINTS_KEY",
    "STATE_KEY",
    "TASK_KEY",
    "camera_K_key",
    "camera_T_key",
]

#: One observation: feature name -> array, plus ``"task"`` -> instruction string.
Observation = dict[str, Any]

IMAGE_PREFIX = "observation.images."
DEPTH_PREFIX = "observation.depth."
CAMERA_PREFIX = "observation.cameras."
EE_POSE_KEY = "observation.ee_pose"
GRIPPER_KEY = "observation.gripper"
JOINTS_KEY = "observation.joints"
STATE_KEY = "observation.state"
TASK_KEY = "task"


def camera_K_key(cam: str) -> str:
    """Feature key of camera ``cam``'s per-frame intrinsics."""
    return f"{CAMERA_PREFIX}{cam}.K"


def camera_T_key(cam: str) -> str:
    """Feature key of camera ``cam``'s per-frame pose ``T_world_cam`` (OpenCV axes)."""
    return f"{CAMERA_PREFIX}{cam}.T_world_cam"

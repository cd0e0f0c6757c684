"""Robot episodes in the LeRobot v3 on-disk layout: a validating writer and reader.

Split the way LeRobot's own dataset code is: :mod:`.schema` (the layout, feature kinds, :class:`Episode`,
arrow encoding), :mod:`.cameras` (``meta/cameras.json``), :mod:`.checks` (value checks shared by writer and
reader), :mod:`.png` (frames), :mod:`.video` (MP4 video features, PyAV), :mod:`.write` (:func:`write_lerobot_v3`),
:mod:`.meta` (the ``meta/`` files) and :mod:`.read` (:func:`load_lerobot_v3`, :class:`LeRobotV3Dataset`). The
layout itself is described in :mod:`.schema`; datasets written by LeRobot itself (PNG or video, no camera file,
either task-table layout) load as they are.
"""

from posevla.data.formats.lerobot.cameras import CameraConfig
from posevla.data.formats.lerobot.read import LeRobotV3Dataset, load_lerobot_v3
from posevla.data.formats.lerobot.schema import (
    CAMERA_PREFIX,
    CAMERAS_JSON,
    CODEBASE_VERSION,
    DATA_PATH,
    DEPTH_PREFIX,
    EE_POSE_KEY,
    IMAGE_PREFIX,
    INDEX_COLUMNS,
    MAX_DEPTH_M,
    Episode,
    camera_K_key,
    camera_T_key,
)
from posevla.data.formats.lerobot.write import write_lerobot_v3

__all__ = [
    "CODEBASE_VERSION",
    "CAMERAS_JSON",
    "DATA_PATH",
    "IMAGE_PREFIX",
    "DEPTH_PREFIX",
    "CAMERA_PREFIX",
    "EE_POSE_KEY",
    "INDEX_COLUMNS",
    "MAX_DEPTH_M",
    "Episode",
    "CameraConfig",
    "LeRobotV3Dataset",
    "write_lerobot_v3",
    "load_lerobot_v3",
    "camera_K_key",
    "camera_T_key",
]

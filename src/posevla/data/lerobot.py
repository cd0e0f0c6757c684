"""Writer and reader of robot episodes in the LeRobot v3 on-disk layout (contracts "Robot episodes").

On disk (``codebase_version`` ``"v3.0"``)::

    meta/info.json                             codebase_version, robot_type, fps, totals, chunks_size,
                                               data_path, features {key: {dtype, shape, names}}
    meta/stats.json                            per numeric feature: mean / std / min / max (feature shape)
                                               and count [N]; RGB images: per channel (3, 1, 1) in [0, 1]
    meta/tasks.parquet                         task_index (int64), task (string)
    meta/cameras.json                          the dataset's :class:`CameraConfig` (see below)
    meta/episodes/chunk-000/file-000.parquet   episode_index, tasks (list<string>), length,
                                               data/chunk_index, data/file_index, dataset_from_index,
                                               dataset_to_index, meta/episodes/{chunk,file}_index,
                                               stats/<feature>/{min,max,mean,std,count}
    data/chunk-000/file-000.parquet            index, episode_index, frame_index, timestamp, task_index,
                                               one column per feature
    images/<key>/episode-XXXXXX/frame-XXXXXX.png

Feature keys of an :class:`Episode` (leading dim T = frames):

* ``observation.images.<cam>``  (T, H, W, 3) uint8 RGB -- LeRobot dtype ``"image"``; the parquet column is
  the Hugging Face image struct ``{bytes, path}`` with ``path`` relative to the dataset root and
  ``bytes`` null. The reader also accepts embedded PNG ``bytes`` (what LeRobot itself writes).
* ``observation.depth.<cam>``   (T, H, W) float32 metres, 0 = invalid -- dtype ``"image"``, shape
  ``[H, W, 1]``, stored as a 16-bit grayscale PNG holding ``round(depth / depth_scale)``;
  ``depth_scale`` (metres per unit, default 0.001 = millimetres) lives in ``meta/cameras.json``.
* ``observation.cameras.<cam>.K`` (T, 3, 3) float64 and ``observation.cameras.<cam>.T_world_cam``
  (T, 4, 4) float64 (OpenCV camera axes) -- per-frame camera facts. A dataset may instead give static
  ``K`` / ``T_world_cam`` per camera in its :class:`CameraConfig` (real robots such as AgiBot ship one
  calibration file); the reader then fills these keys by broadcasting, so consumers see one layout.
* ``observation.ee_pose`` (T, 7) float32 xyz + quaternion wxyz in the world frame (bimanual data:
  ``observation.ee_pose.left`` / ``.right``); ``observation.state`` (T, D), ``observation.gripper``
  (T, 1), ``observation.joints`` (T, J), ``action`` (T, A) float32; any other numeric key.

Numeric columns: shape ``[1]`` is a scalar column, others nested fixed-size lists (the reader also
accepts variable lists, as written by Hugging Face ``datasets``). Every feature array has at least two
dims; a per-frame scalar is ``(T, 1)``.

Not supported: MP4 videos are neither written nor decoded (a ``"video"`` feature is listed in
:attr:`LeRobotV3Dataset.info` and its image size is known, but its pixels raise :class:`DataError`);
images must be PNG. ``timestamp`` is ``frame_index / fps``.

Writes are atomic: the dataset is built in a hidden sibling folder and renamed into place, so a crash
leaves either nothing or the previous dataset at ``root``, never a partial one.

Every bad input raises :class:`posevla.errors.DataError` naming the file, the record (episode / frame)
and the field, with a fix.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import struct
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from posevla.errors import DataError
from posevla.geometry import check_K, check_rotation_matrix, make_T

__all__ = [
    "CODEBASE_VERSION",
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

CODEBASE_VERSION = "v3.0"
IMAGE_PREFIX = "observation.images."
DEPTH_PREFIX = "observation.depth."
CAMERA_PREFIX = "observation.cameras."
EE_POSE_KEY = "observation.ee_pose"
#: Columns every data file has besides the features (LeRobot's default features).
INDEX_COLUMNS: tuple[str, ...] = ("index", "episode_index", "frame_index", "timestamp", "task_index")
#: A depth above this is taken as a unit error (millimetres stored as metres, wrong depth_scale).
MAX_DEPTH_M = 100.0
#: Largest allowed |‖q‖ − 1| of a stored end-effector quaternion (float32 data).
QUAT_NORM_TOL = 1e-3

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
IMAGE_PATH = "images/{image_key}/episode-{episode_index:06d}/frame-{frame_index:06d}.png"
CHUNKS_SIZE = 1000
CAMERAS_JSON = "meta/cameras.json"
_NUMERIC_DTYPES = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_CAM_RE = re.compile(r"^observation\.cameras\.(.+)\.(K|T_world_cam)$")


def camera_K_key(cam: str) -> str:
    """Feature key of camera ``cam``'s per-frame intrinsics."""
    return f"{CAMERA_PREFIX}{cam}.K"


def camera_T_key(cam: str) -> str:
    """Feature key of camera ``cam``'s per-frame pose ``T_world_cam`` (OpenCV axes)."""
    return f"{CAMERA_PREFIX}{cam}.T_world_cam"


# ----------------------------------------------------------------------------------------------
# public records
# ----------------------------------------------------------------------------------------------


@dataclass
class Episode:
    """One demonstration: its instruction and per-frame arrays (every array has leading dim T).

    See the module docstring for the keys and their shapes / dtypes / units.
    """

    task: str  # natural-language instruction
    features: dict[str, np.ndarray]

    @property
    def num_frames(self) -> int:
        """T, the number of frames (0 for an episode without features)."""
        return int(next(iter(self.features.values())).shape[0]) if self.features else 0


def _nested_floats(a: np.ndarray) -> tuple:
    return tuple(tuple(float(x) for x in row) for row in a)


@dataclass(frozen=True)
class CameraConfig:
    """Per-dataset robot / camera facts that are not stored per frame (``meta/cameras.json``).

    Args:
        cameras: camera names, in view order (``observation.images.<cam>`` must exist for each).
        tcp_offset: the tool-centre point in the end-effector (flange) frame, either 3 numbers
            (a translation, e.g. AgiBot's gripper ``(0, 0, 0.227)`` m along the flange z) or 16 numbers
            (a row-major 4x4 rigid transform ``T_ee_tcp``).
        depth_scale: metres per unit of the 16-bit depth PNGs (0.001 = millimetres; 0 = invalid).
        gripper_open_positive: True when larger ``observation.gripper`` values mean more open.
        K: static intrinsics ``{cam: 3x3}`` for cameras without a per-frame K feature.
        T_world_cam: static camera poses ``{cam: 4x4}`` (OpenCV axes) for cameras without a per-frame
            pose feature (fixed cameras). A camera may have a static or a per-frame value, not both.
    """

    cameras: tuple[str, ...]
    tcp_offset: tuple[float, ...] = (0.0, 0.0, 0.0)
    depth_scale: float = 0.001
    gripper_open_positive: bool = True
    K: Mapping[str, Any] = field(default_factory=dict)
    T_world_cam: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_camera_config_values(
            self.cameras,
            self.tcp_offset,
            self.depth_scale,
            self.gripper_open_positive,
            self.K,
            self.T_world_cam,
            file=None,
        )
        object.__setattr__(self, "cameras", tuple(str(c) for c in self.cameras))
        object.__setattr__(self, "tcp_offset", tuple(float(x) for x in self.tcp_offset))
        object.__setattr__(self, "depth_scale", float(self.depth_scale))
        object.__setattr__(self, "gripper_open_positive", bool(self.gripper_open_positive))
        object.__setattr__(
            self, "K", {str(c): _nested_floats(np.asarray(v, np.float64)) for c, v in self.K.items()}
        )
        object.__setattr__(
            self,
            "T_world_cam",
            {str(c): _nested_floats(np.asarray(v, np.float64)) for c, v in self.T_world_cam.items()},
        )

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def T_ee_tcp(self) -> np.ndarray:
        """The TCP in the end-effector frame as a (4, 4) float64 transform."""
        if len(self.tcp_offset) == 3:
            return make_T(np.eye(3), np.asarray(self.tcp_offset, np.float64))
        return np.asarray(self.tcp_offset, np.float64).reshape(4, 4)

    def static_K(self, cam: str) -> np.ndarray | None:
        """Camera ``cam``'s static (3, 3) intrinsics, or None when it has a per-frame feature."""
        return None if cam not in self.K else np.asarray(self.K[cam], np.float64)

    def static_T_world_cam(self, cam: str) -> np.ndarray | None:
        """Camera ``cam``'s static (4, 4) pose, or None when it has a per-frame feature."""
        return None if cam not in self.T_world_cam else np.asarray(self.T_world_cam[cam], np.float64)

    def to_dict(self) -> dict[str, Any]:
        """The json form written to ``meta/cameras.json``."""
        return {
            "format": "posevla.camera_config",
            "version": 1,
            "cameras": list(self.cameras),
            "tcp_offset": list(self.tcp_offset),
            "depth_scale": self.depth_scale,
            "depth_encoding": "uint16 PNG, metres = value * depth_scale, 0 = invalid",
            "gripper_open_positive": self.gripper_open_positive,
            "K": {c: [list(r) for r in v] for c, v in self.K.items()},
            "T_world_cam": {c: [list(r) for r in v] for c, v in self.T_world_cam.items()},
        }

    @classmethod
    def from_dict(cls, d: Any, *, file: str | None = None) -> CameraConfig:
        """Validate and build a config from its json form (``file`` names the source in errors)."""
        if not isinstance(d, dict):
            raise DataError(
                "camera config must be a json object",
                file=file,
                fix="store {cameras, tcp_offset, depth_scale, ...} as a json object",
            )
        known = {
            "format",
            "version",
            "cameras",
            "tcp_offset",
            "depth_scale",
            "depth_encoding",
            "gripper_open_positive",
            "K",
            "T_world_cam",
        }
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(
                f"unknown key(s) {unknown} in the camera config",
                file=file,
                field=unknown[0],
                fix=f"remove them or fix the spelling; valid keys: {sorted(known)}",
            )
        if "cameras" not in d:
            raise DataError(
                "missing key 'cameras'",
                file=file,
                field="cameras",
                fix='list the camera names, e.g. "cameras": ["head"]',
            )
        args = dict(
            cameras=d["cameras"],
            tcp_offset=d.get("tcp_offset", (0.0, 0.0, 0.0)),
            depth_scale=d.get("depth_scale", 0.001),
            gripper_open_positive=d.get("gripper_open_positive", True),
            K=d.get("K") or {},
            T_world_cam=d.get("T_world_cam") or {},
        )
        _check_camera_config_values(*args.values(), file=file)
        return cls(**args)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as json to ``path``."""
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> CameraConfig:
        """Read a config written by :meth:`save` (or by hand, e.g. next to a real-robot dataset)."""
        p = Path(path)
        return cls.from_dict(_read_json(p, "camera config"), file=str(p))


def _check_camera_config_values(
    cameras: Any,
    tcp_offset: Any,
    depth_scale: Any,
    gripper_open_positive: Any,
    K: Any,
    T_world_cam: Any,
    *,
    file: str | None,
) -> None:
    def bad(msg: str, fld: str, fix: str) -> DataError:
        return DataError(msg, file=file, field=fld, fix=fix)

    if isinstance(cameras, str) or not isinstance(cameras, (list, tuple)) or not cameras:
        raise bad(
            f"'cameras' must be a non-empty list of names, got {cameras!r}",
            "cameras",
            "list the camera names in view order, e.g. ['head', 'wrist']",
        )
    for c in cameras:
        if not isinstance(c, str) or not _KEY_RE.match(c) or "." in c:
            raise bad(
                f"camera name {c!r} must be a non-empty string of letters, digits, '_' or '-'",
                "cameras",
                "rename the camera (it becomes part of feature keys and folder names)",
            )
    if len(set(cameras)) != len(cameras):
        raise bad(f"duplicate camera names in {list(cameras)}", "cameras", "give every camera a unique name")
    try:
        tcp = np.asarray(tcp_offset, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise bad(
            f"'tcp_offset' must be numbers, got {tcp_offset!r}",
            "tcp_offset",
            "give 3 numbers (translation in the flange frame, metres) or 16 (row-major T_ee_tcp)",
        ) from None
    if tcp.size not in (3, 16) or not np.all(np.isfinite(tcp)):
        raise bad(
            f"'tcp_offset' must hold 3 or 16 finite numbers, got {tcp.size}: {tcp.tolist()}",
            "tcp_offset",
            "give 3 numbers (translation in the flange frame, metres) or 16 (row-major T_ee_tcp)",
        )
    if tcp.size == 16:
        T = tcp.reshape(4, 4)
        if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9):
            raise bad(
                f"'tcp_offset' as 4x4 must have last row [0,0,0,1], got {T[3].tolist()}",
                "tcp_offset",
                "store T_ee_tcp row-major as a rigid transform",
            )
        check_rotation_matrix(T[:3, :3], what="tcp_offset", file=file)
    if (
        isinstance(depth_scale, bool)
        or not isinstance(depth_scale, (int, float, np.floating))
        or not math.isfinite(float(depth_scale))
        or float(depth_scale) <= 0
    ):
        raise bad(
            f"'depth_scale' must be a positive number (metres per PNG unit), got {depth_scale!r}",
            "depth_scale",
            "use 0.001 for millimetre depth PNGs",
        )
    if not isinstance(gripper_open_positive, (bool, np.bool_)):
        raise bad(
            f"'gripper_open_positive' must be true or false, got {gripper_open_positive!r}",
            "gripper_open_positive",
            "store a json boolean",
        )
    for name, table, shape in (("K", K, (3, 3)), ("T_world_cam", T_world_cam, (4, 4))):
        if not isinstance(table, Mapping):
            raise bad(
                f"'{name}' must map camera names to {shape[0]}x{shape[1]} matrices",
                name,
                f"store '{name}' as {{camera: [[...], ...]}}",
            )
        for cam, value in table.items():
            if cam not in cameras:
                raise bad(
                    f"'{name}' given for camera {cam!r} which is not in cameras {list(cameras)}",
                    name,
                    "add the camera to 'cameras' or remove the entry",
                )
            try:
                a = np.asarray(value, np.float64)
            except (TypeError, ValueError):
                a = np.zeros(0)
            if a.shape != shape or not np.all(np.isfinite(a)):
                raise bad(
                    f"'{name}' of camera {cam!r} must be a finite {shape[0]}x{shape[1]} matrix",
                    name,
                    f"store {name} as a nested list of shape {list(shape)}",
                )
            if name == "T_world_cam":
                if not np.allclose(a[3], [0, 0, 0, 1], atol=1e-9):
                    raise bad(
                        f"T_world_cam of camera {cam!r} must have last row [0,0,0,1], got {a[3].tolist()}",
                        name,
                        "store the camera pose as a 4x4 rigid transform (OpenCV axes)",
                    )
                check_rotation_matrix(a[:3, :3], what=f"T_world_cam[{cam}]", file=file)
            else:
                check_K(a, 1 << 30, 1 << 30, file=file, record=f"camera {cam}", field="K")


# ----------------------------------------------------------------------------------------------
# shared validation
# ----------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(
            f"{what} not found",
            file=str(path),
            fix="check the dataset root, or write the dataset with write_lerobot_v3",
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"invalid json: {e.msg} at line {e.lineno} column {e.colno}",
            file=str(path),
            fix="the file is corrupt or truncated; rewrite the dataset",
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"cannot read {what}: {e}", file=str(path), fix="check the file's permissions"
        ) from None


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return None if idx.size == 0 else int(idx[0])


def _image_hw(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(H, W) of an image / depth / video feature spec (``[H, W, C]``, or ``[C, H, W]`` by its names)."""
    shape = list(spec["shape"])
    names = spec.get("names") or []
    if len(shape) == 3 and list(names)[:1] in (["channels"], ["channel"], ["c"]):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def _feature_kind(key: str, spec: Mapping[str, Any]) -> str:
    dtype = spec.get("dtype")
    if dtype == "video":
        return "video"
    if dtype == "image":
        return "depth" if key.startswith(DEPTH_PREFIX) else "image"
    if dtype in _NUMERIC_DTYPES:
        return "numeric"
    return "other"


def _check_semantics(
    key: str,
    arr: np.ndarray,
    image_hw: Mapping[str, tuple[int, int]],
    *,
    file_of: Callable[[int], str | None],
    record_of: Callable[[int], str],
) -> None:
    """Check the meaning of one numeric feature, arr (N, *shape); raise on the first bad frame."""
    n = arr.shape[0]
    if n == 0:
        return
    if arr.dtype.kind == "f":
        bad = _first(~np.isfinite(arr.reshape(n, -1)).all(axis=1))
        if bad is not None:
            raise DataError(
                f"'{key}' contains NaN or inf",
                file=file_of(bad),
                record=record_of(bad),
                field=key,
                fix="repair or drop the frames with non-finite values before writing",
            )
    if key == EE_POSE_KEY or key.startswith(EE_POSE_KEY + "."):
        if arr.shape[1:] != (7,):
            raise DataError(
                f"'{key}' must have shape (T, 7) = xyz + quaternion wxyz, got {arr.shape}",
                file=file_of(0),
                record=record_of(0),
                field=key,
                fix="store the end-effector pose as [x, y, z, qw, qx, qy, qz] in the world frame",
            )
        norm = np.linalg.norm(arr[:, 3:].astype(np.float64), axis=1)
        bad = _first(np.abs(norm - 1.0) > QUAT_NORM_TOL)
        if bad is not None:
            raise DataError(
                f"'{key}' quaternion is not unit length: |q| = {norm[bad]:.6g} "
                f"(wxyz {arr[bad, 3:].tolist()})",
                file=file_of(bad),
                record=record_of(bad),
                field=key,
                fix="normalise the quaternion and check its order is w, x, y, z (scalar first)",
            )
    m = _CAM_RE.match(key)
    if not m:
        return
    cam, what = m.groups()
    if what == "K":
        if arr.shape[1:] != (3, 3):
            raise DataError(
                f"'{key}' must have shape (T, 3, 3), got {arr.shape}",
                file=file_of(0),
                record=record_of(0),
                field=key,
                fix="store one 3x3 intrinsic matrix per frame",
            )
        if cam not in image_hw:
            raise DataError(
                f"'{key}' has no image feature '{IMAGE_PREFIX}{cam}' to check it against",
                file=file_of(0),
                record=record_of(0),
                field=key,
                fix=f"add the images of camera {cam!r} or drop its K feature",
            )
        h, w = image_hw[cam]
        _, first_idx = np.unique(arr.reshape(n, 9), axis=0, return_index=True)
        for i in sorted(int(j) for j in first_idx):  # each distinct K once, in frame order
            check_K(arr[i].astype(np.float64), w, h, file=file_of(i), record=record_of(i), field=key)
    else:
        if arr.shape[1:] != (4, 4):
            raise DataError(
                f"'{key}' must have shape (T, 4, 4), got {arr.shape}",
                file=file_of(0),
                record=record_of(0),
                field=key,
                fix="store one 4x4 camera pose per frame",
            )
        a = arr.astype(np.float64)
        bad = _first(np.abs(a[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1) > 1e-6)
        if bad is not None:
            raise DataError(
                f"'{key}' last row must be [0, 0, 0, 1], got {a[bad, 3].tolist()}",
                file=file_of(bad),
                record=record_of(bad),
                field=key,
                fix="store T_world_cam as a 4x4 homogeneous rigid transform (OpenCV camera axes)",
            )
        R = a[:, :3, :3]
        ortho = np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)).max(axis=(1, 2))
        bad = _first((ortho > 1e-4) | (np.abs(np.linalg.det(R) - 1.0) > 1e-4))
        if bad is not None:
            check_rotation_matrix(R[bad], what=key, file=file_of(bad), record=record_of(bad))


def _check_depth_values(
    depth: np.ndarray, key: str, scale: float, *, file: str | None, record_of: Callable[[int], str]
) -> None:
    """depth: (N, H, W) metres. Finite, >= 0, below MAX_DEPTH_M and representable as uint16 * scale."""
    n = depth.shape[0]
    flat = depth.reshape(n, -1)
    bad = _first(~np.isfinite(flat).all(axis=1) | (flat < 0).any(axis=1))
    if bad is not None:
        raise DataError(
            f"'{key}' has NaN, inf or negative depth",
            file=file,
            record=record_of(bad),
            field=key,
            fix="store invalid depth (holes, far plane, sky) as 0",
        )
    peak = flat.max(axis=1)
    bad = _first(peak > MAX_DEPTH_M)
    if bad is not None:
        raise DataError(
            f"'{key}' has depth {float(peak[bad]):g} m > {MAX_DEPTH_M:g} m: wrong units "
            "(millimetres as metres?) "
            f"or a wrong depth_scale ({scale:g} m per PNG unit)",
            file=file,
            record=record_of(bad),
            field=key,
            fix="store depth in metres (0 = invalid) and depth_scale in metres per PNG unit (0.001 for mm)",
        )
    limit = 65535 * scale
    bad = _first(peak > limit + 0.5 * scale)
    if bad is not None:
        raise DataError(
            f"'{key}' has depth {float(peak[bad]):g} m, more than a 16-bit PNG holds at "
            f"depth_scale {scale:g} "
            f"({limit:g} m)",
            file=file,
            record=record_of(bad),
            field=key,
            fix="zero depth beyond the sensor's range, or raise CameraConfig.depth_scale",
        )


# ----------------------------------------------------------------------------------------------
# arrow encoding
# ----------------------------------------------------------------------------------------------


def _to_arrow(arr: np.ndarray) -> pa.Array:
    """(N, *shape) -> a scalar column for shape (1,), else nested fixed-size lists."""
    flat = pa.array(np.ascontiguousarray(arr).reshape(-1))
    shape = arr.shape[1:]
    if tuple(shape) == (1,):
        return flat
    out: pa.Array = flat
    for d in reversed(shape):
        out = pa.FixedSizeListArray.from_arrays(out, int(d))
    return out


def _from_arrow(
    col: pa.ChunkedArray | pa.Array, shape: Sequence[int], dtype: str, *, file: str, key: str
) -> np.ndarray:
    """A numeric column -> (N, *shape) array of ``dtype``; checks nulls, list lengths and value types."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    fix = f"rewrite column '{key}' with shape {list(shape)} and dtype {dtype} per row"
    if arr.null_count:
        raise DataError(f"column '{key}' has {arr.null_count} null rows", file=file, field=key, fix=fix)
    dims = list(shape)
    level = 0
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        if level >= len(dims):
            break
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        want = dims[level] if level < len(dims) else None
        if want is None or not np.all(lengths == want):
            got = sorted(set(lengths.tolist()))[:5]
            raise DataError(
                f"column '{key}' has list length(s) {got} at nesting level {level}, expected {want} "
                f"(feature shape {list(shape)})",
                file=file,
                field=key,
                fix=fix,
            )
        arr = arr.flatten()
        if arr.null_count:
            raise DataError(f"column '{key}' has null values inside its lists", file=file, field=key, fix=fix)
        level += 1
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type)):
        raise DataError(
            f"column '{key}' holds {arr.type}, expected numbers ({dtype})", file=file, field=key, fix=fix
        )
    values = arr.to_numpy(zero_copy_only=False)
    size = int(np.prod(dims)) if dims else 1
    if values.size != n * size:
        raise DataError(
            f"column '{key}' holds {values.size // max(n, 1)} values per row, feature shape {list(shape)} "
            f"needs {size}",
            file=file,
            field=key,
            fix=fix,
        )
    return values.reshape((n, *dims)).astype(np.dtype(dtype), copy=False)


# ----------------------------------------------------------------------------------------------
# PNG
# ----------------------------------------------------------------------------------------------


def _png_check(
    head: bytes, tail: bytes, *, h: int, w: int, depth: bool, file: str, record: str, key: str
) -> None:
    """Header (size, bit depth, colour type) and IEND trailer of a PNG, without decoding it."""
    fix = "the image is missing, truncated or corrupt; rewrite the dataset"
    if not head.startswith(_PNG_SIG) or len(head) < 26 or head[12:16] != b"IHDR":
        raise DataError(
            "not a PNG file (bad signature or header)", file=file, record=record, field=key, fix=fix
        )
    pw, ph, bd, ct = struct.unpack(">IIBB", head[16:26])
    want_bd, want_ct = (16, 0) if depth else (8, 2)
    if (pw, ph) != (w, h):
        raise DataError(
            f"PNG is {pw}x{ph} but feature '{key}' says {w}x{h}",
            file=file,
            record=record,
            field=key,
            fix="fix the feature shape in meta/info.json or restore the original image",
        )
    if (bd, ct) != (want_bd, want_ct):
        kind = "16-bit grayscale" if depth else "8-bit RGB"
        raise DataError(
            f"expected a {kind} PNG, got bit depth {bd} colour type {ct}",
            file=file,
            record=record,
            field=key,
            fix=f"store '{key}' as {kind} PNG",
        )
    if not tail.endswith(_PNG_IEND):
        raise DataError(
            "PNG is truncated (no IEND chunk at the end)", file=file, record=record, field=key, fix=fix
        )


def _encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _decode_png(data: bytes | Path, *, depth: bool, file: str, record: str, key: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()
            arr = np.asarray(img)
            mode = img.mode
    except FileNotFoundError:
        raise DataError(
            "image file not found",
            file=file,
            record=record,
            field=key,
            fix="restore the file or rewrite the dataset",
        ) from None
    except (OSError, SyntaxError, ValueError, zlib.error, struct.error) as e:
        raise DataError(
            f"cannot decode PNG ({e})",
            file=file,
            record=record,
            field=key,
            fix="the image is truncated or corrupt; rewrite the dataset",
        ) from None
    if depth:
        if arr.ndim != 2 or arr.dtype.kind not in "ui" or mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise DataError(
                f"expected a 16-bit grayscale depth PNG, got mode {mode} {arr.dtype} {arr.shape}",
                file=file,
                record=record,
                field=key,
                fix="store depth as a uint16 PNG",
            )
        return arr
    if mode != "RGB" or arr.dtype != np.uint8 or arr.ndim != 3:
        raise DataError(
            f"expected an 8-bit RGB PNG, got mode {mode}",
            file=file,
            record=record,
            field=key,
            fix="convert the image to 8-bit RGB",
        )
    return arr


# ----------------------------------------------------------------------------------------------
# writer
# ----------------------------------------------------------------------------------------------


def _check_key(key: Any, record: str) -> None:
    if not isinstance(key, str) or not _KEY_RE.match(key) or key in INDEX_COLUMNS:
        raise DataError(
            f"bad feature key {key!r}",
            record=record,
            field=str(key),
            fix=f"use letters, digits, '.', '_' or '-' and none of the reserved names {INDEX_COLUMNS}",
        )


def _validate_episodes(episodes: Sequence[Episode], cfg: CameraConfig) -> dict[str, dict[str, Any]]:
    """Check the in-memory episodes and return the info.json feature specs (from episode 0)."""
    if len(episodes) == 0:
        raise DataError(
            "no episodes to write: an empty dataset is not valid",
            field="episodes",
            fix="pass at least one Episode",
        )
    specs: dict[str, dict[str, Any]] = {}
    for e, ep in enumerate(episodes):
        rec = f"episode {e}"
        if not isinstance(ep, Episode):
            raise DataError(
                f"expected an Episode, got {type(ep).__name__}",
                record=rec,
                field="episodes",
                fix="wrap the arrays in posevla.data.lerobot.Episode(task, features)",
            )
        if not isinstance(ep.task, str) or not ep.task.strip():
            raise DataError(
                "the task instruction must be a non-empty string",
                record=rec,
                field="task",
                fix="give every episode its natural-language instruction",
            )
        if not isinstance(ep.features, dict) or not ep.features:
            raise DataError(
                "an episode needs at least one feature",
                record=rec,
                field="features",
                fix="pass a dict of (T, ...) arrays",
            )
        lengths: list[int] = []
        for key, arr in ep.features.items():
            _check_key(key, rec)
            if not isinstance(arr, np.ndarray):
                raise DataError(
                    f"feature '{key}' must be a numpy array, got {type(arr).__name__}",
                    record=rec,
                    field=key,
                    fix="convert it with np.asarray",
                )
            if arr.ndim < 2:
                raise DataError(
                    f"feature '{key}' has shape {arr.shape}; every feature needs a leading frame dim and "
                    "at least one more",
                    record=rec,
                    field=key,
                    fix="reshape per-frame scalars to (T, 1)",
                )
            lengths.append(arr.shape[0])
        T = max(set(lengths), key=lengths.count)  # the majority's frame count
        odd = next((k for k, n in zip(ep.features, lengths, strict=True) if n != T or n == 0), None)
        if odd is not None:
            got = {k: v.shape[0] for k, v in ep.features.items()}
            raise DataError(
                f"feature '{odd}' has {ep.features[odd].shape[0]} frames, the others {T} "
                f"(T per feature: {got})",
                record=rec,
                field=odd,
                fix="give every feature the same leading dim T >= 1",
            )
        if e == 0:
            for key, arr in ep.features.items():
                specs[key] = _spec_of(key, arr, rec)
        elif set(ep.features) != set(specs):
            diff = sorted(set(ep.features) ^ set(specs))
            raise DataError(
                f"episode has different feature keys than episode 0 (differ: {diff})",
                record=rec,
                field=diff[0],
                fix="give every episode the same feature keys",
            )
        for key, arr in ep.features.items():
            got, want = _spec_of(key, arr, rec), specs[key]
            if (got["dtype"], got["shape"]) != (want["dtype"], want["shape"]):
                raise DataError(
                    f"feature '{key}' is {got['dtype']} {got['shape']}, episode 0 has {want['dtype']} "
                    f"{want['shape']}",
                    record=rec,
                    field=key,
                    fix="give every episode the same per-frame shape and dtype",
                )
    for cam in cfg.cameras:
        if IMAGE_PREFIX + cam not in specs:
            raise DataError(
                f"camera {cam!r} of the camera config has no feature '{IMAGE_PREFIX}{cam}'",
                field=IMAGE_PREFIX + cam,
                fix="add its images or remove it from CameraConfig.cameras",
            )
        for key, static in (
            (camera_K_key(cam), cfg.static_K(cam)),
            (camera_T_key(cam), cfg.static_T_world_cam(cam)),
        ):
            if (key in specs) == (static is not None):
                raise DataError(
                    f"camera {cam!r} needs exactly one of a per-frame feature '{key}' and a static value in "
                    "the camera "
                    f"config ({'both' if static is not None else 'neither'} given)",
                    field=key,
                    fix="store per-frame matrices in the episode features or a static one in CameraConfig",
                )
    image_hw = {k[len(IMAGE_PREFIX) :]: _image_hw(s) for k, s in specs.items() if k.startswith(IMAGE_PREFIX)}
    for cam, K in cfg.K.items():
        h, w = image_hw[cam]
        check_K(np.asarray(K), w, h, record=f"camera {cam}", field="K")
    for e, ep in enumerate(episodes):

        def rec_of(f: int, e: int = e) -> str:
            return f"episode {e} frame {f}"

        for key, arr in ep.features.items():
            kind = _feature_kind(key, specs[key])
            if kind == "numeric":
                _check_semantics(key, arr, image_hw, file_of=lambda _: None, record_of=rec_of)
            elif kind == "depth":
                _check_depth_values(arr, key, cfg.depth_scale, file=None, record_of=rec_of)
    return specs


def _spec_of(key: str, arr: np.ndarray, rec: str) -> dict[str, Any]:
    if key.startswith(IMAGE_PREFIX):
        if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
            raise DataError(
                f"image feature '{key}' must be (T, H, W, 3) uint8, got {arr.shape} {arr.dtype}",
                record=rec,
                field=key,
                fix="store RGB frames as uint8, row 0 at the top",
            )
        return {"dtype": "image", "shape": list(arr.shape[1:]), "names": ["height", "width", "channels"]}
    if key.startswith(DEPTH_PREFIX):
        if arr.ndim != 3 or arr.dtype != np.float32:
            raise DataError(
                f"depth feature '{key}' must be (T, H, W) float32 metres, got {arr.shape} {arr.dtype}",
                record=rec,
                field=key,
                fix="store depth as float32 metres, 0 = invalid",
            )
        return {
            "dtype": "image",
            "shape": [*arr.shape[1:], 1],
            "names": ["height", "width", "channels"],
            "info": {
                "encoding": "uint16 PNG",
                "unit": "metres = value * depth_scale (meta/cameras.json)",
                "invalid": 0,
            },
        }
    if str(arr.dtype) not in _NUMERIC_DTYPES:
        raise DataError(
            f"feature '{key}' has dtype {arr.dtype}; only numeric features are stored",
            record=rec,
            field=key,
            fix=f"convert it to one of {sorted(_NUMERIC_DTYPES)}",
        )
    names = (
        ["x", "y", "z", "qw", "qx", "qy", "qz"]
        if key == EE_POSE_KEY or key.startswith(EE_POSE_KEY + ".")
        else None
    )
    return {"dtype": str(arr.dtype), "shape": list(arr.shape[1:]), "names": names}


class _Stats:
    """Running per-feature statistics (numeric: feature shape; RGB: per channel in [0, 1])."""

    def __init__(self) -> None:
        self.acc: dict[str, list[Any]] = {}

    def add(self, key: str, x: np.ndarray) -> None:
        """x: (N, *shape) numeric, or (N, H, W, 3) uint8 for an RGB feature."""
        if key.startswith(IMAGE_PREFIX) and x.dtype == np.uint8:
            total, sq = np.zeros(3), np.zeros(3)
            for a in range(0, x.shape[0], 16):  # bounded float64 copies
                c = x[a : a + 16].reshape(-1, 3).astype(np.float64) / 255.0
                total += c.sum(0)
                sq += (c * c).sum(0)
            flat = x.reshape(-1, 3)
            s = [total, sq, flat.min(0) / 255.0, flat.max(0) / 255.0, flat.shape[0]]
        else:
            x = x.astype(np.float64)
            s = [x.sum(0), (x * x).sum(0), x.min(0), x.max(0), x.shape[0]]
        self._merge(key, s)

    def merge(self, other: _Stats) -> None:
        for key, s in other.acc.items():
            self._merge(key, s)

    def _merge(self, key: str, s: list[Any]) -> None:
        if key not in self.acc:
            self.acc[key] = s
        else:
            a = self.acc[key]
            self.acc[key] = [
                a[0] + s[0],
                a[1] + s[1],
                np.minimum(a[2], s[2]),
                np.maximum(a[3], s[3]),
                a[4] + s[4],
            ]

    def result(self, key: str, frames: int) -> dict[str, np.ndarray]:
        total, sq, lo, hi, n = self.acc[key]
        mean = total / n
        std = np.sqrt(np.maximum(sq / n - mean * mean, 0.0))
        out = {"mean": mean, "std": std, "min": lo, "max": hi}
        if key.startswith(IMAGE_PREFIX):
            out = {k: v.reshape(3, 1, 1) for k, v in out.items()}
        out["count"] = np.array([frames], np.int64)
        return out


def write_lerobot_v3(
    root: str | os.PathLike,
    episodes: Sequence[Episode],
    *,
    fps: int,
    robot_type: str,
    camera_config: CameraConfig,
    overwrite: bool = False,
) -> Path:
    """Write ``episodes`` as a LeRobot v3 dataset at ``root`` (atomically) and return ``root``.

    Everything is validated first (same checks as :func:`load_lerobot_v3`); nothing is written on
    error. ``overwrite`` replaces an existing dataset at ``root`` (otherwise that is an error).
    """
    root = Path(root)
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps <= 0:
        raise DataError(
            f"fps must be a positive integer, got {fps!r}", field="fps", fix="pass the recording rate"
        )
    if not isinstance(robot_type, str) or not robot_type:
        raise DataError(
            f"robot_type must be a non-empty string, got {robot_type!r}",
            field="robot_type",
            fix="name the robot, e.g. 'sawyer'",
        )
    if not isinstance(camera_config, CameraConfig):
        raise DataError(
            "camera_config must be a CameraConfig",
            field="camera_config",
            fix="build posevla.data.lerobot.CameraConfig(cameras=(...))",
        )
    if root.exists() and not overwrite and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            "the target exists and is not empty",
            file=str(root),
            fix="choose a new folder or pass overwrite=True",
        )
    specs = _validate_episodes(episodes, camera_config)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _write_tree(tmp, episodes, specs, int(fps), robot_type, camera_config)
        if root.exists():
            trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, trash)
            try:
                os.replace(tmp, root)
            except OSError:
                os.replace(trash, root)  # put the previous dataset back
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_tree(
    out: Path,
    episodes: Sequence[Episode],
    specs: dict[str, dict[str, Any]],
    fps: int,
    robot_type: str,
    cfg: CameraConfig,
) -> None:
    (out / "meta").mkdir(parents=True)
    task_ids: dict[str, int] = {}
    for ep in episodes:
        task_ids.setdefault(ep.task, len(task_ids))
    total = sum(ep.num_frames for ep in episodes)
    stats, ep_stats = _Stats(), []
    columns: dict[str, list[pa.Array]] = {k: [] for k in (*INDEX_COLUMNS, *specs)}
    ep_rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "episode_index",
            "tasks",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
            "meta/episodes/chunk_index",
            "meta/episodes/file_index",
        )
    }
    start = 0
    for e, ep in enumerate(episodes):
        T = ep.num_frames
        frame = np.arange(T, dtype=np.int64)
        index_cols = {
            "index": start + frame,
            "episode_index": np.full(T, e, np.int64),
            "frame_index": frame,
            "timestamp": (frame / fps).astype(np.float32),
            "task_index": np.full(T, task_ids[ep.task], np.int64),
        }
        per_ep = _Stats()
        for k, v in index_cols.items():
            columns[k].append(pa.array(v))
            per_ep.add(k, v[:, None])
        for key, spec in specs.items():
            arr = ep.features[key]
            if spec["dtype"] != "image":
                columns[key].append(_to_arrow(arr))
                per_ep.add(key, arr)
                continue
            paths = []
            is_depth = key.startswith(DEPTH_PREFIX)
            if not is_depth:
                per_ep.add(key, arr)
            for f in range(T):
                rel = IMAGE_PATH.format(image_key=key, episode_index=e, frame_index=f)
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                img = np.round(arr[f] / cfg.depth_scale).astype(np.uint16) if is_depth else arr[f]
                (out / rel).write_bytes(_encode_png(img))
                paths.append(rel)
            columns[key].append(
                pa.StructArray.from_arrays(
                    [pa.array([None] * T, pa.binary()), pa.array(paths, pa.string())], names=["bytes", "path"]
                )
            )
        ep_stats.append({k: per_ep.result(k, T) for k in per_ep.acc})
        stats.merge(per_ep)
        for k, v in (
            ("episode_index", e),
            ("tasks", [ep.task]),
            ("length", T),
            ("data/chunk_index", 0),
            ("data/file_index", 0),
            ("dataset_from_index", start),
            ("dataset_to_index", start + T),
            ("meta/episodes/chunk_index", 0),
            ("meta/episodes/file_index", 0),
        ):
            ep_rows[k].append(v)
        start += T

    data_file = out / DATA_PATH.format(chunk_index=0, file_index=0)
    data_file.parent.mkdir(parents=True)
    table = pa.table({k: pa.concat_arrays(v) for k, v in columns.items()})
    pq.write_table(table, data_file, compression="snappy")

    ep_table = {
        k: pa.array(v, pa.list_(pa.string()) if k == "tasks" else pa.int64()) for k, v in ep_rows.items()
    }
    for key in ep_stats[0]:
        for stat in ("min", "max", "mean", "std", "count"):
            ep_table[f"stats/{key}/{stat}"] = _to_arrow(np.stack([s[key][stat] for s in ep_stats]))
    ep_file = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_file.parent.mkdir(parents=True)
    pq.write_table(pa.table(ep_table), ep_file, compression="snappy")

    tasks = sorted(task_ids, key=task_ids.__getitem__)
    pq.write_table(
        pa.table(
            {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())}
        ),
        out / "meta" / "tasks.parquet",
    )
    stats_json = {k: {s: v.tolist() for s, v in stats.result(k, total).items()} for k in stats.acc}
    (out / "meta" / "stats.json").write_text(json.dumps(stats_json, indent=1) + "\n", encoding="utf-8")
    cfg.save(out / CAMERAS_JSON)
    features = dict(specs)
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        features[k] = {"dtype": "int64", "shape": [1], "names": None}
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episodes),
        "total_frames": total,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": features,
    }
    # info.json last: a folder without it never loads.
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# reader
# ----------------------------------------------------------------------------------------------


def _read_parquet(path: Path, what: str) -> pa.Table:
    if not path.is_file():
        raise DataError(f"{what} not found", file=str(path), fix="restore the file or rewrite the dataset")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"cannot read parquet ({e})",
            file=str(path),
            fix="the file is truncated or corrupt; rewrite the dataset",
        ) from None


def _require_columns(table: pa.Table, names: Iterable[str], file: Path) -> None:
    for n in names:
        if n not in table.column_names:
            raise DataError(
                f"missing column '{n}' (has {table.column_names[:12]})",
                file=str(file),
                field=n,
                fix="rewrite the file with write_lerobot_v3 (LeRobot v3 layout)",
            )


def _int_column(table: pa.Table, name: str, file: Path) -> np.ndarray:
    col = table.column(name)
    if not pa.types.is_integer(col.type) or col.null_count:
        raise DataError(
            f"column '{name}' must hold integers without nulls, got {col.type}",
            file=str(file),
            field=name,
            fix="store it as int64",
        )
    return col.to_numpy().astype(np.int64)


class LeRobotV3Dataset:
    """A validated LeRobot v3 dataset; numeric columns are in memory, pixels are read on demand.

    Attributes:
        root: the dataset folder.
        info: ``meta/info.json`` as a dict.
        features: ``info["features"]``.
        fps: frames per second.
        camera_config: the dataset's :class:`CameraConfig`.
        tasks: task strings by ``task_index``.
        stats: ``meta/stats.json`` as ``{feature: {mean, std, min, max, count: np.ndarray}}``.
        episode_lengths: (num_episodes,) int64 frames per episode.
    """

    def __init__(
        self,
        root: Path,
        info: dict[str, Any],
        camera_config: CameraConfig,
        camera_config_file: str,
        tasks: list[str],
        episode_tasks: list[list[str]],
        from_index: np.ndarray,
        lengths: np.ndarray,
        columns: dict[str, np.ndarray],
        image_refs: dict[str, tuple[list[Any], list[Any]]],
        row_files: list[tuple[int, str]],
        stats: dict[str, dict[str, np.ndarray]],
    ) -> None:
        self.root = root
        self.info = info
        self.features: dict[str, dict[str, Any]] = info["features"]
        self.fps = int(info["fps"])
        self.camera_config = camera_config
        self.camera_config_file = camera_config_file
        self.tasks = tasks
        self.episode_tasks = episode_tasks
        self.episode_lengths = lengths
        self.stats = stats
        self._from = from_index
        self._columns = columns
        self._image_refs = image_refs
        self._row_files = row_files  # (first global row, parquet file), ascending

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return int(self.episode_lengths.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.episode_lengths.sum())

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return (
            f"LeRobotV3Dataset({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
            f"cameras={list(self.camera_config.cameras)})"
        )

    def image_size(self, cam: str) -> tuple[int, int]:
        """(width, height) of camera ``cam``'s images (from the feature spec, no decoding)."""
        key = IMAGE_PREFIX + cam
        if key not in self.features:
            raise DataError(
                f"no image feature for camera {cam!r}",
                file=str(self.root / "meta" / "info.json"),
                field=key,
                fix=f"use one of the cameras {list(self.camera_config.cameras)}",
            )
        h, w = _image_hw(self.features[key])
        return w, h

    def pixel_keys(self) -> list[str]:
        """Image and depth feature keys whose pixels can be read (videos excluded)."""
        return list(self._image_refs)

    # -- episodes ------------------------------------------------------------------------------
    def _check_episode(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < self.num_episodes:
            raise DataError(
                f"episode index {i!r} out of range [0, {self.num_episodes - 1}]",
                file=str(self.root),
                field="episode_index",
                fix="pass an index below num_episodes",
            )
        return int(i)

    def frame_task_indices(self, i: int) -> np.ndarray:
        """(T,) int64 task_index of every frame of episode ``i`` (sub-task annotations)."""
        i = self._check_episode(i)
        a = int(self._from[i])
        return self._columns["task_index"][a : a + int(self.episode_lengths[i])].copy()

    def episode(self, i: int, *, images: bool = True) -> Episode:
        """Episode ``i``; ``images=False`` leaves out image and depth keys (no pixels are read).

        Static camera facts of the camera config appear as per-frame ``K`` / ``T_world_cam`` keys.
        """
        i = self._check_episode(i)
        a, T = int(self._from[i]), int(self.episode_lengths[i])
        feats: dict[str, np.ndarray] = {}
        for key, spec in self.features.items():
            if key in INDEX_COLUMNS:
                continue
            kind = _feature_kind(key, spec)
            if kind == "numeric":
                feats[key] = self._columns[key][a : a + T].copy()
            elif kind in ("image", "depth") and images:
                feats[key] = np.stack([self._pixels(key, a + f) for f in range(T)])
        cfg = self.camera_config
        for cam in cfg.cameras:
            K, Tw = cfg.static_K(cam), cfg.static_T_world_cam(cam)
            if K is not None:
                feats[camera_K_key(cam)] = np.broadcast_to(K, (T, 3, 3)).copy()
            if Tw is not None:
                feats[camera_T_key(cam)] = np.broadcast_to(Tw, (T, 4, 4)).copy()
        return Episode(task=self.episode_tasks[i][0], features=feats)

    def frame_images(self, i: int, t: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The decoded image / depth arrays of frame ``t`` of episode ``i`` (default: all pixel keys)."""
        i = self._check_episode(i)
        T = int(self.episode_lengths[i])
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < T:
            raise DataError(
                f"frame index {t!r} out of range [0, {T - 1}]",
                file=str(self.root),
                record=f"episode {i}",
                field="frame_index",
                fix="pass a frame below the episode length",
            )
        out = {}
        for key in self.pixel_keys() if keys is None else keys:
            if key not in self._image_refs:
                kind = _feature_kind(key, self.features[key]) if key in self.features else "missing"
                raise DataError(
                    f"feature '{key}' has no readable pixels ({kind})",
                    file=str(self.root / "meta" / "info.json"),
                    field=key,
                    fix="MP4 videos are not decoded: store frames as PNG images (dtype 'image')"
                    if kind == "video"
                    else f"use one of {self.pixel_keys()}",
                )
            out[key] = self._pixels(key, int(self._from[i]) + int(t))
        return out

    # -- internals -----------------------------------------------------------------------------
    def _record(self, row: int) -> str:
        e = int(np.searchsorted(self._from, row, side="right") - 1)
        return f"episode {e} frame {row - int(self._from[e])}"

    def _file(self, row: int) -> str:
        starts = [s for s, _ in self._row_files]
        return self._row_files[int(np.searchsorted(starts, row, side="right") - 1)][1]

    def _pixels(self, key: str, row: int) -> np.ndarray:
        blobs, paths = self._image_refs[key]
        depth = key.startswith(DEPTH_PREFIX)
        src: bytes | Path = blobs[row] if blobs[row] is not None else self._resolve(paths[row])
        file = self._file(row) if isinstance(src, bytes) else str(src)
        rec = self._record(row)
        arr = _decode_png(src, depth=depth, file=file, record=rec, key=key)
        h, w = _image_hw(self.features[key])
        if arr.shape[:2] != (h, w):
            raise DataError(
                f"image is {arr.shape[1]}x{arr.shape[0]} but feature '{key}' says {w}x{h}",
                file=file,
                record=rec,
                field=key,
                fix="fix the feature shape in meta/info.json or the image",
            )
        if not depth:
            return arr
        scale = self.camera_config.depth_scale
        metres = arr.astype(np.float32) * np.float32(scale)
        _check_depth_values(metres[None], key, scale, file=file, record_of=lambda _: rec)
        return metres

    def _resolve(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.root / q


def load_lerobot_v3(
    root: str | os.PathLike,
    *,
    camera_config: CameraConfig | str | os.PathLike | None = None,
    check_images: bool = True,
) -> LeRobotV3Dataset:
    """Read and validate a LeRobot v3 dataset.

    Args:
        root: the dataset folder (holding ``meta/`` and ``data/``).
        camera_config: the :class:`CameraConfig`, or a path to its json (e.g. a calibration file next to
            a real-robot dataset); default ``<root>/meta/cameras.json``.
        check_images: check every image / depth reference (file present, PNG header matches the feature's
            size and bit depth, file complete) without decoding the pixels.

    Validated: info.json (codebase_version, fps, features), tasks, episodes metadata (contiguous
    indices, lengths), data columns and their shapes, index / frame_index / timestamp / task_index
    consistency, finite values, unit ee quaternions, rigid camera poses, K against the image size,
    stats.json, and the camera config against the features. Depth units are checked when decoded.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found", file=str(root), fix="check the path")
    info = _read_info(root / "meta" / "info.json")
    features = info["features"]
    cfg, cfg_f = _read_camera_config(root, camera_config, features)
    tasks = _read_tasks(root / "meta" / "tasks.parquet")
    ep = _read_episodes(root, info)
    ds = _read_data(root, info, cfg, cfg_f, tasks, ep)
    _check_rows(ds, ep["files"])
    image_hw = {cam: _image_hw(features[IMAGE_PREFIX + cam]) for cam in _cameras_with_images(features)}
    for k, arr in ds._columns.items():
        if k not in INDEX_COLUMNS:
            _check_semantics(k, arr, image_hw, file_of=ds._file, record_of=ds._record)
    ds.stats = _read_stats(
        root / "meta" / "stats.json", features, [k for k in ds._columns if k not in INDEX_COLUMNS]
    )
    if check_images:
        for k in ds.pixel_keys():
            h, w = _image_hw(features[k])
            for row in range(ds.num_frames):
                _check_image_ref(ds, k, row, h, w)
    return ds


def _cameras_with_images(features: Mapping[str, Any]) -> list[str]:
    return [
        k[len(IMAGE_PREFIX) :]
        for k, s in features.items()
        if k.startswith(IMAGE_PREFIX) and _feature_kind(k, s) in ("image", "video")
    ]


def _read_info(path: Path) -> dict[str, Any]:
    info = _read_json(path, "meta/info.json")
    f = str(path)
    if not isinstance(info, dict):
        raise DataError("meta/info.json must be a json object", file=f, fix="rewrite the dataset")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DataError(
            f"codebase_version is {version!r}, expected {CODEBASE_VERSION!r}",
            file=f,
            field="codebase_version",
            fix="convert the dataset to LeRobot v3 (LeRobot's v2.1 -> v3.0 converter) or rewrite it",
        )
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not float(fps).is_integer() or fps <= 0:
        raise DataError(
            f"fps must be a positive integer, got {fps!r}",
            file=f,
            field="fps",
            fix="store the recording rate in frames per second",
        )
    for name in ("total_episodes", "total_frames"):
        v = info.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(
                f"'{name}' must be a non-negative integer, got {v!r}",
                file=f,
                field=name,
                fix="rewrite the dataset",
            )
    if info["total_episodes"] == 0 or info["total_frames"] == 0:
        raise DataError(
            "the dataset is empty (0 episodes or 0 frames)",
            file=f,
            field="total_episodes",
            fix="write at least one episode",
        )
    features = info.get("features")
    if not isinstance(features, dict) or not features:
        raise DataError(
            "'features' must be a non-empty object",
            file=f,
            field="features",
            fix="list every feature with its dtype, shape and names",
        )
    for key, spec in features.items():
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("dtype"), str)
            or not isinstance(spec.get("shape"), list)
            or not all(isinstance(d, int) and d > 0 for d in spec["shape"])
        ):
            raise DataError(
                f"feature '{key}' needs a string 'dtype' and a 'shape' of positive integers, got {spec!r}",
                file=f,
                field=key,
                fix="store {dtype, shape, names} for every feature",
            )
        kind = _feature_kind(key, spec)
        if kind in ("image", "depth", "video"):
            want = 1 if kind == "depth" else 3
            if len(spec["shape"]) != 3 or want not in (spec["shape"][2], spec["shape"][0]):
                raise DataError(
                    f"{kind} feature '{key}' must have shape [H, W, {want}], got {spec['shape']}",
                    file=f,
                    field=key,
                    fix="fix the feature shape",
                )
    if not isinstance(info.setdefault("data_path", DATA_PATH), str):
        raise DataError(
            f"'data_path' must be a template string, got {info['data_path']!r}",
            file=f,
            field="data_path",
            fix=f"use {DATA_PATH!r}",
        )
    return info


def _read_camera_config(
    root: Path, camera_config: CameraConfig | str | os.PathLike | None, features: Mapping[str, Any]
) -> tuple[CameraConfig, str]:
    """The camera config (argument, json path or meta/cameras.json), checked against the features."""
    if isinstance(camera_config, CameraConfig):
        cfg, cfg_f = camera_config, "<camera_config argument>"
    else:
        path = Path(camera_config) if camera_config is not None else root / CAMERAS_JSON
        if not path.is_file():
            raise DataError(
                "camera config not found",
                file=str(path),
                field="camera_config",
                fix="write meta/cameras.json (CameraConfig.save) or pass "
                "camera_config=<path or CameraConfig>",
            )
        cfg, cfg_f = CameraConfig.load(path), str(path)
    with_images = _cameras_with_images(features)
    for cam in cfg.cameras:
        if cam not in with_images:
            raise DataError(
                f"camera {cam!r} has no image feature '{IMAGE_PREFIX}{cam}' in meta/info.json",
                file=cfg_f,
                field="cameras",
                fix="fix the camera names in the camera config",
            )
        for key, static, what in (
            (camera_K_key(cam), cfg.static_K(cam), "K"),
            (camera_T_key(cam), cfg.static_T_world_cam(cam), "T_world_cam"),
        ):
            if (key in features) == (static is not None):
                raise DataError(
                    f"camera {cam!r} needs exactly one of a per-frame feature '{key}' and a static "
                    f"'{what}' in "
                    f"the camera config ({'both' if static is not None else 'neither'} given)",
                    file=cfg_f,
                    field=what,
                    fix=f"add the camera's {what} to the camera config, or drop one of the two",
                )
        K = cfg.static_K(cam)
        if K is not None:
            h, w = _image_hw(features[IMAGE_PREFIX + cam])
            check_K(K, w, h, file=cfg_f, record=f"camera {cam}", field="K")
    return cfg, cfg_f


def _read_tasks(path: Path) -> list[str]:
    table = _read_parquet(path, "meta/tasks.parquet")
    _require_columns(table, ("task_index", "task"), path)
    idx = _int_column(table, "task_index", path)
    text = table.column("task").to_pylist()
    order = np.argsort(idx, kind="stable")
    if not np.array_equal(idx[order], np.arange(len(idx))):
        raise DataError(
            f"task_index must be 0..{len(idx) - 1} without gaps or repeats, got {sorted(idx.tolist())[:10]}",
            file=str(path),
            field="task_index",
            fix="renumber the tasks 0, 1, ...",
        )
    tasks = [text[j] for j in order]
    for j, s in enumerate(tasks):
        if not isinstance(s, str) or not s.strip():
            raise DataError(
                f"task {j} is empty",
                file=str(path),
                record=f"task {j}",
                field="task",
                fix="store the instruction text",
            )
    return tasks


_EPISODE_COLUMNS = (
    "episode_index",
    "tasks",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)


def _read_episodes(root: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Episodes metadata sorted by episode_index: the needed columns plus 'files' (source of each row)."""
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DataError(
            "no episodes metadata (meta/episodes/chunk-*/file-*.parquet)",
            file=str(root / "meta" / "episodes"),
            fix="rewrite the dataset",
        )
    cols: dict[str, list[Any]] = {k: [] for k in _EPISODE_COLUMNS}
    src: list[str] = []
    for f in files:
        t = _read_parquet(f, "episodes metadata")
        _require_columns(t, _EPISODE_COLUMNS, f)
        for k in _EPISODE_COLUMNS:
            cols[k].extend(t.column(k).to_pylist() if k == "tasks" else _int_column(t, k, f).tolist())
        src += [str(f)] * t.num_rows
    order = np.argsort(np.asarray(cols["episode_index"], np.int64), kind="stable")
    ep: dict[str, Any] = {k: [v[j] for j in order] for k, v in cols.items()}
    ep["files"] = [src[j] for j in order]
    n = len(order)
    if ep["episode_index"] != list(range(n)) or n != info["total_episodes"]:
        raise DataError(
            f"episode_index must be 0..{info['total_episodes'] - 1} (total_episodes), got {n} rows "
            f"{ep['episode_index'][:10]}",
            file=ep["files"][0],
            field="episode_index",
            fix="rewrite the dataset",
        )
    for k in ("length", "dataset_from_index", "dataset_to_index"):
        ep[k] = np.asarray(ep[k], np.int64)
    lengths, frm, to = ep["length"], ep["dataset_from_index"], ep["dataset_to_index"]
    for e in range(n):
        expect_from = 0 if e == 0 else int(to[e - 1])
        if lengths[e] <= 0 or to[e] - frm[e] != lengths[e] or frm[e] != expect_from:
            raise DataError(
                f"episode {e}: length {lengths[e]}, dataset_from_index {frm[e]}, dataset_to_index {to[e]}; "
                f"expected length = to - from > 0 and from = {expect_from} (end of the previous episode)",
                file=ep["files"][e],
                record=f"episode {e}",
                field="length",
                fix="rewrite the dataset",
            )
        tl = ep["tasks"][e]
        if not isinstance(tl, list) or not tl or not all(isinstance(s, str) and s for s in tl):
            raise DataError(
                f"episode {e}: 'tasks' must be a non-empty list of strings, got {tl!r}",
                file=ep["files"][e],
                record=f"episode {e}",
                field="tasks",
                fix="list the episode's instruction(s)",
            )
    if int(lengths.sum()) != info["total_frames"]:
        raise DataError(
            f"total_frames is {info['total_frames']} but the episodes add up to {int(lengths.sum())}",
            file=str(root / "meta" / "info.json"),
            field="total_frames",
            fix="rewrite the dataset",
        )
    return ep


def _read_data(
    root: Path, info: dict[str, Any], cfg: CameraConfig, cfg_f: str, tasks: list[str], ep: dict[str, Any]
) -> LeRobotV3Dataset:
    """Read the data files the episodes point at into a dataset object (columns checked, rows not yet)."""
    features = info["features"]
    kinds = {k: _feature_kind(k, s) for k, s in features.items() if k not in INDEX_COLUMNS}
    numeric = [k for k, kind in kinds.items() if kind == "numeric"]
    pixel = [k for k, kind in kinds.items() if kind in ("image", "depth")]
    file_keys = list(dict.fromkeys(zip(ep["data/chunk_index"], ep["data/file_index"], strict=True)))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*INDEX_COLUMNS, *numeric)}
    refs: dict[str, tuple[list[Any], list[Any]]] = {k: ([], []) for k in pixel}
    row_files: list[tuple[int, str]] = []
    rows = 0
    for c, f in file_keys:
        try:
            path = root / info["data_path"].format(chunk_index=c, file_index=f)
        except (KeyError, IndexError, ValueError):
            raise DataError(
                f"'data_path' template {info['data_path']!r} cannot be formatted",
                file=str(root / "meta" / "info.json"),
                field="data_path",
                fix=f"use {DATA_PATH!r}",
            ) from None
        table = _read_parquet(path, "data file")
        _require_columns(table, (*INDEX_COLUMNS, *numeric, *pixel), path)
        row_files.append((rows, str(path)))
        for k in INDEX_COLUMNS:
            col = table.column(k)
            if col.null_count or not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
                raise DataError(
                    f"column '{k}' must hold numbers without nulls, got {col.type}",
                    file=str(path),
                    field=k,
                    fix="rewrite the dataset",
                )
            parts[k].append(col.to_numpy().astype(np.float64 if k == "timestamp" else np.int64))
        for k in numeric:
            parts[k].append(
                _from_arrow(
                    table.column(k), features[k]["shape"], features[k]["dtype"], file=str(path), key=k
                )
            )
        for k in pixel:
            b, p = _image_column(table.column(k), file=path, key=k)
            refs[k][0].extend(b)
            refs[k][1].extend(p)
        rows += table.num_rows
    total = int(ep["length"].sum())
    if rows != total:
        raise DataError(
            f"the data files hold {rows} rows but the episodes metadata says {total} frames",
            file=row_files[0][1],
            field="episode_index",
            fix="rewrite the dataset (a data file was replaced or cut)",
        )
    columns = {k: np.concatenate(v) for k, v in parts.items()}
    return LeRobotV3Dataset(
        root,
        info,
        cfg,
        cfg_f,
        tasks,
        ep["tasks"],
        ep["dataset_from_index"],
        ep["length"],
        columns,
        refs,
        row_files,
        {},
    )


def _check_rows(ds: LeRobotV3Dataset, episode_files: list[str]) -> None:
    """index / episode_index / frame_index / timestamp / task_index of every row against the metadata."""
    col = ds._columns
    total = ds.num_frames
    bad = _first(col["index"] != np.arange(total))
    if bad is not None:
        raise DataError(
            f"column 'index' must count 0, 1, ... over the dataset; row {bad} holds {col['index'][bad]}",
            file=ds._file(bad),
            record=ds._record(bad),
            field="index",
            fix="rewrite the dataset",
        )
    for e in range(ds.num_episodes):
        a, T = int(ds._from[e]), int(ds.episode_lengths[e])
        sl = slice(a, a + T)
        n_rows = int((col["episode_index"] == e).sum())
        if n_rows != T or not np.all(col["episode_index"][sl] == e):
            raise DataError(
                f"episode {e} has {n_rows} rows in the data but length {T} in the episodes metadata "
                f"({episode_files[e]})",
                file=ds._file(a),
                record=f"episode {e}",
                field="episode_index",
                fix="rewrite the dataset (episodes metadata and data disagree)",
            )
        fi = col["frame_index"][sl]
        bad = _first(fi != np.arange(T))
        if bad is not None:
            raise DataError(
                f"frame_index jumps: frame {bad} of episode {e} holds {fi[bad]} (expected 0..{T - 1} "
                "without gaps)",
                file=ds._file(a + bad),
                record=f"episode {e} frame {bad}",
                field="frame_index",
                fix="rewrite the episode with contiguous frames",
            )
        ts, expect = col["timestamp"][sl], fi / float(ds.fps)
        bad = _first(np.abs(ts - expect) > 1e-4 + 4 * np.finfo(np.float32).eps * np.abs(expect))
        if bad is not None:
            raise DataError(
                f"timestamp {ts[bad]:.6g} s does not match frame_index / fps = {expect[bad]:.6g} s",
                file=ds._file(a + bad),
                record=f"episode {e} frame {bad}",
                field="timestamp",
                fix="store timestamp = frame_index / fps (resample the episode to a fixed rate)",
            )
        ti = col["task_index"][sl]
        bad = _first((ti < 0) | (ti >= len(ds.tasks)))
        if bad is not None:
            raise DataError(
                f"task_index {ti[bad]} is not in meta/tasks.parquet (0..{len(ds.tasks) - 1})",
                file=ds._file(a + bad),
                record=f"episode {e} frame {bad}",
                field="task_index",
                fix="add the task to meta/tasks.parquet or fix the frame's task_index",
            )
        listed = set(ds.episode_tasks[e])
        bad = _first(np.array([ds.tasks[int(j)] not in listed for j in ti]))
        if bad is not None:
            raise DataError(
                f"frame task {ds.tasks[int(ti[bad])]!r} is not among the episode's tasks {sorted(listed)}",
                file=ds._file(a + bad),
                record=f"episode {e} frame {bad}",
                field="task_index",
                fix="list every task of the episode's frames in the episodes metadata 'tasks'",
            )


def _read_stats(
    path: Path, features: Mapping[str, Any], numeric: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """meta/stats.json; every numeric feature needs finite mean/std/min/max of its shape."""
    raw = _read_json(path, "meta/stats.json")
    if not isinstance(raw, dict):
        raise DataError("meta/stats.json must be a json object", file=str(path), fix="rewrite the dataset")
    stats = {
        k: {s: np.asarray(x) for s, x in v.items() if isinstance(x, (list, int, float))}
        for k, v in raw.items()
        if isinstance(v, dict)
    }
    for k in numeric:
        if k not in stats:
            raise DataError(
                f"no statistics for feature '{k}'",
                file=str(path),
                field=k,
                fix="rewrite the dataset (stats.json lists mean/std/min/max/count per numeric feature)",
            )
        for s in ("mean", "std", "min", "max"):
            arr = stats[k].get(s)
            if (
                arr is None
                or arr.shape != tuple(features[k]["shape"])
                or arr.dtype.kind not in "iuf"
                or not np.all(np.isfinite(arr))
            ):
                raise DataError(
                    f"stats '{s}' of '{k}' must be finite numbers of shape {features[k]['shape']}, "
                    f"got {None if arr is None else arr.shape}",
                    file=str(path),
                    field=f"{k}.{s}",
                    fix="rewrite the dataset",
                )
            stats[k][s] = arr.astype(np.float64)
    return stats


def _image_column(col: pa.ChunkedArray, *, file: Path, key: str) -> tuple[list[Any], list[Any]]:
    """(bytes or None, path or None) per row of an image column (struct {bytes, path} or a path string)."""
    arr = col.combine_chunks()
    fix = "store images as the struct {bytes, path} (LeRobot 'image' dtype) or as path strings"
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        p = arr.to_pylist()
        b: list[Any] = [None] * len(p)
    elif pa.types.is_struct(arr.type) and {arr.type.field(i).name for i in range(arr.type.num_fields)} >= {
        "bytes",
        "path",
    }:
        b = arr.field("bytes").to_pylist()
        p = arr.field("path").to_pylist()
    else:
        raise DataError(f"image column '{key}' has type {arr.type}", file=str(file), field=key, fix=fix)
    for r, (x, y) in enumerate(zip(b, p, strict=True)):
        if x is None and not y:
            raise DataError(
                f"row {r} of image column '{key}' has neither bytes nor a path",
                file=str(file),
                record=f"row {r}",
                field=key,
                fix=fix,
            )
    return b, p


def _check_image_ref(ds: LeRobotV3Dataset, key: str, row: int, h: int, w: int) -> None:
    blobs, paths = ds._image_refs[key]
    rec = ds._record(row)
    depth = key.startswith(DEPTH_PREFIX)
    if blobs[row] is not None:
        data = blobs[row]
        _png_check(data[:33], data[-12:], h=h, w=w, depth=depth, file=ds._file(row), record=rec, key=key)
        return
    path = ds._resolve(paths[row])
    try:
        with open(path, "rb") as fh:
            head = fh.read(33)
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 12))
            tail = fh.read(12)
    except FileNotFoundError:
        raise DataError(
            "image file not found",
            file=str(path),
            record=rec,
            field=key,
            fix="restore the file or rewrite the dataset",
        ) from None
    except OSError as e:
        raise DataError(
            f"cannot read image ({e})",
            file=str(path),
            record=rec,
            field=key,
            fix="check the file's permissions",
        ) from None
    _png_check(head, tail, h=h, w=w, depth=depth, file=str(path), record=rec, key=key)

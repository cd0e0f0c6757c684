"""The LeRobot v3 on-disk layout: constants, the :class:`Episode` record, feature kinds, arrow encoding.

On disk (``codebase_version`` ``"v3.0"``)::

    meta/info.json                             codebase_version, robot_type, fps, totals, chunks_size,
                                               data_path, features {key: {dtype, shape, names}}
    meta/stats.json                            per numeric feature: mean / std / min / max (feature shape)
                                               and count [N]; RGB images: per channel (3, 1, 1) in [0, 1]
    meta/tasks.parquet                         task_index (int64), task (string); LeRobot <= 0.4.x stores
                                               the text as the pandas index instead (``__index_level_0__``)
    meta/cameras.json                          optional: the dataset's :class:`CameraConfig` (see below);
                                               LeRobot never writes one
    meta/episodes/chunk-000/file-000.parquet   episode_index, tasks (list<string>), length,
                                               data/chunk_index, data/file_index, dataset_from_index,
                                               dataset_to_index, meta/episodes/{chunk,file}_index,
                                               stats/<feature>/{min,max,mean,std,count}; per video
                                               feature videos/<key>/{chunk_index, file_index,
                                               from_timestamp, to_timestamp}
    data/chunk-000/file-000.parquet            index, episode_index, frame_index, timestamp, task_index,
                                               one column per feature
    images/<key>/episode-XXXXXX/frame-XXXXXX.png
    videos/<key>/chunk-000/file-000.mp4        video features (info.json ``video_path``; :mod:`.video`)

Feature keys of an :class:`Episode` (leading dim T = frames):

* ``observation.images.<cam>``  (T, H, W, 3) uint8 RGB -- LeRobot dtype ``"image"``; the parquet column is
  the Hugging Face image struct ``{bytes, path}`` with ``path`` relative to the dataset root and
  ``bytes`` null. The reader also accepts embedded PNG ``bytes`` (what LeRobot itself writes), and dtype
  ``"video"`` (LeRobot's default: MP4 files, decoded frame-exactly by presentation time, :mod:`.video`).
* ``observation.depth.<cam>``   (T, H, W) float32 metres, 0 = invalid -- dtype ``"image"``, shape
  ``[H, W, 1]``, stored as a 16-bit grayscale PNG holding ``round(depth / depth_scale)``;
  ``depth_scale`` (metres per unit, default 0.001 = millimetres) lives in ``meta/cameras.json``. A depth
  ``"video"`` feature (shape ``[H, W, 1]`` or LeRobot's gray RGB ``[H, W, 3]``) holds 8-bit units in its
  first channel.
* ``observation.cameras.<cam>.K`` (T, 3, 3) float64 and ``observation.cameras.<cam>.T_world_cam``
  (T, 4, 4) float64 (OpenCV camera axes) -- per-frame camera facts. A dataset may instead give static
  ``K`` / ``T_world_cam`` per camera in its :class:`CameraConfig` (real robots such as AgiBot ship one
  calibration file); the reader then fills these keys by broadcasting, so consumers see one layout. A
  camera may have neither (LeRobot records no calibration): the dataset still loads and post-trains;
  stage-2 trajectories then raise a DataError listing the three ways to calibrate
  (:meth:`LeRobotV3Dataset.require_calibration`).
* ``observation.ee_pose`` (T, 7) float32 xyz + quaternion wxyz in the world frame (bimanual data:
  ``observation.ee_pose.left`` / ``.right``); ``observation.state`` (T, D), ``observation.gripper``
  (T, 1), ``observation.joints`` (T, J), ``action`` (T, A) float32; any other numeric key.

Numeric columns: shape ``[1]`` is a scalar column, others nested fixed-size lists (the reader also
accepts variable lists, as written by Hugging Face ``datasets``). Every feature array has at least two
dims; a per-frame scalar is ``(T, 1)``.

Not supported: the writer writes PNG frames only (no MP4); stored images must be PNG. ``timestamp`` is
``frame_index / fps``.

Writes are atomic: the dataset is built in a hidden sibling folder and renamed into place, so a crash
leaves either nothing or the previous dataset at ``root``, never a partial one.

Every bad input raises :class:`posevla.errors.DataError` naming the file, the record (episode / frame)
and the field, with a fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from posevla.data.schema import (  # noqa: F401 (re-exported)
    CAMERA_PREFIX,
    DEPTH_PREFIX,
    EE_POSE_KEY,
    IMAGE_PREFIX,
    camera_K_key,
    camera_T_key,
)
from posevla.errors import DataError

CODEBASE_VERSION = "v3.0"
#: Columns every data file has besides the features (LeRobot's default features).
INDEX_COLUMNS: tuple[str, ...] = ("index", "episode_index", "frame_index", "timestamp", "task_index")
#: Columns of meta/episodes/*.parquet that the reader needs (the writer adds the meta file's own chunk / file).
EPISODE_COLUMNS: tuple[str, ...] = (
    "episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index", "dataset_to_index",
)
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



# shared helpers

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
        return "depth_video" if key.startswith(DEPTH_PREFIX) else "video"
    if dtype == "image":
        return "depth" if key.startswith(DEPTH_PREFIX) else "image"
    if dtype in _NUMERIC_DTYPES:
        return "numeric"
    return "other"



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



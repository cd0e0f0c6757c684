"""Readers of the LeRobot v3 ``meta/`` files: info.json, tasks, episodes, stats and the camera config."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from posevla.data.formats.lerobot.cameras import CameraConfig
from posevla.data.formats.lerobot.video import VIDEO_COLUMNS, VIDEO_PATH, video_column
from posevla.data.formats.lerobot.schema import (
    CAMERAS_JSON,
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODE_COLUMNS,
    IMAGE_PREFIX,
    _feature_kind,
    _image_hw,
    _read_json,
    camera_K_key,
    camera_T_key,
)
from posevla.errors import DataError
from posevla.geometry import check_K


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
        if kind in ("image", "depth", "video", "depth_video"):
            want = {"depth": (1,), "depth_video": (1, 3)}.get(kind, (3,))
            if len(spec["shape"]) != 3 or not {spec["shape"][2], spec["shape"][0]} & set(want):
                raise DataError(
                    f"{kind.replace('_', ' ')} feature '{key}' must have shape [H, W, "
                    f"{' or '.join(map(str, want))}], got {spec['shape']}",
                    file=f,
                    field=key,
                    fix="fix the feature shape",
                )
    has_video = any(_feature_kind(k, v) in ("video", "depth_video") for k, v in features.items())
    if has_video and not isinstance(info.get("video_path") or VIDEO_PATH, str):
        raise DataError(
            f"'video_path' must be a template string, got {info['video_path']!r}",
            file=f,
            field="video_path",
            fix=f"use {VIDEO_PATH!r}",
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
    with_images = _cameras_with_images(features)
    if isinstance(camera_config, CameraConfig):
        cfg, cfg_f = camera_config, "<camera_config argument>"
    elif camera_config is None and not (root / CAMERAS_JSON).is_file():
        # LeRobot writes no camera file: the cameras are the image / video features, uncalibrated unless the
        # data holds per-frame K / T_world_cam (stage 2 asks for calibration when it needs it)
        if not with_images:
            raise DataError(
                f"the dataset has no camera feature ('{IMAGE_PREFIX}<cam>', dtype image or video) and no "
                f"{CAMERAS_JSON}",
                file=str(root / "meta" / "info.json"),
                field="features",
                fix="record at least one camera image feature",
            )
        return CameraConfig(cameras=tuple(with_images)), ""
    else:
        path = Path(camera_config) if camera_config is not None else root / CAMERAS_JSON
        if not path.is_file():
            raise DataError(
                "camera config not found",
                file=str(path),
                field="camera_config",
                fix="fix the path of the camera calibration json (CameraConfig.save writes one), or leave it out "
                "(a dataset without calibration still loads; only stage-2 trajectories need K and T_world_cam)",
            )
        cfg, cfg_f = CameraConfig.load(path), str(path)
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
            if key in features and static is not None:  # neither: uncalibrated (LeRobotV3Dataset.calibration)
                raise DataError(
                    f"camera {cam!r} has both a per-frame feature '{key}' and a static '{what}' in the camera "
                    "config",
                    file=cfg_f,
                    field=what,
                    fix=f"drop the camera's {what} from the camera config, or the per-frame feature",
                )
        K = cfg.static_K(cam)
        if K is not None:
            h, w = _image_hw(features[IMAGE_PREFIX + cam])
            check_K(K, w, h, file=cfg_f, record=f"camera {cam}", field="K")
    return cfg, cfg_f


def _task_text_column(table: pa.Table) -> str | None:
    """The column holding the task text: ``task`` (newer LeRobot, our writer), else the stored pandas index
    (LeRobot <= 0.4.x writes ``DataFrame({"task_index": ...}, index=tasks)``: ``__index_level_0__``)."""
    if "task" in table.column_names:
        return "task"
    meta = table.schema.pandas_metadata or {}
    for name in [c for c in meta.get("index_columns", []) if isinstance(c, str)] + ["__index_level_0__"]:
        if name in table.column_names and (pa.types.is_string(table.schema.field(name).type)
                                           or pa.types.is_large_string(table.schema.field(name).type)):
            return name
    return None


def _read_tasks(path: Path) -> list[str]:
    table = _read_parquet(path, "meta/tasks.parquet")
    _require_columns(table, ("task_index",), path)
    text_col = _task_text_column(table)
    if text_col is None:
        raise DataError(
            f"no task text column (has {table.column_names[:12]})",
            file=str(path),
            field="task",
            fix="store the instructions in a 'task' string column next to 'task_index' (LeRobot <= 0.4 stores "
            "them as the pandas index, '__index_level_0__'; both are read)",
        )
    idx = _int_column(table, "task_index", path)
    text = table.column(text_col).to_pylist()
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




def _read_episodes(root: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Episodes metadata sorted by episode_index: the needed columns (with ``videos/<key>/...`` of every
    video feature) plus 'files' (source of each row)."""
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DataError(
            "no episodes metadata (meta/episodes/chunk-*/file-*.parquet)",
            file=str(root / "meta" / "episodes"),
            fix="rewrite the dataset",
        )
    videos = [k for k, v in info["features"].items() if _feature_kind(k, v) in ("video", "depth_video")]
    vcols = [video_column(k, w) for k in videos for w in VIDEO_COLUMNS]
    cols: dict[str, list[Any]] = {k: [] for k in (*EPISODE_COLUMNS, *vcols)}
    src: list[str] = []
    for f in files:
        t = _read_parquet(f, "episodes metadata")
        _require_columns(t, (*EPISODE_COLUMNS, *vcols), f)
        for k in (*EPISODE_COLUMNS, *vcols):
            if k == "tasks" or k.endswith("_timestamp"):
                cols[k].extend(t.column(k).to_pylist())
            else:
                cols[k].extend(_int_column(t, k, f).tolist())
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



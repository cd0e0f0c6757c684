"""Reader of LeRobot v3 datasets: :func:`load_lerobot_v3` validates everything, returns a :class:`LeRobotV3Dataset`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from posevla.data.formats.lerobot.cameras import CameraConfig
from posevla.data.formats.lerobot.checks import _check_depth_values, _check_semantics
from posevla.data.formats.lerobot.meta import (
    _cameras_with_images,
    _read_camera_config,
    _read_episodes,
    _read_info,
    _read_parquet,
    _read_stats,
    _read_tasks,
    _require_columns,
)
from posevla.data.formats.lerobot.png import _decode_png, _png_check
from posevla.data.formats.lerobot.video import VideoDecoder, VideoSegment, segments_of, video_column
from posevla.data.formats.lerobot.schema import (
    DATA_PATH,
    DEPTH_PREFIX,
    IMAGE_PREFIX,
    INDEX_COLUMNS,
    Episode,
    _feature_kind,
    _first,
    _from_arrow,
    _image_hw,
    camera_K_key,
    camera_T_key,
)
from posevla.errors import DataError


class LeRobotV3Dataset:
    """A validated LeRobot v3 dataset; numeric columns are in memory, pixels (PNG or MP4) are read on demand.

    Attributes:
        root: the dataset folder.
        info: ``meta/info.json`` as a dict.
        features: ``info["features"]``.
        fps: frames per second.
        camera_config: the dataset's :class:`CameraConfig` (without a camera file: the camera features'
            names, no static calibration; see :meth:`calibration`).
        camera_config_file: where it came from ("" when the dataset has no camera file).
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
        videos: dict[str, list[VideoSegment]] | None = None,
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
        self._videos = videos or {}  # video feature -> its segment of every episode
        self._decoder = VideoDecoder()
        self._episode_files: list[str] = []  # the episodes-metadata file of each episode

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
        """Image and depth feature keys whose pixels can be read (PNG images and MP4 videos)."""
        return [*self._image_refs, *self._videos]

    def video_keys(self) -> list[str]:
        """The features stored as MP4 videos."""
        return list(self._videos)

    # -- calibration ---------------------------------------------------------------------------
    def calibration(self, cam: str) -> dict[str, str | None]:
        """Where camera ``cam``'s ``K`` and ``T_world_cam`` come from: ``"feature"`` (per frame), ``"static"``
        (the camera config) or None (not given)."""
        cfg = self.camera_config
        out: dict[str, str | None] = {}
        for what, key, static in (("K", camera_K_key(cam), cfg.static_K(cam)),
                                  ("T_world_cam", camera_T_key(cam), cfg.static_T_world_cam(cam))):
            out[what] = "feature" if key in self.features else "static" if static is not None else None
        return out

    def require_calibration(self, cams: Sequence[str], purpose: str, *, flag: str | None = None) -> None:
        """Raise a DataError naming the three ways to calibrate when a camera of ``cams`` lacks K or T_world_cam.

        ``flag`` is the command-line option that gives a calibration file in the caller's context (e.g.
        ``--data.sources.N.cameras``).
        """
        for cam in cams:
            missing = [w for w, src in self.calibration(cam).items() if src is None]
            if missing:
                key = camera_K_key(cam) if "K" in missing else camera_T_key(cam)
                raise DataError(
                    f"{purpose} need the intrinsics K and the pose T_world_cam of camera '{cam}', but the dataset "
                    f"gives no {' and no '.join(missing)} (camera file: {self.camera_config_file or 'none'})",
                    file=str(self.root / "meta" / "info.json"),
                    record=f"camera {cam}",
                    field=key,
                    fix=calibration_fix(cam, flag),
                )

    def close(self) -> None:
        """Close the open video files (they reopen on the next read)."""
        self._decoder.close()

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
            elif kind in ("image", "depth", "video", "depth_video") and images:
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
            if key not in self._image_refs and key not in self._videos:
                kind = _feature_kind(key, self.features[key]) if key in self.features else "missing"
                raise DataError(
                    f"feature '{key}' has no readable pixels ({kind})",
                    file=str(self.root / "meta" / "info.json"),
                    field=key,
                    fix=f"use one of {self.pixel_keys()}",
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

    def _video_time(self, key: str, row: int) -> tuple[VideoSegment, float]:
        """The segment of the row's episode and the time of its frame in that video (from + timestamp)."""
        e = int(np.searchsorted(self._from, row, side="right") - 1)
        seg = self._videos[key][e]
        return seg, seg.start_s + float(self._columns["timestamp"][row])

    def _pixels(self, key: str, row: int) -> np.ndarray:
        depth = key.startswith(DEPTH_PREFIX)
        rec = self._record(row)
        if key in self._videos:
            seg, t = self._video_time(key, row)
            file = str(seg.file)
            rgb = self._decoder.frame_at(seg.file, t, key=key, record=rec)  # (H, W, 3) uint8
            arr = rgb[..., 0] if depth else rgb  # a depth video is gray: its first channel is the stored unit
        else:
            blobs, paths = self._image_refs[key]
            src: bytes | Path = blobs[row] if blobs[row] is not None else self._resolve(paths[row])
            file = self._file(row) if isinstance(src, bytes) else str(src)
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
            a real-robot dataset); default ``<root>/meta/cameras.json`` when it exists, else the camera
            features' names without calibration (what LeRobot writes; see :meth:`LeRobotV3Dataset.calibration`).
        check_images: check every image / depth reference (file present, PNG header matches the feature's
            size and bit depth, file complete) without decoding the pixels; and every video file (opens,
            frame size) with the last frame of each episode decoded (missing, truncated, short videos).

    Validated: info.json (codebase_version, fps, features), tasks, episodes metadata (contiguous
    indices, lengths), data columns and their shapes, index / frame_index / timestamp / task_index
    consistency, finite values, unit ee quaternions, rigid camera poses, K against the image size,
    stats.json, and the camera config against the features. Depth units are checked when decoded.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found", file=str(root),
                        fix="check the path: a LeRobot v3 dataset is a folder with meta/info.json")
    info = _read_info(root / "meta" / "info.json")
    features = info["features"]
    cfg, cfg_f = _read_camera_config(root, camera_config, features)  # cfg_f "": no camera file
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
    ds._episode_files = ep["files"]
    ds._videos = {k: segments_of(root, info, k, ep, ep["files"]) for k, s in features.items()
                  if _feature_kind(k, s) in ("video", "depth_video")}
    if check_images:
        for k in ds._image_refs:
            h, w = _image_hw(features[k])
            for row in range(ds.num_frames):
                _check_image_ref(ds, k, row, h, w)
        for k in ds._videos:
            _check_video(ds, k)
    return ds


def calibration_fix(cam: str, flag: str | None = None) -> str:
    """The three ways to give camera ``cam``'s calibration (the fix of a missing-calibration DataError)."""
    arg = flag or "--data.sources.N.cameras FILE (stage-2 source), --data.cameras FILE (post-training)"
    return (
        f"give K and T_world_cam of camera '{cam}' in one of three ways: (1) a camera file in the dataset, "
        f"meta/cameras.json ({{\"cameras\": [\"{cam}\"], \"K\": {{\"{cam}\": 3x3}}, \"T_world_cam\": "
        f"{{\"{cam}\": 4x4}}}}, CameraConfig.save); (2) per-frame features '{camera_K_key(cam)}' (3x3) and "
        f"'{camera_T_key(cam)}' (4x4, OpenCV axes) in the data; (3) a calibration json of that form passed "
        f"as {arg} (SourceSpec.cameras / load_lerobot_v3(camera_config=FILE))"
    )




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


def _check_video(ds: LeRobotV3Dataset, key: str) -> None:
    """Every video file of ``key`` opens and has the feature's frame size, and each episode's last frame is
    there and decodes (catches missing, truncated and too-short videos at load time, one frame per episode)."""
    hw = _image_hw(ds.features[key])
    probed: set[Path] = set()
    for e, seg in enumerate(ds._videos[key]):
        T = int(ds.episode_lengths[e])
        last = int(ds._from[e]) + T - 1
        rec = f"episode {e}"
        if seg.file not in probed:
            ds._decoder.probe(seg.file, key=key, record=rec, hw=hw)
            probed.add(seg.file)
        _, t = ds._video_time(key, last)
        if t > seg.end_s + 1e-4:
            raise DataError(
                f"frame {T - 1} of the episode is at {t:.4f} s but the episode's video segment ends at "
                f"{seg.end_s:.4f} s",
                file=ds._episode_files[e],
                record=f"episode {e} frame {T - 1}",
                field=video_column(key, "to_timestamp"),
                fix="rewrite the episodes metadata (to_timestamp = from_timestamp + length / fps)",
            )
        ds._decoder.frame_at(seg.file, t, key=key, record=f"episode {e} frame {T - 1}")


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

"""Reader (and writer) for the BOP 6D object-pose format -> canonical :class:`Scene` / :class:`View` /
:class:`Object3D` (the same records as :mod:`posevla.data.formats.omni3d`).

Layout read (BOP toolkit conventions, lengths in millimetres)::

    <root>/models/models_info.json        {"<obj_id>": {diameter, min_x, min_y, min_z, size_x, size_y, size_z}}
                                           (also accepted: <root>/models_info.json, <root>/models_<type>/...)
    <root>/camera[_<type>].json           optional: width, height (the image size when it agrees with the
                                           scene's first image header; sensor simulation only otherwise)
    <root>/category_names.json            optional: {"<obj_id>": "name"}
    <root>/<split>/<scene:06d>/            split: any folder name (test, val, train_pbr, test_primesense, ...)
        scene_camera.json                  {"<im_id>": {cam_K (9, row-major), depth_scale, [cam_R_w2c (9), cam_t_w2c (3)]}}
        scene_gt.json                      {"<im_id>": [{cam_R_m2c (9, row-major), cam_t_m2c (3, mm), obj_id}, ...]}
        scene_gt_info.json                 {"<im_id>": [{bbox_obj, bbox_visib, px_count_all, px_count_valid,
                                                         px_count_visib, visib_fract}, ...]} (same order as scene_gt)
        rgb/<im_id:06d>.png|.jpg|.tif      uint8 RGB (BOP: png; PBR renders / BlenderProc: jpg)
        gray/<im_id:06d>.png|.tif          8- or 16-bit gray (ITODD: tif), read as 3 equal channels
        depth/<im_id:06d>.png|.tif         uint16, millimetres = value * depth_scale (0 = invalid; ITODD: tif)

Multi-sensor datasets (IPD, XYZ-IBD, ITODD-MV; HOT3D per image stream) name every scene file by sensor:
``scene_camera_<sensor>.json``, ``scene_gt_<sensor>.json``, ``scene_gt_info_<sensor>.json``, pictures in
``rgb_<sensor>/`` or ``gray_<sensor>/`` (HOT3D: ``<stream>/``), depth in ``depth_<sensor>/``; one sensor is read
at a time (``sensor=``). :mod:`posevla.data.formats.bop_layout` finds splits, sensors and these files.

Mapping to the canonical records (metres, OpenCV camera frame):

* ``K = cam_K`` reshaped to 3x3; ``View.depth_scale = depth_scale / 1000`` (metres per PNG unit);
  ``T_world_cam = inv([cam_R_w2c | cam_t_w2c / 1000])`` when the extrinsics are present.
* 9-DoF box centred at the model's bounding-box centre ``c_m = (min + size / 2) / 1000``:
  ``center_cam = cam_R_m2c @ c_m + cam_t_m2c / 1000``, ``dimensions = (size_z, size_y, size_x) / 1000``
  (Omni3D's [W, H, L]: the model's x spans L, y spans H, z spans W),
  ``R_cam = cam_R_m2c``.
* ``visibility = visib_fract``; ``bbox2d`` and ``truncation`` from the projected 3D box clipped to the
  image (:func:`posevla.geometry.box2d_from_box3d`), exactly as the Omni3D reader's data define them.
* ``category`` from an obj_id -> name map (argument, ``category_names.json``, or the built-in map of a
  known dataset such as YCB-V); without any map the name is ``obj_<id:06d>``.

A gray picture (``gray*/`` folders) sets ``View.gray``: :func:`~posevla.data.formats.omni3d.load_rgb` then
returns it as three equal channels (16-bit gray by its top byte), the RGB input the model takes. The depth
scale always comes from each image's ``depth_scale`` in ``scene_camera[_<sensor>].json`` (as the BOP toolkit
reads it; ``camera.json``'s is for sensor simulation only).

Every image becomes a single-view :class:`Scene` (``scene_id = "<split>/<scene>/<im_id>"``, with per-sensor
files ``"<split>/<scene>/<sensor>/<im_id>"``); multi-view
samples come from :mod:`posevla.data.views`. Bad input raises :class:`~posevla.errors.DataError` naming
the file, the record (image / object index) and the field, with a fix.

:func:`write_bop` converts canonical scenes (e.g. generated MuJoCo scenes) into this layout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from posevla.data.formats.bop_layout import (
    DEPTH_EXTS,
    IMAGE_EXTS,
    SceneFiles,
    bop_sensors,
    bop_splits,
    camera_file,
    index_images,
    resolve_sensor,
    resolve_split,
    scene_files,
)
from posevla.data.formats.omni3d import Object3D, Scene, View, load_depth
from posevla.errors import DataError
from posevla.geometry import box2d_from_box3d, box_corners, check_K, check_rotation_matrix

__all__ = [
    "YCBV_NAMES",
    "KNOWN_NAME_MAPS",
    "BopModel",
    "find_models_info",
    "load_models_info",
    "load_category_names",
    "bop_splits",
    "bop_sensors",
    "load_bop",
    "write_bop",
]

#: YCB-V's 21 objects (BOP obj_id -> name, YCB ids dropped, underscores as spaces).
YCBV_NAMES: dict[int, str] = {
    1: "master chef can", 2: "cracker box", 3: "sugar box", 4: "tomato soup can", 5: "mustard bottle",
    6: "tuna fish can", 7: "pudding box", 8: "gelatin box", 9: "potted meat can", 10: "banana",
    11: "pitcher base", 12: "bleach cleanser", 13: "bowl", 14: "mug", 15: "power drill", 16: "wood block",
    17: "scissors", 18: "large marker", 19: "large clamp", 20: "extra large clamp", 21: "foam brick",
}

#: Built-in name maps, keyed by the dataset folder name.
KNOWN_NAME_MAPS: dict[str, dict[int, str]] = {"ycbv": YCBV_NAMES}

_MM = 1e-3  # metres per millimetre
_MIN_T_Z_MM = 10.0  # an object centre closer than 1 cm means the translation is not in millimetres
_MIN_SIZE_MM = 1.0  # a model smaller than 1 mm means the sizes are not in millimetres
_DEPTH_SCALE_RANGE = (1e-3, 100.0)  # millimetres per depth unit


@dataclass(frozen=True)
class BopModel:
    """One object model of ``models_info.json`` in metres."""

    obj_id: int
    bbox_center: np.ndarray  # (3,) centre of the model's bounding box, model frame
    size: np.ndarray  # (3,) size_x, size_y, size_z
    diameter: float | None


# ----------------------------------------------------------------------------------------------
# json helpers
# ----------------------------------------------------------------------------------------------


_TOP = "top level"  # record name of whole-file problems


def _read_json(path: Path, what: str, fix: str) -> Any:
    if not path.is_file():
        raise DataError(f"{what} not found", file=str(path), record=_TOP, field="file", fix=fix)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid json: {e.msg} at line {e.lineno} column {e.colno}", file=str(path), record=_TOP,
                        field="json", fix="the file is corrupt or truncated; re-download or regenerate it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read json: {e}", file=str(path), record=_TOP, field="file",
                        fix="check the file's permissions") from None


def _int_key(key: str, file: Path, what: str) -> int:
    try:
        v = int(key)
    except (TypeError, ValueError):
        v = -1
    if v < 0 or str(key).strip() != str(key):
        raise DataError(f"{what} key {key!r} is not a non-negative integer", file=str(file), record=key, field=what,
                        fix=f"key every entry by its integer {what} as a string, e.g. \"0\"")
    return v


def _numbers(rec: Any, key: str, n: int, file: Path, record: str) -> np.ndarray:
    if not isinstance(rec, dict):
        raise DataError("record must be a json object", file=str(file), record=record, field=key,
                        fix="store each record as a json object")
    if key not in rec:
        raise DataError(f"missing key '{key}'", file=str(file), record=record, field=key,
                        fix=f"add '{key}' ({n} numbers) to every record (BOP format)")
    v = rec[key]
    try:
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        ok = isinstance(v, (list, tuple)) and np.asarray(v, dtype=object).ndim == 1
    except (TypeError, ValueError):
        ok = False
    if not ok or a.shape != (n,):
        raise DataError(f"'{key}' must be a flat list of {n} numbers, got {str(v)[:80]}", file=str(file),
                        record=record, field=key, fix=f"store '{key}' as a flat row-major list of {n} numbers")
    if not np.all(np.isfinite(a)):
        raise DataError(f"'{key}' contains NaN or inf", file=str(file), record=record, field=key,
                        fix="repair or drop this record")
    return a


def _number(rec: dict, key: str, file: Path, record: str, *, default: Any = ..., lo: float = -math.inf,
            hi: float = math.inf, unit: str = "") -> float:
    if key not in rec:
        if default is ...:
            raise DataError(f"missing key '{key}'", file=str(file), record=record, field=key,
                            fix=f"add '{key}' to every record (BOP format)")
        return default
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise DataError(f"'{key}' must be a finite number, got {v!r}", file=str(file), record=record, field=key,
                        fix=f"store '{key}' as a json number")
    if not (lo <= float(v) <= hi):
        raise DataError(f"'{key}' = {v!r} is outside the plausible range [{lo:g}, {hi:g}]{unit}", file=str(file),
                        record=record, field=key, fix=f"check the units of '{key}' (BOP stores millimetres)")
    return float(v)


# ----------------------------------------------------------------------------------------------
# models and names
# ----------------------------------------------------------------------------------------------


def find_models_info(root: str | os.PathLike) -> Path:
    """``models_info.json`` of a BOP dataset root: ``models/``, the root itself, ``models_eval/``, ``models_cad/``,
    then any other ``models_<type>/`` (sorted)."""
    root = Path(root)
    cands = [root / "models" / "models_info.json", root / "models_info.json",
             root / "models_eval" / "models_info.json", root / "models_cad" / "models_info.json"]
    if root.is_dir():
        cands += sorted(d / "models_info.json" for d in root.iterdir()
                        if d.is_dir() and d.name.startswith("models_"))
    for cand in cands:
        if cand.is_file():
            return cand
    raise DataError("models_info.json not found (looked in models/, the root, models_<type>/)",
                    file=str(root / "models" / "models_info.json"),
                    record="dataset root", field="models_info", fix="put the dataset's models/models_info.json under the dataset root "
                    "(it holds each object's size in mm)")


def load_models_info(path: str | os.PathLike) -> dict[int, BopModel]:
    """Read ``models_info.json``: obj_id -> :class:`BopModel` (millimetres converted to metres)."""
    path = Path(path)
    data = _read_json(path, "models_info.json", "restore the dataset's models/models_info.json")
    if not isinstance(data, dict) or not data:
        raise DataError("models_info.json must be a non-empty object keyed by obj_id", file=str(path), record=_TOP,
                        field="obj_id", fix="use the BOP layout {\"1\": {\"size_x\": ..., ...}, ...}")
    models: dict[int, BopModel] = {}
    for key, rec in data.items():
        oid = _int_key(key, path, "obj_id")
        record = f"obj_id {oid}"
        if not isinstance(rec, dict):
            raise DataError("model record must be a json object", file=str(path), record=record, field="obj_id",
                            fix="store each model as an object with min_x..size_z")
        size = np.array([_number(rec, f"size_{a}", path, record) for a in "xyz"])
        mins = np.array([_number(rec, f"min_{a}", path, record) for a in "xyz"])
        for a, s in zip("xyz", size):
            if s < _MIN_SIZE_MM:
                raise DataError(
                    f"size_{a} = {s:g} mm is below {_MIN_SIZE_MM:g} mm (sizes look like metres, or the model is "
                    "degenerate)", file=str(path), record=record, field=f"size_{a}",
                    fix="store model sizes in millimetres, as BOP does (multiply metres by 1000)")
        diameter = _number(rec, "diameter", path, record, default=None, lo=0.0)
        models[oid] = BopModel(oid, (mins + size / 2.0) * _MM, size * _MM,
                               None if diameter is None else diameter * _MM)
    return models


def load_category_names(
    names: Mapping[int | str, str] | str | os.PathLike | None,
    root: str | os.PathLike | None = None,
) -> dict[int, str] | None:
    """An obj_id -> name map: from ``names`` (a mapping or a JSON file ``{"<obj_id>": "name"}``), else
    ``<root>/category_names.json``, else the built-in map of a known dataset folder (e.g. ``ycbv``);
    ``None`` when there is none."""
    src: Any = names
    file = None
    if src is None and root is not None:
        cand = Path(root) / "category_names.json"
        if cand.is_file():
            src = cand
        else:
            known = KNOWN_NAME_MAPS.get(Path(root).resolve().name.lower())
            return dict(known) if known else None
    if src is None:
        return None
    if isinstance(src, (str, os.PathLike)):
        file = Path(src)
        src = _read_json(file, "category name map", "pass a JSON file {\"<obj_id>\": \"name\"}")
    if not isinstance(src, Mapping):
        raise DataError("category name map must be an object {obj_id: name}", file=str(file) if file else None,
                        field="category_names", fix="store the map as {\"1\": \"cracker box\", ...}")
    out: dict[int, str] = {}
    for k, v in src.items():
        oid = _int_key(str(k), file or Path("<category_names>"), "obj_id")
        if not isinstance(v, str) or not v.strip():
            raise DataError(f"name of obj_id {oid} must be a non-empty string, got {v!r}",
                            file=str(file) if file else None, record=f"obj_id {oid}", field="category_names",
                            fix="give every object a text name")
        out[oid] = v.strip()
    return out


# ----------------------------------------------------------------------------------------------
# reader
# ----------------------------------------------------------------------------------------------


def _image_size(path: Path, file: Path, record: str, field: str = "rgb") -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image header of {path} ({e})", file=str(file), record=record, field=field,
                        fix="the image is corrupt; re-download or regenerate it") from None


def _camera_size(root: Path, split: str, sensor: str) -> tuple[int, int] | None:
    """(width, height) of the root's camera file for the split / sensor (see ``camera_file``), if it has them."""
    cam_json = camera_file(root, split, sensor)
    if cam_json is None:
        return None
    cj = _read_json(cam_json, cam_json.name, f"restore {cam_json.name}")
    if not (isinstance(cj, dict) and "width" in cj and "height" in cj):
        return None
    w = _number(cj, "width", cam_json, "camera", lo=1)
    h = _number(cj, "height", cam_json, "camera", lo=1)
    return int(w), int(h)


def _T_world_cam(cam: dict, file: Path, record: str, atol: float) -> np.ndarray | None:
    if "cam_R_w2c" not in cam and "cam_t_w2c" not in cam:
        return None
    R = _numbers(cam, "cam_R_w2c", 9, file, record).reshape(3, 3)
    t = _numbers(cam, "cam_t_w2c", 3, file, record) * _MM
    check_rotation_matrix(R, atol=atol, what="cam_R_w2c", file=str(file), record=record)
    T = np.eye(4)
    T[:3, :3] = R.T
    T[:3, 3] = -R.T @ t
    return T


def _load_scene_dir(
    files: SceneFiles,
    split: str,
    models: Mapping[int, BopModel],
    names: Mapping[int, str] | None,
    default_size: tuple[int, int] | None,
    check_files: bool,
    atol: float,
) -> list[Scene]:
    scene_dir, sensor = files.scene_dir, files.sensor
    cam_file, gt_file, info_file = files.camera, files.gt, files.gt_info
    cams = _read_json(cam_file, cam_file.name, f"restore the scene's {cam_file.name} (BOP format)")
    gts = _read_json(gt_file, gt_file.name, f"restore the scene's {gt_file.name} (BOP format)")
    infos = _read_json(info_file, info_file.name,
                       "compute it with the BOP toolkit (scripts/calc_gt_info.py) or restore it")
    for data, f in ((cams, cam_file), (gts, gt_file), (infos, info_file)):
        if not isinstance(data, dict):
            raise DataError("top level must be an object keyed by image id", file=str(f), record=_TOP,
                            field="im_id", fix="use the BOP layout {\"<im_id>\": ...}")
    if not cams:
        raise DataError("scene has no images", file=str(cam_file), record=f"scene {scene_dir.name}", field="im_id",
                        fix="drop the empty scene folder")
    cam_ids = {_int_key(k, cam_file, "im_id"): k for k in cams}
    gt_ids = {_int_key(k, gt_file, "im_id"): k for k in gts}
    info_ids = {_int_key(k, info_file, "im_id"): k for k in infos}
    for im_id, key in gt_ids.items():
        if im_id not in cam_ids:
            raise DataError(f"image {im_id} has ground truth but no camera", file=str(gt_file), record=f"image {key}",
                            field="im_id", fix="add the image's cam_K to scene_camera.json or drop its ground truth")
    pic_field = files.modality  # "rgb" or "gray"
    rgb_files = index_images(files.image_dir, IMAGE_EXTS)
    depth_files = index_images(files.depth_dir, DEPTH_EXTS)
    if default_size is not None and rgb_files:  # camera.json is for sensor simulation: trust it if it agrees
        first = rgb_files[min(rgb_files)]
        if _image_size(first, cam_file, f"image {min(rgb_files)}", pic_field) != default_size:
            default_size = None  # e.g. T-LESS train_primesense (400x400) under camera_primesense.json (720x540)
    scene_name = scene_dir.name
    prefix = f"{split}/{scene_name}/{sensor}" if sensor else f"{split}/{scene_name}"
    out: list[Scene] = []
    for im_id in sorted(cam_ids):
        key = cam_ids[im_id]
        record = f"image {key}"
        cam = cams[key]
        if not isinstance(cam, dict):
            raise DataError("camera record must be a json object", file=str(cam_file), record=record, field="cam_K",
                            fix="store cam_K, depth_scale per image")
        if "cam_K" not in cam and "cam_model" in cam:
            raise DataError("the camera is a 'cam_model' (BOP24 non-pinhole, e.g. HOT3D fisheye); only pinhole "
                            "cam_K is supported", file=str(cam_file), record=record, field="cam_model",
                            fix="use a pinhole sensor / stream of the dataset, or undistort the images to a cam_K")
        K = _numbers(cam, "cam_K", 9, cam_file, record).reshape(3, 3)
        rgb_path = rgb_files.get(im_id)
        if rgb_path is None:
            if check_files or default_size is None:
                exts = "|".join(e.lstrip(".") for e in IMAGE_EXTS)
                looked = (f"{files.image_dir.name}/{im_id:06d}.{{{exts}}}" if files.image_dir is not None else
                          f"a folder {' or '.join(d.name + '/' for d in files.image_dirs)}")
                raise DataError(f"no picture of image {im_id}: looked for {looked}",
                                file=str(files.image_dir or files.image_dirs[0]), record=record, field=pic_field,
                                fix="restore the image or drop its records")
            rgb_path = (files.image_dir or files.image_dirs[0]) / f"{im_id:06d}.png"
        width, height = (default_size if default_size is not None
                         else _image_size(rgb_path, cam_file, record, pic_field))
        check_K(K, width, height, file=str(cam_file), record=record, field="cam_K")
        depth_path = depth_files.get(im_id)
        depth_scale = None
        if depth_path is not None or "depth_scale" in cam:
            depth_scale = _number(cam, "depth_scale", cam_file, record, lo=_DEPTH_SCALE_RANGE[0],
                                  hi=_DEPTH_SCALE_RANGE[1], unit=" mm per depth unit") * _MM
        T = _T_world_cam(cam, cam_file, record, atol)
        sid = f"{prefix}/{im_id:06d}"
        view = View(rgb_path, depth_path, K, width, height, T, [], f"{split}/{sensor}" if sensor else split, sid,
                    depth_scale, gray=pic_field == "gray")

        gt_list = gts.get(gt_ids[im_id], []) if im_id in gt_ids else []
        if not isinstance(gt_list, list):
            raise DataError("ground truth of an image must be a list of objects", file=str(gt_file), record=record,
                            field="im_id", fix="store [{cam_R_m2c, cam_t_m2c, obj_id}, ...] per image")
        if gt_list and im_id not in info_ids:
            raise DataError(f"image {im_id} has ground truth but no entry in scene_gt_info.json", file=str(info_file),
                            record=record, field="im_id", fix="recompute scene_gt_info.json (BOP toolkit calc_gt_info)")
        info_list = infos.get(info_ids[im_id], []) if im_id in info_ids else []
        if not isinstance(info_list, list) or len(info_list) != len(gt_list):
            n = len(info_list) if isinstance(info_list, list) else "no list"
            raise DataError(f"scene_gt_info has {n} entries for image {im_id} but scene_gt has {len(gt_list)}",
                            file=str(info_file), record=record, field="visib_fract",
                            fix="recompute scene_gt_info.json so it lists one entry per ground-truth object, in order")
        for k, (gt, info) in enumerate(zip(gt_list, info_list)):
            orec = f"image {key}, object {k}"
            R = _numbers(gt, "cam_R_m2c", 9, gt_file, orec).reshape(3, 3)
            check_rotation_matrix(R, atol=atol, what="cam_R_m2c", file=str(gt_file), record=orec)
            t = _numbers(gt, "cam_t_m2c", 3, gt_file, orec)
            if t[2] <= 0:
                raise DataError(f"object centre is behind the camera (cam_t_m2c z = {t[2]:g} mm)", file=str(gt_file),
                                record=orec, field="cam_t_m2c",
                                fix="store the model-to-camera translation in the OpenCV frame (z forward)")
            if t[2] < _MIN_T_Z_MM:
                raise DataError(f"cam_t_m2c z = {t[2]:g} mm is implausibly close (translations look like metres)",
                                file=str(gt_file), record=orec, field="cam_t_m2c",
                                fix="store cam_t_m2c in millimetres, as BOP does (multiply metres by 1000)")
            oid = gt.get("obj_id")
            if isinstance(oid, bool) or not isinstance(oid, int):
                raise DataError(f"'obj_id' must be an integer, got {oid!r}", file=str(gt_file), record=orec,
                                field="obj_id", fix="store the object's integer id")
            if oid not in models:
                raise DataError(f"obj_id {oid} is not in models_info.json (known: {sorted(models)})",
                                file=str(gt_file), record=orec, field="obj_id",
                                fix="use the dataset's own models_info.json or fix the obj_id")
            if names is not None and oid not in names:
                raise DataError(f"obj_id {oid} has no category name", file=str(gt_file), record=orec, field="obj_id",
                                fix="add the object to the category name map {\"<obj_id>\": \"name\"}")
            if not isinstance(info, dict):
                raise DataError("gt_info record must be a json object", file=str(info_file), record=orec,
                                field="visib_fract", fix="store bbox_obj, visib_fract, ... per object")
            vis = _number(info, "visib_fract", info_file, orec, lo=0.0, hi=1.0)
            _numbers(info, "bbox_obj", 4, info_file, orec)
            model = models[oid]
            center = R @ model.bbox_center + t * _MM
            name = names[oid] if names is not None else f"obj_{oid:06d}"
            view.objects.append(
                Object3D(name, center, model.size[::-1].copy(), R, np.full(4, np.nan), vis, 1.0, f"{sid}/{k}", None)
            )
        if view.objects:  # projected 2D boxes and truncation, all objects of the image at once
            corners = box_corners(np.stack([o.center_cam for o in view.objects]),  # (N, 8, 3)
                                  np.stack([o.dimensions for o in view.objects]),
                                  np.stack([o.R_cam for o in view.objects]))
            boxes, truncs = box2d_from_box3d(K, corners, width, height)  # (N, 4), (N,)
            for o, b, tr in zip(view.objects, np.asarray(boxes, np.float64), np.asarray(truncs, np.float64)):
                o.bbox2d, o.truncation = b.copy(), float(tr)
        out.append(Scene(sid, [view]))
    return out


def load_bop(
    root: str | os.PathLike,
    split: str | None = None,
    *,
    sensor: str | None = None,
    category_names: Mapping[int | str, str] | str | os.PathLike | None = None,
    scene_ids: Sequence[int] | None = None,
    check_files: bool = True,
    rotation_atol: float = 1e-4,
) -> list[Scene]:
    """Read one split (and one sensor) of a BOP dataset into single-view scenes (pixels stay on disk).

    Args:
        root: dataset root (holding ``models/models_info.json`` and the split folders).
        split: split folder, any name: ``"test"``, ``"val"``, ``"train_pbr"``, ``"test_primesense"``, ...;
            default: the root's only split (a DataError lists the splits when there are several; no split
            is assumed).
        sensor: the file-name suffix of multi-sensor datasets (IPD ``photoneo`` / ``cam1``..``cam3``, XYZ-IBD
            ``xyz`` / ``photoneo`` / ``realsense``, HOT3D ``rgb`` / ``gray1`` / ``gray2``): reads
            ``scene_camera_<sensor>.json`` etc.; ``""`` = the classic names. Default: the only sensor of the
            scenes read (a DataError lists them when there are several; none is assumed).
        category_names: obj_id -> name map or JSON file (see :func:`load_category_names`).
        scene_ids: read only these scenes (default: all, sorted).
        check_files: require every image file to exist (image sizes then come from the files' headers, or from
            ``camera[_<sensor>].json`` where it agrees with each scene's first image).
        rotation_atol: tolerance of the orthonormality check of rotations.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("BOP dataset root not found", file=str(root), record="dataset root", field="root",
                        fix="pass the folder that holds models/models_info.json and the split folders (test, ...)")
    split = resolve_split(root, split)
    split_dir = root / split
    models = load_models_info(find_models_info(root))
    names = load_category_names(category_names, root)
    dirs = sorted(d for d in split_dir.iterdir() if d.is_dir() and d.name.isdigit())
    if scene_ids is not None:
        wanted = {int(s) for s in scene_ids}
        dirs = [d for d in dirs if int(d.name) in wanted]
    if not dirs:
        raise DataError("no scene folders (<scene_id:06d>/scene_gt[_<sensor>].json) in the split",
                        file=str(split_dir), record=f"split {split}", field="scene_id",
                        fix="check the dataset root, the split name and scene_ids")
    sensor = resolve_sensor(root, split, sensor, dirs)
    default_size = _camera_size(root, split, sensor)
    scenes: list[Scene] = []
    for d in dirs:
        scenes.extend(_load_scene_dir(scene_files(d, sensor), split, models, names, default_size, check_files,
                                      rotation_atol))
    return scenes


# ----------------------------------------------------------------------------------------------
# writer
# ----------------------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def write_bop(
    scenes: Sequence[Scene],
    root: str | os.PathLike,
    split: str = "test",
    *,
    depth_scale_mm: float = 0.1,
    model_offset: Sequence[float] = (0.0, 0.0, 0.0),
) -> dict[int, str]:
    """Write canonical scenes as a BOP split under ``root``; returns the obj_id -> category map.

    Each scene becomes one BOP scene folder (index = position), each view one image. Every distinct
    (category, dimensions) pair becomes one box model whose frame is the object frame shifted by
    ``model_offset`` metres (so its bounding-box centre is ``model_offset``, exercising the centre
    convention of :func:`load_bop`). ``scene_gt_info.json`` carries ``visib_fract = visibility``,
    ``bbox_obj`` / ``bbox_visib`` = the stored 2D box (x, y, w, h) and box-area pixel counts (no
    masks are rendered). Depth is re-quantised to ``depth_scale_mm`` millimetres per unit; RGB files
    are copied. Also writes ``models/models_info.json`` and ``category_names.json``.
    """
    root = Path(root)
    off = np.asarray(model_offset, np.float64)
    model_ids: dict[tuple[str, tuple[float, ...]], int] = {}
    sizes: dict[int, np.ndarray] = {}
    names: dict[int, str] = {}
    for si, scene in enumerate(scenes):
        sdir = root / split / f"{si:06d}"
        (sdir / "rgb").mkdir(parents=True, exist_ok=True)
        cams: dict[str, Any] = {}
        gts: dict[str, Any] = {}
        infos: dict[str, Any] = {}
        for im_id, v in enumerate(scene.views):
            if v.crop is not None:
                raise DataError("cannot write a cropped view", record=str(v.image_id), field="crop",
                                fix="write the source views, not pseudo views")
            ext = Path(v.image_path).suffix.lower() or ".png"
            shutil.copyfile(v.image_path, sdir / "rgb" / f"{im_id:06d}{ext}")
            cam: dict[str, Any] = {"cam_K": np.asarray(v.K).reshape(-1).tolist(), "depth_scale": depth_scale_mm}
            if v.T_world_cam is not None:
                T_cw = np.linalg.inv(v.T_world_cam)
                cam["cam_R_w2c"] = T_cw[:3, :3].reshape(-1).tolist()
                cam["cam_t_w2c"] = (T_cw[:3, 3] / _MM).tolist()
            if v.depth_path is not None:
                from PIL import Image

                d_mm = load_depth(v).astype(np.float64) / _MM
                q = np.round(d_mm / depth_scale_mm)
                q = np.where((d_mm > 0) & (q <= 65535), q, 0).astype(np.uint16)
                (sdir / "depth").mkdir(exist_ok=True)
                Image.fromarray(q).save(sdir / "depth" / f"{im_id:06d}.png")
            cams[str(im_id)] = cam
            gl, il = [], []
            for o in v.objects:
                key = (o.category, tuple(np.round(np.asarray(o.dimensions, np.float64), 9)))
                if key not in model_ids:
                    model_ids[key] = len(model_ids) + 1
                    sizes[model_ids[key]] = np.asarray(o.dimensions, np.float64)
                    names[model_ids[key]] = o.category
                oid = model_ids[key]
                R = np.asarray(o.R_cam, np.float64)
                t = np.asarray(o.center_cam, np.float64) - R @ off
                gl.append({"cam_R_m2c": R.reshape(-1).tolist(), "cam_t_m2c": (t / _MM).tolist(), "obj_id": oid})
                b = np.asarray(o.bbox2d, np.float64)
                xywh = [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
                area = int(round(max(xywh[2], 0.0) * max(xywh[3], 0.0)))
                il.append({"bbox_obj": xywh, "bbox_visib": xywh, "px_count_all": area,
                           "px_count_valid": int(round(area * o.visibility)),
                           "px_count_visib": int(round(area * o.visibility)), "visib_fract": float(o.visibility)})
            gts[str(im_id)] = gl
            infos[str(im_id)] = il
        _write_json(sdir / "scene_camera.json", cams)
        _write_json(sdir / "scene_gt.json", gts)
        _write_json(sdir / "scene_gt_info.json", infos)
    info = {}
    for oid, size in sizes.items():
        ext = size[::-1]  # Omni3D [W, H, L] -> extents along the model's x, y, z
        mins = (off - ext / 2.0) / _MM
        s = ext / _MM
        info[str(oid)] = {"diameter": float(np.linalg.norm(s)), "min_x": mins[0], "min_y": mins[1], "min_z": mins[2],
                          "size_x": s[0], "size_y": s[1], "size_z": s[2]}
    _write_json(root / "models" / "models_info.json", {k: {a: float(x) for a, x in d.items()} for k, d in info.items()})
    _write_json(root / "category_names.json", {str(k): n for k, n in names.items()})
    return names

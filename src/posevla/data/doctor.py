"""Dataset doctor: find convention and unit mistakes in 3D grounding data before training on it.

``run_doctor(path)`` detects the format (Omni3D json / a directory with ``dataset.json``, a BOP
dataset root, a LeRobot v3 directory), reads it with the project's readers, and checks:

=====================  ==================================================================================
check                  what is looked at
=====================  ==================================================================================
read                   the strict reader accepts every record (its error names file, record, field)
intrinsics             K present, principal point inside the image, fx ~ fy, principal point near centre
rotation               rotations orthonormal and right-handed (det +1)
quaternion             stored quaternions are unit, wxyz, and agree with the stored rotation matrix
units                  translations / dimensions in metres (medians above 20 look like millimetres)
camera frame           objects in front of the camera (z > 0); projected centres inside the 2D boxes
                       (a y-up / mirrored convention puts them outside)
image orientation      projected 3D boxes agree with the stored 2D boxes (a flipped image does not)
depth scale            median valid depth within 0.05-20 m, and depth at projected object centres
                       agrees with the labelled z
label ranges           visibility / truncation within [0, 1]; some objects pass the label filter
plausible range        every object within the distance / size plausible for its kind of scene (tabletop
                       10 m / 3 m: generated and BOP; indoor 30 m / 15 m; outdoor 300 m / 40 m: by source)
constant labels        dimensions or depths with (near) zero spread: normalisation and bins blow up
bin coverage           share of labels outside the range of a given ``bins.json``
=====================  ==================================================================================

Findings are ``error`` (training on it would be wrong) or ``warning`` (suspicious); each names where
(file / record / field), what was found, and the fix. ``posevla doctor PATH`` prints the table and
exits non-zero when there is an error; the trainer calls :func:`run_doctor` at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from posevla.data.doctor_checks import Collector, Finding, check_raw_omni3d, check_scenes, scene_kind
from posevla.data.formats.lerobot import load_lerobot_v3
from posevla.data.formats.omni3d import (
    Object3D,
    Scene,
    View,
    dataset_info,
    dataset_source,
    load_omni3d,
    looks_like_omni3d,
    omni3d_jsons,
)
from posevla.data.grounding import LabelFilter
from posevla.errors import DataError

__all__ = ["Finding", "DoctorReport", "detect_format", "run_doctor"]





@dataclasses.dataclass
class DoctorReport:
    """The doctor's result; ``errors`` / ``warnings`` are the findings of each severity."""

    path: str
    format: str
    findings: list[Finding] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def checks(self, severity: str | None = None) -> set[str]:
        """Names of the checks with findings (of one severity)."""
        return {f.check for f in self.findings if severity is None or f.severity == severity}

    def table(self) -> str:
        """A plain-text table: severity | check | where | finding | fix."""
        head = f"posevla doctor: {self.path} ({self.format})"
        stats = ", ".join(f"{k} {v}" for k, v in self.stats.items())
        if not self.findings:
            return f"{head}\n{stats}\nno problems found"
        rows = [("severity", "check", "where", "finding", "fix")]
        order = sorted(self.findings, key=lambda f: (f.severity != "error", f.check))
        rows += [(f.severity, f.check, f.where, f.finding, f.fix) for f in order]
        widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((8, 18, 48, 200, 200))]
        lines = []
        for r in rows:
            cells = [r[i][: widths[i]].ljust(widths[i]) if i < 3 else r[i] for i in range(5)]
            lines.append(" | ".join(cells))
        lines.insert(1, "-+-".join("-" * w for w in widths[:3]) + "-+-" + "-" * 20)
        summary = f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        return "\n".join([head, stats, *lines, summary])


# ----------------------------------------------------------------------------------------------
# format detection
# ----------------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> tuple[str, Path]:
    """``(format, path)`` with format ``omni3d`` (path = the json), ``bop`` (the root) or ``lerobot``.

    A folder is a BOP root when it holds ``models*/models_info.json`` or a split folder with scene folders
    (:func:`posevla.data.formats.bop_layout.bop_splits`); a BOP scene or split folder, or a scene file
    (``scene_camera[_<sensor>].json``, ``scene_gt*.json``), points at its root. A folder with one json is
    Omni3D only if that json looks like one (``images`` and ``annotations``): every BOP root has a
    ``camera[_<sensor>].json``.
    """
    from posevla.data.formats.bop_layout import bop_splits, scene_sensors

    p = Path(path)

    def is_bop_root(d: Path) -> bool:
        return d.is_dir() and (any(m.is_dir() and (m / "models_info.json").is_file() for m in d.glob("models*"))
                               or bool(bop_splits(d)))

    def is_scene(d: Path) -> bool:
        return d.is_dir() and bool(scene_sensors(d))

    if p.is_file() and p.suffix == ".json":
        if p.name.startswith("scene_") and is_scene(p.parent):  # scene_camera / scene_gt[_info][_<sensor>].json
            return "bop", p.parent.parent.parent
        if p.name == "models_info.json":
            root = p.parent.parent if p.parent.name.startswith("models") else p.parent
            return "bop", root
        if p.name.startswith("camera") and is_bop_root(p.parent):  # camera[_<sensor>].json of a BOP root
            return "bop", p.parent
        return "omni3d", p
    jsons: list[Path] = []
    if p.is_dir():
        if (p / "dataset.json").is_file():
            return "omni3d", p / "dataset.json"
        if (p / "meta" / "info.json").is_file():
            return "lerobot", p
        if is_bop_root(p):
            return "bop", p
        if is_scene(p):  # a scene folder
            return "bop", p.parent.parent
        if any(is_scene(d) for d in p.iterdir() if d.name.isdigit()):  # a split folder
            return "bop", p.parent
        jsons = sorted(p.glob("*.json"))
        if len(jsons) == 1 and looks_like_omni3d(jsons[0]):
            return "omni3d", jsons[0]
    found = f"; jsons here: {', '.join(j.name for j in jsons[:5])}" if jsons else ""
    raise DataError("cannot tell the dataset format (looked for dataset.json, meta/info.json, "
                    "models*/models_info.json, <split>/<scene_id>/scene_camera[_<sensor>].json or scene_gt*.json, "
                    f"a single json with Omni3D's 'images' and 'annotations'{found})", file=str(p), field="path",
                    fix="pass an Omni3D json (or a folder with dataset.json), a BOP dataset root (with "
                    "models/models_info.json and split folders), or a LeRobot v3 folder (meta/info.json)")


# ----------------------------------------------------------------------------------------------
# raw record checks (collect every problem, unlike the strict readers)
# ----------------------------------------------------------------------------------------------



def _stored_omni3d_box(v: View, o: Object3D) -> tuple[np.ndarray, str]:
    """The stored 2D box the projection is compared with: ``bbox2D_proj`` (unclipped) where stored."""
    if o.bbox2d_proj is not None:
        return np.asarray(o.bbox2d_proj, np.float64), "unclipped"
    return np.asarray(o.bbox2d, np.float64), "proj"


def _doctor_omni3d(col: Collector, json_path: Path, kw: dict, stats: dict, read_kw: dict) -> None:
    check_raw_omni3d(col, json_path)
    try:
        scenes = load_omni3d(json_path, check_corners=False, **read_kw)  # corners: a raw check
    except DataError as e:
        if not col.has(e.record, e.field):
            col.from_error("read", e)
        return
    try:
        raw = json.loads(json_path.read_text(encoding="utf-8"))
        kind = scene_kind(dataset_source(dataset_info(raw), raw.get("images") or []))
    except (OSError, ValueError, AttributeError):
        kind = "outdoor"
    check_scenes(col, scenes, str(json_path), stored_boxes=_stored_omni3d_box, stats=stats, kind=kind, **kw)


def _doctor_bop(col: Collector, root: Path, kw: dict, stats: dict, category_names: Any) -> None:
    from posevla.data.formats.bop import bop_sensors, bop_splits, load_bop

    splits = bop_splits(root)
    parts = []
    scenes: list[Scene] = []
    for split in splits:
        sensors = bop_sensors(root, split) or [""]
        parts.append(split + (f"[{','.join(sensors)}]" if sensors != [""] else ""))
        for sensor in sensors:  # every sensor of a multi-sensor split
            try:
                scenes.extend(load_bop(root, split, sensor=sensor, category_names=category_names))
            except DataError as e:
                col.from_error("read", e)
    stats["splits"] = ",".join(parts)
    info_cache: dict[Path, Any] = {}

    def stored(v: View, o: Object3D) -> tuple[np.ndarray, str] | None:
        # annotation_id = "<split>/<scene>[/<sensor>]/<im_id>/<k>"; bbox_visib (x, y, w, h) of the visible silhouette
        try:
            split, scene, *sensor, im, k = str(o.annotation_id).split("/")
            f = root / split / scene / ("scene_gt_info" + "".join(f"_{s}" for s in sensor) + ".json")
            if f not in info_cache:
                info_cache[f] = json.loads(f.read_text(encoding="utf-8"))
            rec = info_cache[f][str(int(im))][int(k)]
            x, y, w, h = (float(a) for a in rec["bbox_visib"])
        except (ValueError, KeyError, IndexError, TypeError, OSError, json.JSONDecodeError):
            return None
        if w <= 0 or h <= 0:
            return None
        return np.array([x, y, x + w - 1, y + h - 1]), "tight"

    check_scenes(col, scenes, str(root), stored_boxes=stored, stats=stats, kind="tabletop", **kw)


def _doctor_lerobot(col: Collector, root: Path, stats: dict, max_episodes: int = 8) -> None:
    """Load with the strict reader (videos: each file opened, each episode's last frame decoded), then decode
    the first, middle and last frame of up to `max_episodes` episodes (spread over the dataset) of every pixel
    feature, so a dataset the loaders cannot read is never reported clean."""
    try:
        ds = load_lerobot_v3(root)
    except DataError as e:
        col.from_error("read", e)
        return
    lengths = ds.episode_lengths
    stats["episodes"] = len(lengths)
    stats["frames"] = int(np.sum(lengths))
    if ds.video_keys():
        stats["videos"] = ",".join(ds.video_keys())
    cams = ds.camera_config.cameras
    missing = [c for c in cams if None in ds.calibration(c).values()]
    stats["calibration"] = (ds.camera_config_file or "per-frame features") if not missing else (
        f"none for {','.join(missing)} (post-training only; stage 2 needs K and T_world_cam)")
    episodes = np.unique(np.linspace(0, len(lengths) - 1, min(len(lengths), max_episodes)).round().astype(int))
    decoded = 0
    for key in ds.pixel_keys():
        try:
            for e in episodes:
                T = int(lengths[e])
                for t in sorted({0, T // 2, T - 1}):
                    ds.frame_images(int(e), t, [key])
                    decoded += 1
        except DataError as err:
            col.from_error("pixels", err)
    stats["frames decoded"] = decoded
    ds.close()


def run_doctor(
    path: str | os.PathLike,
    *,
    bins: str | os.PathLike | None = None,
    category_names: Mapping[int | str, str] | str | os.PathLike | None = None,
    label_filter: LabelFilter | None = None,
    max_views: int = 2000,
    max_depth_images: int = 16,
    image_root: str | os.PathLike | None = None,
    depth_encoding: str | None = None,
) -> DoctorReport:
    """Check a dataset and return the findings (never raises for bad data; see the module docstring).

    Args:
        path: an Omni3D json or folder with ``dataset.json``, a BOP root, or a LeRobot v3 folder.
        bins: optional ``bins.json`` whose coverage of the labels is checked.
        category_names: BOP obj_id -> name map (see :func:`posevla.data.formats.bop.load_category_names`).
        label_filter: the filter whose survivors are counted (default :class:`LabelFilter`).
        max_views: views sampled for the 2D-box agreement checks.
        max_depth_images: views whose RGB and depth are read for the pixel checks.
        image_root: Omni3D: the folder ``file_path`` s start from (``datasets/`` of the official layout).
        depth_encoding: Omni3D: how the depth PNGs encode metres (default: the source's own).

    A folder of several Omni3D jsons (``datasets/Omni3D/``) is checked json by json into one report.
    """
    col = Collector()
    stats: dict[str, Any] = {}
    read_kw: dict[str, Any] = dict(image_root=image_root, depth_encoding=depth_encoding)
    jsons = omni3d_jsons(path) if not (Path(path) / "dataset.json").is_file() else []
    if len(jsons) > 1:
        kw = dict(bins=None if bins is None else str(bins), label_filter=label_filter or LabelFilter(),
                  max_views=max_views, max_depth_images=max_depth_images)
        for j in jsons:
            part: dict[str, Any] = {}
            _doctor_omni3d(col, j, kw, part, read_kw)
            stats[j.stem + ":"] = "(" + ", ".join(f"{k} {v}" for k, v in part.items()) + ")"
        return DoctorReport(str(path), "omni3d", col.finish(), stats)
    try:
        fmt, p = detect_format(path)
    except DataError as e:
        col.from_error("read", e)
        return DoctorReport(str(path), "unknown", col.finish(), stats)
    kw = dict(bins=None if bins is None else str(bins), label_filter=label_filter or LabelFilter(),
              max_views=max_views, max_depth_images=max_depth_images)
    if fmt == "omni3d":
        _doctor_omni3d(col, p, kw, stats, read_kw)
    elif fmt == "bop":
        _doctor_bop(col, p, kw, stats, category_names)
    else:
        _doctor_lerobot(col, p, stats)
    return DoctorReport(str(path), fmt, col.finish(), stats)

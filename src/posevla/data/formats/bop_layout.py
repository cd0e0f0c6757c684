"""Where the files of a BOP dataset live: split folders, sensors, and the per-scene file names.

Two naming schemes exist in BOP roots (the BOP toolkit's ``dataset_params`` / ``docs/bop_datasets_format.md``):

* **classic** (LM, T-LESS, YCB-V, ITODD, every ``train_pbr`` split, ...): one set of annotation files per scene,
  ``scene_camera.json``, ``scene_gt.json``, ``scene_gt_info.json``, images in ``rgb/`` or ``gray/``, depth in
  ``depth/``;
* **per sensor** (IPD, XYZ-IBD, ITODD-MV, HOT3D): each sensor of a scene has its own files,
  ``scene_camera_<sensor>.json``, ``scene_gt_<sensor>.json``, ``scene_gt_info_<sensor>.json``, images in
  ``rgb_<sensor>/`` or ``gray_<sensor>/``, depth in ``depth_<sensor>/``. HOT3D keys the files by image stream
  instead (``scene_camera_gray1.json`` with images in ``gray1/``), which the same rule covers: the image
  folder of "sensor" ``s`` is ``rgb_<s>/``, ``gray_<s>/`` or ``<s>/``, the first that exists.

Here a *sensor* is that file-name suffix; ``""`` stands for the classic names. A *split* is any folder of the
root (``test``, ``val``, ``train_pbr``, ``test_primesense``, ...) holding at least one scene folder
(``<scene_id:06d>/``) with a ``scene_camera*.json`` or ``scene_gt*.json`` file.

Image files are ``<im_id:06d>`` plus ``.png`` / ``.jpg`` / ``.jpeg`` / ``.tif`` / ``.tiff`` (BOP: ``.png``;
``.jpg`` for PBR renders and HANDAL / HOT3D; ``.tif`` for ITODD gray); depth files ``.png`` / ``.tif`` /
``.tiff`` (ITODD ships ``.tif``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from posevla.errors import DataError

__all__ = [
    "DEPTH_EXTS",
    "EVAL_SENSORS",
    "IMAGE_EXTS",
    "SceneFiles",
    "bop_sensors",
    "bop_splits",
    "camera_file",
    "describe_sensor",
    "index_images",
    "resolve_sensor",
    "resolve_split",
    "scene_files",
    "scene_sensors",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEPTH_EXTS = (".png", ".tif", ".tiff")

#: The sensor the BOP toolkit evaluates on, per multi-sensor dataset folder name (``eval_sensor`` of its
#: dataset parameters). Only named in error hints: :func:`resolve_sensor` never picks a sensor silently.
EVAL_SENSORS: dict[str, str] = {"ipd": "photoneo", "xyzibd": "xyz", "itoddmv": "3dlong"}

_SCENE_JSON = re.compile(r"^scene_(camera|gt)(?:_(.+))?\.json$")
_NOT_SENSORS = ("info", "coco")  # scene_gt_info[_s].json, scene_gt_coco[_s].json are not sensors of scene_gt


def _sensor_of(name: str) -> str | None:
    """The sensor of a scene-level json file name (``""`` = classic), or None for other files."""
    m = _SCENE_JSON.match(name)
    if m is None:
        return None
    kind, suffix = m.group(1), m.group(2) or ""
    if kind == "gt" and (suffix in _NOT_SENSORS or suffix.startswith(("info_", "coco_"))):
        return None
    return suffix


def scene_sensors(scene_dir: Path) -> list[str]:
    """Sensors with a ``scene_camera[_<s>].json`` or ``scene_gt[_<s>].json`` in a scene folder, sorted."""
    out = set()
    if scene_dir.is_dir():
        for p in scene_dir.iterdir():
            s = _sensor_of(p.name)
            if s is not None and p.is_file():
                out.add(s)
    return sorted(out)


def _scene_dirs(split_dir: Path) -> list[Path]:
    return sorted(d for d in split_dir.iterdir() if d.is_dir() and d.name.isdigit()) if split_dir.is_dir() else []


def bop_splits(root: str | os.PathLike) -> list[str]:
    """The split folders of a BOP root (any name: ``test``, ``train_pbr``, ``test_primesense``, ...), sorted.

    A split holds a scene folder (``<scene_id>/``, digits) with ``scene_camera.json`` / ``scene_gt.json`` or
    their per-sensor forms ``scene_camera_<sensor>.json`` / ``scene_gt_<sensor>.json``.
    """
    root = Path(root)
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith("models") and any(scene_sensors(s) for s in _scene_dirs(d)):
                out.append(d.name)
    return out


def bop_sensors(root: str | os.PathLike, split: str) -> list[str]:
    """All sensors of a split's scenes, sorted (``""`` = classic file names)."""
    out: set[str] = set()
    for d in _scene_dirs(Path(root) / split):
        out.update(scene_sensors(d))
    return sorted(out)


def describe_sensor(sensor: str) -> str:
    """How a sensor shows in messages: ``'photoneo' (scene_camera_photoneo.json)``."""
    return f"{sensor!r} (scene_camera_{sensor}.json)" if sensor else "'' (classic scene_camera.json)"


_SPLIT_PATTERN = "<split>/<scene_id>/scene_gt.json or scene_gt_<sensor>.json"


def resolve_split(root: Path, split: str | None) -> str:
    """``split`` checked to exist, or the only split of the root when ``split`` is None."""
    splits = bop_splits(root)
    if split is None:
        if len(splits) == 1:
            return splits[0]
        if not splits:
            subs = sorted(d.name for d in root.iterdir() if d.is_dir())
            raise DataError(f"no split folder found (looked for {_SPLIT_PATTERN}; folders here: {subs})",
                            file=str(root), record="dataset root", field="split",
                            fix="pass the BOP dataset root that holds the split folders (test, train_pbr, ...)")
        raise DataError(f"the root has several splits: {', '.join(splits)}; none is chosen by default",
                        file=str(root), record="dataset root", field="split",
                        fix=f"pass split= one of {', '.join(splits)}")
    if not isinstance(split, str) or not split or split in (".", "..") or any(c in split for c in "/\\"):
        raise DataError(f"split must be a folder name, got {split!r}", file=str(root), record="dataset root",
                        field="split", fix="pass the split folder's name, e.g. test or train_pbr")
    if split not in splits:
        where = "folder not found" if not (root / split).is_dir() else "folder has no scene folders"
        raise DataError(f"split '{split}': {where} (looked for {root / split}/<scene_id>/scene_gt[_<sensor>].json; "
                        f"splits here: {splits})", file=str(root / split), record="dataset root", field="split",
                        fix=f"pass an existing split{': ' + ', '.join(splits) if splits else ''}")
    return split


def resolve_sensor(root: Path, split: str, sensor: str | None, scene_dirs: list[Path] | None = None) -> str:
    """``sensor`` checked to exist in the split (or in ``scene_dirs`` of it), or the only sensor there when
    ``sensor`` is None."""
    if scene_dirs is None:
        sensors = bop_sensors(root, split)
    else:
        sensors = sorted({s for d in scene_dirs for s in scene_sensors(d)})
    listing = ", ".join(describe_sensor(s) for s in sensors)
    if not sensors and not sensor:
        return ""  # no scene file at all: the classic names, so the error names scene_camera.json
    if sensor is None:
        if len(sensors) == 1:
            return sensors[0]
        default = EVAL_SENSORS.get(root.resolve().name.lower())
        hint = f" ('{default}' is the sensor BOP evaluates {root.resolve().name} on)" if default in sensors else ""
        raise DataError(f"split '{split}' has several sensors: {listing}; none is chosen by default",
                        file=str(root / split), record=f"split {split}", field="sensor",
                        fix=f"pass sensor= one of {', '.join(repr(s) for s in sensors)}{hint}")
    if sensor not in sensors:
        looked = f"scene_camera_{sensor}.json" if sensor else "scene_camera.json"
        raise DataError(f"sensor {sensor!r} not found (looked for {looked} in the scenes; "
                        f"sensors here: {listing or 'none'})", file=str(root / split), record=f"split {split}",
                        field="sensor", fix=f"pass sensor= one of {', '.join(repr(s) for s in sensors)}")
    return sensor


def camera_file(root: Path, split: str, sensor: str) -> Path | None:
    """The root-level camera file for a split / sensor: ``camera_<sensor>.json``; for classic names
    ``camera_<type>.json`` of a split named ``<name>_<type>`` (T-LESS ``test_primesense``) if present, else
    ``camera.json``; None when there is none."""
    cands = [root / f"camera_{sensor}.json"] if sensor else []
    if not sensor and "_" in split:
        cands.append(root / f"camera_{split.split('_', 1)[1]}.json")
    if not sensor:
        cands.append(root / "camera.json")
    return next((c for c in cands if c.is_file()), None)


@dataclass(frozen=True)
class SceneFiles:
    """The files of one sensor of one scene folder."""

    scene_dir: Path
    sensor: str
    camera: Path  # scene_camera[_<s>].json
    gt: Path  # scene_gt[_<s>].json
    gt_info: Path  # scene_gt_info[_<s>].json
    image_dir: Path | None  # the first existing of image_dirs, None when none exists
    image_dirs: tuple[Path, ...]  # the folders looked in, in order
    depth_dir: Path  # depth[_<s>]/ (may not exist)

    @property
    def modality(self) -> str:
        """``gray`` for a gray image folder (``gray*/``), else ``rgb``."""
        return "gray" if self.image_dir is not None and self.image_dir.name.startswith("gray") else "rgb"


def scene_files(scene_dir: Path, sensor: str) -> SceneFiles:
    """The file names of ``sensor`` (``""`` = classic) in a scene folder; the image folder is ``rgb/`` else
    ``gray/`` (classic) or ``rgb_<s>/``, ``gray_<s>/``, ``<s>/`` (per sensor), the first that exists."""
    suffix = f"_{sensor}" if sensor else ""
    if sensor:
        here = scene_sensors(scene_dir)
        if sensor not in here:
            raise DataError(f"scene has no files of sensor {sensor!r} (looked for scene_camera_{sensor}.json; "
                            f"sensors of this scene: {', '.join(map(describe_sensor, here)) or 'none'})",
                            file=str(scene_dir / f"scene_camera_{sensor}.json"), record=f"scene {scene_dir.name}",
                            field="sensor", fix="pass a sensor every scene of the split has, or drop this scene")
        dirs = (scene_dir / f"rgb_{sensor}", scene_dir / f"gray_{sensor}", scene_dir / sensor)
    else:
        dirs = (scene_dir / "rgb", scene_dir / "gray")
    return SceneFiles(
        scene_dir, sensor, scene_dir / f"scene_camera{suffix}.json", scene_dir / f"scene_gt{suffix}.json",
        scene_dir / f"scene_gt_info{suffix}.json", next((d for d in dirs if d.is_dir()), None), dirs,
        scene_dir / f"depth{suffix}",
    )


def index_images(folder: Path | None, exts: tuple[str, ...]) -> dict[int, Path]:
    """``im_id -> file`` of the ``<im_id>.<ext>`` files of a folder (first extension of ``exts`` wins)."""
    out: dict[int, Path] = {}
    if folder is not None and folder.is_dir():
        rank = {e: i for i, e in enumerate(exts)}
        for p in sorted(folder.iterdir(), key=lambda q: rank.get(q.suffix.lower(), len(exts))):
            if p.suffix.lower() in rank and p.stem.isdigit():
                out.setdefault(int(p.stem), p)
    return out

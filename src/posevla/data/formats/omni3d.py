"""Reader for Omni3D 3D grounding json, as omni3d's DATA.md and cubercnn define it (real Omni3D
files and posevla's generated datasets, which follow the same layout).

``load_omni3d(json_path)`` validates the json and returns :class:`Scene` records; pixels stay on disk
until :func:`load_rgb` / :func:`load_depth` are called. Images are grouped into scenes by their
``scene_id`` (an image without one is a scene of its own). Field mapping:

* ``file_path`` is relative to the image root: Omni3D's own jsons (``datasets/Omni3D/*.json``) name
  images relative to ``datasets/``; a json whose folder is called ``Omni3D`` therefore defaults to
  its parent's parent when the images are not next to it; ``image_root=`` (``--image-root``) says so
  explicitly.
* ``dimensions`` are Omni3D's ``[W, H, L]`` with the object's local x spanning L, y spanning H, z
  spanning W (:mod:`posevla.geometry.boxes`); ``bbox3D_cam``, when present, must match the corners
  computed from ``center_cam``, ``dimensions`` and ``R_cam`` within :data:`CORNER_TOL` (1 cm).
* ``bbox2D_trunc`` (the projection clipped to the image) is the answer's 2D anchor; without it the
  clipped projection of the 3D box is used. ``bbox2D_proj`` is the unclipped projection
  (:attr:`Object3D.bbox2d_proj`). ``[-1, -1, -1, -1]`` is a placeholder, not a box.
* ``visibility`` / ``truncation`` of ``-1`` mean unavailable (kept as -1; filters ignore them).
* annotations with ``behind_camera: true`` or ``valid3D: false`` are skipped (their ``R_cam`` is a
  placeholder); ``info`` may be an object or a list of them (the first is used).
* depth: an image's ``depth_path`` (or, for SUN RGB-D, the release's ``depth/`` folder next to the
  image's ``image/`` folder) decoded with the source's encoding (:mod:`.depth_encoding`).

Everything that does not match the contract raises :class:`posevla.errors.DataError` naming the file,
the record (image / annotation id) and the field, with a fix.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posevla.data.formats.depth_encoding import check_depth_encoding, source_depth_encoding
from posevla.data.formats.pixels import load_depth as load_depth  # re-exported: the readers' pixel access
from posevla.data.formats.pixels import load_rgb as load_rgb
from posevla.errors import DataError
from posevla.geometry.boxes import box2d_from_box3d, box_corners
from posevla.geometry.camera import check_K
from posevla.geometry.rotations import check_rotation_matrix


#: Largest distance (m) between a stored ``bbox3D_cam`` corner and the corner computed from the box.
CORNER_TOL = 0.01
#: Omni3D source names (matched ignoring case and ``-_ ``), for recognising a json's source.
KNOWN_SOURCES = ("SUNRGBD", "ARKitScenes", "Hypersim", "Objectron", "KITTI", "nuScenes", "posevla-tabletop")


def _source_key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in "-_ ")


def _known(name: Any) -> bool:
    return isinstance(name, str) and _source_key(name) in {_source_key(k) for k in KNOWN_SOURCES}


def looks_like_omni3d(path: str | os.PathLike) -> bool:
    """True for a json that looks like Omni3D, read cheaply (not parsed): an object whose first MiB names
    ``images`` and, unless the file is longer than that (the key can sit past a long ``images`` list),
    ``annotations``. A BOP root's ``camera.json`` is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
            longer = bool(f.read(1))
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and b'"images"' in head and (longer or b'"annotations"' in head)


def omni3d_jsons(folder: str | os.PathLike) -> list[Path]:
    """The Omni3D jsons in a folder (e.g. ``datasets/Omni3D/`` with one json per source and split)."""
    p = Path(folder)
    return [j for j in sorted(p.glob("*.json")) if looks_like_omni3d(j)] if p.is_dir() else []


def dataset_info(data: dict) -> dict:
    """A json's ``info`` as one dict: Omni3D allows an object or a list of objects (the first is used)."""
    info = data.get("info") or {}
    if isinstance(info, list):
        info = next((x for x in info if isinstance(x, dict)), {})
    return info if isinstance(info, dict) else {}


def dataset_source(info: dict, images: list) -> str | None:
    """The Omni3D source of a json: ``info.source``, else the first word of ``info.name``, else the
    first folder of the first image's ``file_path`` (Omni3D paths start with the source, e.g.
    ``SUNRGBD/kv1/...``; KITTI's with ``KITTI_object``)."""
    for cand in (info.get("source"), str(info.get("name") or "").split(" ")[0]):
        if _known(cand):
            return cand
    if images and isinstance(images[0], dict) and isinstance(images[0].get("file_path"), str):
        first = images[0]["file_path"].replace("\\", "/").split("/")[0]
        for cand in (first, first.split("_")[0]):
            if _known(cand):
                return cand
    src = info.get("source")
    return src if isinstance(src, str) else None


@dataclass
class Object3D:
    """One annotated object in one view (camera frame, metres).

    ``p_cam = R_cam @ p_obj + center_cam``; ``dimensions`` = Omni3D's [W, H, L] (local x spans L,
    y spans H, z spans W); ``bbox2d`` = x1 y1 x2 y2 in pixels, the projected 3D box clipped to the image
    (the answer's 2D anchor); ``bbox2d_proj`` the unclipped projection as stored (None if not stored).
    ``visibility`` / ``truncation`` are fractions, or -1 where the dataset does not know them.
    """

    category: str
    center_cam: np.ndarray
    dimensions: np.ndarray
    R_cam: np.ndarray
    bbox2d: np.ndarray
    visibility: float
    truncation: float
    annotation_id: Any = None
    depth_min: float | None = None
    bbox2d_proj: np.ndarray | None = None


@dataclass(frozen=True)
class Crop:
    """A pixel window of a stored image: top-left ``(x0, y0)`` in the stored image of size
    ``source_width`` x ``source_height``. The window's own size is the view's ``width`` x ``height``."""

    x0: int
    y0: int
    source_width: int
    source_height: int


@dataclass
class View:
    """One image of a scene. ``T_world_cam`` (OpenCV axes) is ``None`` when the json has none.

    With ``crop`` set, the view is a window of the stored image (pseudo multi-view,
    :mod:`posevla.data.views`): ``K``, ``width`` and ``height`` describe the window, and
    :func:`load_rgb` / :func:`load_depth` return the window's pixels.
    """

    image_path: Path
    depth_path: Path | None
    K: np.ndarray
    width: int
    height: int
    T_world_cam: np.ndarray | None
    objects: list[Object3D] = field(default_factory=list)
    camera: str = ""
    image_id: Any = None
    depth_scale: float | None = None
    crop: Crop | None = None
    depth_encoding: str = "linear"
    gray: bool = False  # a gray picture (BOP's gray/ modality), read as three equal channels


@dataclass
class Scene:
    scene_id: str
    views: list[View]


# ----------------------------------------------------------------------------------------------
# json validation helpers
# ----------------------------------------------------------------------------------------------


class _Ctx:
    def __init__(self, file: str):
        self.file = file

    def err(self, msg: str, record: Any = None, field: str | None = None, fix: str | None = None) -> DataError:
        return DataError(msg, file=self.file, record=record, field=field, fix=fix)

    def get(self, rec: dict, key: str, record: Any, what: str) -> Any:
        if key not in rec:
            raise self.err(
                f"missing key '{key}' in {what}", record, key,
                fix=f"add '{key}' to every {what} (see docs/design.md, data/)",
            )
        return rec[key]

    def array(self, value: Any, shape: tuple[int, ...], record: Any, fld: str) -> np.ndarray:
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise self.err(f"'{fld}' is not a numeric array: {str(value)[:80]}", record, fld,
                           fix=f"store '{fld}' as a list of numbers of shape {shape}") from None
        if a.shape != shape:
            raise self.err(f"'{fld}' must have shape {shape}, got {a.shape}", record, fld,
                           fix=f"store '{fld}' as a list of numbers of shape {shape}")
        if not np.all(np.isfinite(a)):
            raise self.err(f"'{fld}' contains NaN or inf", record, fld,
                           fix=f"repair or drop the record whose '{fld}' is not finite")
        return a

    def number(self, value: Any, record: Any, fld: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.err(f"'{fld}' must be a number, got {value!r}", record, fld,
                           fix=f"store '{fld}' as a JSON number")
        if not math.isfinite(float(value)):
            raise self.err(f"'{fld}' is not finite ({value!r})", record, fld,
                           fix=f"repair or drop the record whose '{fld}' is not finite")
        return float(value)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError("dataset json not found", file=str(path), fix="check the path, or generate the dataset first "
                        "(posevla.sim.tabletop.generate_dataset)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid json: {e.msg} at line {e.lineno} column {e.colno}", file=str(path),
                        fix="the file is corrupt or truncated; regenerate or re-download it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read json: {e}", file=str(path), fix="check the file's permissions and encoding") from None
    if not isinstance(data, dict):
        raise DataError("top level must be a json object with 'images' and 'annotations'", file=str(path),
                        fix="use the Omni3D layout {info, categories, images, annotations}")
    return data


def _resolve(base: Path, p: str) -> Path:
    q = Path(os.path.expanduser(str(p)))
    return q if q.is_absolute() else base / q


def _image_base(path: Path, image_root: str | os.PathLike | None, images: Any) -> Path:
    """Folder that relative ``file_path`` s start from: ``image_root``; else the json's folder, or, for a
    json inside an ``Omni3D`` folder (the official ``datasets/Omni3D/*.json``), ``datasets/``."""
    if image_root is not None:
        return Path(os.path.expanduser(str(image_root)))
    base = path.parent
    first = images[0] if isinstance(images, list) and images and isinstance(images[0], dict) else {}
    fp = first.get("file_path")
    if isinstance(fp, str) and fp and not _resolve(base, fp).is_file() and base.name.lower() == "omni3d":
        if _resolve(base.parent, fp).is_file():
            return base.parent
    return base


def _sunrgbd_depth(image_path: Path) -> Path | None:
    """SUN RGB-D's release keeps each image's depth in the sibling ``depth/`` folder:
    ``<scene>/image/<name>.jpg`` -> ``<scene>/depth/<name>.png`` (or the folder's only PNG)."""
    if image_path.parent.name != "image":
        return None
    folder = image_path.parent.parent / "depth"
    same = folder / (image_path.stem + ".png")
    if same.is_file():
        return same
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    return pngs[0] if len(pngs) == 1 else None


def _placeholder(value: Any) -> bool:
    """Omni3D's ``-1`` placeholders: a box of four -1 (or any negative-width box of -1s)."""
    return isinstance(value, list) and len(value) == 4 and all(v == -1 for v in value)


def check_bbox3d(file: str, a: dict, center: np.ndarray, dims: np.ndarray, R: np.ndarray, rec: str) -> None:
    """``bbox3D_cam`` (when stored) against the corners of (center, dims, R) in Omni3D's order and axes;
    DataError naming the record when a corner is off by more than :data:`CORNER_TOL`."""
    if a.get("bbox3D_cam") is None:
        return
    cx = _Ctx(file)
    stored = cx.array(a["bbox3D_cam"], (8, 3), rec, "bbox3D_cam")
    ours = box_corners(center, dims, R)  # (8, 3)
    err = float(np.max(np.linalg.norm(stored - ours, axis=1)))
    if err <= CORNER_TOL:
        return
    hint = ""
    swapped = box_corners(center, dims[::-1].copy(), R)
    if float(np.max(np.linalg.norm(stored - swapped, axis=1))) <= CORNER_TOL:
        hint = (" -- they match with W and L exchanged: the file puts dimensions on local x, y, z, not Omni3D's "
                "[W, H, L] with x spanning L and z spanning W")
    raise cx.err(
        f"bbox3D_cam disagrees with the box of center_cam, dimensions and R_cam by {err:.3g} m (tolerance "
        f"{CORNER_TOL} m){hint}", rec, "bbox3D_cam",
        fix="store dimensions as Omni3D's [W, H, L] (local x = +-L/2, y = +-H/2, z = +-W/2) and the corners "
            "in Omni3D's order (v0 = (-L/2, -H/2, -W/2), v1 = (L/2, -H/2, -W/2), ...); regenerate posevla "
            "datasets written before this convention",
    )


def _anchor_box(cx: _Ctx, a: dict, corners: np.ndarray, view: View, rec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(the clipped 2D box used as the answer's anchor, the stored unclipped projection or None)."""
    boxes: dict[str, np.ndarray] = {}
    for key in ("bbox2D_trunc", "bbox2D_proj", "bbox2D_tight"):
        v = a.get(key)
        if v is None or _placeholder(v):
            continue
        b = cx.array(v, (4,), rec, key)
        if b[2] < b[0] or b[3] < b[1]:
            raise cx.err(f"'{key}' must be [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1, got {b.tolist()}", rec,
                         key, fix="store corners, not [x, y, w, h]")
        boxes[key] = b
    proj = boxes.get("bbox2D_proj")
    if "bbox2D_trunc" in boxes:
        return boxes["bbox2D_trunc"], proj
    clipped, _ = box2d_from_box3d(view.K, corners, view.width, view.height)
    if np.all(np.isfinite(clipped)):
        return np.asarray(clipped, np.float64), proj
    if "bbox2D_tight" in boxes:
        return boxes["bbox2D_tight"], proj
    raise cx.err("the 3D box projects nowhere into the image and no 2D box is stored", rec, "bbox2D_trunc",
                 fix="drop the record or set behind_camera true / valid3D false")


def load_omni3d(
    json_path: str | os.PathLike,
    *,
    depth_scale: float | None = None,
    depth_encoding: str | None = None,
    image_root: str | os.PathLike | None = None,
    check_files: bool = True,
    check_corners: bool = True,
) -> list[Scene]:
    """Read and validate an Omni3D json into scenes (pixels are read later, on demand).

    Args:
        json_path: the dataset json.
        depth_scale: metres per depth-PNG unit (selects the ``linear`` encoding); default
            ``info.depth_scale`` of the json.
        depth_encoding: how depth PNGs encode metres (:data:`~.depth_encoding.DEPTH_ENCODINGS`); default
            ``info.depth_encoding``, else the source's (:data:`~.depth_encoding.SOURCE_DEPTH_ENCODINGS`,
            e.g. SUN RGB-D's toolbox encoding).
        image_root: base folder of relative ``file_path``/``depth_path`` (``datasets/`` for Omni3D's own
            jsons); default: the json's folder (or ``datasets/`` for a json in ``datasets/Omni3D/``).
        check_files: check that every image and depth file exists (cheap ``stat``; contents are
            checked when read).
        check_corners: check ``bbox3D_cam`` against the box (the data doctor reports it as a finding
            instead, to go on checking the rest).

    Returns scenes in order of first appearance; views keep the json's image order.
    """
    path = Path(json_path)
    cx = _Ctx(str(path))
    data = _read_json(path)
    raw_info = data.get("info")
    if raw_info is not None and not (isinstance(raw_info, dict) or (
            isinstance(raw_info, list) and all(isinstance(x, dict) for x in raw_info))):
        raise cx.err("'info' must be an object (or a list of objects)", field="info", fix="store info as a json object")
    info = dataset_info(data)
    images = cx.get(data, "images", None, "dataset json")
    anns = cx.get(data, "annotations", None, "dataset json")
    if not isinstance(images, list):
        raise cx.err("'images' must be a list", field="images", fix="store images as a json list")
    if not isinstance(anns, list):
        raise cx.err("'annotations' must be a list", field="annotations", fix="store annotations as a json list")
    base = _image_base(path, image_root, images)
    source = dataset_source(info, images)
    # precedence: the caller's encoding or scale, then the json's encoding or scale, then the source's encoding
    info_enc = info.get("depth_encoding")
    if info_enc is not None:
        try:
            check_depth_encoding(str(info_enc))
        except ValueError as e:
            raise cx.err(str(e), "info", "depth_encoding", fix="set info.depth_encoding to one of the listed") from None
    if depth_encoding is not None:
        try:
            check_depth_encoding(str(depth_encoding))
        except ValueError as e:
            raise cx.err(str(e), "info", "depth_encoding", fix="pass one of the listed encodings") from None
    elif depth_scale is None:
        if info_enc is not None:
            depth_encoding = info_enc
        elif info.get("depth_scale") is not None:
            depth_scale = cx.number(info["depth_scale"], "info", "depth_scale")
        else:
            depth_encoding = source_depth_encoding(source)
    if depth_scale is not None and not (float(depth_scale) > 0):
        raise cx.err(f"depth_scale must be positive, got {depth_scale}", "info", "depth_scale",
                     fix="set info.depth_scale to metres per depth unit (1e-4 for posevla data)")
    if depth_encoding is None:
        depth_encoding = "linear"
    depth_encoding = str(depth_encoding)
    is_sunrgbd = source is not None and _source_key(source) == _source_key("SUNRGBD")
    cat_names: dict[Any, str] = {}
    for c in data.get("categories") or []:
        if isinstance(c, dict) and "id" in c and "name" in c:
            cat_names[c["id"]] = str(c["name"])

    views: dict[Any, View] = {}
    order: list[str] = []
    groups: dict[str, list[View]] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict):
            raise cx.err("image record must be an object", f"images[{i}]", fix="store each image as a json object")
        iid = cx.get(im, "id", f"images[{i}]", "image")
        rec = f"image id {iid}"
        if iid in views:
            raise cx.err(f"duplicate image id {iid!r}", rec, "id", fix="give every image a unique id")
        w = cx.get(im, "width", rec, "image")
        h = cx.get(im, "height", rec, "image")
        for name, v in (("width", w), ("height", h)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or v <= 0:
                raise cx.err(f"'{name}' must be a positive integer, got {v!r}", rec, name,
                             fix="record the image size in pixels")
        w, h = int(w), int(h)
        K = cx.array(cx.get(im, "K", rec, "image"), (3, 3), rec, "K")
        check_K(K, w, h, file=str(path), record=rec, field="K")
        fp = cx.get(im, "file_path", rec, "image")
        if not isinstance(fp, str) or not fp:
            raise cx.err("'file_path' must be a non-empty string", rec, "file_path", fix="store the image's path")
        image_path = _resolve(base, fp)
        if check_files and not image_path.is_file():
            raise cx.err(f"image file not found: {image_path} (file_path relative to {base})", rec, "file_path",
                         fix="pass the folder that file_path starts from as image_root (--image-root; for Omni3D's "
                             "own jsons the 'datasets' folder), or restore the file")
        depth_path = None
        dp = im.get("depth_path")
        if dp is not None:
            if not isinstance(dp, str) or not dp:
                raise cx.err("'depth_path' must be a string or null", rec, "depth_path", fix="store the depth PNG's path")
            depth_path = _resolve(base, dp)
            if check_files and not depth_path.is_file():
                raise cx.err(f"depth file not found: {depth_path}", rec, "depth_path",
                             fix="fix depth_path or restore the file (or set it to null)")
        elif is_sunrgbd:
            depth_path = _sunrgbd_depth(image_path)
        T = None
        if im.get("T_world_cam") is not None:
            T = cx.array(im["T_world_cam"], (4, 4), rec, "T_world_cam")
            if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6):
                raise cx.err(f"T_world_cam's last row must be [0,0,0,1], got {T[3].tolist()}", rec, "T_world_cam",
                             fix="store a 4x4 homogeneous transform (camera to world, OpenCV axes)")
            check_rotation_matrix(T[:3, :3], what="T_world_cam", file=str(path), record=rec)
        view = View(image_path, depth_path, K, w, h, T, [], str(im.get("camera", "")), iid, depth_scale,
                    depth_encoding="linear" if depth_scale is not None else depth_encoding)
        views[iid] = view
        sid = im.get("scene_id")
        sid = f"image:{iid}" if sid is None else str(sid)
        if sid not in groups:
            groups[sid] = []
            order.append(sid)
        groups[sid].append(view)

    ann_ids: set = set()
    for j, a in enumerate(anns):
        if not isinstance(a, dict):
            raise cx.err("annotation record must be an object", f"annotations[{j}]",
                         fix="store each annotation as a json object")
        aid = a.get("id", f"annotations[{j}]")
        rec = f"annotation id {aid}" if "id" in a else aid
        if "id" in a:
            if aid in ann_ids:
                raise cx.err(f"duplicate annotation id {aid!r}", rec, "id", fix="give every annotation a unique id")
            ann_ids.add(aid)
        img_id = cx.get(a, "image_id", rec, "annotation")
        if img_id not in views:
            raise cx.err(f"annotation points at unknown image id {img_id!r}", rec, "image_id",
                         fix="drop the annotation or add its image to 'images'")
        for flag, skip_if in (("valid3D", False), ("behind_camera", True)):
            val = a.get(flag, not skip_if)
            if not isinstance(val, bool):
                raise cx.err(f"'{flag}' must be true or false, got {val!r}", rec, flag, fix="store a json boolean")
        if a.get("valid3D", True) is False or a.get("behind_camera", False) is True:
            continue
        cat = a.get("category_name")
        if cat is None:
            if "category_id" in a and a["category_id"] in cat_names:
                cat = cat_names[a["category_id"]]
            else:
                raise cx.err("missing key 'category_name' in annotation", rec, "category_name",
                             fix="add category_name (or a category_id listed in 'categories')")
        if not isinstance(cat, str) or not cat.strip():
            raise cx.err(f"'category_name' must be a non-empty string, got {cat!r}", rec, "category_name",
                         fix="store the category as text")
        center = cx.array(cx.get(a, "center_cam", rec, "annotation"), (3,), rec, "center_cam")
        dims = cx.array(cx.get(a, "dimensions", rec, "annotation"), (3,), rec, "dimensions")
        if np.any(dims <= 0):
            raise cx.err(f"dimensions must be positive, got {dims.tolist()}", rec, "dimensions",
                         fix="store the box size [W, H, L] in metres (all > 0), or set valid3D to false")
        R = cx.array(cx.get(a, "R_cam", rec, "annotation"), (3, 3), rec, "R_cam")
        check_rotation_matrix(R, what="R_cam", file=str(path), record=rec)
        if check_corners:
            check_bbox3d(cx.file, a, center, dims, R, rec)
        box, proj = _anchor_box(cx, a, box_corners(center, dims, R), views[img_id], rec)
        vis = cx.number(a.get("visibility", -1.0), rec, "visibility")
        trunc = cx.number(a.get("truncation", -1.0), rec, "truncation")
        dmin = a.get("depth_min")
        dmin = cx.number(dmin, rec, "depth_min") if dmin is not None else None
        views[img_id].objects.append(Object3D(cat, center, dims, R, box, vis, trunc, a.get("id"), dmin, proj))

    return [Scene(sid, groups[sid]) for sid in order]

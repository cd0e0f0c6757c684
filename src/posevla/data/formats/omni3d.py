"""Reader for Omni3D-style 3D grounding json (the embedded MuJoCo dataset and real Omni3D files).

``load_omni3d(json_path)`` validates the json and returns :class:`Scene` records; pixels stay on disk
until :func:`load_rgb` / :func:`load_depth` are called. Images are grouped into scenes by their
``scene_id`` (an image without one is a scene of its own). Annotations with ``valid3D: false`` are
skipped (real Omni3D uses that flag for boxes without usable 3D labels).

Everything that does not match the contract raises :class:`posevla.errors.DataError` naming the file,
the record (image / annotation id) and the field, with a fix.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posevla.errors import DataError
from posevla.geometry.camera import check_K
from posevla.geometry.rotations import check_rotation_matrix

_PNG_SIG = b"\x89PNG\r\n\x1a\n"

#: Metres per unit of the 16-bit depth PNGs of each Omni3D source that has depth (spec §2.1). A
#: json's ``info.depth_scale`` (or ``depth_scale=``) overrides it. Objectron, Hypersim and nuScenes
#: ship no depth PNG, so they are absent. Keys are matched case-insensitively, ignoring ``-_ ``.
DEPTH_SCALES: dict[str, float] = {
    "SUNRGBD": 1e-4,  # SUN RGB-D depth PNG in 0.1 mm
    "ARKitScenes": 1e-3,  # millimetres
    "KITTI": 1.0 / 256.0,  # KITTI depth maps: value / 256 = metres
    "posevla-tabletop": 1e-4,  # posevla.sim.tabletop
}


def _source_key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in "-_ ")


def source_depth_scale(source: str) -> float | None:
    """Metres per depth-PNG unit of an Omni3D source name (e.g. ``"SUNRGBD"``), or None if unknown."""
    table = {_source_key(k): v for k, v in DEPTH_SCALES.items()}
    return table.get(_source_key(source))


def dataset_source(info: dict, images: list) -> str | None:
    """The Omni3D source of a json: ``info.source``, else the first word of ``info.name``, else the
    first folder of the first image's ``file_path`` (Omni3D paths start with the source, e.g.
    ``SUNRGBD/kv1/...``)."""
    for cand in (info.get("source"), str(info.get("name") or "").split(" ")[0]):
        if isinstance(cand, str) and source_depth_scale(cand) is not None:
            return cand
    if images and isinstance(images[0], dict) and isinstance(images[0].get("file_path"), str):
        first = images[0]["file_path"].replace("\\", "/").split("/")[0]
        if source_depth_scale(first) is not None:
            return first
    src = info.get("source")
    return src if isinstance(src, str) else None


@dataclass
class Object3D:
    """One annotated object in one view (camera frame, metres).

    ``p_cam = R_cam @ p_obj + center_cam``; ``dimensions`` = [w, h, l] along the object's x, y, z;
    ``bbox2d`` = x1 y1 x2 y2 in pixels (projected 3D box clipped to the image).
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


def load_omni3d(
    json_path: str | os.PathLike,
    *,
    depth_scale: float | None = None,
    image_root: str | os.PathLike | None = None,
    check_files: bool = True,
) -> list[Scene]:
    """Read and validate an Omni3D-style json into scenes (pixels are read later, on demand).

    Args:
        json_path: the dataset json.
        depth_scale: metres per depth-PNG unit; defaults to ``info.depth_scale`` of the json, else to
            the convention of the json's source (:data:`DEPTH_SCALES`, e.g. SUN RGB-D 1e-4 m).
        image_root: base folder of relative ``file_path``/``depth_path``; defaults to the json's folder.
        check_files: check that every image and depth file exists (cheap ``stat``; contents are
            checked when read).

    Returns scenes in order of first appearance; views keep the json's image order.
    """
    path = Path(json_path)
    cx = _Ctx(str(path))
    data = _read_json(path)
    base = Path(image_root) if image_root is not None else path.parent
    info = data.get("info") or {}
    if not isinstance(info, dict):
        raise cx.err("'info' must be an object", field="info", fix="store info as a json object")
    if depth_scale is None and info.get("depth_scale") is not None:
        depth_scale = cx.number(info["depth_scale"], "info", "depth_scale")
    if depth_scale is not None and not (float(depth_scale) > 0):
        raise cx.err(f"depth_scale must be positive, got {depth_scale}", "info", "depth_scale",
                     fix="set info.depth_scale to metres per depth unit (1e-4 for posevla data)")

    images = cx.get(data, "images", None, "dataset json")
    anns = cx.get(data, "annotations", None, "dataset json")
    if depth_scale is None and isinstance(images, list):
        src = dataset_source(info, images)
        depth_scale = source_depth_scale(src) if src else None
    if not isinstance(images, list):
        raise cx.err("'images' must be a list", field="images", fix="store images as a json list")
    if not isinstance(anns, list):
        raise cx.err("'annotations' must be a list", field="annotations", fix="store annotations as a json list")
    cat_names: dict[Any, str] = {}
    for c in data.get("categories") or []:
        if isinstance(c, dict) and "id" in c and "name" in c:
            cat_names[c["id"]] = str(c["name"])

    views: dict[Any, View] = {}
    scene_of: dict[Any, str] = {}
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
            raise cx.err(f"image file not found: {image_path}", rec, "file_path",
                         fix="fix file_path (relative to the json's folder or image_root) or restore the file")
        depth_path = None
        dp = im.get("depth_path")
        if dp is not None:
            if not isinstance(dp, str) or not dp:
                raise cx.err("'depth_path' must be a string or null", rec, "depth_path", fix="store the depth PNG's path")
            depth_path = _resolve(base, dp)
            if check_files and not depth_path.is_file():
                raise cx.err(f"depth file not found: {depth_path}", rec, "depth_path",
                             fix="fix depth_path or restore the file (or set it to null)")
        T = None
        if im.get("T_world_cam") is not None:
            T = cx.array(im["T_world_cam"], (4, 4), rec, "T_world_cam")
            if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6):
                raise cx.err(f"T_world_cam's last row must be [0,0,0,1], got {T[3].tolist()}", rec, "T_world_cam",
                             fix="store a 4x4 homogeneous transform (camera to world, OpenCV axes)")
            check_rotation_matrix(T[:3, :3], what="T_world_cam", file=str(path), record=rec)
        view = View(image_path, depth_path, K, w, h, T, [], str(im.get("camera", "")), iid, depth_scale)
        views[iid] = view
        sid = im.get("scene_id")
        sid = f"image:{iid}" if sid is None else str(sid)
        scene_of[iid] = sid
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
        valid = a.get("valid3D", True)
        if not isinstance(valid, bool):
            raise cx.err(f"'valid3D' must be true or false, got {valid!r}", rec, "valid3D", fix="store a json boolean")
        if not valid:
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
                         fix="store the box size [w, h, l] in metres (all > 0), or set valid3D to false")
        R = cx.array(cx.get(a, "R_cam", rec, "annotation"), (3, 3), rec, "R_cam")
        check_rotation_matrix(R, what="R_cam", file=str(path), record=rec)
        bkey = next((k for k in ("bbox2D_proj", "bbox2D_trunc", "bbox2D_tight") if a.get(k) is not None), None)
        if bkey is None:
            raise cx.err("missing key 'bbox2D_proj' in annotation", rec, "bbox2D_proj",
                         fix="add the projected 2D box [x1, y1, x2, y2]")
        box = cx.array(a[bkey], (4,), rec, bkey)
        if box[2] < box[0] or box[3] < box[1]:
            raise cx.err(f"'{bkey}' must be [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1, got {box.tolist()}", rec,
                         bkey, fix="store corners, not [x, y, w, h]")
        if "bbox3D_cam" in a and a["bbox3D_cam"] is not None:
            cx.array(a["bbox3D_cam"], (8, 3), rec, "bbox3D_cam")
        vis = cx.number(a.get("visibility", 1.0), rec, "visibility")
        trunc = cx.number(a.get("truncation", 0.0), rec, "truncation")
        dmin = a.get("depth_min")
        dmin = cx.number(dmin, rec, "depth_min") if dmin is not None else None
        views[img_id].objects.append(Object3D(cat, center, dims, R, box, vis, trunc, a.get("id"), dmin))

    return [Scene(sid, groups[sid]) for sid in order]


# ----------------------------------------------------------------------------------------------
# pixels
# ----------------------------------------------------------------------------------------------


def _png_header(path: Path) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) of a PNG, or None for other formats."""
    with open(path, "rb") as f:
        head = f.read(33)
    if not head.startswith(_PNG_SIG):
        return None
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise DataError("PNG header is truncated", file=str(path), field="IHDR", fix="re-export the image")
    w, h, bd, ct = struct.unpack(">IIBB", head[16:26])
    return w, h, bd, ct


def _open_image(path: Path, view: View, field: str):
    from PIL import Image

    rec = f"image id {view.image_id}" if view.image_id is not None else None
    if not path.is_file():
        raise DataError(f"file not found: {path}", file=str(path), record=rec, field=field,
                        fix="restore the file or fix the path in the json")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, zlib.error, struct.error) as e:
        raise DataError(f"cannot read image ({e})", file=str(path), record=rec, field=field,
                        fix="the file is truncated or corrupt; regenerate or re-download it") from None
    exp_w, exp_h = (view.crop.source_width, view.crop.source_height) if view.crop else (view.width, view.height)
    if img.size != (exp_w, exp_h):
        hint = " (width and height swapped: the image is rotated by 90 degrees)" if img.size == (exp_h, exp_w) else ""
        raise DataError(
            f"image is {img.size[0]}x{img.size[1]} but the json says {exp_w}x{exp_h}{hint}",
            file=str(path), record=rec, field="width/height",
            fix="fix width/height (and K) in the json, or restore the original image",
        )
    return img, rec


def _window(arr: np.ndarray, view: View) -> np.ndarray:
    """The view's crop window of a full stored image (H, W, ...) -> (height, width, ...)."""
    if view.crop is None:
        return arr
    x0, y0 = int(view.crop.x0), int(view.crop.y0)
    return arr[y0 : y0 + view.height, x0 : x0 + view.width]


def load_rgb(view: View) -> np.ndarray:
    """The view's image as uint8 (H, W, 3), row 0 at the top."""
    path = Path(view.image_path)
    hdr = _png_header(path) if path.is_file() else None
    rec = f"image id {view.image_id}" if view.image_id is not None else None
    if hdr is not None and (hdr[2] != 8 or hdr[3] != 2):
        kinds = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}
        raise DataError(
            f"expected an 8-bit RGB PNG, got {hdr[2]}-bit {kinds.get(hdr[3], hdr[3])}",
            file=str(path), record=rec, field="file_path",
            fix="convert the image to 8-bit RGB (e.g. PIL: Image.open(p).convert('RGB').save(p))",
        )
    img, rec = _open_image(path, view, "file_path")
    if img.mode != "RGB":
        raise DataError(
            f"expected an RGB image, got PIL mode {img.mode!r}", file=str(path), record=rec, field="file_path",
            fix="convert the image to 8-bit RGB (e.g. PIL: Image.open(p).convert('RGB').save(p))",
        )
    arr = _window(np.asarray(img), view)
    if arr.dtype != np.uint8 or arr.shape != (view.height, view.width, 3):
        raise DataError(f"expected uint8 (H, W, 3), got {arr.dtype} {arr.shape}", file=str(path), record=rec,
                        field="file_path", fix="convert the image to 8-bit RGB")
    return np.ascontiguousarray(arr)


def load_depth(view: View, depth_scale: float | None = None) -> np.ndarray:
    """The view's depth as float32 (H, W) metres, 0 = invalid (from a 16-bit PNG times ``depth_scale``).

    ``depth_scale`` (metres per PNG unit) defaults to the view's, which :func:`load_omni3d` takes from
    the json's ``info.depth_scale`` or else from the source's convention in :data:`DEPTH_SCALES`.
    """
    rec = f"image id {view.image_id}" if view.image_id is not None else None
    if view.depth_path is None:
        raise DataError("this view has no depth image", record=rec, field="depth_path",
                        fix="check view.depth_path before calling load_depth")
    scale = depth_scale if depth_scale is not None else view.depth_scale
    path = Path(view.depth_path)
    if scale is None or not (float(scale) > 0) or not math.isfinite(float(scale)):
        raise DataError(f"depth scale unknown or invalid ({scale!r})", file=str(path), record=rec, field="depth_scale",
                        fix="pass depth_scale= or set info.depth_scale in the dataset json")
    hdr = _png_header(path) if path.is_file() else None
    if path.is_file() and (hdr is None or hdr[2] != 16 or hdr[3] != 0):
        got = "not a PNG" if hdr is None else f"{hdr[2]}-bit colour type {hdr[3]}"
        raise DataError(f"expected a 16-bit grayscale PNG, got {got}", file=str(path), record=rec, field="depth_path",
                        fix="store depth as uint16 PNG (metres / depth_scale, 0 = invalid)")
    img, rec = _open_image(path, view, "depth_path")
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = _window(arr, view)
    if arr.ndim != 2 or arr.dtype.kind not in "ui":
        raise DataError(f"expected a single-channel integer depth image, got {arr.dtype} {arr.shape}",
                        file=str(path), record=rec, field="depth_path",
                        fix="store depth as uint16 PNG (metres / depth_scale, 0 = invalid)")
    return (arr.astype(np.float32) * np.float32(scale)).astype(np.float32)

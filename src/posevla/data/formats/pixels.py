"""Pixels of a :class:`~posevla.data.formats.omni3d.View`: ``load_rgb`` (uint8 RGB, gray as three equal
channels) and ``load_depth`` (float32 metres, decoded with the view's depth encoding; 16-bit PNG or TIFF).

Shared by every reader that yields views (Omni3D, BOP); :mod:`posevla.data.formats.omni3d` re-exports both.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from posevla.data.formats.depth_encoding import SOURCE_DEPTH_ENCODINGS, decode_depth
from posevla.errors import DataError

if TYPE_CHECKING:
    from posevla.data.formats.omni3d import View

_PNG_SIG = b"\x89PNG\r\n\x1a\n"


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
    if view.gray:
        return _load_gray(path, view)
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


def _load_gray(path: Path, view: View) -> np.ndarray:
    """A gray picture (8-bit, or 16-bit scaled to 8 bits by its top byte) as uint8 (H, W, 3) equal channels."""
    img, rec = _open_image(path, view, "file_path")
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and np.array_equal(arr[..., 0], arr[..., 1]):
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16, np.int32):
        raise DataError(f"expected a single-channel gray image, got {arr.dtype} {arr.shape}", file=str(path),
                        record=rec, field="file_path", fix="store gray images as 8- or 16-bit single-channel files")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    arr = _window(arr, view)
    return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))


def load_depth(view: View, depth_scale: float | None = None) -> np.ndarray:
    """The view's depth as float32 (H, W) metres, 0 = invalid, from its 16-bit PNG.

    The PNG is decoded with the view's ``depth_encoding`` (set by :func:`load_omni3d` from the json or the
    source; e.g. SUN RGB-D's toolbox encoding); ``linear`` multiplies by ``depth_scale``, which defaults
    to the view's. Passing ``depth_scale`` here forces the ``linear`` encoding with that scale.
    """
    rec = f"image id {view.image_id}" if view.image_id is not None else None
    if view.depth_path is None:
        raise DataError("this view has no depth image", record=rec, field="depth_path",
                        fix="check view.depth_path before calling load_depth")
    encoding = "linear" if depth_scale is not None else (view.depth_encoding or "linear")
    scale = depth_scale if depth_scale is not None else view.depth_scale
    path = Path(view.depth_path)
    if encoding == "linear" and (scale is None or not (float(scale) > 0) or not math.isfinite(float(scale))):
        raise DataError(f"depth scale unknown or invalid ({scale!r})", file=str(path), record=rec, field="depth_scale",
                        fix="pass depth_scale= or depth_encoding= (--depth-encoding: "
                            f"{', '.join(SOURCE_DEPTH_ENCODINGS.values())}, ...), or set info.depth_scale in the json")
    hdr = _png_header(path) if path.is_file() else None
    tif = path.suffix.lower() in (".tif", ".tiff")  # ITODD's depth: 16-bit TIFF
    if path.is_file() and not tif and (hdr is None or hdr[2] != 16 or hdr[3] != 0):
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
    return decode_depth(arr, encoding, scale)

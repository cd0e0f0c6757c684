"""Pinhole intrinsics: projection, K under resize/crop/pad, ray maps and K validation.

Conventions (project contracts): ``K`` is 3x3 float64 in the OpenCV camera frame (x right, y down,
z forward) with **pixel centres at integer coordinates** -- the top-left pixel's centre is (0, 0) and
a W x H image spans [-0.5, W-0.5] x [-0.5, H-0.5]. Under that convention:

* resize by (sx, sy): ``fx' = sx*fx``, ``cx' = sx*(cx + 0.5) - 0.5`` (same for y), i.e. a pixel
  coordinate maps as ``u' = sx*(u + 0.5) - 0.5``;
* crop with top-left (x0, y0): ``cx' = cx - x0``;  pad by (left, top): ``cx' = cx + left``;
* MuJoCo camera with vertical field of view ``fovy`` rendering H x W: ``fy = (H/2)/tan(fovy/2)``,
  ``fx = fy``, ``cx = (W-1)/2``, ``cy = (H-1)/2``.

Functions taking ``K`` accept numpy arrays or torch tensors (batched ``(..., 3, 3)`` where it makes
sense) and return the kind of their main data argument.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from posevla.errors import DataError
from posevla.geometry import _backend as B
from posevla.geometry._backend import Array

__all__ = [
    "K_from_fovy",
    "project_points",
    "unproject_points",
    "K_resize",
    "K_crop",
    "K_pad",
    "resize_pad_params",
    "ray_map",
    "check_K",
]


def K_from_fovy(fovy_rad: float, width: int, height: int) -> np.ndarray:
    """Intrinsics (3, 3) float64 of a MuJoCo camera with vertical field of view ``fovy_rad``.

    ``fy = (H/2)/tan(fovy/2)``, ``fx = fy`` (square pixels), ``cx = (W-1)/2``, ``cy = (H-1)/2``.
    Note MuJoCo stores ``fovy`` in *degrees*; convert before calling.
    """
    fovy_rad = float(fovy_rad)
    if not (0.0 < fovy_rad < math.pi):
        raise ValueError(f"fovy_rad must be in (0, pi) radians, got {fovy_rad} (MuJoCo's fovy is in degrees)")
    f = (height / 2.0) / math.tan(fovy_rad / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def project_points(K: Array, p_cam: Array) -> Array:
    """Project camera-frame points (..., N, 3) to pixels (..., N, 2) with ``K`` (3, 3) or (..., 3, 3).

    ``uv = (K p)[:2] / z``. No near-plane handling: points with z <= 0 give meaningless / infinite
    pixels; clip first (see :func:`posevla.geometry.boxes.box2d_from_box3d`). Returns p_cam's kind.
    """
    p_cam = B.ensure_float(p_cam)
    K = B.like(K, p_cam)
    ph = p_cam @ B.transpose_last2(K)  # (..., N, 3)
    return ph[..., :2] / ph[..., 2:3]


def unproject_points(K: Array, uv: Array, z: Array) -> Array:
    """Lift pixels (..., N, 2) at depths z (..., N) to camera-frame points (..., N, 3).

    Inverse of :func:`project_points`: ``p = z * K^-1 [u, v, 1]``. Returns uv's kind.
    """
    uv = B.ensure_float(uv)
    K = B.like(K, uv)
    z = B.like(z, uv)
    Kinv = B.xp(K).linalg.inv(K)
    ones = B.ones_like(uv[..., :1])
    rays = B.cat([uv, ones], axis=-1) @ B.transpose_last2(Kinv)  # (..., N, 3), z = 1
    return rays * z[..., None]


def _affine_pixels(K: Array, sx: float, sy: float, tx: float, ty: float) -> Array:
    """Apply the pixel map u' = sx*u + tx, v' = sy*v + ty to K (..., 3, 3): returns A @ K."""
    K = B.ensure_float(K)
    A = B.like(np.array([[sx, 0.0, tx], [0.0, sy, ty], [0.0, 0.0, 1.0]]), K)
    return A @ K


def K_resize(K: Array, sx: float, sy: float) -> Array:
    """K (..., 3, 3) after resizing the image by factors (sx, sy) = (new_w/W, new_h/H).

    ``fx' = sx*fx``, ``cx' = sx*(cx + 0.5) - 0.5`` (same for y; skew scales with sx).
    """
    return _affine_pixels(K, float(sx), float(sy), 0.5 * float(sx) - 0.5, 0.5 * float(sy) - 0.5)


def K_crop(K: Array, x0: float, y0: float) -> Array:
    """K (..., 3, 3) after cropping the image with top-left corner (x0, y0): ``cx' = cx - x0``."""
    return _affine_pixels(K, 1.0, 1.0, -float(x0), -float(y0))


def K_pad(K: Array, left: float, top: float) -> Array:
    """K (..., 3, 3) after padding the image by ``left`` columns and ``top`` rows: ``cx' = cx + left``."""
    return _affine_pixels(K, 1.0, 1.0, float(left), float(top))


def resize_pad_params(width: int, height: int, size: int) -> tuple[float, int, int, int, int]:
    """Aspect-preserving resize so the longer side is ``size``, then centred pad to size x size.

    Returns ``(scale, new_w, new_h, pad_left, pad_top)``: ``scale = size / max(W, H)``,
    ``new_w = round(W*scale)``, ``new_h = round(H*scale)`` (the longer side is exactly ``size``,
    the shorter at least 1), ``pad_left = (size - new_w) // 2``, ``pad_top = (size - new_h) // 2``.

    Because of the rounding, the exact per-axis factors of the resize are ``new_w / W`` and
    ``new_h / H``; update K with ``K_pad(K_resize(K, new_w / W, new_h / H), pad_left, pad_top)``.
    """
    width, height, size = int(width), int(height), int(size)
    if width <= 0 or height <= 0 or size <= 0:
        raise ValueError(f"width, height and size must be positive, got {width}, {height}, {size}")
    scale = size / max(width, height)
    if width >= height:
        new_w, new_h = size, min(size, max(1, int(round(height * scale))))
    else:
        new_w, new_h = min(size, max(1, int(round(width * scale)))), size
    return scale, new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def ray_map(K: Array, width: int, height: int, valid: Any | None = None) -> Array:
    """Per-pixel ray directions (3, H, W) float32: ``((u - cx)/fx, (v - cy)/fy, 1)``, not normalised.

    Exactly ``unproject_points`` at z = 1 (including skew). Pixels where ``valid`` (H, W) bool is
    False (e.g. padding) are all-zero. Returns K's kind (torch: on K's device).
    """
    Kn = np.asarray(B.to_numpy(K), dtype=np.float64)
    Kinv = np.linalg.inv(Kn)
    u = np.arange(int(width), dtype=np.float64)
    v = np.arange(int(height), dtype=np.float64)
    uu, vv = np.meshgrid(u, v)  # (H, W)
    pix = np.stack([uu, vv, np.ones_like(uu)], axis=0)  # (3, H, W)
    rays = np.einsum("ij,jhw->ihw", Kinv, pix)
    rays = rays / rays[2:3]
    if valid is not None:
        vmask = np.asarray(B.to_numpy(valid), dtype=bool)
        if vmask.shape != (int(height), int(width)):
            raise ValueError(f"valid must have shape (H, W) = {(height, width)}, got {vmask.shape}")
        rays = rays * vmask[None]
    rays = rays.astype(np.float32)
    if B.is_torch(K):
        import torch

        return torch.as_tensor(rays, device=K.device)
    return rays


def check_K(
    K: Any,
    width: int,
    height: int,
    *,
    file: str | None = None,
    record: str | int | None = None,
    field: str = "K",
) -> None:
    """Raise :class:`~posevla.errors.DataError` unless ``K`` is a usable 3x3 pinhole intrinsic matrix.

    Checks: shape (3, 3); all entries finite; fx > 0 and fy > 0; bottom row (0, 0, 1) and K[1, 0] = 0
    (upper-triangular); principal point inside the image [-0.5, W-0.5] x [-0.5, H-0.5]; positive
    width and height.
    """
    kw = dict(file=file, record=record, field=field)
    try:
        a = np.asarray(B.to_numpy(K), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"K is not a numeric array ({exc})", **kw,
            fix="store K as a 3x3 nested list of numbers [[fx,0,cx],[0,fy,cy],[0,0,1]]",
        ) from None
    if a.shape != (3, 3):
        raise DataError(
            f"K must have shape (3, 3), got {a.shape}", **kw,
            fix="store K as a 3x3 nested list [[fx,0,cx],[0,fy,cy],[0,0,1]] (not flattened, not 3x4 P)",
        )
    if not np.all(np.isfinite(a)):
        raise DataError(
            f"K contains NaN or inf: {a.tolist()}", **kw,
            fix="recompute the intrinsics of this image from its camera calibration",
        )
    if int(width) <= 0 or int(height) <= 0:
        raise DataError(
            f"image size must be positive, got width={width}, height={height}", **kw,
            fix="record the image's real width and height in pixels",
        )
    fx, fy, cx, cy = a[0, 0], a[1, 1], a[0, 2], a[1, 2]
    if fx <= 0 or fy <= 0:
        raise DataError(
            f"focal lengths must be positive, got fx={fx:g}, fy={fy:g}", **kw,
            fix="use the OpenCV convention (x right, y down, z forward) with fx, fy > 0; a negative focal "
            "length usually means an OpenGL camera whose y/z axes were not flipped",
        )
    if not np.allclose(a[2], [0.0, 0.0, 1.0], atol=1e-9) or abs(a[1, 0]) > 1e-9:
        raise DataError(
            f"K must be upper-triangular with bottom row (0, 0, 1), got {a.tolist()}", **kw,
            fix="store the 3x3 intrinsic matrix [[fx,s,cx],[0,fy,cy],[0,0,1]], normalised so K[2,2] = 1",
        )
    if not (-0.5 <= cx <= width - 0.5 and -0.5 <= cy <= height - 0.5):
        raise DataError(
            f"principal point ({cx:g}, {cy:g}) lies outside the {width}x{height} image "
            f"[-0.5, {width - 0.5:g}] x [-0.5, {height - 0.5:g}]", **kw,
            fix="check that K belongs to this image size (K must be updated with every resize/crop/pad) and "
            "that cx, cy are in pixels, not normalised",
        )

"""Draw projected 3D boxes on images (qualitative figures of the grounding report).

Corners follow the Omni3D order of :func:`posevla.geometry.box_corners`: v0–v3 the front face
(z = −l/2 in the box frame), v4–v7 the back face in the same order. Edges are clipped to the near plane
``z >= 1e-3`` before projection, so boxes partly behind the camera draw only their visible part. The front
face is marked with its two diagonals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from posevla.errors import DataError
from posevla.eval.grounding import Box3D
from posevla.geometry import BOX_EDGES as _GEOM_EDGES
from posevla.geometry import NEAR_PLANE, box_corners, project_points

__all__ = ["GT_COLOR", "PRED_COLOR", "BOX_EDGES", "draw_boxes", "overlay_predictions", "save_grid"]

GT_COLOR = (0, 200, 0)
PRED_COLOR = (230, 30, 30)
_NEAR = NEAR_PLANE
#: The 12 edges as corner-index pairs: front face, back face, connecting edges (geometry's order).
BOX_EDGES: tuple[tuple[int, int], ...] = tuple((int(i), int(j)) for i, j in _GEOM_EDGES)

Color = tuple[int, int, int] | str


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(
            f"expected a uint8 image of shape (H, W, 3), got dtype {image.dtype} shape {image.shape}",
            field="image",
            fix="convert the image to RGB uint8 first",
        )
    return image


def _check_K(K: np.ndarray) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise DataError(
            f"K must be a finite 3x3 intrinsic matrix with fx, fy > 0, got {K.tolist()}",
            field="K",
            fix="pass the camera intrinsics of this image",
        )
    return K


def _clip_segment(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Clip the camera-frame segment a-b to z >= near; None when fully behind."""
    za, zb = a[2], b[2]
    if za < _NEAR and zb < _NEAR:
        return None
    if za >= _NEAR and zb >= _NEAR:
        return a, b
    t = (_NEAR - za) / (zb - za)
    c = a + t * (b - a)
    return (c, b) if za < _NEAR else (a, c)


def _project(K: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(project_points(K, np.asarray(pts, dtype=np.float64)), dtype=np.float64)


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _draw_box(
    draw: ImageDraw.ImageDraw, K: np.ndarray, box: Box3D, color: Color, width: int, label: bool
) -> None:
    corners = np.asarray(box_corners(box.center, box.dims, box.R), dtype=np.float64)  # (8, 3)
    segments: list[tuple[np.ndarray, np.ndarray, int]] = []
    front_diagonals = ((0, 2), (1, 3))
    for edges, w in ((BOX_EDGES, width), (front_diagonals, max(1, width - 1))):
        for i, j in edges:
            seg = _clip_segment(corners[i], corners[j])
            if seg is not None:
                segments.append((seg[0], seg[1], w))
    if not segments:
        return
    pts = _project(K, np.stack([p for s in segments for p in s[:2]]))
    finite = np.all(np.isfinite(pts), axis=1)
    for k, (_, _, w) in enumerate(segments):
        if not (finite[2 * k] and finite[2 * k + 1]):
            continue
        (x0, y0), (x1, y1) = pts[2 * k], pts[2 * k + 1]
        # Keep PIL away from absurd coordinates (near-plane points can project very far out).
        if max(abs(x0), abs(y0), abs(x1), abs(y1)) > 1e6:
            continue
        draw.line([(x0, y0), (x1, y1)], fill=color, width=w)
    if label:
        vis = pts[finite]
        if vis.size:
            i = int(np.argmin(vis[:, 1]))
            x, y = float(vis[i, 0]), float(vis[i, 1])
            text = box.category if box.score >= 1.0 else f"{box.category} {box.score:.2f}"
            if math.isfinite(x) and math.isfinite(y) and abs(x) < 1e6 and abs(y) < 1e6:
                draw.text((x + 2, y - 14), text, fill=color, font=_font())


def draw_boxes(
    image: np.ndarray,
    K: np.ndarray,
    boxes: Sequence[Box3D],
    color: Color,
    *,
    label: bool = True,
    width: int = 2,
) -> np.ndarray:
    """Return a copy of ``image`` (uint8, (H, W, 3)) with the boxes' 12 projected edges drawn.

    Boxes are in the camera frame of ``K``. The front face (v0–v3) gets its diagonals; with ``label`` the
    category (and the score when below 1) is written next to the top-most corner.
    """
    image = _check_image(image)
    K = _check_K(K)
    pil = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(pil)
    for box in boxes:
        _draw_box(draw, K, box, color, width, label)
    return np.asarray(pil, dtype=np.uint8).copy()


def overlay_predictions(
    image: np.ndarray, K: np.ndarray, gt: Sequence[Box3D], pred: Sequence[Box3D]
) -> np.ndarray:
    """Ground truth in green, predictions in red, with a small legend in the top-left corner."""
    out = draw_boxes(image, K, gt, GT_COLOR, label=True)
    out = draw_boxes(out, K, pred, PRED_COLOR, label=False)
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = _font()
    draw.rectangle([2, 2, 62, 34], fill=(255, 255, 255), outline=(0, 0, 0))
    for row, (text, color) in enumerate((("GT", GT_COLOR), ("pred", PRED_COLOR))):
        y = 6 + 14 * row
        draw.line([(6, y + 6), (18, y + 6)], fill=color, width=3)
        draw.text((22, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(pil, dtype=np.uint8).copy()


def save_grid(
    images: Sequence[np.ndarray], path: str | Path, cols: int = 4, *, pad: int = 4
) -> Path:
    """Tile uint8 RGB images (any sizes) row-major into one PNG with white padding; returns the path."""
    if not images:
        raise DataError("save_grid needs at least one image", field="images", fix="pass a non-empty list")
    if cols < 1:
        raise DataError(f"cols must be >= 1, got {cols}", field="cols")
    ims = [_check_image(im) for im in images]
    cols = min(cols, len(ims))
    rows = math.ceil(len(ims) / cols)
    cell_h = max(im.shape[0] for im in ims)
    cell_w = max(im.shape[1] for im in ims)
    grid = np.full(
        (rows * cell_h + (rows + 1) * pad, cols * cell_w + (cols + 1) * pad, 3), 255, dtype=np.uint8
    )
    for n, im in enumerate(ims):
        r, c = divmod(n, cols)
        y = pad + r * (cell_h + pad)
        x = pad + c * (cell_w + pad)
        grid[y : y + im.shape[0], x : x + im.shape[1]] = im
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path

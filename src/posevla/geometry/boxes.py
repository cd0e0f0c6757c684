"""Oriented 3D boxes: corners, projected 2D boxes with truncation, and exact 3D IoU.

Box convention (project contracts, Omni3D exactly: omni3d DATA.md, cubercnn ``get_cuboid_verts_faces``):
``center`` (3,) in the camera frame, ``dims = [W, H, L]``, rotation ``R`` (3, 3) with
``p_cam = R @ p_obj + center``, where the object's local **x spans +-L/2, y spans +-H/2 and z spans
+-W/2** (so ``dims`` reversed are the extents along local x, y, z: :func:`box_extents_xyz`).

Corner order (Omni3D): v0-v3 lie on the face at local z = -W/2 -- (-L/2,-H/2), (+L/2,-H/2), (+L/2,+H/2),
(-L/2,+H/2) in local (x, y) -- and v4-v7 are the same four at z = +W/2::

        v0 ---- v1          v4 ---- v5
        | z=-W/2 |          | z=+W/2 |      x ->, y down
        v3 ---- v2          v7 ---- v6

:func:`box_corners` works on numpy or torch; :func:`box2d_from_box3d` returns the input kind but
computes in numpy (no gradients); :func:`iou3d` / :func:`iou3d_matrix` are numpy/scipy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError

from posevla.geometry import _backend as B
from posevla.geometry._backend import Array

__all__ = [
    "BOX_CORNER_SIGNS",
    "BOX_EDGES",
    "NEAR_PLANE",
    "box_corners",
    "box_extents_xyz",
    "box2d_from_box3d",
    "iou3d",
    "iou3d_matrix",
]

#: Signs (8, 3) of the local corner coordinates (x, y, z) in units of the half extents, Omni3D order.
BOX_CORNER_SIGNS: np.ndarray = np.array(
    [
        [-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
        [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1],
    ],
    dtype=np.float64,
)
BOX_CORNER_SIGNS.setflags(write=False)

#: The 12 edges (12, 2) of a box as corner-index pairs: front face, back face, front-to-back.
BOX_EDGES: np.ndarray = np.array(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)
BOX_EDGES.setflags(write=False)

#: Near plane (metres) used to clip boxes before projection.
NEAR_PLANE = 1e-3


#: Index of ``dims = [W, H, L]`` that gives the extent along local x, y, z (L, H, W).
_EXTENT_OF_AXIS = [2, 1, 0]


def box_extents_xyz(dims: Array) -> Array:
    """Extents (..., 3) of boxes along their local x, y, z: ``[L, H, W]`` of Omni3D ``dims = [W, H, L]``."""
    return dims[..., _EXTENT_OF_AXIS]


def box_corners(center: Array, dims: Array, R: Array) -> Array:
    """Corners (..., 8, 3) of boxes center (..., 3), dims (..., 3) = [W, H, L] (Omni3D), R (..., 3, 3).

    ``corner_k = R @ (signs_k * [L, H, W] / 2) + center`` in the Omni3D order (see module docstring).
    Returns center's kind.
    """
    center = B.ensure_float(center)
    dims = B.like(dims, center)
    R = B.like(R, center)
    half = 0.5 * box_extents_xyz(dims)  # (..., 3) along local x, y, z
    local = B.like(BOX_CORNER_SIGNS, center) * half[..., None, :]  # (..., 8, 3)
    return local @ B.transpose_last2(R) + center[..., None, :]


def _clipped_vertices(corners: np.ndarray, near: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the box clipped to z >= near: candidates (..., 20, 3) and validity mask (..., 20).

    The 20 candidates are the 8 corners (valid when in front of the plane) and one point per edge
    where that edge crosses the plane (valid when it does). The clipped polytope's vertices are
    exactly the valid candidates.
    """
    a = corners[..., BOX_EDGES[:, 0], :]  # (..., 12, 3)
    b = corners[..., BOX_EDGES[:, 1], :]
    za, zb = a[..., 2] - near, b[..., 2] - near
    crosses = za * zb < 0
    denom = np.where(crosses, za - zb, 1.0)
    t = np.where(crosses, za / denom, 0.0)
    inter = a + t[..., None] * (b - a)
    inter[..., 2] = np.where(crosses, near, inter[..., 2])  # exact on the plane
    pts = np.concatenate([corners, inter], axis=-2)
    valid = np.concatenate([corners[..., 2] >= near, crosses], axis=-1)
    return pts, valid


def box2d_from_box3d(K: Any, corners: Array, width: int, height: int, *, clip: bool = True) -> tuple[Array, Array]:
    """Project 3D box corners (..., 8, 3) to a 2D box and its truncation.

    The box is first clipped to the near plane z >= 1e-3 (edges crossing the plane contribute their
    intersection point), the clipped polytope's vertices are projected with ``K`` (3, 3), and their
    min/max gives the unclipped box. That box is clipped to the image
    [-0.5, W-0.5] x [-0.5, H-0.5] (Omni3D's ``bbox2D_trunc``); ``clip=False`` returns the unclipped box
    (Omni3D's ``bbox2D_proj``) with the same truncation.

    Returns ``(box (..., 4) x1 y1 x2 y2, truncation (...))`` with
    ``truncation = 1 - clipped_area / unclipped_area``: 0 when the projection lies fully inside the
    image, 1 when it lies wholly outside. A box wholly behind the near plane has no projection:
    its box is NaN and its truncation 1. Returns corners' kind (computed in numpy, no gradients).
    """
    c = np.asarray(B.to_numpy(corners), dtype=np.float64)
    Kn = np.asarray(B.to_numpy(K), dtype=np.float64)
    pts, valid = _clipped_vertices(c, NEAR_PLANE)
    z = np.where(valid, pts[..., 2], 1.0)
    ph = pts @ Kn.T
    uv = ph[..., :2] / z[..., None]  # (..., 20, 2)
    big = np.inf
    lo = np.where(valid[..., None], uv, big).min(axis=-2)  # (..., 2)
    hi = np.where(valid[..., None], uv, -big).max(axis=-2)
    any_valid = valid.any(axis=-1)
    lim_lo = np.array([-0.5, -0.5])
    lim_hi = np.array([width - 0.5, height - 0.5])
    clo = np.clip(lo, lim_lo, lim_hi)
    chi = np.clip(hi, lim_lo, lim_hi)
    with np.errstate(invalid="ignore"):
        area = np.prod(hi - lo, axis=-1)
        carea = np.prod(chi - clo, axis=-1)
        trunc = np.where(area > 0, 1.0 - carea / np.where(area > 0, area, 1.0), 0.0)
        # Degenerate (zero-area) projections: truncated iff they lie outside the image.
        inside = np.all((lo >= lim_lo) & (hi <= lim_hi), axis=-1)
        trunc = np.where(area > 0, trunc, np.where(inside, 0.0, 1.0))
    trunc = np.clip(trunc, 0.0, 1.0)
    box = np.concatenate([clo, chi] if clip else [lo, hi], axis=-1)
    box = np.where(any_valid[..., None], box, np.nan)
    trunc = np.where(any_valid, trunc, 1.0)
    if B.is_torch(corners):
        import torch

        return (
            torch.as_tensor(box, dtype=corners.dtype, device=corners.device),
            torch.as_tensor(trunc, dtype=corners.dtype, device=corners.device),
        )
    return box, trunc


# ----------------------------------------------------------------------------------------------
# Exact oriented 3D IoU
# ----------------------------------------------------------------------------------------------


def _halfspaces(center: np.ndarray, dims: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The 6 half-spaces (6, 4) ``[a, b]`` with ``a . p + b <= 0`` inside the box (unit normals)."""
    axes = R.T  # rows = the box's local x, y, z axes in the camera frame
    offs = axes @ center  # (3,)
    half = 0.5 * box_extents_xyz(dims)  # (3,) along local x, y, z
    pos = np.concatenate([axes, (-offs - half)[:, None]], axis=1)  # a.p <= a.c + d/2
    neg = np.concatenate([-axes, (offs - half)[:, None]], axis=1)  # -a.p <= -a.c + d/2
    return np.concatenate([pos, neg], axis=0)


def _intersection_volume(hs: np.ndarray, scale: float) -> float:
    """Volume of the intersection of half-spaces hs (M, 4) (a unit-normal rows), 0 if (nearly) empty."""
    A, b = hs[:, :3], hs[:, 3]
    # Chebyshev centre: maximise r s.t. A x + r |a_i| <= -b  (|a_i| = 1).
    res = linprog(
        c=np.array([0.0, 0.0, 0.0, -1.0]),
        A_ub=np.concatenate([A, np.ones((len(A), 1))], axis=1),
        b_ub=-b,
        bounds=[(None, None)] * 3 + [(0.0, None)],
        method="highs",
    )
    if res.status != 0 or res.x is None:
        return 0.0
    radius = float(res.x[3])
    if radius <= 1e-9 * scale:
        return 0.0
    interior = res.x[:3]
    try:
        verts = HalfspaceIntersection(hs, interior).intersections
        return float(ConvexHull(verts).volume)
    except QhullError:
        try:
            verts = HalfspaceIntersection(hs, interior, qhull_options="QJ").intersections
            return float(ConvexHull(verts, qhull_options="QJ").volume)
        except QhullError:
            return 0.0


def _iou_prepared(
    hs1: np.ndarray, vol1: float, hs2: np.ndarray, vol2: float, scale: float
) -> float:
    if vol1 <= 0.0 or vol2 <= 0.0:
        return 0.0
    inter = _intersection_volume(np.concatenate([hs1, hs2], axis=0), scale)
    union = vol1 + vol2 - inter
    if union <= 0.0:
        return 0.0
    return float(min(max(inter / union, 0.0), 1.0))


def iou3d(center1: Any, dims1: Any, R1: Any, center2: Any, dims2: Any, R2: Any) -> float:
    """Exact IoU of two oriented 3D boxes (center (3,), dims (3,) [W, H, L], R (3, 3)).

    The intersection of two convex boxes is the intersection of their 12 half-spaces: an interior
    point is found as the Chebyshev centre (``scipy.optimize.linprog``; IoU 0 when its radius is
    ~0, i.e. the boxes are disjoint or only touch), the polytope from
    ``scipy.spatial.HalfspaceIntersection`` and its volume from ``ConvexHull``. Boxes whose
    bounding spheres do not overlap return 0 immediately. Boxes with a zero dimension give 0.
    """
    c1, d1, r1 = (np.asarray(B.to_numpy(x), dtype=np.float64) for x in (center1, dims1, R1))
    c2, d2, r2 = (np.asarray(B.to_numpy(x), dtype=np.float64) for x in (center2, dims2, R2))
    rad1, rad2 = 0.5 * np.linalg.norm(d1), 0.5 * np.linalg.norm(d2)
    if np.linalg.norm(c1 - c2) >= rad1 + rad2:
        return 0.0
    scale = max(float(d1.max()), float(d2.max()), 1e-12)
    return _iou_prepared(
        _halfspaces(c1, d1, r1), float(np.prod(d1)), _halfspaces(c2, d2, r2), float(np.prod(d2)), scale
    )


def iou3d_matrix(boxes_a: tuple[Any, Any, Any], boxes_b: tuple[Any, Any, Any]) -> np.ndarray:
    """Pairwise exact 3D IoU (Na, Nb) float64 between two sets of boxes.

    ``boxes_a = (centers (Na, 3), dims (Na, 3), Rs (Na, 3, 3))``, same for ``boxes_b``. Pairs whose
    bounding spheres or camera-axis-aligned bounding boxes are disjoint are 0 without an LP.
    """
    ca, da, Ra = (np.asarray(B.to_numpy(x), dtype=np.float64) for x in boxes_a)
    cb, db, Rb = (np.asarray(B.to_numpy(x), dtype=np.float64) for x in boxes_b)
    ca, da, Ra = ca.reshape(-1, 3), da.reshape(-1, 3), Ra.reshape(-1, 3, 3)
    cb, db, Rb = cb.reshape(-1, 3), db.reshape(-1, 3), Rb.reshape(-1, 3, 3)
    na, nb = len(ca), len(cb)
    out = np.zeros((na, nb), dtype=np.float64)
    if na == 0 or nb == 0:
        return out
    # Cheap rejection: bounding spheres, then axis-aligned extents in the camera frame.
    rad_a, rad_b = 0.5 * np.linalg.norm(da, axis=1), 0.5 * np.linalg.norm(db, axis=1)
    dist = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=-1)
    ext_a = 0.5 * np.einsum("nij,nj->ni", np.abs(Ra), da)  # half-extent along camera axes (Na, 3)
    ext_b = 0.5 * np.einsum("nij,nj->ni", np.abs(Rb), db)
    sep = np.abs(ca[:, None, :] - cb[None, :, :]) >= ext_a[:, None, :] + ext_b[None, :, :]
    candidate = (dist < rad_a[:, None] + rad_b[None, :]) & ~sep.any(axis=-1)
    hs_a = [_halfspaces(ca[i], da[i], Ra[i]) for i in range(na)]
    hs_b = [_halfspaces(cb[j], db[j], Rb[j]) for j in range(nb)]
    vol_a, vol_b = np.prod(da, axis=1), np.prod(db, axis=1)
    for i, j in zip(*np.nonzero(candidate)):
        scale = max(float(da[i].max()), float(db[j].max()), 1e-12)
        out[i, j] = _iou_prepared(hs_a[i], float(vol_a[i]), hs_b[j], float(vol_b[j]), scale)
    return out

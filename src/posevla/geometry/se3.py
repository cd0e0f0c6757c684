"""Rigid transforms SE(3) as 4x4 homogeneous matrices (numpy or torch, batched over leading dims).

Convention (project contracts): ``T_a_b`` maps points expressed in frame b into frame a,
``p_a = T_a_b @ p_b``; hence ``T_a_c = T_a_b @ T_b_c`` and ``T_b_a = invert_T(T_a_b)``.
MuJoCo/OpenGL cameras look down their local -z with y up; the OpenCV camera frame (x right, y down,
z forward) is obtained with ``T_world_camcv = T_world_camgl @ diag(1, -1, -1, 1)``.
"""

from __future__ import annotations

import numpy as np

from posevla.geometry import _backend as B
from posevla.geometry._backend import Array

__all__ = [
    "make_T",
    "invert_T",
    "compose_T",
    "transform_points",
    "T_cv_from_gl",
    "opengl_to_opencv_camera",
]

#: diag(1, -1, -1, 1): the change of camera axes between OpenGL (x right, y up, looking down -z)
#: and OpenCV (x right, y down, looking down +z). It is its own inverse, so it is both T_gl_cv and
#: T_cv_gl. Use it read-only.
T_cv_from_gl: np.ndarray = np.diag([1.0, -1.0, -1.0, 1.0])
T_cv_from_gl.setflags(write=False)


def make_T(R: Array, t: Array) -> Array:
    """Build T (..., 4, 4) from rotations R (..., 3, 3) and translations t (..., 3) (broadcast)."""
    R = B.ensure_float(R)
    t = B.like(t, R)
    lead = tuple(np.broadcast_shapes(tuple(R.shape[:-2]), tuple(t.shape[:-1])))
    R = B.broadcast_to(R, lead + (3, 3))
    t = B.broadcast_to(t, lead + (3,))
    top = B.cat([R, t[..., None]], axis=-1)  # (..., 3, 4)
    bottom = B.like(np.array([0.0, 0.0, 0.0, 1.0]), R)
    bottom = B.broadcast_to(bottom, lead + (1, 4))
    return B.cat([top, bottom], axis=-2)


def invert_T(T: Array) -> Array:
    """Inverse of rigid transforms T (..., 4, 4): ``[R^T, -R^T t]`` (assumes R is a rotation)."""
    T = B.ensure_float(T)
    Rt = B.transpose_last2(T[..., :3, :3])
    t = T[..., :3, 3]
    return make_T(Rt, -(Rt @ t[..., None])[..., 0])


def compose_T(*Ts: Array) -> Array:
    """Matrix product ``Ts[0] @ Ts[1] @ ...`` of transforms (..., 4, 4) (broadcast over leading dims).

    With the ``T_a_b`` convention, ``compose_T(T_a_b, T_b_c) == T_a_c``. Returns the first's kind.
    """
    if not Ts:
        raise ValueError("compose_T needs at least one transform")
    out = B.ensure_float(Ts[0])
    out = out.clone() if B.is_torch(out) else np.array(out, copy=True)
    for T in Ts[1:]:
        out = out @ B.like(T, out)
    return out


def transform_points(T: Array, p: Array) -> Array:
    """Apply T (..., 4, 4) to points p (..., N, 3): ``p' = R p + t``, returns (..., N, 3) (p's kind)."""
    p = B.ensure_float(p)
    T = B.like(T, p)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    return p @ B.transpose_last2(R) + t[..., None, :]


def opengl_to_opencv_camera(T_world_camgl: Array) -> Array:
    """Camera pose with OpenGL axes (..., 4, 4) -> the same camera with OpenCV axes (..., 4, 4).

    ``T_world_camcv = T_world_camgl @ diag(1, -1, -1, 1)`` (MuJoCo cameras are OpenGL-style).
    """
    T = B.ensure_float(T_world_camgl)
    return T @ B.like(T_cv_from_gl, T)

"""Rotation conversions and checks (numpy or torch, batched over leading dims).

Conventions (see the project contracts):

* Quaternions are **wxyz** (scalar first). scipy's xyzw order is confined to
  :func:`quat_wxyz_to_scipy` / :func:`scipy_to_quat_wxyz`, the one place that crosses that boundary.
* Euler angles are scipy's ``"xyz"`` (lower case = *extrinsic*: rotate about the fixed x axis by
  ``e[0]``, then the fixed y axis by ``e[1]``, then the fixed z axis by ``e[2]``), i.e.
  ``R = Rz(e[2]) @ Ry(e[1]) @ Rx(e[0])``. Angles are in radians, ``e[0], e[2]`` in [-pi, pi] and
  ``e[1]`` in [-pi/2, pi/2].
* The 6D representation is the first two columns of ``R``: ``d6 = [R[:,0], R[:,1]]``.

All functions accept numpy arrays or torch tensors and return the same kind; the torch paths are
differentiable (except :func:`check_rotation_matrix`, which only validates).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from posevla.errors import DataError
from posevla.geometry import _backend as B
from posevla.geometry._backend import Array

__all__ = [
    "quat_wxyz_to_matrix",
    "matrix_to_quat_wxyz",
    "matrix_to_euler_xyz",
    "euler_xyz_to_matrix",
    "matrix_to_rot6d",
    "rot6d_to_matrix",
    "check_rotation_matrix",
    "rotation_angle_between",
    "quat_wxyz_to_scipy",
    "scipy_to_quat_wxyz",
]

# Below this |cos(pitch)| the Euler decomposition is treated as gimbal-locked.
_GIMBAL_EPS = 1e-7


def quat_wxyz_to_scipy(q: Array) -> Array:
    """wxyz -> scipy's xyzw order. (..., 4) -> (..., 4). The only place that reorders quaternions."""
    return B.cat([q[..., 1:4], q[..., 0:1]], axis=-1)


def scipy_to_quat_wxyz(q_xyzw: Array) -> Array:
    """scipy's xyzw -> wxyz order. (..., 4) -> (..., 4)."""
    return B.cat([q_xyzw[..., 3:4], q_xyzw[..., 0:3]], axis=-1)


def quat_wxyz_to_matrix(q: Array) -> Array:
    """Unit quaternion(s) (..., 4) wxyz -> rotation matrices (..., 3, 3).

    ``q`` is normalised first, so any non-zero quaternion is accepted; ``q`` and ``-q`` give the
    same matrix.
    """
    q = B.ensure_float(q)
    q = q / B.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = [
        B.stack([1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy)], axis=-1),
        B.stack([2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx)], axis=-1),
        B.stack([2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)], axis=-1),
    ]
    return B.stack(rows, axis=-2)


def matrix_to_quat_wxyz(R: Array) -> Array:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) wxyz with ``w >= 0``.

    Uses the numerically stable branch (largest of 4w², 4x², 4y², 4z²) per matrix. For 180°
    rotations (w = 0) the sign of the vector part is whatever that branch yields.
    """
    R = B.ensure_float(R)
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4w², 4x², 4y², 4z²: (..., 4)
    t = B.stack(
        [1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22], axis=-1
    )
    s = B.xp(t).sqrt(B.clip(t, 1e-12, None))  # 2|component| of the branch's pivot, (..., 4)
    # Candidate quaternions (times 2s), one per branch: (..., 4 branches, 4 wxyz)
    cands = B.stack(
        [
            B.stack([t[..., 0], r21 - r12, r02 - r20, r10 - r01], axis=-1),
            B.stack([r21 - r12, t[..., 1], r01 + r10, r02 + r20], axis=-1),
            B.stack([r02 - r20, r01 + r10, t[..., 2], r12 + r21], axis=-1),
            B.stack([r10 - r01, r02 + r20, r12 + r21, t[..., 3]], axis=-1),
        ],
        axis=-2,
    )
    cands = cands / (2 * s[..., None])
    best = t.argmax(-1)  # (...)
    if B.is_torch(R):
        idx = best[..., None, None].expand(*best.shape, 1, 4)
        q = cands.gather(-2, idx)[..., 0, :]
    else:
        q = np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / B.norm(q, axis=-1, keepdims=True)
    sign = B.xp(q).where(q[..., :1] < 0, -B.ones_like(q[..., :1]), B.ones_like(q[..., :1]))
    return q * sign


def euler_xyz_to_matrix(e: Array) -> Array:
    """Extrinsic ``"xyz"`` Euler angles (..., 3) [rad] -> rotation matrices (..., 3, 3).

    ``R = Rz(e[..., 2]) @ Ry(e[..., 1]) @ Rx(e[..., 0])`` (same as
    ``scipy.spatial.transform.Rotation.from_euler("xyz", e)``).
    """
    e = B.ensure_float(e)
    m = B.xp(e)
    ca, cb, cc = m.cos(e[..., 0]), m.cos(e[..., 1]), m.cos(e[..., 2])
    sa, sb, sc = m.sin(e[..., 0]), m.sin(e[..., 1]), m.sin(e[..., 2])
    rows = [
        B.stack([cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa], axis=-1),
        B.stack([sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa], axis=-1),
        B.stack([-sb, cb * sa, cb * ca], axis=-1),
    ]
    return B.stack(rows, axis=-2)


def matrix_to_euler_xyz(R: Array) -> Array:
    """Rotation matrices (..., 3, 3) -> extrinsic ``"xyz"`` Euler angles (..., 3) [rad].

    Returns ``(roll_x, pitch_y, yaw_z)`` with roll, yaw in [-pi, pi] and pitch in [-pi/2, pi/2],
    such that :func:`euler_xyz_to_matrix` reproduces ``R``.

    Gimbal lock: when ``|cos(pitch)| < 1e-7`` (pitch = ±pi/2) only ``roll ∓ yaw`` is determined. This
    function then sets **yaw = 0** and puts the whole remaining rotation into roll, so the returned
    angles still reproduce ``R`` exactly but need not equal the angles that built it (round trips
    hold on matrices, not on angles, there). Near the lock (|cos(pitch)| small but above the
    threshold) roll and yaw are individually ill-conditioned.
    """
    R = B.ensure_float(R)
    m = B.xp(R)
    r00, r10, r20 = R[..., 0, 0], R[..., 1, 0], R[..., 2, 0]
    r21, r22 = R[..., 2, 1], R[..., 2, 2]
    cb = m.sqrt(r00 * r00 + r10 * r10)  # |cos(pitch)|
    pitch = m.arctan2(-r20, cb)
    roll = m.arctan2(r21, r22)
    yaw = m.arctan2(r10, r00)
    # Gimbal lock: R = Ry(±pi/2) Rx(roll) with yaw = 0 -> roll = atan2(±R01, R11).
    locked = cb < _GIMBAL_EPS
    sgn = m.where(-r20 >= 0, B.ones_like(r20), -B.ones_like(r20))
    roll_locked = m.arctan2(sgn * R[..., 0, 1], R[..., 1, 1])
    roll = m.where(locked, roll_locked, roll)
    yaw = m.where(locked, B.zeros_like(yaw), yaw)
    return B.stack([roll, pitch, yaw], axis=-1)


def matrix_to_rot6d(R: Array) -> Array:
    """Rotation matrices (..., 3, 3) -> 6D representation (..., 6) = ``[R[:,0], R[:,1]]``."""
    R = B.ensure_float(R)
    return B.cat([R[..., :, 0], R[..., :, 1]], axis=-1)


def rot6d_to_matrix(d6: Array) -> Array:
    """6D representation (..., 6) -> rotation matrices (..., 3, 3) by Gram–Schmidt.

    ``d6[..., :3]`` (normalised) becomes column 0, the part of ``d6[..., 3:]`` orthogonal to it
    (normalised) column 1, and their cross product column 2; the result is always a proper rotation.
    """
    d6 = B.ensure_float(d6)
    a1, a2 = d6[..., 0:3], d6[..., 3:6]
    b1 = a1 / B.norm(a1, axis=-1, keepdims=True)
    a2 = a2 - (b1 * a2).sum(-1)[..., None] * b1
    b2 = a2 / B.norm(a2, axis=-1, keepdims=True)
    b3 = B.cross(b1, b2)
    return B.stack([b1, b2, b3], axis=-1)


def rotation_angle_between(R1: Array, R2: Array) -> Array:
    """Geodesic angle (...) in radians, in [0, pi], between rotations R1 and R2 (..., 3, 3).

    Computed as ``atan2(|vee(D - D^T)| / 2, (tr D - 1) / 2)`` with ``D = R1^T R2``, which stays
    accurate near 0 and near pi (unlike ``arccos``).
    """
    R1 = B.ensure_float(R1)
    R2 = B.like(R2, R1) if B.is_torch(R1) != B.is_torch(R2) else B.ensure_float(R2)
    D = B.transpose_last2(R1) @ R2
    m = B.xp(D)
    v = B.stack([D[..., 2, 1] - D[..., 1, 2], D[..., 0, 2] - D[..., 2, 0], D[..., 1, 0] - D[..., 0, 1]], axis=-1)
    sin2 = B.norm(v, axis=-1)
    cos2 = D[..., 0, 0] + D[..., 1, 1] + D[..., 2, 2] - 1
    return m.arctan2(sin2, cos2)


def check_rotation_matrix(
    R: Any,
    *,
    atol: float = 1e-4,
    what: str = "R",
    file: str | None = None,
    record: str | int | None = None,
) -> None:
    """Raise :class:`~posevla.errors.DataError` unless every ``R`` (..., 3, 3) is a proper rotation.

    Checks: shape (..., 3, 3), all entries finite, ``R^T R == I`` within ``atol`` (orthonormal) and
    ``det R == +1`` within ``atol`` (not a reflection). ``what`` names the field in the message;
    ``file``/``record`` say where it came from.
    """
    try:
        a = np.asarray(B.to_numpy(R), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{what} is not a numeric array ({exc})",
            file=file, record=record, field=what,
            fix=f"store {what} as a 3x3 list of numbers (row-major rotation matrix)",
        ) from None
    if a.ndim < 2 or a.shape[-2:] != (3, 3):
        raise DataError(
            f"{what} must have shape (..., 3, 3), got {a.shape}",
            file=file, record=record, field=what,
            fix=f"store {what} as a 3x3 rotation matrix (row-major nested list), not a quaternion or Euler angles",
        )
    if not np.all(np.isfinite(a)):
        raise DataError(
            f"{what} contains NaN or inf",
            file=file, record=record, field=what,
            fix=f"drop or repair the record whose {what} is not finite",
        )
    err = np.abs(np.swapaxes(a, -1, -2) @ a - np.eye(3)).max(axis=(-2, -1))
    if np.any(err > atol):
        worst = float(err.max())
        raise DataError(
            f"{what} is not orthonormal: max |R^T R - I| = {worst:.3g} > atol {atol:g}",
            file=file, record=record, field=what,
            fix=f"re-orthonormalise {what} (e.g. via SVD or rot6d_to_matrix) or fix the writer that produced it",
        )
    det = np.linalg.det(a)
    if np.any(np.abs(det - 1.0) > atol):
        worst = float(det.reshape(-1)[np.argmax(np.abs(det - 1.0).reshape(-1))])
        raise DataError(
            f"{what} is not a proper rotation: det = {worst:.6g} (a reflection if -1), expected +1",
            file=file, record=record, field=what,
            fix=f"flip the sign of one axis of {what} consistently with its dimensions, or fix the frame "
            "convention (right-handed frames only)",
        )

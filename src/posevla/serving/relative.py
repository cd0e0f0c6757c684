"""Relative end-effector chunks: an absolute EE chunk expressed in the EE frame at request time, and back.

A policy in the ``"ee_pose"`` action space (`posevla.data.action_space`) predicts *absolute* EE poses in the
robot's base frame, per arm ``[x, y, z, R00, R10, R20, R01, R11, R21, gripper…]`` (position, the first two
columns of the rotation matrix, gripper dims). Sent relative to the EE pose ``T_ref`` the robot had when the
observation was taken, a chunk survives a base-frame offset between server and robot and can be re-anchored
on the robot side: ``T_rel,t = T_ref⁻¹ · T_t`` (:func:`chunk_to_relative`), ``T_t = T_ref · T_rel,t``
(:func:`chunk_to_absolute`). Both act linearly on the position and on the two rotation columns, so a round
trip with the same ``T_ref`` is exact up to float rounding (the 6D part need not be orthonormal; the gripper
dims pass through).

For quaternion poses (xyz + quaternion wxyz, the ``observation.ee_pose`` / ``Policy.infer(...)["ee_pose"]``
layout) :func:`poses_to_relative` / :func:`poses_to_absolute` do the same and keep the quaternion sign
continuous along the chunk (:func:`quat_sign_continuity`: q and −q are the same rotation; a chunk that flips
sign between steps would look like a jump to anything that interpolates quaternions).

numpy only (the geometry helpers of `posevla.geometry` import torch only when given tensors): the robot side
imports this without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posevla.errors import DataError
from posevla.geometry.rotations import matrix_to_quat_wxyz, quat_wxyz_to_matrix

__all__ = [
    "POSE_DIMS",
    "reference_pose",
    "chunk_to_relative",
    "chunk_to_absolute",
    "poses_to_relative",
    "poses_to_absolute",
    "quat_sign_continuity",
]

#: Pose dims of one arm in the ``"ee_pose"`` action vector: xyz + 6D rotation (the gripper dims follow).
POSE_DIMS = 9


def _reference(reference_pose: Any, num_arms: int) -> tuple[np.ndarray, np.ndarray]:
    """(R_ref (arms, 3, 3), p_ref (arms, 3)) of a reference pose (7,) / (arms, 7) xyz + quaternion wxyz."""
    ref = np.asarray(reference_pose, np.float64)
    ref = ref[None] if ref.ndim == 1 else ref
    if ref.shape != (num_arms, 7) or not np.all(np.isfinite(ref)):
        raise DataError(
            f"reference pose of shape {np.shape(reference_pose)}, expected a finite (7,) or ({num_arms}, 7) "
            "xyz + quaternion wxyz per arm",
            field="reference_pose",
            fix="pass the EE pose the robot had when the observation was taken (observation.ee_pose)",
        )
    norm = np.linalg.norm(ref[:, 3:], axis=-1)  # (arms,)
    if np.any(norm < 1e-6):
        raise DataError("reference pose has a zero quaternion", field="reference_pose")
    return np.asarray(quat_wxyz_to_matrix(ref[:, 3:]), np.float64), ref[:, :3]


def _arms(actions: Any, num_arms: int, what: str) -> np.ndarray:
    """The chunk (H, A) as (H, arms, A / arms) float64, checked."""
    a = np.asarray(actions, np.float64)
    if isinstance(num_arms, bool) or not isinstance(num_arms, (int, np.integer)) or num_arms < 1:
        raise DataError(f"num_arms must be an integer >= 1, got {num_arms!r}", field="num_arms")
    if a.ndim != 2 or a.shape[1] % num_arms or a.shape[1] // num_arms < POSE_DIMS:
        raise DataError(
            f"{what} of shape {a.shape}, expected (H, A) with A = {num_arms} arm(s) × (9 pose dims + gripper "
            "dims) in the 'ee_pose' layout [x, y, z, R00, R10, R20, R01, R11, R21, gripper…]",
            field=what,
            fix="relative chunks apply only to policies trained in the 'ee_pose' action space",
        )
    if not np.all(np.isfinite(a)):
        raise DataError(f"{what} holds NaN / inf", field=what)
    return a.reshape(a.shape[0], num_arms, -1).copy()


def chunk_to_relative(actions: Any, reference_pose: Any, *, num_arms: int = 1) -> np.ndarray:
    """Absolute ``"ee_pose"`` chunk (H, A) -> the same chunk relative to `reference_pose`: ``T_ref⁻¹ · T_t``.

    Args:
        actions: (H, A) absolute actions (base frame), A = num_arms × (9 + gripper dims).
        reference_pose: (7,) or (num_arms, 7) EE pose(s) xyz + quaternion wxyz at request time.
        num_arms: arms in the action vector.

    Returns:
        (H, A) float64: per arm ``R_refᵀ (p_t − p_ref)``, ``R_refᵀ``·both rotation columns, grippers as is.
    """
    a = _arms(actions, num_arms, "actions")  # (H, arms, D)
    R, p = _reference(reference_pose, num_arms)  # (arms, 3, 3), (arms, 3)
    Rt = np.swapaxes(R, -1, -2)  # (arms, 3, 3)
    a[..., 0:3] = np.einsum("aij,haj->hai", Rt, a[..., 0:3] - p[None])  # (H, arms, 3)
    for c in (3, 6):  # the two rotation columns
        a[..., c : c + 3] = np.einsum("aij,haj->hai", Rt, a[..., c : c + 3])  # (H, arms, 3)
    return a.reshape(a.shape[0], -1)


def chunk_to_absolute(relative: Any, reference_pose: Any, *, num_arms: int = 1) -> np.ndarray:
    """Inverse of :func:`chunk_to_relative`: ``T_t = T_ref · T_rel,t`` per step and arm; (H, A) float64."""
    a = _arms(relative, num_arms, "relative actions")  # (H, arms, D)
    R, p = _reference(reference_pose, num_arms)  # (arms, 3, 3), (arms, 3)
    a[..., 0:3] = np.einsum("aij,haj->hai", R, a[..., 0:3]) + p[None]  # (H, arms, 3)
    for c in (3, 6):
        a[..., c : c + 3] = np.einsum("aij,haj->hai", R, a[..., c : c + 3])  # (H, arms, 3)
    return a.reshape(a.shape[0], -1)


def quat_sign_continuity(quats: Any, start: Any = None) -> np.ndarray:
    """Quaternions (H, ..., 4) with signs flipped so consecutive steps have a non-negative dot product.

    Args:
        quats: a sequence of quaternions along axis 0.
        start: (..., 4) the quaternion before step 0 (e.g. the current EE orientation); step 0 is aligned with
            it when given, else kept.
    """
    q = np.array(quats, np.float64)  # (H, ..., 4)
    if q.ndim < 2 or q.shape[-1] != 4:
        raise DataError(f"quaternions of shape {q.shape}, expected (H, ..., 4)", field="quaternions")
    prev = None if start is None else np.asarray(start, np.float64)
    for t in range(q.shape[0]):
        if prev is not None:
            flip = (q[t] * prev).sum(-1, keepdims=True) < 0  # (..., 1)
            q[t] = np.where(flip, -q[t], q[t])
        prev = q[t]
    return q


def _poses(poses: Any, what: str) -> np.ndarray:
    x = np.asarray(poses, np.float64)
    x = x[:, None] if x.ndim == 2 else x  # (H, 7) -> (H, 1, 7)
    if x.ndim != 3 or x.shape[-1] != 7 or not np.all(np.isfinite(x)):
        raise DataError(f"{what} of shape {np.shape(poses)}, expected finite (H, 7) or (H, arms, 7) xyz + "
                        "quaternion wxyz", field=what)
    return x


def poses_to_relative(poses: Any, reference_pose: Any) -> np.ndarray:
    """Absolute poses (H, [arms,] 7) xyz + quaternion wxyz -> relative to `reference_pose` (same shape).

    The relative quaternions are sign-continuous along the chunk, step 0 aligned with the identity (w ≥ 0).
    """
    x = _poses(poses, "poses")  # (H, arms, 7)
    R, p = _reference(reference_pose, x.shape[1])  # (arms, 3, 3), (arms, 3)
    Rt = np.swapaxes(R, -1, -2)  # (arms, 3, 3)
    pos = np.einsum("aij,haj->hai", Rt, x[..., :3] - p[None])  # (H, arms, 3)
    R_t = np.asarray(quat_wxyz_to_matrix(x[..., 3:]), np.float64)  # (H, arms, 3, 3)
    rot = np.einsum("aij,hajk->haik", Rt, R_t)  # (H, arms, 3, 3)
    q = quat_sign_continuity(np.asarray(matrix_to_quat_wxyz(rot), np.float64), start=[1.0, 0.0, 0.0, 0.0])
    out = np.concatenate([pos, q], axis=-1)  # (H, arms, 7)
    return out[:, 0] if np.ndim(poses) == 2 else out


def poses_to_absolute(relative: Any, reference_pose: Any) -> np.ndarray:
    """Inverse of :func:`poses_to_relative` (quaternions sign-continuous from the reference's)."""
    x = _poses(relative, "relative poses")  # (H, arms, 7)
    R, p = _reference(reference_pose, x.shape[1])  # (arms, 3, 3), (arms, 3)
    pos = np.einsum("aij,haj->hai", R, x[..., :3]) + p[None]  # (H, arms, 3)
    R_rel = np.asarray(quat_wxyz_to_matrix(x[..., 3:]), np.float64)  # (H, arms, 3, 3)
    rot = np.einsum("aij,hajk->haik", R, R_rel)  # (H, arms, 3, 3)
    ref_q = np.asarray(reference_pose, np.float64).reshape(x.shape[1], 7)[:, 3:]  # (arms, 4)
    q = quat_sign_continuity(np.asarray(matrix_to_quat_wxyz(rot), np.float64), start=ref_q)
    out = np.concatenate([pos, q], axis=-1)  # (H, arms, 7)
    return out[:, 0] if np.ndim(relative) == 2 else out


def reference_pose(obs: Mapping[str, Any], ee_keys: Sequence[str] = ("observation.ee_pose",)) -> np.ndarray:
    """The EE pose(s) (arms, 7) of an observation: the reference of a relative chunk requested with it."""
    poses = []
    for key in ee_keys:
        if key not in obs:
            raise DataError(f"the observation has no '{key}' (EE pose xyz + quaternion wxyz)", field=key,
                            fix="relative chunks need the EE pose at request time in the observation")
        poses.append(np.asarray(obs[key], np.float64).reshape(7))
    return np.stack(poses)

"""Value checks shared by the LeRobot v3 writer and reader: finite values, unit quaternions, K, poses, depth."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from posevla.data.formats.lerobot.schema import (
    _CAM_RE,
    EE_POSE_KEY,
    IMAGE_PREFIX,
    MAX_DEPTH_M,
    QUAT_NORM_TOL,
    _first,
)
from posevla.errors import DataError
from posevla.geometry import check_K, check_rotation_matrix


def _check_semantics(
    key: str,
    arr: np.ndarray,
    image_hw: Mapping[str, tuple[int, int]],
    *,
    file_of: Callable[[int], str | None],
    record_of: Callable[[int], str],
) -> None:
    """Check the meaning of one numeric feature, arr (N, *shape); raise on the first bad frame."""
    n = arr.shape[0]
    if n == 0:
        return
    if arr.dtype.kind == "f":
        bad = _first(~np.isfinite(arr.reshape(n, -1)).all(axis=1))
        if bad is not None:
            raise DataError(
                f"'{key}' contains NaN or inf",
                file=file_of(bad),
                record=record_of(bad),
                field=key,
                fix="repair or drop the frames with non-finite values before writing",
            )
    if key == EE_POSE_KEY or key.startswith(EE_POSE_KEY + "."):
        if arr.shape[1:] != (7,):
            raise DataError(
                f"'{key}' must have shape (T, 7) = xyz + quaternion wxyz, got {arr.shape}",
                file=file_of(0),
                record=record_of(0),
                field=key,
                fix="store the end-effector pose as [x, y, z, qw, qx, qy, qz] in the world frame",
            )
        norm = np.linalg.norm(arr[:, 3:].astype(np.float64), axis=1)
        bad = _first(np.abs(norm - 1.0) > QUAT_NORM_TOL)
        if bad is not None:
            raise DataError(
                f"'{key}' quaternion is not unit length: |q| = {norm[bad]:.6g} "
                f"(wxyz {arr[bad, 3:].tolist()})",
                file=file_of(bad),
                record=record_of(bad),
                field=key,
                fix="normalise the quaternion and check its order is w, x, y, z (scalar first)",
            )
    m = _CAM_RE.match(key)
    if not m:
        return
    cam, what = m.groups()
    if what == "K":
        if arr.shape[1:] != (3, 3):
            raise DataError(
                f"'{key}' must have shape (T, 3, 3), got {arr.shape}",
                file=file_of(0),
                record=record_of(0),
                field=key,
                fix="store one 3x3 intrinsic matrix per frame",
            )
        if cam not in image_hw:
            raise DataError(
                f"'{key}' has no image feature '{IMAGE_PREFIX}{cam}' to check it against",
                file=file_of(0),
                record=record_of(0),
                field=key,
                fix=f"add the images of camera {cam!r} or drop its K feature",
            )
        h, w = image_hw[cam]
        _, first_idx = np.unique(arr.reshape(n, 9), axis=0, return_index=True)
        for i in sorted(int(j) for j in first_idx):  # each distinct K once, in frame order
            check_K(arr[i].astype(np.float64), w, h, file=file_of(i), record=record_of(i), field=key)
    else:
        if arr.shape[1:] != (4, 4):
            raise DataError(
                f"'{key}' must have shape (T, 4, 4), got {arr.shape}",
                file=file_of(0),
                record=record_of(0),
                field=key,
                fix="store one 4x4 camera pose per frame",
            )
        a = arr.astype(np.float64)
        bad = _first(np.abs(a[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1) > 1e-6)
        if bad is not None:
            raise DataError(
                f"'{key}' last row must be [0, 0, 0, 1], got {a[bad, 3].tolist()}",
                file=file_of(bad),
                record=record_of(bad),
                field=key,
                fix="store T_world_cam as a 4x4 homogeneous rigid transform (OpenCV camera axes)",
            )
        R = a[:, :3, :3]
        ortho = np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)).max(axis=(1, 2))
        bad = _first((ortho > 1e-4) | (np.abs(np.linalg.det(R) - 1.0) > 1e-4))
        if bad is not None:
            check_rotation_matrix(R[bad], what=key, file=file_of(bad), record=record_of(bad))


def _check_depth_values(
    depth: np.ndarray, key: str, scale: float, *, file: str | None, record_of: Callable[[int], str]
) -> None:
    """depth: (N, H, W) metres. Finite, >= 0, below MAX_DEPTH_M and representable as uint16 * scale."""
    n = depth.shape[0]
    flat = depth.reshape(n, -1)
    bad = _first(~np.isfinite(flat).all(axis=1) | (flat < 0).any(axis=1))
    if bad is not None:
        raise DataError(
            f"'{key}' has NaN, inf or negative depth",
            file=file,
            record=record_of(bad),
            field=key,
            fix="store invalid depth (holes, far plane, sky) as 0",
        )
    peak = flat.max(axis=1)
    bad = _first(peak > MAX_DEPTH_M)
    if bad is not None:
        raise DataError(
            f"'{key}' has depth {float(peak[bad]):g} m > {MAX_DEPTH_M:g} m: wrong units "
            "(millimetres as metres?) "
            f"or a wrong depth_scale ({scale:g} m per PNG unit)",
            file=file,
            record=record_of(bad),
            field=key,
            fix="store depth in metres (0 = invalid) and depth_scale in metres per PNG unit (0.001 for mm)",
        )
    limit = 65535 * scale
    bad = _first(peak > limit + 0.5 * scale)
    if bad is not None:
        raise DataError(
            f"'{key}' has depth {float(peak[bad]):g} m, more than a 16-bit PNG holds at "
            f"depth_scale {scale:g} "
            f"({limit:g} m)",
            file=file,
            record=record_of(bad),
            field=key,
            fix="zero depth beyond the sensor's range, or raise CameraConfig.depth_scale",
        )



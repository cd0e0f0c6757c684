"""Tests for posevla.geometry: rotations, SE(3), cameras, boxes and exact 3D IoU (numpy and torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation as Rot

from posevla.errors import DataError
from posevla.geometry import (
    BOX_CORNER_SIGNS,
    K_crop,
    K_from_fovy,
    K_pad,
    K_resize,
    T_cv_from_gl,
    box2d_from_box3d,
    box_corners,
    box_extents_xyz,
    check_K,
    check_rotation_matrix,
    compose_T,
    euler_xyz_to_matrix,
    invert_T,
    iou3d,
    iou3d_matrix,
    make_T,
    matrix_to_euler_xyz,
    matrix_to_quat_wxyz,
    matrix_to_rot6d,
    opengl_to_opencv_camera,
    project_points,
    quat_wxyz_to_matrix,
    quat_wxyz_to_scipy,
    ray_map,
    resize_pad_params,
    rot6d_to_matrix,
    rotation_angle_between,
    scipy_to_quat_wxyz,
    transform_points,
    unproject_points,
)

torch.set_num_threads(1)

I3 = np.eye(3)


def _rand_R(n: int, seed: int) -> np.ndarray:
    return Rot.random(n, random_state=seed).as_matrix()


def _K(fx=500.0, fy=480.0, cx=319.5, cy=239.5, skew=0.0) -> np.ndarray:
    return np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _as(kind: str, x: np.ndarray):
    return torch.tensor(x) if kind == "torch" else np.asarray(x)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


KINDS = ["numpy", "torch"]

# ------------------------------------------------------------------------------------------------
# Rotations
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_quat_matrix_round_trip_and_sign(kind):
    R = _rand_R(200, 0).reshape(10, 20, 3, 3)  # leading batch dims
    q = matrix_to_quat_wxyz(_as(kind, R))
    assert type(q) is type(_as(kind, R)) and tuple(q.shape) == (10, 20, 4)
    qn = _np(q)
    assert np.all(qn[..., 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(qn, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(_np(quat_wxyz_to_matrix(q)), R, atol=1e-12)
    # q and -q are the same rotation; non-unit q is normalised.
    np.testing.assert_allclose(_np(quat_wxyz_to_matrix(-3.0 * q)), R, atol=1e-12)
    # Agrees with scipy after the one wxyz<->xyzw helper.
    qs = scipy_to_quat_wxyz(Rot.from_matrix(R.reshape(-1, 3, 3)).as_quat())
    qs = qs * np.sign(qs[:, :1])
    np.testing.assert_allclose(qn.reshape(-1, 4), qs, atol=1e-12)
    np.testing.assert_allclose(quat_wxyz_to_scipy(scipy_to_quat_wxyz(qs)), qs)


def test_quat_known_values_and_180_degrees():
    # 90 deg about z: wxyz = (cos45, 0, 0, sin45)
    q = np.array([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])
    np.testing.assert_allclose(quat_wxyz_to_matrix(q), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    R180 = Rot.from_rotvec(np.pi * np.eye(3)).as_matrix()
    np.testing.assert_allclose(quat_wxyz_to_matrix(matrix_to_quat_wxyz(R180)), R180, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_euler_round_trip_matches_scipy(kind):
    rng = np.random.default_rng(1)
    e = np.stack(
        [rng.uniform(-np.pi, np.pi, 500), rng.uniform(-1.4, 1.4, 500), rng.uniform(-np.pi, np.pi, 500)], -1
    )
    R = euler_xyz_to_matrix(_as(kind, e))
    np.testing.assert_allclose(_np(R), Rot.from_euler("xyz", e).as_matrix(), atol=1e-12)
    e2 = matrix_to_euler_xyz(R)
    np.testing.assert_allclose(_np(e2), e, atol=1e-9)
    Rr = _rand_R(300, 2)
    e3 = _np(matrix_to_euler_xyz(_as(kind, Rr)))
    assert np.all(np.abs(e3) <= np.pi + 1e-12)
    np.testing.assert_allclose(e3, Rot.from_matrix(Rr).as_euler("xyz"), atol=1e-9)


def test_euler_gimbal_lock_reproduces_matrix():
    e = np.array([[0.3, np.pi / 2, 0.7], [0.3, -np.pi / 2, 0.7]])
    R = euler_xyz_to_matrix(e)
    e2 = matrix_to_euler_xyz(R)
    np.testing.assert_allclose(e2[:, 2], 0.0)  # documented: yaw set to 0 at the lock
    np.testing.assert_allclose(euler_xyz_to_matrix(e2), R, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_rot6d_round_trip_and_gram_schmidt(kind):
    R = _rand_R(100, 3)
    d6 = matrix_to_rot6d(_as(kind, R))
    assert tuple(d6.shape) == (100, 6)
    np.testing.assert_allclose(_np(d6)[:, :3], R[:, :, 0])
    np.testing.assert_allclose(_np(rot6d_to_matrix(d6)), R, atol=1e-12)
    noisy = _np(d6) * 2.5 + 0.05 * np.random.default_rng(0).normal(size=(100, 6))
    Rn = rot6d_to_matrix(_as(kind, noisy))
    check_rotation_matrix(Rn, atol=1e-9)


def test_torch_float32_and_gradients():
    R = torch.tensor(_rand_R(8, 4), dtype=torch.float32, requires_grad=True)
    q = matrix_to_quat_wxyz(R)
    e = matrix_to_euler_xyz(R)
    assert q.dtype == torch.float32 and e.dtype == torch.float32
    (q.sum() + e.sum() + rot6d_to_matrix(matrix_to_rot6d(R)).sum()).backward()
    assert torch.isfinite(R.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_rotation_angle_between(kind):
    R1 = _rand_R(50, 5)
    angles = np.linspace(0.0, np.pi, 50)
    axes = np.random.default_rng(5).normal(size=(50, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    R2 = R1 @ Rot.from_rotvec(axes * angles[:, None]).as_matrix()
    got = _np(rotation_angle_between(_as(kind, R1), _as(kind, R2)))
    np.testing.assert_allclose(got, angles, atol=1e-7)


def test_check_rotation_matrix():
    check_rotation_matrix(_rand_R(10, 6))
    with pytest.raises(DataError, match="orthonormal") as ei:
        check_rotation_matrix(np.diag([1.0, 1.0, 1.1]), what="R_cam", file="a.json", record=3)
    assert ei.value.fix and ei.value.field == "R_cam" and "a.json" in str(ei.value)
    with pytest.raises(DataError, match="det"):
        check_rotation_matrix(np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(DataError, match="NaN"):
        check_rotation_matrix(np.full((3, 3), np.nan))
    with pytest.raises(DataError, match="inf"):
        check_rotation_matrix(np.array([[np.inf, 0, 0], [0, 1, 0], [0, 0, 1]]))
    with pytest.raises(DataError, match="shape"):
        check_rotation_matrix(np.eye(4))
    with pytest.raises(DataError):
        check_rotation_matrix(torch.tensor(np.diag([1.0, -1.0, 1.0])))


# ------------------------------------------------------------------------------------------------
# SE(3)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_se3_round_trips(kind):
    rng = np.random.default_rng(7)
    R, t = _rand_R(6, 7), rng.normal(size=(6, 3))
    T = make_T(_as(kind, R), _as(kind, t))
    assert tuple(T.shape) == (6, 4, 4)
    Tn = _np(T)
    np.testing.assert_allclose(Tn[:, 3], np.tile([0, 0, 0, 1.0], (6, 1)))
    np.testing.assert_allclose(_np(compose_T(invert_T(T), T)), np.tile(np.eye(4), (6, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(_np(compose_T(T, invert_T(T))), np.tile(np.eye(4), (6, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(_np(invert_T(T)), np.linalg.inv(Tn), atol=1e-12)
    p = rng.normal(size=(6, 5, 3))
    p2 = transform_points(T, _as(kind, p))
    np.testing.assert_allclose(_np(p2), np.einsum("nij,nkj->nki", R, p) + t[:, None], atol=1e-12)
    np.testing.assert_allclose(_np(transform_points(invert_T(T), p2)), p, atol=1e-12)
    # compose: T_a_c = T_a_b @ T_b_c, applied to points
    Tab, Tbc = T[0], T[1]
    pc = _as(kind, p[0])
    np.testing.assert_allclose(
        _np(transform_points(compose_T(Tab, Tbc), pc)), _np(transform_points(Tab, transform_points(Tbc, pc))),
        atol=1e-12,
    )
    np.testing.assert_allclose(_np(compose_T(T[0], T[1], T[2])), Tn[0] @ Tn[1] @ Tn[2], atol=1e-12)


def test_opengl_to_opencv_camera():
    np.testing.assert_array_equal(T_cv_from_gl, np.diag([1.0, -1, -1, 1]))
    # A GL camera at the origin looking down world -z: a point in front of it (world z < 0) must
    # have positive OpenCV depth, and world +y (up) must be image-up (negative OpenCV y).
    T_world_camcv = opengl_to_opencv_camera(np.eye(4))
    p_cam = transform_points(invert_T(T_world_camcv), np.array([[0.0, 1.0, -2.0]]))
    np.testing.assert_allclose(p_cam, [[0.0, -1.0, 2.0]])
    Tt = opengl_to_opencv_camera(torch.eye(4, dtype=torch.float64))
    assert isinstance(Tt, torch.Tensor)
    np.testing.assert_allclose(Tt.numpy(), T_world_camcv)


# ------------------------------------------------------------------------------------------------
# Camera
# ------------------------------------------------------------------------------------------------


def test_K_from_fovy_known_value():
    K = K_from_fovy(math.radians(90.0), 640, 480)
    assert K.dtype == np.float64 and K.shape == (3, 3)
    np.testing.assert_allclose(K, [[240.0, 0, 319.5], [0, 240.0, 239.5], [0, 0, 1]], atol=1e-9)
    K2 = K_from_fovy(math.radians(45.0), 128, 128)
    np.testing.assert_allclose(K2[1, 1], 64.0 / math.tan(math.radians(22.5)))


@pytest.mark.parametrize("kind", KINDS)
def test_project_unproject_round_trip(kind):
    rng = np.random.default_rng(8)
    K = _K(skew=1.5)
    p = np.concatenate([rng.uniform(-1, 1, (4, 30, 2)), rng.uniform(0.5, 5, (4, 30, 1))], -1)
    uv = project_points(_as(kind, K), _as(kind, p))
    assert tuple(uv.shape) == (4, 30, 2) and type(uv) is type(_as(kind, p))
    np.testing.assert_allclose(_np(uv)[..., 0], K[0, 0] * p[..., 0] / p[..., 2] + 1.5 * p[..., 1] / p[..., 2] + K[0, 2])
    back = unproject_points(_as(kind, K), uv, _as(kind, p[..., 2]))
    np.testing.assert_allclose(_np(back), p, atol=1e-10)
    # batched K (4, 3, 3)
    Kb = np.stack([_K(fx=400 + 10 * i) for i in range(4)])
    uvb = _np(project_points(_as(kind, Kb), _as(kind, p)))
    np.testing.assert_allclose(uvb[2], project_points(Kb[2], p[2]))


def _pt_and_pixel(K):
    p = np.array([[0.31, -0.22, 2.7], [-0.5, 0.4, 1.3]])
    return p, project_points(K, p)


def test_K_resize_crop_pad_against_projection():
    K = _K()
    p, uv = _pt_and_pixel(K)
    sx, sy = 0.37, 0.61
    uv_r = project_points(K_resize(K, sx, sy), p)
    np.testing.assert_allclose(uv_r[:, 0], sx * (uv[:, 0] + 0.5) - 0.5)
    np.testing.assert_allclose(uv_r[:, 1], sy * (uv[:, 1] + 0.5) - 0.5)
    Kr = K_resize(K, sx, sy)
    np.testing.assert_allclose([Kr[0, 0], Kr[0, 2]], [sx * K[0, 0], sx * (K[0, 2] + 0.5) - 0.5])
    # resizing a whole image maps its extent [-0.5, W-0.5] onto [-0.5, W'-0.5]
    W, W2 = 640, 224
    s = W2 / W
    np.testing.assert_allclose([s * (-0.5 + 0.5) - 0.5, s * (W - 0.5 + 0.5) - 0.5], [-0.5, W2 - 0.5])
    uv_c = project_points(K_crop(K, 17, 33), p)
    np.testing.assert_allclose(uv_c, uv - [17, 33])
    uv_p = project_points(K_pad(K, 5, 9), p)
    np.testing.assert_allclose(uv_p, uv + [5, 9])
    Kt = K_pad(K_crop(K_resize(torch.tensor(K), sx, sy), 3, 4), 5, 6)
    assert isinstance(Kt, torch.Tensor)
    np.testing.assert_allclose(Kt.numpy(), K_pad(K_crop(K_resize(K, sx, sy), 3, 4), 5, 6))
    # batched K
    np.testing.assert_allclose(K_resize(np.stack([K, K]), sx, sy)[1], Kr)


def test_resize_pad_params():
    assert resize_pad_params(640, 480, 224) == (0.35, 224, 168, 0, 28)
    scale, w, h, pl, pt = resize_pad_params(300, 1000, 224)
    assert (w, h, pt) == (67, 224, 0) and pl == (224 - 67) // 2 and scale == pytest.approx(0.224)
    for v in (w, h, pl, pt):
        assert isinstance(v, int)
    assert resize_pad_params(224, 224, 224) == (1.0, 224, 224, 0, 0)
    # K through resize+pad: the image centre pixel stays at the padded image's centre
    W, H, S = 640, 480, 224
    _, nw, nh, pl, pt = resize_pad_params(W, H, S)
    K2 = K_pad(K_resize(K_from_fovy(1.0, W, H), nw / W, nh / H), pl, pt)
    np.testing.assert_allclose(K2[:2, 2], [(S - 1) / 2, pt + (nh - 1) / 2])


@pytest.mark.parametrize("kind", KINDS)
def test_ray_map_equals_unproject_at_z1(kind):
    K = _K(fx=50, fy=40, cx=11.3, cy=7.8, skew=0.7)
    W, H = 24, 16
    valid = np.ones((H, W), dtype=bool)
    valid[:, :3] = False
    rm = ray_map(_as(kind, K), W, H, valid=valid)
    assert tuple(rm.shape) == (3, H, W) and _np(rm).dtype == np.float32
    assert type(rm) is type(_as(kind, K))
    vv, uu = np.mgrid[0:H, 0:W]
    uv = np.stack([uu, vv], -1).reshape(-1, 2).astype(np.float64)
    ref = unproject_points(K, uv, np.ones(len(uv))).reshape(H, W, 3).transpose(2, 0, 1)
    rmn = _np(rm)
    np.testing.assert_allclose(rmn[:, :, 3:], ref[:, :, 3:], atol=1e-6)
    assert np.all(rmn[:, :, :3] == 0)
    np.testing.assert_allclose(_np(ray_map(_as(kind, _K()), 4, 3))[0, 0, 0], (0 - 319.5) / 500, rtol=1e-6)


def test_check_K():
    check_K(_K(), 640, 480)
    cases = [
        (np.eye(4), "shape"),
        (np.ones(9), "shape"),
        (_K(fx=np.nan), "NaN"),
        (_K(cy=np.inf), "inf"),
        (_K(fx=-500.0), "positive"),
        (_K(fy=0.0), "positive"),
        (_K(cx=5000.0), "outside"),
        (_K(cy=-40.0), "outside"),
        (np.array([[500, 0, 319.5], [0, 500, 239.5], [0, 0, 2.0]]), "bottom row"),
    ]
    for K, msg in cases:
        with pytest.raises(DataError, match=msg) as ei:
            check_K(K, 640, 480, file="d.json", record=7)
        assert ei.value.fix and ei.value.record == 7 and ei.value.field == "K"
    with pytest.raises(DataError):
        check_K(torch.tensor(_K(fx=-1.0)), 640, 480)


# ------------------------------------------------------------------------------------------------
# Boxes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_box_corners_order_identity(kind):
    c, d = np.array([1.0, 2.0, 3.0]), np.array([0.4, 0.6, 0.8])  # Omni3D [W, H, L]
    corners = _np(box_corners(_as(kind, c), _as(kind, d), _as(kind, I3)))
    # cubercnn get_cuboid_verts_faces, written out by hand: x = +-L/2, y = +-H/2, z = +-W/2,
    # v0 = (-L/2, -H/2, -W/2), v1 = (L/2, -H/2, -W/2), v2 = (L/2, H/2, -W/2), v3 = (-L/2, H/2, -W/2), v4-v7 at +W/2
    L, H, W = 0.8, 0.6, 0.4
    expected = c + np.array([
        [-L / 2, -H / 2, -W / 2], [L / 2, -H / 2, -W / 2], [L / 2, H / 2, -W / 2], [-L / 2, H / 2, -W / 2],
        [-L / 2, -H / 2, W / 2], [L / 2, -H / 2, W / 2], [L / 2, H / 2, W / 2], [-L / 2, H / 2, W / 2],
    ])
    np.testing.assert_allclose(corners, expected)
    np.testing.assert_array_equal(BOX_CORNER_SIGNS, expected * 0 + np.sign(expected - c))
    np.testing.assert_array_equal(box_extents_xyz(d), [L, H, W])
    # v0-v3 at local z = -W/2, v4-v7 at +W/2; v0 top-left (x min, y min = up with y down)
    assert np.allclose(corners[:4, 2], 3.0 - 0.2) and np.allclose(corners[4:, 2], 3.0 + 0.2)
    assert corners[0, 0] < corners[1, 0] and corners[1, 1] < corners[2, 1] and corners[3, 0] < corners[2, 0]
    # clockwise on screen (x right, y down): positive signed area in image coordinates
    f = corners[:4, :2]
    area2 = np.sum(f[:, 0] * np.roll(f[:, 1], -1) - np.roll(f[:, 0], -1) * f[:, 1])
    assert area2 > 0


def test_box_corners_rotation_and_batch():
    R = _rand_R(5, 9)
    c = np.random.default_rng(9).normal(size=(5, 3))
    d = np.array([[1.0, 2.0, 3.0]] * 5)
    corners = box_corners(c, d, R)
    assert corners.shape == (5, 8, 3)
    np.testing.assert_allclose(corners.mean(axis=1), c, atol=1e-12)
    local = np.einsum("nji,nkj->nki", R, corners - c[:, None])  # R^T (p - c)
    np.testing.assert_allclose(local, 0.5 * d[:, None, ::-1] * BOX_CORNER_SIGNS, atol=1e-12)  # [L, H, W] on x, y, z
    ct = box_corners(torch.tensor(c), torch.tensor(d), torch.tensor(R))
    np.testing.assert_allclose(ct.numpy(), corners)


def test_box2d_inside_partial_outside_behind():
    W, H = 640, 480
    K = _K(fx=500, fy=500)
    # fully inside
    corners = box_corners(np.array([0.0, 0.0, 4.0]), np.array([0.5, 0.5, 0.5]), I3)
    box, trunc = box2d_from_box3d(K, corners, W, H)
    uv = project_points(K, corners)
    np.testing.assert_allclose(box, [*uv.min(0), *uv.max(0)])
    assert trunc == 0.0
    # partially outside to the right
    corners = box_corners(np.array([1.2, 0.0, 2.0]), np.array([0.4, 0.4, 0.4]), I3)
    box, trunc = box2d_from_box3d(K, corners, W, H)
    uv = project_points(K, corners)
    x1, y1, x2, y2 = *uv.min(0), *uv.max(0)
    assert x2 > W - 0.5 and x1 < W - 0.5
    np.testing.assert_allclose(box, [x1, y1, W - 0.5, y2])
    np.testing.assert_allclose(trunc, 1 - (W - 0.5 - x1) / (x2 - x1))
    assert 0 < trunc < 1
    # wholly outside (left, in front) and wholly behind the camera
    corners_out = box_corners(np.array([-5.0, 0.0, 2.0]), np.array([0.4, 0.4, 0.4]), I3)
    _, t_out = box2d_from_box3d(K, corners_out, W, H)
    assert t_out == 1.0
    corners_behind = box_corners(np.array([0.0, 0.0, -2.0]), np.array([0.4, 0.4, 0.4]), I3)
    b_behind, t_behind = box2d_from_box3d(K, corners_behind, W, H)
    assert t_behind == 1.0 and np.all(np.isnan(b_behind))
    # straddling the camera plane: near-plane clip gives a finite, image-clipped box
    corners_str = box_corners(np.array([0.0, 0.0, 0.1]), np.array([0.4, 0.4, 0.6]), I3)
    b_str, t_str = box2d_from_box3d(K, corners_str, W, H)
    np.testing.assert_allclose(b_str, [-0.5, -0.5, W - 0.5, H - 0.5])
    assert 0.9 < t_str < 1.0
    # batched + torch
    allc = np.stack([corners, corners_out, corners_behind])
    bb, tt = box2d_from_box3d(K, torch.tensor(allc), W, H)
    assert isinstance(bb, torch.Tensor) and tuple(bb.shape) == (3, 4) and tuple(tt.shape) == (3,)
    np.testing.assert_allclose(tt.numpy(), [trunc, 1.0, 1.0])


# ------------------------------------------------------------------------------------------------
# 3D IoU
# ------------------------------------------------------------------------------------------------


def test_iou3d_known_values():
    z = np.zeros(3)
    one, two = np.ones(3), 2 * np.ones(3)
    assert iou3d(z, one, I3, z, one, I3) == pytest.approx(1.0, abs=1e-9)
    assert iou3d(z, two, I3, np.array([1.0, 0, 0]), two, I3) == pytest.approx(1 / 3, abs=1e-9)
    assert iou3d(z, one, I3, z, two, I3) == pytest.approx(0.125, abs=1e-9)
    R_yaw = euler_xyz_to_matrix(np.array([0.0, np.pi / 4, 0.0]))  # about the vertical (camera y) axis
    assert iou3d(z, one, I3, z, one, R_yaw) == pytest.approx(0.70711, abs=1e-4)
    assert iou3d(z, one, I3, np.array([3.0, 0, 0]), one, I3) == 0.0  # sphere early-out
    assert iou3d(z, one, I3, np.array([1.0, 0.2, 0]), one, I3) == 0.0  # touching faces
    assert iou3d(z, one, I3, np.array([1.2, 0.0, 0.0]), one, R_yaw) > 0.0  # corner pokes in (0.5+0.707)
    assert iou3d(z, one, I3, np.array([1.25, 0.0, 0.0]), one, R_yaw) == 0.0  # disjoint, spheres overlap
    # rotations by 90 degrees about a box axis leave a cube unchanged
    R90 = euler_xyz_to_matrix(np.array([np.pi / 2, 0.0, 0.0]))
    assert iou3d(z, one, I3, z, one, R90) == pytest.approx(1.0, abs=1e-9)


def test_iou3d_symmetry_and_monte_carlo():
    rng = np.random.default_rng(123)
    R1, R2 = _rand_R(2, 11)
    c1, c2 = np.array([0.1, -0.2, 3.0]), np.array([0.35, 0.05, 3.2])
    d1, d2 = np.array([1.0, 0.6, 1.4]), np.array([0.8, 1.1, 0.7])
    iou = iou3d(c1, d1, R1, c2, d2, R2)
    assert iou == pytest.approx(iou3d(c2, d2, R2, c1, d1, R1), abs=1e-9)
    assert 0.05 < iou < 0.95
    # Monte-Carlo: sample uniformly in box 1, count hits in box 2.
    n = 400_000
    local1 = (rng.uniform(-0.5, 0.5, (n, 3)) * d1[::-1])  # extents [L, H, W] along local x, y, z
    p = local1 @ R1.T + c1
    local2 = (p - c2) @ R2
    frac = np.mean(np.all(np.abs(local2) <= d2[::-1] / 2, axis=1))
    inter = frac * np.prod(d1)
    mc = inter / (np.prod(d1) + np.prod(d2) - inter)
    assert iou == pytest.approx(mc, abs=0.01)


def test_iou3d_matrix():
    rng = np.random.default_rng(5)
    na, nb = 4, 5
    A = (rng.normal(size=(na, 3)) * 0.5, rng.uniform(0.5, 1.5, (na, 3)), _rand_R(na, 1))
    Bx = (rng.normal(size=(nb, 3)) * 0.5, rng.uniform(0.5, 1.5, (nb, 3)), _rand_R(nb, 2))
    Bx[0][4] = [50.0, 0, 0]  # far away -> 0 by early-out
    M = iou3d_matrix(A, Bx)
    assert M.shape == (na, nb) and M.dtype == np.float64
    for i in range(na):
        for j in range(nb):
            assert M[i, j] == pytest.approx(iou3d(A[0][i], A[1][i], A[2][i], Bx[0][j], Bx[1][j], Bx[2][j]), abs=1e-9)
    assert np.all(M[:, 4] == 0) and np.any(M > 0)
    np.testing.assert_allclose(iou3d_matrix(A, A).diagonal(), 1.0, atol=1e-9)
    assert iou3d_matrix((np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3))), Bx).shape == (0, nb)
    Mt = iou3d_matrix(tuple(torch.tensor(x) for x in A), Bx)
    np.testing.assert_allclose(Mt, M)

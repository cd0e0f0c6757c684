"""posevla.geometry: rotations, SE(3), pinhole cameras and 3D boxes (numpy or torch, batched).

Pure functions following the project contracts (metres, radians, OpenCV camera frame, quaternions
wxyz, Euler = scipy ``"xyz"`` extrinsic, ``K`` with pixel centres at integer coordinates). Each
function accepts numpy arrays or torch tensors and returns the same kind; see the submodules:

* :mod:`.rotations` -- quaternion / Euler / 6D <-> matrix conversions, rotation checks and angles;
* :mod:`.se3` -- 4x4 rigid transforms ``T_a_b`` and the OpenGL -> OpenCV camera flip;
* :mod:`.camera` -- projection, K under resize/crop/pad, MuJoCo fovy intrinsics, ray maps, K checks;
* :mod:`.boxes` -- Omni3D box corners, projected 2D boxes with truncation, exact oriented 3D IoU.
"""

from posevla.geometry.boxes import (
    BOX_CORNER_SIGNS,
    BOX_EDGES,
    NEAR_PLANE,
    box2d_from_box3d,
    box_corners,
    box_extents_xyz,
    iou3d,
    iou3d_matrix,
)
from posevla.geometry.camera import (
    K_crop,
    K_from_fovy,
    K_pad,
    K_resize,
    check_K,
    project_points,
    ray_map,
    resize_pad_params,
    unproject_points,
)
from posevla.geometry.rotations import (
    check_rotation_matrix,
    euler_xyz_to_matrix,
    matrix_to_euler_xyz,
    matrix_to_quat_wxyz,
    matrix_to_rot6d,
    quat_wxyz_to_matrix,
    quat_wxyz_to_scipy,
    rot6d_to_matrix,
    rotation_angle_between,
    scipy_to_quat_wxyz,
)
from posevla.geometry.se3 import (
    T_cv_from_gl,
    compose_T,
    invert_T,
    make_T,
    opengl_to_opencv_camera,
    transform_points,
)

__all__ = [
    # rotations
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
    # se3
    "make_T",
    "invert_T",
    "compose_T",
    "transform_points",
    "T_cv_from_gl",
    "opengl_to_opencv_camera",
    # camera
    "K_from_fovy",
    "project_points",
    "unproject_points",
    "K_resize",
    "K_crop",
    "K_pad",
    "resize_pad_params",
    "ray_map",
    "check_K",
    # boxes
    "BOX_CORNER_SIGNS",
    "BOX_EDGES",
    "NEAR_PLANE",
    "box_corners",
    "box_extents_xyz",
    "box2d_from_box3d",
    "iou3d",
    "iou3d_matrix",
]

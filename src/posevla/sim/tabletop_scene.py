"""The random content of a tabletop scene (pure numpy, no MuJoCo): objects, poses, colours, lights, cameras.

Scene ``i`` of a dataset draws its randomness only from ``(seed, i, GENERATOR_VERSION)`` (and the category
list), so :mod:`posevla.sim.tabletop` writes the same scenes whatever the number of workers. The world is
z up with the table top at z = 0; objects rest on one of their six AABB faces with a random yaw and never
overlap; the ``head`` camera orbits the table centre and ``wrist1``/``wrist2`` look at random objects.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from posevla.errors import DataError
from posevla.sim.objects import CATALOGUE, ObjectSpec, load_mesh, primitive_points, sample_primitive_dims

CAMERAS = ("head", "wrist1", "wrist2")
MAX_OBJECTS = 6
MIN_OBJECTS = 3
INSTANCES_PER_CATEGORY = 2  # at most this many copies of one category in a scene
WORKSPACE_HALF = np.array([0.32, 0.24])  # metres, half extents of the area objects are placed in
GENERATOR_VERSION = 3  # bump when the same seed would give different scenes


# ----------------------------------------------------------------------------------------------
# Scene sampling (pure numpy, no MuJoCo)
# ----------------------------------------------------------------------------------------------


@dataclass
class PlacedObject:
    category: str
    spec: ObjectSpec
    dims: np.ndarray  # (3,) [w, h, l]
    R_world: np.ndarray  # (3, 3)
    center_world: np.ndarray  # (3,)
    rgba: np.ndarray  # (4,)
    points: np.ndarray  # (P, 3) surface samples in the object frame
    normals: np.ndarray  # (P, 3)


@dataclass
class CameraPose:
    name: str
    T_world_cam: np.ndarray  # (4, 4) OpenCV axes
    fovy_deg: float


@dataclass
class SceneSpec:
    index: int
    table_half: np.ndarray  # (2,) half sizes in x, y
    table_rgba: np.ndarray
    floor_rgba: np.ndarray
    light_dirs: np.ndarray  # (2, 3)
    light_diffuse: np.ndarray  # (2, 3)
    objects: list[PlacedObject]
    cameras: list[CameraPose]


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_axis(axis: np.ndarray, a: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    c, s, C = math.cos(a), math.sin(a), 1 - math.cos(a)
    return np.array(
        [
            [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
            [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
            [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
        ]
    )


# Rotations that bring each of the six local axes (+z, -z, +x, -x, +y, -y) to point up (world +z).
_FACE_ROTATIONS = (
    np.eye(3),
    _rot_axis(np.array([1.0, 0, 0]), math.pi),
    _rot_axis(np.array([0, 1.0, 0]), -math.pi / 2),
    _rot_axis(np.array([0, 1.0, 0]), math.pi / 2),
    _rot_axis(np.array([1.0, 0, 0]), math.pi / 2),
    _rot_axis(np.array([1.0, 0, 0]), -math.pi / 2),
)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


_GOLDEN = 0.618033988749895


def _category_rgba(category_index: int, rng: np.random.Generator) -> np.ndarray:
    """A category's own hue (spread by the golden ratio) with per-instance shade variation.

    Real objects of one kind look alike (every mustard bottle is yellow); a per-category hue keeps the
    recognition problem that of real data, while saturation/brightness/hue jitter varies each instance.
    """
    hue = (category_index * _GOLDEN + rng.uniform(-0.03, 0.03)) % 1.0
    return np.concatenate([_hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.5, 1.0)), [1.0]])


def look_at(pos: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """T_world_cam (OpenCV axes) of a camera at ``pos`` looking at ``target`` with world z up."""
    z = target - pos
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.array([0.0, 0.0, 1.0]))
    if np.linalg.norm(x) < 1e-6:  # looking straight down
        x = np.array([1.0, 0.0, 0.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=1) @ _rot_z(roll)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, pos
    return T


def _orbit_camera(rng, target, dist_range, elev_deg_range, roll_deg, fovy_range, name) -> CameraPose:
    d = rng.uniform(*dist_range)
    e = math.radians(rng.uniform(*elev_deg_range))
    a = rng.uniform(-math.pi, math.pi)
    pos = target + d * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    roll = math.radians(rng.uniform(-roll_deg, roll_deg))
    return CameraPose(name, look_at(pos, target, roll), float(rng.uniform(*fovy_range)))


def category_pool(categories: Sequence[str] | None) -> list[int]:
    """Catalogue indices of the categories scenes draw from (all by default)."""
    if categories is None:
        return list(range(len(CATALOGUE)))
    names = [spec.name for spec in CATALOGUE]
    unknown = [c for c in categories if c not in names]
    if unknown or not categories:
        raise DataError(
            f"unknown or empty category list {list(categories)}",
            field="categories",
            fix=f"choose from: {', '.join(names)}",
        )
    return [names.index(c) for c in categories]


def sample_scene(
    seed: int, index: int, cache_dir: str | os.PathLike | None = None, categories: Sequence[str] | None = None
) -> SceneSpec:
    """The random content of scene ``index`` (depends only on ``(seed, index, categories)``)."""
    pool = category_pool(categories)
    rng = np.random.default_rng([int(seed), int(index), GENERATOR_VERSION])
    table_half = np.array([rng.uniform(0.45, 0.7), rng.uniform(0.35, 0.5)])
    table_rgba = np.concatenate([_hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.35, 0.8)), [1.0]])
    floor_rgba = np.concatenate([_hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.6)), [1.0]])
    light_dirs = np.stack([
        -np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 1.0]) for _ in range(2)
    ])
    light_diffuse = np.stack([np.full(3, rng.uniform(0.2, 0.45)) for _ in range(2)])

    work_half = np.minimum(table_half, WORKSPACE_HALF)  # objects stay in the robot's reach
    n_target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    counts: dict[str, int] = {}
    placed: list[PlacedObject] = []
    rects: list[np.ndarray] = []  # world xy AABBs (xmin, ymin, xmax, ymax)
    margin = 0.02
    for _attempt in range(40):
        if len(placed) >= n_target:
            break
        pool_index = int(rng.integers(len(pool)))
        spec = CATALOGUE[pool[pool_index]]
        if counts.get(spec.name, 0) >= INSTANCES_PER_CATEGORY:
            continue
        if spec.kind == "mesh":
            mesh = load_mesh(spec.name, cache_dir)
            dims = mesh.extents.copy()
        else:
            dims = sample_primitive_dims(spec, rng)
        if spec.kind == "sphere":
            R = _rot_z(rng.uniform(-math.pi, math.pi))  # any rotation of a sphere rests the same way
            R = R @ _FACE_ROTATIONS[int(rng.integers(6))]
        else:
            R = _rot_z(rng.uniform(-math.pi, math.pi)) @ _FACE_ROTATIONS[int(rng.integers(6))]
        # world AABB of the rotated object box (exact in z: the up axis is a local axis)
        half_world = np.abs(R) @ (dims / 2)
        lo_x, hi_x = -work_half[0] + margin + half_world[0], work_half[0] - margin - half_world[0]
        lo_y, hi_y = -work_half[1] + margin + half_world[1], work_half[1] - margin - half_world[1]
        if lo_x >= hi_x or lo_y >= hi_y:
            continue
        for _try in range(25):
            xy = np.array([rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)])
            rect = np.concatenate([xy - half_world[:2], xy + half_world[:2]])
            gap = 0.01
            if all(
                rect[0] > r[2] + gap or rect[2] < r[0] - gap or rect[1] > r[3] + gap or rect[3] < r[1] - gap
                for r in rects
            ):
                break
        else:
            continue
        center = np.array([xy[0], xy[1], half_world[2]])  # resting on the table top (z = 0)
        rgba = _category_rgba(pool_index, rng)
        if spec.kind == "mesh":
            pts, nrm = mesh.points, mesh.normals
        else:
            pts, nrm = primitive_points(spec.kind, dims)
        placed.append(PlacedObject(spec.name, spec, dims, R, center, rgba, pts, nrm))
        rects.append(rect)
        counts[spec.name] = counts.get(spec.name, 0) + 1

    table_target = np.array([rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08), 0.0])
    cams = [_orbit_camera(rng, table_target, (0.6, 0.9), (35.0, 65.0), 3.0, (45.0, 60.0), "head")]
    for name in CAMERAS[1:]:
        if placed:
            obj = placed[int(rng.integers(len(placed)))]
            target = obj.center_world + rng.uniform(-0.03, 0.03, 3)
        else:
            target = table_target
        cams.append(_orbit_camera(rng, target, (0.3, 0.6), (30.0, 75.0), 10.0, (55.0, 75.0), name))
    return SceneSpec(int(index), table_half, table_rgba, floor_rgba, light_dirs, light_diffuse, placed, cams)

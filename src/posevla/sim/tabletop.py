"""Deterministic MuJoCo tabletop scenes: the embedded default 3D grounding dataset.

``generate_dataset(root, num_scenes, seed=...)`` writes an Omni3D-style directory::

    <root>/dataset.json                 info, categories, images, annotations
    <root>/images/<scene>_<cam>.png     uint8 RGB, row 0 at the top
    <root>/depth/<scene>_<cam>.png      uint16, metres = value * info.depth_scale (0 = invalid)

Each scene is a table (top face at world z = 0, world z up) with 3-6 catalogue objects
(:mod:`posevla.sim.objects`) in random colours, placed without overlapping footprints, each resting
on one of its six AABB faces with a random yaw. Three cameras look at it: ``head`` (0.7-1.2 m from
the table centre, looking down 35-65 degrees) and ``wrist1``/``wrist2`` (0.3-0.6 m from a random
object). Scene ``i`` draws its randomness only from ``(seed, i)``, so the output does not depend on
the number of workers.

Rendering uses one MuJoCo model per worker that holds every catalogue mesh a few times; unused
instances are hidden through a disabled geom group, so no model is compiled per scene. Render fast
path: no MSAA (``offsamples=0``), no shadows, one render per camera read back as RGB and depth.

Labels per camera follow Omni3D exactly: ``center_cam``, ``dimensions`` [W, H, L] (the AABB extents
along the object's local z, y, x: Omni3D's x spans L, y spans H, z spans W), ``R_cam``
(``p_cam = R_cam p_obj + center_cam``), ``bbox3D_cam`` (Omni3D corner order), ``bbox2D_proj`` (the
unclipped projection of the 3D box), ``bbox2D_trunc`` (that box clipped to the image),
``behind_camera``, ``truncation`` (fraction of the projected box outside the image), ``visibility`` (fraction of the object's camera-facing surface
samples that fall inside the image and are not occluded in the rendered depth), ``valid3D`` and
``depth_min`` (smallest camera-frame z over the object's surface samples).
"""

from __future__ import annotations

import os
import io
import json
import math
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from posevla.sim.objects import CATALOGUE, category_names, default_cache_dir, load_mesh
from posevla.errors import ConfigError, DataError
from posevla.geometry.boxes import box2d_from_box3d, box_corners, box_extents_xyz
from posevla.geometry.camera import K_from_fovy
from posevla.geometry.se3 import opengl_to_opencv_camera
from posevla.sim.render import MujocoCameraRenderer
from posevla.sim.tabletop_scene import (  # noqa: F401 (CAMERAS, WORKSPACE_HALF, sample_scene: re-exported)
    CAMERAS,
    GENERATOR_VERSION,
    INSTANCES_PER_CATEGORY,
    WORKSPACE_HALF,
    CameraPose,
    PlacedObject,
    SceneSpec,
    category_pool,
    look_at,
    sample_scene,
)

DEPTH_SCALE = 1e-4  # metres per uint16 unit
MIN_VISIBILITY = 0.05  # objects less visible than this in a view are not annotated in that view
_EXTENT = 2.0  # model.stat.extent; znear/zfar below are fractions of it
_ZNEAR = 0.01
_ZFAR = 5.0
_HIDDEN_GROUP = 3
TABLE_HEIGHT = 0.75  # the floor is this far below the table top


# ----------------------------------------------------------------------------------------------
# MuJoCo model and renderer (one per worker)
# ----------------------------------------------------------------------------------------------


def _model_xml(width: int, height: int, cache_dir: Path) -> str:
    assets, bodies = [], []
    for spec in CATALOGUE:
        slot_prefix = "obj_" + spec.name.replace(" ", "_")
        if spec.kind == "mesh":
            m = load_mesh(spec.name, cache_dir)
            assets.append(f'<mesh name="{slot_prefix}" file="{m.stl_path}" inertia="shell" maxhullvert="4"/>')
            geom = f'type="mesh" mesh="{slot_prefix}"'
        else:
            geom = f'type="{spec.kind}" size="0.05 0.05 0.05"'
        for k in range(INSTANCES_PER_CATEGORY):
            bodies.append(
                f'<body name="{slot_prefix}_{k}" mocap="true" pos="0 0 -5">'
                f'<geom name="{slot_prefix}_{k}" {geom} group="{_HIDDEN_GROUP}" mass="0.1"/></body>'
            )
    return f"""<mujoco model="posevla_tabletop">
  <compiler angle="radian"/>
  <statistic extent="{_EXTENT}" center="0 0 0"/>
  <visual>
    <global offwidth="{width}" offheight="{height}"/>
    <quality offsamples="0" shadowsize="0"/>
    <map znear="{_ZNEAR}" zfar="{_ZFAR}"/>
    <headlight ambient="0.25 0.25 0.25" diffuse="0.25 0.25 0.25" specular="0.05 0.05 0.05"/>
    <rgba haze="0 0 0 1"/>
  </visual>
  <default><geom contype="0" conaffinity="0"/><light castshadow="false"/></default>
  <asset>
    {chr(10).join(assets)}
  </asset>
  <worldbody>
    <light name="l0" directional="true" castshadow="false" pos="0 0 3" dir="0 0 -1" diffuse="0.5 0.5 0.5"/>
    <light name="l1" directional="true" castshadow="false" pos="0 0 3" dir="0.3 0.3 -1" diffuse="0.4 0.4 0.4"/>
    <geom name="floor" type="plane" size="4 4 0.1" pos="0 0 {-TABLE_HEIGHT}" rgba="0.5 0.5 0.5 1"/>
    <geom name="table" type="box" size="0.6 0.4 0.02" pos="0 0 -0.02" rgba="0.6 0.5 0.4 1"/>
    {chr(10).join(bodies)}
    <camera name="cam" pos="0 0 1" fovy="60"/>
  </worldbody>
</mujoco>"""


class SceneRenderer:
    """One MuJoCo model + offscreen GL context that renders any sampled scene (reuse it per worker)."""

    def __init__(self, width: int = 256, height: int = 192, cache_dir: str | os.PathLike | None = None):
        import mujoco

        self.mj = mujoco
        self.width, self.height = int(width), int(height)
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.cache_dir = cache
        self.model = mujoco.MjModel.from_xml_string(_model_xml(self.width, self.height, cache))
        self.data = mujoco.MjData(self.model)
        self.cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, "cam")
        self.table_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "table")
        self.floor_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "floor")
        self.slots: dict[str, list[tuple[int, int]]] = {}  # category -> [(mocap id, geom id)]
        for spec in CATALOGUE:
            prefix = "obj_" + spec.name.replace(" ", "_")
            lst = []
            for k in range(INSTANCES_PER_CATEGORY):
                b = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, f"{prefix}_{k}")
                g = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, f"{prefix}_{k}")
                lst.append((int(self.model.body_mocapid[b]), g))
            self.slots[spec.name] = lst
        self.renderer = MujocoCameraRenderer(self.model, self.width, self.height, max_geom=200)
        self.renderer.opt.geomgroup[:] = 1
        self.renderer.opt.geomgroup[_HIDDEN_GROUP] = 0

    def set_scene(self, scene: SceneSpec) -> None:
        mj, m, d = self.mj, self.model, self.data
        m.geom_group[:] = 0
        for lst in self.slots.values():
            for mocap, g in lst:
                m.geom_group[g] = _HIDDEN_GROUP
                d.mocap_pos[mocap] = (0.0, 0.0, -5.0)
        m.geom_size[self.table_id] = (scene.table_half[0], scene.table_half[1], 0.02)
        m.geom_rgba[self.table_id] = scene.table_rgba
        m.geom_rgba[self.floor_id] = scene.floor_rgba
        m.light_dir[:] = scene.light_dirs / np.linalg.norm(scene.light_dirs, axis=1, keepdims=True)
        m.light_diffuse[:] = scene.light_diffuse
        used: dict[str, int] = {}
        for obj in scene.objects:
            k = used.get(obj.category, 0)
            used[obj.category] = k + 1
            mocap, g = self.slots[obj.category][k]
            m.geom_group[g] = 0
            m.geom_rgba[g] = obj.rgba
            if obj.spec.kind == "box":
                m.geom_size[g] = obj.dims / 2
            elif obj.spec.kind == "cylinder":
                m.geom_size[g] = (obj.dims[0] / 2, obj.dims[2] / 2, 0.0)
            elif obj.spec.kind == "sphere":
                m.geom_size[g] = (obj.dims[0] / 2, 0.0, 0.0)
            d.mocap_pos[mocap] = obj.center_world
            q = np.empty(4)
            mj.mju_mat2Quat(q, np.ascontiguousarray(obj.R_world).reshape(-1))
            d.mocap_quat[mocap] = q

    def render(self, cam: CameraPose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RGB uint8 (H,W,3) row 0 at the top, depth float32 metres (0 = nothing hit), T_world_cam (OpenCV)."""
        mj, m, d = self.mj, self.model, self.data
        T_gl = opengl_to_opencv_camera(cam.T_world_cam)  # diag(1,-1,-1,1) is its own inverse
        m.cam_pos[self.cam_id] = T_gl[:3, 3]
        q = np.empty(4)
        mj.mju_mat2Quat(q, np.ascontiguousarray(T_gl[:3, :3]).reshape(-1))
        m.cam_quat[self.cam_id] = q
        m.cam_fovy[self.cam_id] = cam.fovy_deg
        mj.mj_kinematics(m, d)
        mj.mj_camlight(m, d)
        T_world_gl = np.eye(4)
        T_world_gl[:3, :3] = d.cam_xmat[self.cam_id].reshape(3, 3)
        T_world_gl[:3, 3] = d.cam_xpos[self.cam_id]
        rgb, z = self.renderer.render(d, self.cam_id)
        return rgb, z, opengl_to_opencv_camera(T_world_gl)

    def close(self) -> None:
        self.renderer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------


def label_object(
    obj: PlacedObject, K: np.ndarray, T_world_cam: np.ndarray, depth: np.ndarray
) -> dict[str, Any] | None:
    """Omni3D annotation of one object in one view (without ids), or ``None`` if it is not seen."""
    H, W = depth.shape
    T_cw = np.linalg.inv(T_world_cam)
    R_cw, t_cw = T_cw[:3, :3], T_cw[:3, 3]
    center = R_cw @ obj.center_world + t_cw
    R_cam = R_cw @ obj.R_world
    pts_o, nrm_o = obj.points, obj.normals
    pts = pts_o @ R_cam.T + center
    nrm = nrm_o @ R_cam.T
    z = pts[:, 2]
    if z.max() <= 0.02:
        return None  # behind the camera
    front = (np.einsum("ij,ij->i", nrm, pts) < 0) & (z > 0.02)
    n_front = int(front.sum())
    if n_front == 0:
        return None
    p = pts[front]
    u = K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2]
    v = K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2]
    ui, vi = np.round(u).astype(np.int64), np.round(v).astype(np.int64)
    inside = (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
    dz = depth[vi[inside], ui[inside]]
    zp = p[inside, 2]
    tol = 0.01 + 0.01 * zp
    seen = (dz > 0) & (dz >= zp - tol)
    visibility = float(seen.sum()) / n_front
    if visibility < MIN_VISIBILITY:
        return None
    dims = box_extents_xyz(np.asarray(obj.dims, np.float64))  # local x, y, z extents -> Omni3D [W, H, L]
    corners = box_corners(center, dims, R_cam)
    box2d, trunc = box2d_from_box3d(K, corners, W, H)
    if not np.all(np.isfinite(box2d)):
        return None
    proj, _ = box2d_from_box3d(K, corners, W, H, clip=False)
    valid3d = bool(center[2] > 0.05 and corners[:, 2].min() > 0.0)
    return {
        "category_name": obj.category,
        "center_cam": [float(x) for x in center],
        "dimensions": [float(x) for x in dims],
        "R_cam": R_cam.tolist(),
        "bbox3D_cam": corners.tolist(),
        "bbox2D_proj": [float(x) for x in proj],
        "bbox2D_trunc": [float(x) for x in box2d],
        "behind_camera": bool(center[2] <= 0),
        "visibility": round(visibility, 4),
        "truncation": round(float(trunc), 4),
        "valid3D": valid3d,
        "depth_min": float(max(z.min(), 0.0)),
        "color_rgba": [round(float(x), 4) for x in obj.rgba],
    }


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if arr.dtype == np.uint16:
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def depth_to_uint16(depth: np.ndarray, depth_scale: float = DEPTH_SCALE) -> np.ndarray:
    """Metres -> uint16 units (0 stays 0; depths beyond the uint16 range become 0 = invalid)."""
    q = np.round(depth.astype(np.float64) / depth_scale)
    q = np.where((depth > 0) & (q <= 65535), q, 0)
    return q.astype(np.uint16)


def render_scene(
    renderer: SceneRenderer,
    seed: int,
    index: int,
    root: Path | None = None,
    categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Render scene ``index`` and return its image and annotation records (ids filled in later).

    With ``root`` the PNGs are written under ``root/images`` and ``root/depth``.
    """
    scene = sample_scene(seed, index, renderer.cache_dir, categories)
    renderer.set_scene(scene)
    W, H = renderer.width, renderer.height
    images, anns, arrays = [], [], []
    name = f"{index:06d}"
    for cam in scene.cameras:
        rgb, depth, T_world_cam = renderer.render(cam)
        K = K_from_fovy(math.radians(cam.fovy_deg), W, H)
        file_path = f"images/{name}_{cam.name}.png"
        depth_path = f"depth/{name}_{cam.name}.png"
        d16 = depth_to_uint16(depth)
        if root is not None:
            (root / file_path).write_bytes(_png_bytes(rgb))
            (root / depth_path).write_bytes(_png_bytes(d16))
        else:
            arrays.append((rgb, depth))
        images.append({
            "file_path": file_path,
            "depth_path": depth_path,
            "width": W,
            "height": H,
            "K": K.tolist(),
            "T_world_cam": T_world_cam.tolist(),
            "scene_id": name,
            "camera": cam.name,
            "fovy_deg": cam.fovy_deg,
        })
        # labels use the stored (quantised) depth so a reader sees exactly what the labels saw
        d_label = d16.astype(np.float32) * np.float32(DEPTH_SCALE)
        view_anns = []
        for obj in scene.objects:
            a = label_object(obj, K, T_world_cam, d_label)
            if a is not None:
                view_anns.append(a)
        anns.append(view_anns)
    out = {"index": index, "images": images, "annotations": anns}
    if root is None:
        out["arrays"] = arrays
    return out


# ----------------------------------------------------------------------------------------------
# Dataset writer
# ----------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _worker_init(width: int, height: int, cache_dir: str, root: str, seed: int, categories) -> None:
    _WORKER["renderer"] = SceneRenderer(width, height, cache_dir)
    _WORKER["root"] = Path(root)
    _WORKER["seed"] = seed
    _WORKER["categories"] = categories


def _worker_scene(index: int) -> dict[str, Any]:
    return render_scene(_WORKER["renderer"], _WORKER["seed"], index, _WORKER["root"], _WORKER["categories"])


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def generate_dataset(
    root: str | os.PathLike,
    num_scenes: int,
    *,
    seed: int = 0,
    width: int = 256,
    height: int = 192,
    workers: int = 1,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Render ``num_scenes`` tabletop scenes (3 views each) into the dataset directory ``root``.

    ``categories`` restricts the objects to a subset of the catalogue (default: all of it).

    Returns stats: ``scenes, images, annotations, seconds, scenes_per_s``. ``dataset.json`` is written
    last, atomically, so a directory with a ``dataset.json`` is complete.
    """
    if int(num_scenes) < 0:
        raise DataError(f"num_scenes must be >= 0, got {num_scenes}", field="num_scenes")
    categories = tuple(categories) if categories is not None else None
    category_pool(categories)  # validate before any work
    if int(width) < 16 or int(height) < 16:
        raise DataError(f"image size too small: {width}x{height}", field="width/height", fix="use >= 16 pixels")
    t0 = time.perf_counter()
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"the dataset folder {root} is a file; pass the path of a new (or existing) folder")
    try:
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "depth").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the dataset folder {root} ({e.strerror}); pass a folder you can write "
                          "to") from e
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    # process the meshes once in the parent so workers only read the cache
    for spec in CATALOGUE:
        if spec.kind == "mesh":
            load_mesh(spec.name, cache)
    indices = list(range(int(num_scenes)))
    results: list[dict[str, Any]] = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=len(indices), desc="scenes", unit="scene", disable=not progress) if tqdm else None
    workers = max(1, min(int(workers), max(1, len(indices))))
    if workers == 1:
        with SceneRenderer(width, height, cache) as r:
            for i in indices:
                results.append(render_scene(r, seed, i, root, categories))
                if bar:
                    bar.update(1)
    else:
        ctx = mp.get_context("spawn")
        chunk = max(1, min(8, len(indices) // (workers * 4)))
        with ctx.Pool(workers, initializer=_worker_init, initargs=(width, height, str(cache), str(root), seed, categories)) as pool:
            for res in pool.imap_unordered(_worker_scene, indices, chunksize=chunk):
                results.append(res)
                if bar:
                    bar.update(1)
    if bar:
        bar.close()
    results.sort(key=lambda r: r["index"])

    images, annotations = [], []
    cat_ids = {n: i for i, n in enumerate(category_names())}
    for res in results:
        for img, view_anns in zip(res["images"], res["annotations"]):
            img = {"id": len(images), **img}
            images.append(img)
            for a in view_anns:
                annotations.append({
                    "id": len(annotations),
                    "image_id": img["id"],
                    "category_id": cat_ids[a["category_name"]],
                    **a,
                })
    dataset = {
        "info": {
            "name": "posevla-tabletop",
            "source": "posevla.sim.tabletop (MuJoCo)",
            "version": GENERATOR_VERSION,
            "seed": int(seed),
            "num_scenes": int(num_scenes),
            "categories": list(categories) if categories else "all",
            "width": int(width),
            "height": int(height),
            "depth_scale": DEPTH_SCALE,
            "depth_unit": "metres = value * depth_scale, 0 = invalid",
            "cameras": list(CAMERAS),
            "camera_convention": "OpenCV (x right, y down, z forward); T_world_cam maps camera to world",
            "world": "z up, table top at z = 0",
            "visibility": "fraction of camera-facing surface samples inside the image and not occluded",
            "depth_min": "smallest camera-frame z over the object's surface samples (metres)",
        },
        "categories": [{"id": i, "name": n} for n, i in cat_ids.items()],
        "images": images,
        "annotations": annotations,
    }
    _write_json_atomic(root / "dataset.json", dataset)
    secs = time.perf_counter() - t0
    return {
        "scenes": len(results),
        "images": len(images),
        "annotations": len(annotations),
        "seconds": secs,
        "scenes_per_s": len(results) / secs if secs > 0 else float("inf"),
    }

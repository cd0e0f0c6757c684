"""``meta/cameras.json``: the per-dataset camera and robot facts (:class:`CameraConfig`), validated."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posevla.data.formats.lerobot.schema import _KEY_RE, _nested_floats, _read_json
from posevla.errors import DataError
from posevla.geometry import check_K, check_rotation_matrix, make_T


@dataclass(frozen=True)
class CameraConfig:
    """Per-dataset robot / camera facts that are not stored per frame (``meta/cameras.json``).

    Args:
        cameras: camera names, in view order (``observation.images.<cam>`` must exist for each).
        tcp_offset: the tool-centre point in the end-effector (flange) frame, either 3 numbers
            (a translation, e.g. AgiBot's gripper ``(0, 0, 0.227)`` m along the flange z) or 16 numbers
            (a row-major 4x4 rigid transform ``T_ee_tcp``).
        depth_scale: metres per unit of the 16-bit depth PNGs (0.001 = millimetres; 0 = invalid).
        gripper_open_positive: True when larger ``observation.gripper`` values mean more open.
        K: static intrinsics ``{cam: 3x3}`` for cameras without a per-frame K feature.
        T_world_cam: static camera poses ``{cam: 4x4}`` (OpenCV axes) for cameras without a per-frame
            pose feature (fixed cameras). A camera may have a static or a per-frame value, not both.
    """

    cameras: tuple[str, ...]
    tcp_offset: tuple[float, ...] = (0.0, 0.0, 0.0)
    depth_scale: float = 0.001
    gripper_open_positive: bool = True
    K: Mapping[str, Any] = field(default_factory=dict)
    T_world_cam: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_camera_config_values(
            self.cameras,
            self.tcp_offset,
            self.depth_scale,
            self.gripper_open_positive,
            self.K,
            self.T_world_cam,
            file=None,
        )
        object.__setattr__(self, "cameras", tuple(str(c) for c in self.cameras))
        object.__setattr__(self, "tcp_offset", tuple(float(x) for x in self.tcp_offset))
        object.__setattr__(self, "depth_scale", float(self.depth_scale))
        object.__setattr__(self, "gripper_open_positive", bool(self.gripper_open_positive))
        object.__setattr__(
            self, "K", {str(c): _nested_floats(np.asarray(v, np.float64)) for c, v in self.K.items()}
        )
        object.__setattr__(
            self,
            "T_world_cam",
            {str(c): _nested_floats(np.asarray(v, np.float64)) for c, v in self.T_world_cam.items()},
        )

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def T_ee_tcp(self) -> np.ndarray:
        """The TCP in the end-effector frame as a (4, 4) float64 transform."""
        if len(self.tcp_offset) == 3:
            return make_T(np.eye(3), np.asarray(self.tcp_offset, np.float64))
        return np.asarray(self.tcp_offset, np.float64).reshape(4, 4)

    def static_K(self, cam: str) -> np.ndarray | None:
        """Camera ``cam``'s static (3, 3) intrinsics, or None when it has a per-frame feature."""
        return None if cam not in self.K else np.asarray(self.K[cam], np.float64)

    def static_T_world_cam(self, cam: str) -> np.ndarray | None:
        """Camera ``cam``'s static (4, 4) pose, or None when it has a per-frame feature."""
        return None if cam not in self.T_world_cam else np.asarray(self.T_world_cam[cam], np.float64)

    def to_dict(self) -> dict[str, Any]:
        """The json form written to ``meta/cameras.json``."""
        return {
            "format": "posevla.camera_config",
            "version": 1,
            "cameras": list(self.cameras),
            "tcp_offset": list(self.tcp_offset),
            "depth_scale": self.depth_scale,
            "depth_encoding": "uint16 PNG, metres = value * depth_scale, 0 = invalid",
            "gripper_open_positive": self.gripper_open_positive,
            "K": {c: [list(r) for r in v] for c, v in self.K.items()},
            "T_world_cam": {c: [list(r) for r in v] for c, v in self.T_world_cam.items()},
        }

    @classmethod
    def from_dict(cls, d: Any, *, file: str | None = None) -> CameraConfig:
        """Validate and build a config from its json form (``file`` names the source in errors)."""
        if not isinstance(d, dict):
            raise DataError(
                "camera config must be a json object",
                file=file,
                fix="store {cameras, tcp_offset, depth_scale, ...} as a json object",
            )
        known = {
            "format",
            "version",
            "cameras",
            "tcp_offset",
            "depth_scale",
            "depth_encoding",
            "gripper_open_positive",
            "K",
            "T_world_cam",
        }
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(
                f"unknown key(s) {unknown} in the camera config",
                file=file,
                field=unknown[0],
                fix=f"remove them or fix the spelling; valid keys: {sorted(known)}",
            )
        if "cameras" not in d:
            raise DataError(
                "missing key 'cameras'",
                file=file,
                field="cameras",
                fix='list the camera names, e.g. "cameras": ["head"]',
            )
        args = dict(
            cameras=d["cameras"],
            tcp_offset=d.get("tcp_offset", (0.0, 0.0, 0.0)),
            depth_scale=d.get("depth_scale", 0.001),
            gripper_open_positive=d.get("gripper_open_positive", True),
            K=d.get("K") or {},
            T_world_cam=d.get("T_world_cam") or {},
        )
        _check_camera_config_values(*args.values(), file=file)
        return cls(**args)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as json to ``path``."""
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> CameraConfig:
        """Read a config written by :meth:`save` (or by hand, e.g. next to a real-robot dataset)."""
        p = Path(path)
        return cls.from_dict(_read_json(p, "camera config"), file=str(p))


def _check_camera_config_values(
    cameras: Any,
    tcp_offset: Any,
    depth_scale: Any,
    gripper_open_positive: Any,
    K: Any,
    T_world_cam: Any,
    *,
    file: str | None,
) -> None:
    def bad(msg: str, fld: str, fix: str) -> DataError:
        return DataError(msg, file=file, field=fld, fix=fix)

    if isinstance(cameras, str) or not isinstance(cameras, (list, tuple)) or not cameras:
        raise bad(
            f"'cameras' must be a non-empty list of names, got {cameras!r}",
            "cameras",
            "list the camera names in view order, e.g. ['head', 'wrist']",
        )
    for c in cameras:
        if not isinstance(c, str) or not _KEY_RE.match(c) or "." in c:
            raise bad(
                f"camera name {c!r} must be a non-empty string of letters, digits, '_' or '-'",
                "cameras",
                "rename the camera (it becomes part of feature keys and folder names)",
            )
    if len(set(cameras)) != len(cameras):
        raise bad(f"duplicate camera names in {list(cameras)}", "cameras", "give every camera a unique name")
    try:
        tcp = np.asarray(tcp_offset, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise bad(
            f"'tcp_offset' must be numbers, got {tcp_offset!r}",
            "tcp_offset",
            "give 3 numbers (translation in the flange frame, metres) or 16 (row-major T_ee_tcp)",
        ) from None
    if tcp.size not in (3, 16) or not np.all(np.isfinite(tcp)):
        raise bad(
            f"'tcp_offset' must hold 3 or 16 finite numbers, got {tcp.size}: {tcp.tolist()}",
            "tcp_offset",
            "give 3 numbers (translation in the flange frame, metres) or 16 (row-major T_ee_tcp)",
        )
    if tcp.size == 16:
        T = tcp.reshape(4, 4)
        if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9):
            raise bad(
                f"'tcp_offset' as 4x4 must have last row [0,0,0,1], got {T[3].tolist()}",
                "tcp_offset",
                "store T_ee_tcp row-major as a rigid transform",
            )
        check_rotation_matrix(T[:3, :3], what="tcp_offset", file=file)
    if (
        isinstance(depth_scale, bool)
        or not isinstance(depth_scale, (int, float, np.floating))
        or not math.isfinite(float(depth_scale))
        or float(depth_scale) <= 0
    ):
        raise bad(
            f"'depth_scale' must be a positive number (metres per PNG unit), got {depth_scale!r}",
            "depth_scale",
            "use 0.001 for millimetre depth PNGs",
        )
    if not isinstance(gripper_open_positive, (bool, np.bool_)):
        raise bad(
            f"'gripper_open_positive' must be true or false, got {gripper_open_positive!r}",
            "gripper_open_positive",
            "store a json boolean",
        )
    for name, table, shape in (("K", K, (3, 3)), ("T_world_cam", T_world_cam, (4, 4))):
        if not isinstance(table, Mapping):
            raise bad(
                f"'{name}' must map camera names to {shape[0]}x{shape[1]} matrices",
                name,
                f"store '{name}' as {{camera: [[...], ...]}}",
            )
        for cam, value in table.items():
            if cam not in cameras:
                raise bad(
                    f"'{name}' given for camera {cam!r} which is not in cameras {list(cameras)}",
                    name,
                    "add the camera to 'cameras' or remove the entry",
                )
            try:
                a = np.asarray(value, np.float64)
            except (TypeError, ValueError):
                a = np.zeros(0)
            if a.shape != shape or not np.all(np.isfinite(a)):
                raise bad(
                    f"'{name}' of camera {cam!r} must be a finite {shape[0]}x{shape[1]} matrix",
                    name,
                    f"store {name} as a nested list of shape {list(shape)}",
                )
            if name == "T_world_cam":
                if not np.allclose(a[3], [0, 0, 0, 1], atol=1e-9):
                    raise bad(
                        f"T_world_cam of camera {cam!r} must have last row [0,0,0,1], got {a[3].tolist()}",
                        name,
                        "store the camera pose as a 4x4 rigid transform (OpenCV axes)",
                    )
                check_rotation_matrix(a[:3, :3], what=f"T_world_cam[{cam}]", file=file)
            else:
                check_K(a, 1 << 30, 1 << 30, file=file, record=f"camera {cam}", field="K")



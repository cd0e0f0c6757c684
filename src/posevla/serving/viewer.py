"""The live 3D-plan viewer of ``posevla serve``: a small web page over the latest request and its answer.

The policy server routes every HTTP GET path under ``/viewer`` to :meth:`Viewer.handle_http` and calls
:meth:`Viewer.update` after each inference (with ``Policy.infer(obs, return_poses=True)``, so the result
carries the VLM's decoded pose-token plan). The page (``GET /viewer``) polls ``GET /viewer/state.json``
every 0.5 s and shows, per camera, the latest frame (``GET /viewer/frame/<cam>.png``) with

* the **plan**: the waypoints of every arm (``"arm 0"``, ``"arm 1"``, … in ``result["pose_tokens"]``),
  joined in order and labelled. A waypoint's ``translation`` (camera frame, OpenCV axes, metres) is
  projected with the camera's ``K`` (the observation's ``observation.cameras.<cam>.K``, else the static K
  of the policy's camera config). Without a K, or for a point behind the camera, its 2D ``anchor`` is drawn
  instead, mapped from the normalised model-input square back through the resize-pad of
  :func:`posevla.geometry.camera.resize_pad_params` (aspect-preserving resize, centred zero padding);
* the **executed chunk**: ``result["ee_pose"]`` (world / base frame) projected when both ``K`` and
  ``T_world_cam`` (observation or camera config) are known;

and below, the action chunk (a plot and a table), the task text and the latency. All projection is done
here, in numpy, so the page only receives pixel coordinates (pixel centres at integer coordinates); it draws
them with SVG over the image.

:meth:`Viewer.update` only keeps copies of the frames and small arrays (thread-safe, called from the
inference thread); projection, JSON and PNG encoding happen lazily in :meth:`Viewer.handle_http`, cached per
update. The state names each frame with its update's ``version`` (``/viewer/frame/<cam>.png?v=N``) and the
last few updates are kept, so a page always draws an overlay on the frame it was computed for.
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posevla.data.schema import IMAGE_PREFIX, camera_K_key, camera_T_key
from posevla.errors import DataError
from posevla.geometry.camera import project_points, resize_pad_params

__all__ = ["Viewer", "PALETTE", "EE_COLOR", "anchor_to_image", "project_to_image", "plan_tracks", "ee_tracks"]

#: Colours of the arms' waypoint tracks, in the order the arms appear in the plan.
PALETTE = ("#ff1493", "#00bfff", "#ffa500", "#7fff00", "#ba55d3", "#ff4500")
#: Colour of the executed ee_pose chunk (dashed).
EE_COLOR = "#ffff00"
_NEAR = 1e-6  # points with camera z below this (metres) are behind the camera
_HISTORY = 4  # snapshots kept for frame requests of a slightly older state
_Response = tuple[int, dict[str, str], bytes]


# -- projection math -----------------------------------------------------------------------------------
def anchor_to_image(
    anchor: Any, width: int, height: int, image_size: int | None = None
) -> tuple[float, float]:
    """Map a normalised model-input anchor to pixel coordinates of the source image (W x H).

    The model sees each view resize-padded into an S x S square (``resize_pad_params``); an anchor is
    ``(pixel + 0.5) / S`` in that square. A 4-value anchor (a box x1, y1, x2, y2) gives its centre.

    Args:
        anchor: (2,) or (4,) normalised [0, 1] model-input coordinates.
        width, height: the source image's size in pixels.
        image_size: the model input size S; None uses the S → ∞ limit (exact up to the resize's rounding,
            well under a pixel of the source image).

    Returns:
        (u, v) in source pixels, pixel centres at integer coordinates.

    Raises:
        DataError: an anchor of the wrong shape or non-finite.
    """
    try:
        a = np.asarray(anchor, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"an anchor is 2 or 4 finite numbers, got {anchor!r}", field="anchor") from None
    if a.shape not in ((2,), (4,)) or not np.all(np.isfinite(a)):
        raise DataError(f"an anchor is 2 or 4 finite numbers, got {a.tolist()}", field="anchor")
    if a.shape == (4,):
        a = np.array([(a[0] + a[2]) / 2.0, (a[1] + a[3]) / 2.0])
    W, H = int(width), int(height)
    if W <= 0 or H <= 0:
        raise DataError(f"image size must be positive, got {W}x{H}", field="image")
    if image_size is None:
        M = float(max(W, H))
        pad = np.array([(1.0 - W / M) / 2.0, (1.0 - H / M) / 2.0])
        uv = (a - pad) * M - 0.5
    else:
        S = int(image_size)
        _, new_w, new_h, pad_left, pad_top = resize_pad_params(W, H, S)
        model_px = a * S - 0.5
        uv = (model_px - np.array([pad_left, pad_top]) + 0.5) / np.array([new_w / W, new_h / H]) - 0.5
    return float(uv[0]), float(uv[1])


def project_to_image(K: Any, p_cam: Any) -> np.ndarray:
    """Project camera-frame points (N, 3) (OpenCV axes) with K (3, 3) to pixels (N, 2).

    Rows of points behind the camera (z <= 1e-6 m) or non-finite are NaN.
    """
    K = np.asarray(K, np.float64)
    p = np.asarray(p_cam, np.float64).reshape(-1, 3)
    out = np.full((p.shape[0], 2), np.nan)
    ok = np.all(np.isfinite(p), axis=1) & (p[:, 2] > _NEAR)
    if ok.any():
        out[ok] = project_points(K, p[ok])  # (n, 2)
    return out


def _split_name(name: str, order: int) -> tuple[str, int]:
    """``"arm 3"`` → (``"arm"``, 3); a name without a trailing index is its own arm."""
    m = re.fullmatch(r"(.*\S)\s+(\d+)", str(name).strip())
    return (m.group(1), int(m.group(2))) if m else (str(name), order)


def plan_tracks(
    entries: Sequence[Mapping[str, Any]], K: np.ndarray | None, width: int, height: int,
    image_size: int | None = None, notes: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One view's waypoint entries as per-arm tracks of pixel points, in waypoint order.

    Each point is ``{"name", "u", "v", "source": "K" | "anchor", "z"}``: projected from the camera-frame
    translation with K when possible, else the anchor mapped back to the image (``z`` = camera depth in
    metres, or None). Tracks are ``{"arm", "color", "points"}``, arms in order of first appearance.
    An entry with neither a usable translation nor a valid anchor is left out (said in `notes`).
    """
    arms: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for i, e in enumerate(entries):
        name = str(e.get("name", f"waypoint {i}"))
        arm, k = _split_name(name, i)
        t = e.get("translation")
        uv = None
        z = None
        if t is not None:
            try:
                t = np.asarray(t, np.float64).reshape(-1)
            except (TypeError, ValueError):
                t = np.zeros(0)
            if t.shape == (3,) and np.all(np.isfinite(t)):
                z = float(t[2])
                if K is not None:
                    p = project_to_image(K, t[None])[0]
                    uv = None if np.isnan(p).any() else (float(p[0]), float(p[1]))
        source = "K"
        if uv is None:
            try:
                uv, source = anchor_to_image(e.get("anchor"), width, height, image_size), "anchor"
            except DataError as err:
                if notes is not None:
                    notes.append(f"waypoint {name!r} not drawn: no usable translation, and {err}")
                continue
        point = {"name": name, "u": uv[0], "v": uv[1], "source": source, "z": z}
        arms.setdefault(arm, []).append((k, point))
    return [
        {"arm": arm, "color": PALETTE[j % len(PALETTE)],
         "points": [p for _, p in sorted(pts, key=lambda x: x[0])]}
        for j, (arm, pts) in enumerate(arms.items())
    ]


def ee_tracks(ee_pose: Any, K: np.ndarray, T_world_cam: np.ndarray) -> list[dict[str, Any]]:
    """The executed chunk ``ee_pose`` (H, arms, 7) (world frame xyz + quat) as per-arm pixel tracks.

    Returns ``[{"arm": i, "color", "points": [[u, v] | None] * H}]`` (None: behind the camera).
    """
    ee = np.asarray(ee_pose, np.float64)
    if ee.ndim == 2:
        ee = ee[:, None]
    if ee.ndim != 3 or ee.shape[-1] < 3:
        raise DataError(f"ee_pose is (H, arms, 7), got shape {ee.shape}", field="ee_pose")
    T_cw = np.linalg.inv(np.asarray(T_world_cam, np.float64))
    out = []
    for a in range(ee.shape[1]):
        p_w = ee[:, a, :3]
        p_c = p_w @ T_cw[:3, :3].T + T_cw[:3, 3]
        uv = project_to_image(K, p_c)
        pts = [None if np.isnan(q).any() else [float(q[0]), float(q[1])] for q in uv]
        out.append({"arm": a, "color": EE_COLOR, "points": pts})
    return out


# -- small helpers ----------------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    """numpy / nested containers → JSON values; NaN and inf → None (JSON.parse rejects them)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def _matrix(value: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """A finite float64 matrix of `shape`, or None."""
    try:
        m = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        return None
    return m if m.shape == shape and np.all(np.isfinite(m)) else None


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _response(status: int, content_type: str, body: bytes) -> _Response:
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Cache-Control": "no-store"}
    return status, headers, body


def _not_found(message: str) -> _Response:
    return _response(404, "text/plain; charset=utf-8", (message + "\n").encode())


class Viewer:
    """The live plan viewer: latest frames, plan, executed chunk, task and latency, served under ``/viewer``.

    Args:
        policy_info: ``{"cameras": [...], "camera_config": CameraConfig | its dict | None, "action_names":
            [...], "chunk_size": int, "checkpoint": str}``, optionally ``"image_size"`` (the model input S,
            for the exact anchor mapping; ``policy.spec.image_size``).

    Raises:
        DataError: `policy_info` without cameras, or with a value of the wrong type.
    """

    def __init__(self, policy_info: dict) -> None:
        if not isinstance(policy_info, Mapping):
            raise DataError(f"policy_info is a dict, got {type(policy_info).__name__}", field="policy_info")
        cams = policy_info.get("cameras")
        if isinstance(cams, str) or not isinstance(cams, Sequence) or not cams or not all(
            isinstance(c, str) and c for c in cams
        ):
            raise DataError(
                f"policy_info['cameras'] must be a non-empty list of camera names, got {cams!r}",
                field="policy_info.cameras",
                fix="pass policy.cameras",
            )
        self.cameras: list[str] = list(cams)
        cc = policy_info.get("camera_config")
        if isinstance(cc, Mapping):
            from posevla.data.formats.lerobot import CameraConfig

            cc = CameraConfig.from_dict(dict(cc), file="policy_info.camera_config")
        if cc is not None and not (hasattr(cc, "static_K") and hasattr(cc, "static_T_world_cam")):
            raise DataError(
                f"policy_info['camera_config'] must be a CameraConfig or None, got {type(cc).__name__}",
                field="policy_info.camera_config",
            )
        self.camera_config = cc
        self.action_names = [str(n) for n in policy_info.get("action_names") or []]
        self.chunk_size = policy_info.get("chunk_size")
        self.checkpoint = str(policy_info.get("checkpoint", ""))
        size = policy_info.get("image_size")
        bad_int = isinstance(size, bool) or not isinstance(size, (int, np.integer))
        if size is not None and (bad_int or size <= 0):
            raise DataError(f"policy_info['image_size'] must be a positive int, got {size!r}",
                            field="policy_info.image_size")
        self.image_size = None if size is None else int(size)
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None  # written by update, replaced whole (never mutated)
        # the last few snapshots, so a page that read state v still gets frame v after newer updates
        self._history: deque[dict[str, Any]] = deque(maxlen=_HISTORY)
        self._version = 0
        self._state_cache: tuple[int, bytes] | None = None
        self._png_cache: dict[tuple[str, int], bytes] = {}

    # -- inference thread ---------------------------------------------------------------------------
    def update(self, obs: Mapping[str, Any], result: Mapping[str, Any], timing: Mapping[str, float]) -> None:
        """Record the latest observation and answer (copies of frames and small arrays; no encoding).

        Raises:
            DataError: `obs` / `result` / `timing` that are not mappings, or a result without an (H, A)
                ``"actions"`` array. Per-camera problems (a missing frame, no K) are shown on the page.
        """
        for what, value in (("obs", obs), ("result", result), ("timing", timing)):
            if not isinstance(value, Mapping):
                raise DataError(
                    f"Viewer.update: {what} must be a dict, got {type(value).__name__}", field=what
                )
        try:
            actions = None if result.get("actions") is None else np.asarray(result["actions"], np.float64)
        except (TypeError, ValueError):
            actions = None
        if actions is None or actions.ndim != 2:
            raise DataError(
                f"Viewer.update: result['actions'] must be an (H, A) array, got "
                f"{None if actions is None else actions.shape}",
                field="result.actions",
                fix="pass Policy.infer's output",
            )
        frames: dict[str, np.ndarray] = {}
        K: dict[str, Any] = {}
        T: dict[str, Any] = {}
        for cam in self.cameras:
            img = obs.get(IMAGE_PREFIX + cam)
            if isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
                frames[cam] = img.copy()
            if camera_K_key(cam) in obs:
                K[cam] = _copy_value(obs[camera_K_key(cam)])  # checked when drawn (a bad K is a note)
            if camera_T_key(cam) in obs:
                T[cam] = _copy_value(obs[camera_T_key(cam)])
        ee = result.get("ee_pose")
        latest = {
            "frames": frames,
            "K": K,
            "T_world_cam": T,
            "task": obs.get("task", obs.get("instruction")),
            "actions": actions.copy(),
            "action_names": list(result.get("action_names") or self.action_names),
            "action_space": result.get("action_space"),
            "ee_pose": None if ee is None else _array_or_error(ee, "result.ee_pose"),
            "latency_ms": dict(result.get("latency_ms") or {}),
            "pose_tokens": _copy_plan(result.get("pose_tokens")),
            "timing": dict(timing),
            "time": time.time(),
        }
        with self._lock:
            self._version += 1
            latest["version"] = self._version
            self._latest = latest
            self._history.append(latest)
            kept = {h["version"] for h in self._history}
            self._png_cache = {k: b for k, b in self._png_cache.items() if k[1] in kept}

    # -- HTTP ------------------------------------------------------------------------------------------
    def handle_http(self, path: str) -> _Response | None:
        """Answer a GET: ``/viewer`` (the page), ``/viewer/state.json``, ``/viewer/frame/<cam>.png``.

        Returns:
            ``(status, headers, body)`` for ``/viewer`` and every path under ``/viewer/`` (404 for unknown
            ones and for cameras without a frame yet), None for paths outside ``/viewer``. A query string is
            ignored.
        """
        route = urllib.parse.urlsplit(str(path)).path
        if route != "/viewer" and not route.startswith("/viewer/"):
            return None
        if route in ("/viewer", "/viewer/", "/viewer/index.html"):
            from posevla.serving.viewer_page import PAGE_HTML

            return _response(200, "text/html; charset=utf-8", PAGE_HTML.encode())
        if route == "/viewer/state.json":
            return _response(200, "application/json", self._state_bytes())
        m = re.fullmatch(r"/viewer/frame/([^/]+)\.png", route)
        if m:
            cam = urllib.parse.unquote(m.group(1))
            if cam not in self.cameras:
                return _not_found(f"unknown camera {cam!r}; the policy's cameras are {self.cameras}")
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(str(path)).query)
            version = query.get("v", [None])[0]
            if version is not None and not version.isdigit():
                return _not_found(f"bad frame version {version!r}: v is the state's integer 'version'")
            body = self._frame_png(cam, None if version is None else int(version))
            if body is None:
                what = "yet" if version is None else f"for update {version} (gone: newer ones replaced it)"
                return _not_found(f"no frame from camera {cam!r} {what}")
            return _response(200, "image/png", body)
        return _not_found(
            f"no such viewer path {route!r}: try /viewer, /viewer/state.json, /viewer/frame/<cam>.png"
        )

    def _frame_png(self, cam: str, version: int | None) -> bytes | None:
        """PNG of camera `cam`'s frame of update `version` (None: the latest), None when not held."""
        with self._lock:
            if version is None:
                snap = self._latest
            else:
                snap = next((h for h in self._history if h["version"] == version), None)
            if snap is None or cam not in snap["frames"]:
                return None
            key = (cam, snap["version"])
            cached = self._png_cache.get(key)
        if cached is not None:
            return cached
        body = _png(snap["frames"][cam])
        with self._lock:
            if any(h["version"] == key[1] for h in self._history):
                self._png_cache[key] = body
        return body

    def _state_bytes(self) -> bytes:
        with self._lock:
            latest, cached = self._latest, self._state_cache
        if latest is not None and cached is not None and cached[0] == latest["version"]:
            return cached[1]
        body = json.dumps(_jsonable(self.state(latest)), allow_nan=False).encode()
        if latest is not None:
            with self._lock:
                self._state_cache = (latest["version"], body)
        return body

    def state(self, latest: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The page's state: status, task, latency, the chunk, and per camera the frame URL and overlay."""
        if latest is None:
            with self._lock:
                latest = self._latest
        base = {
            "checkpoint": self.checkpoint,
            "cameras": self.cameras,
            "chunk_size": self.chunk_size,
            "palette": list(PALETTE),
            "ee_color": EE_COLOR,
        }
        if latest is None:
            return {**base, "status": "waiting", "version": 0, "action_names": self.action_names}
        plan_by_cam: dict[str, Mapping[str, Any]] = {}
        for view in latest["pose_tokens"] or []:
            if view.get("camera") is not None:
                plan_by_cam[str(view["camera"])] = view
        views = [self._view_state(cam, latest, plan_by_cam.get(cam)) for cam in self.cameras]
        timing = latest["timing"]
        return {
            **base,
            "status": "live",
            "version": latest["version"],
            "request": timing.get("request", latest["version"]),
            "time": latest["time"],
            "task": latest["task"] if isinstance(latest["task"], str) else None,
            "timing": timing,
            "latency_ms": latest["latency_ms"],
            "action_names": latest["action_names"],
            "action_space": latest["action_space"],
            "actions": latest["actions"],
            "has_plan": latest["pose_tokens"] is not None,
            "views": views,
        }

    def _view_state(
        self, cam: str, latest: Mapping[str, Any], plan: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """One camera's part of the state: frame URL, size, K / T sources, plan and chunk tracks, notes."""
        notes: list[str] = []
        frame = latest["frames"].get(cam)
        out: dict[str, Any] = {"camera": cam, "tracks": [], "ee_tracks": [], "no_object": False}
        if frame is None:
            notes.append("no frame from this camera in the observation")
            return {**out, "frame": None, "width": None, "height": None, "notes": notes}
        H, W = frame.shape[:2]
        K, k_source = None, None
        if cam in latest["K"]:
            K, k_source = _matrix(latest["K"][cam], (3, 3)), "observation"
        elif self.camera_config is not None and self.camera_config.static_K(cam) is not None:
            K, k_source = _matrix(self.camera_config.static_K(cam), (3, 3)), "camera_config"
        if k_source is not None and (K is None or K[0, 0] <= 0 or K[1, 1] <= 0):
            notes.append(f"K from the {k_source} is not a finite 3x3 matrix with fx, fy > 0: ignored")
            K, k_source = None, None
        T, t_source = None, None
        if cam in latest["T_world_cam"]:
            T, t_source = _matrix(latest["T_world_cam"][cam], (4, 4)), "observation"
        elif self.camera_config is not None and self.camera_config.static_T_world_cam(cam) is not None:
            T, t_source = _matrix(self.camera_config.static_T_world_cam(cam), (4, 4)), "camera_config"
        if plan is None:
            notes.append("no plan for this camera" if latest["pose_tokens"] is not None
                         else "no plan in the result (infer without return_poses)")
        else:
            try:
                out["tracks"] = plan_tracks(plan.get("entries") or [], K, W, H, self.image_size, notes)
            except DataError as err:
                notes.append(f"plan not drawn: {err}")
            out["no_object"] = bool(plan.get("no_object", False))
            outside = sum(not (-0.5 <= p["u"] <= W - 0.5 and -0.5 <= p["v"] <= H - 0.5)
                          for t in out["tracks"] for p in t["points"])
            if outside:
                notes.append(f"{outside} waypoint(s) project outside the image")
            if K is None:
                notes.append("no K for this camera: waypoints drawn at their 2D anchors")
            elif any(p["source"] == "anchor" for t in out["tracks"] for p in t["points"]):
                notes.append("waypoints behind the camera drawn at their 2D anchors")
        if latest["ee_pose"] is not None:
            if K is not None and T is not None:
                try:
                    out["ee_tracks"] = ee_tracks(latest["ee_pose"], K, T)
                except (DataError, np.linalg.LinAlgError) as err:
                    notes.append(f"executed chunk not drawn: {err}")
            else:
                notes.append("executed ee_pose chunk not drawn: needs K and T_world_cam")
        version = latest["version"]
        return {
            **out,
            "frame": f"/viewer/frame/{urllib.parse.quote(cam, safe='')}.png?v={version}",
            "width": W,
            "height": H,
            "K_source": k_source,
            "T_world_cam_source": t_source if T is not None else None,
            "notes": notes,
        }


def _copy_value(value: Any) -> Any:
    """A detached copy of an array-like (float64 when numeric), or the value itself (str, number, None)."""
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return np.array(value, np.float64, copy=True)
        except (TypeError, ValueError):
            return np.array(value, dtype=object, copy=True) if isinstance(value, np.ndarray) else list(value)
    return value


def _array_or_error(value: Any, field: str) -> np.ndarray:
    """A float64 copy of `value`, or a DataError naming `field`."""
    try:
        return np.array(value, np.float64, copy=True)
    except (TypeError, ValueError) as err:
        raise DataError(f"Viewer.update: {field} is not a numeric array ({err})", field=field) from None


def _copy_plan(plan: Any) -> list[dict[str, Any]] | None:
    """A detached copy of ``result["pose_tokens"]`` (list of views with entries of small arrays)."""
    if plan is None:
        return None
    if not isinstance(plan, Sequence) or isinstance(plan, (str, bytes)):
        raise DataError(f"result['pose_tokens'] must be a list of views, got {type(plan).__name__}",
                        field="result.pose_tokens")
    views = []
    for view in plan:
        if not isinstance(view, Mapping):
            raise DataError(f"a pose_tokens view is a dict, got {type(view).__name__}",
                            field="result.pose_tokens")
        entries = []
        for e in view.get("entries") or []:
            if not isinstance(e, Mapping):
                raise DataError(f"a plan entry is a dict, got {type(e).__name__}", field="result.pose_tokens")
            entries.append({k: _copy_value(v) for k, v in e.items()})
        views.append(
            {"camera": view.get("camera"), "entries": entries, "no_object": bool(view.get("no_object"))}
        )
    return views

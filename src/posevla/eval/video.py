"""Evaluation videos: H.264 MP4 (imageio-ffmpeg's bundled ffmpeg; animated GIF without it), frames with the
head camera (optionally overlaid, e.g. the policy's predicted waypoints) next to the other cameras and a caption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from posevla.errors import DataError
from posevla.sim import Observation, PolicyOutput

__all__ = ["VIDEO_FORMAT", "OverlayFn", "write_video", "video_frame", "draw_waypoints", "waypoint_overlay"]

#: ``overlay(head_image, obs, output) -> image``: draws on a copy of the head view for videos.
OverlayFn = Callable[[np.ndarray, Observation, PolicyOutput], np.ndarray]


def _video_format() -> str:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return "gif"
    return "mp4"


#: "mp4" when imageio-ffmpeg is installed (it is a project dependency), else "gif".
VIDEO_FORMAT = _video_format()



def draw_waypoints(
    image: np.ndarray,
    points_world: np.ndarray,
    K: np.ndarray,
    T_world_cam: np.ndarray,
    *,
    color: tuple[int, int, int] = (255, 220, 0),
    radius: int = 2,
) -> np.ndarray:
    """Draw 3D points (N, 3, world frame) as a dotted polyline on a copy of ``image`` (H, W, 3) uint8.

    Points behind the camera are skipped; the first point gets a white outline.
    """
    from posevla.geometry import invert_T, project_points, transform_points

    pts = np.asarray(points_world, np.float64).reshape(-1, 3)
    p_cam = transform_points(invert_T(np.asarray(T_world_cam, np.float64)), pts)
    front = p_cam[:, 2] > 1e-3
    uv = project_points(np.asarray(K, np.float64), p_cam[front]) if front.any() else np.zeros((0, 2))
    img = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(img)
    xy = [(float(u), float(v)) for u, v in uv]
    if len(xy) > 1:
        draw.line(xy, fill=color, width=1)
    for k, (u, v) in enumerate(xy):
        draw.ellipse([u - radius, v - radius, u + radius, v + radius], fill=color,
                     outline=(255, 255, 255) if k == 0 else color)
    return np.asarray(img)


def waypoint_overlay(camera: str) -> OverlayFn:
    """An overlay that draws ``PolicyOutput.waypoints`` with camera ``camera``'s K and T_world_cam."""

    def overlay(image: np.ndarray, obs: Observation, output: PolicyOutput) -> np.ndarray:
        if output.waypoints is None:
            return image
        K = obs[f"observation.cameras.{camera}.K"]
        T = obs[f"observation.cameras.{camera}.T_world_cam"]
        return draw_waypoints(image, output.waypoints, K, T)

    return overlay


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width (H.264 with yuv420p needs them)."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
    return frame


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """Write RGB uint8 frames (same size) as MP4 (imageio-ffmpeg) or, without it, an animated GIF.

    The suffix of ``path`` is replaced by ``.mp4`` / ``.gif`` to match what was written.
    """
    if not frames:
        raise DataError("no frames to write", file=str(path), fix="record at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [_even(np.asarray(f, np.uint8)) for f in frames]
    if VIDEO_FORMAT == "mp4":
        import imageio.v2 as iio

        path = path.with_suffix(".mp4")
        with iio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=7,
                            pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error") as w:
            for f in frames:
                w.append_data(f)
    else:
        path = path.with_suffix(".gif")
        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path


def video_frame(obs: Observation, cameras: Sequence[str], head: np.ndarray, caption: str) -> np.ndarray:
    """Head view (already overlaid) next to the other cameras, a caption strip on top, upscaled x2."""
    views = [head] + [obs[f"observation.images.{c}"] for c in cameras[1:] if f"observation.images.{c}" in obs]
    h = max(v.shape[0] for v in views)
    views = [np.pad(v, ((0, h - v.shape[0]), (0, 0), (0, 0))) for v in views]
    row = np.concatenate(views, axis=1)
    row = np.repeat(np.repeat(row, 2, axis=0), 2, axis=1)
    strip = Image.new("RGB", (row.shape[1], 14), (0, 0, 0))
    ImageDraw.Draw(strip).text((3, 1), caption, fill=(255, 255, 255))
    return np.concatenate([np.asarray(strip), row], axis=0)



"""MP4 video features of LeRobot v3 datasets: where each episode's frames lie, and a frame-exact decoder.

LeRobot's default storage for camera features (``dtype: "video"`` in ``meta/info.json``):

* files ``videos/<key>/chunk-XXX/file-XXX.mp4`` (the ``video_path`` template of info.json, formatted with
  ``video_key``, ``chunk_index``, ``file_index``); several episodes are concatenated in one file;
* per episode, in ``meta/episodes/*.parquet``: ``videos/<key>/chunk_index``, ``videos/<key>/file_index``,
  ``videos/<key>/from_timestamp`` and ``videos/<key>/to_timestamp`` (seconds into that file);
* frame ``t`` of an episode is the video frame *presented at* ``from_timestamp + timestamp[t]`` (the data
  file's ``timestamp`` column), within :data:`VIDEO_TOLERANCE_S` -- the same rule, and the same default
  tolerance, as LeRobot's own decoders.

Decoding uses PyAV (FFmpeg; AV1 through libdav1d) and converts to RGB24 with FFmpeg's default conversion,
which is bit-identical to what LeRobot's ``torchcodec`` and ``pyav`` backends return. A depth feature stored
as a video (``observation.depth.<cam>``; LeRobot 0.4 writes 3-channel videos only, so a depth map is a gray
RGB video, shape ``[H, W, 3]``; a 1-channel ``[H, W, 1]`` feature is read the same way) gives its first
channel as the stored depth unit, ``metres = value * depth_scale``.

Every failure (missing, truncated or corrupt file, no frame at a time, wrong size) is a
:class:`~posevla.errors.DataError` naming the file, the record (episode / frame) and the feature.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from posevla.errors import DataError

#: info.json ``video_path`` template LeRobot writes (used when info.json has none but lists video features).
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
#: Largest |frame time − wanted time| accepted, seconds (LeRobot's ``tolerance_s`` default).
VIDEO_TOLERANCE_S = 1e-4
#: Per-episode columns of meta/episodes/*.parquet for video feature ``key``.
VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
_FIX_CORRUPT = "the video is truncated or corrupt: restore it, or re-encode the episodes (LeRobot writes them on save_episode)"


def video_column(key: str, what: str) -> str:
    """The episodes-metadata column ``videos/<key>/<what>``."""
    return f"videos/{key}/{what}"


@dataclass(frozen=True)
class VideoSegment:
    """Where one episode's frames of one video feature lie: ``file`` and its start time ``start_s``."""

    file: Path
    start_s: float
    end_s: float


def _av() -> Any:
    try:
        import av
    except ImportError:  # pragma: no cover - av is a dependency of posevla
        raise DataError(
            "PyAV is not installed, so MP4 video features cannot be decoded",
            field="video",
            fix="pip install av (a dependency of posevla: reinstall with `pip install -e .`)",
        ) from None
    return av


def _av_errors() -> tuple[type[BaseException], ...]:
    av = _av()
    return (av.FFmpegError, OSError, ValueError, EOFError, RuntimeError)


class _Open:
    """One open container and the position of its last decode (to read on instead of seeking back)."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.stream = container.streams.video[0]
        self.frames: Any = None  # the running decode generator
        self.pending: tuple[float, Any] | None = None  # a decoded frame not yet delivered (time, frame)
        self.last: tuple[float, np.ndarray] | None = None  # the last frame delivered (time, RGB)


class VideoDecoder:
    """Decodes frames of MP4 files by presentation time; keeps a few files open (thread-safe, picklable).

    Sequential reads (frame t, t+1, ...) continue the running decode; other reads seek to the key frame
    before the wanted time and decode forward from there.
    """

    def __init__(self, max_open: int = 8) -> None:
        self.max_open = max_open
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open}  # open files and locks stay with their process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_open"])

    def close(self) -> None:
        with self._lock:
            for o in self._open.values():
                o.container.close()
            self._open.clear()

    def _get(self, file: Path, key: str, record: str) -> _Open:
        name = str(file)
        o = self._open.get(name)
        if o is not None:
            return o
        if not file.is_file():
            raise DataError("video file not found", file=name, record=record, field=key,
                            fix="restore the file (videos/<key>/chunk-XXX/file-XXX.mp4) or re-encode the dataset")
        av = _av()
        try:
            container = av.open(name)
            if not container.streams.video:
                container.close()
                raise DataError("the file holds no video stream", file=name, record=record, field=key,
                                fix=_FIX_CORRUPT)
        except _av_errors() as e:
            raise DataError(f"cannot open the video ({e})", file=name, record=record, field=key,
                            fix=_FIX_CORRUPT) from None
        if len(self._open) >= self.max_open:
            old = next(iter(self._open))
            self._open.pop(old).container.close()
        o = self._open[name] = _Open(container)
        return o

    def frame_at(self, file: Path, time_s: float, *, key: str, record: str) -> np.ndarray:
        """The (H, W, 3) uint8 RGB frame of ``file`` presented at ``time_s`` seconds (± the tolerance)."""
        with self._lock:
            o = self._get(file, key, record)
            try:
                return self._frame_at(o, float(time_s), file, key, record)
            except DataError:
                raise
            except _av_errors() as e:
                self._drop(file)
                raise DataError(f"cannot decode the video at {time_s:.4f} s ({type(e).__name__}: {e})",
                                file=str(file), record=record, field=key, fix=_FIX_CORRUPT) from None

    def _drop(self, file: Path) -> None:
        o = self._open.pop(str(file), None)
        if o is not None:
            o.container.close()

    def _frame_at(self, o: _Open, t: float, file: Path, key: str, record: str) -> np.ndarray:
        tol = VIDEO_TOLERANCE_S
        if o.last is not None and abs(o.last[0] - t) < tol:
            return o.last[1]
        # read on when the next undelivered frame lies at or a little before the wanted time, else seek back
        p = o.pending
        if o.frames is None or p is None or not (p[0] <= t + tol and t - p[0] <= 1.0):
            tb = o.stream.time_base
            target = max(0, int(np.floor((t - tol) / float(tb)))) if tb else 0
            o.container.seek(target, stream=o.stream, backward=True, any_frame=False)
            o.frames, o.pending, o.last = o.container.decode(o.stream), None, None
        nearest: tuple[float, Any] | None = None
        seen: float | None = None
        while True:
            item = o.pending
            o.pending = None
            if item is None:
                item = next(((f.time, f) for f in o.frames if f.time is not None), None)
            if item is None:
                o.frames = None  # end of the stream
                break
            if item[0] > t + tol:
                o.pending = item  # the first frame of the next read
                break
            seen = item[0]
            if abs(item[0] - t) < tol and (nearest is None or abs(item[0] - t) < abs(nearest[0] - t)):
                nearest = item
        if nearest is None:
            around = [f"{x:.4f} s" for x in (seen, o.pending[0] if o.pending else None) if x is not None]
            have = f"frames around it: {', '.join(around)}" if around else "no frame from there on"
            o.frames, o.pending, o.last = None, None, None
            raise DataError(
                f"the video has no frame at {t:.4f} s ({have}; tolerance {tol:g} s): the video is shorter than "
                "the episode (or truncated), or out of sync with its timestamps",
                file=str(file), record=record, field=key,
                fix="re-encode the episode's video, or fix videos/<key>/from_timestamp in meta/episodes and the "
                "data's timestamp column",
            )
        rgb = nearest[1].to_ndarray(format="rgb24")  # (H, W, 3) uint8
        o.last = (nearest[0], rgb)
        return rgb

    def probe(self, file: Path, *, key: str, record: str, hw: tuple[int, int]) -> tuple[str, float | None]:
        """(codec name, end time in seconds or None) of ``file``, after checking its frame size is ``hw``."""
        with self._lock:
            o = self._get(file, key, record)
            s = o.stream
            h, w = int(s.codec_context.height), int(s.codec_context.width)
            if (h, w) != tuple(hw):
                raise DataError(
                    f"the video is {w}x{h} but feature '{key}' says {hw[1]}x{hw[0]}",
                    file=str(file), record=record, field=key,
                    fix="fix the feature shape in meta/info.json or re-encode the video",
                )
            end = None
            if s.duration is not None and s.time_base:
                end = float((s.start_time or 0) * s.time_base) + float(s.duration * s.time_base)
            elif o.container.duration:
                end = o.container.duration / 1e6
            return str(s.codec_context.name), end


def segments_of(
    root: Path, info: Mapping[str, Any], key: str, episodes: Mapping[str, Sequence[Any]], files: Sequence[str]
) -> list[VideoSegment]:
    """Per episode, the video segment of feature ``key`` (episodes metadata columns, checked)."""
    template = info.get("video_path") or VIDEO_PATH
    out: list[VideoSegment] = []
    for e in range(len(episodes["episode_index"])):
        c, f = episodes[video_column(key, "chunk_index")][e], episodes[video_column(key, "file_index")][e]
        a, b = episodes[video_column(key, "from_timestamp")][e], episodes[video_column(key, "to_timestamp")][e]
        fix = "rewrite the dataset (LeRobot writes these columns on save_episode)"
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (c, f)):
            raise DataError(f"episode {e}: video chunk / file index of '{key}' must be integers, got {c!r}, {f!r}",
                            file=files[e], record=f"episode {e}", field=video_column(key, "chunk_index"), fix=fix)
        if not all(isinstance(v, (int, float, np.number)) and np.isfinite(v) for v in (a, b)) or not 0 <= a < b:
            raise DataError(
                f"episode {e}: video segment of '{key}' must satisfy 0 <= from_timestamp < to_timestamp, got "
                f"{a!r}, {b!r}",
                file=files[e], record=f"episode {e}", field=video_column(key, "from_timestamp"), fix=fix,
            )
        try:
            rel = template.format(video_key=key, chunk_index=int(c), file_index=int(f))
        except (KeyError, IndexError, ValueError):
            raise DataError(f"'video_path' template {template!r} cannot be formatted",
                            file=str(root / "meta" / "info.json"), field="video_path",
                            fix=f"use {VIDEO_PATH!r}") from None
        out.append(VideoSegment(root / rel, float(a), float(b)))
    return out

"""The one MuJoCo offscreen renderer of every simulator here: RGB + metric depth of any model's cameras.

Importing this module (``posevla.sim`` does) sets ``MUJOCO_GL=egl`` (and the matching
``PYOPENGL_PLATFORM``) unless the environment already chose a backend: the only place in posevla that does,
and it must happen before Python first imports mujoco. Debian needs ``libegl1 libegl-mesa0
libgl1-mesa-dri`` (``scripts/install_system_deps.sh``); rendering then runs on the CPU (Mesa llvmpipe).

* :func:`depth_buffer_to_metres` -- the one conversion of MuJoCo's reversed-Z depth buffer to metres;
* :class:`MujocoCameraRenderer` -- one GL context per model, the CPU fast path (no MSAA, no shadows, no
  planar reflections), one render per camera read back as RGB and depth, rows top-down.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from posevla.errors import ConfigError, DataError  # noqa: E402

__all__ = ["depth_buffer_to_metres", "MujocoCameraRenderer"]


def depth_buffer_to_metres(raw: np.ndarray, znear: float, zfar: float) -> np.ndarray:
    """MuJoCo's reversed-Z depth buffer (``mjDEPTH_ZEROFAR``) -> metric depth, float32, 0 = nothing hit.

    Args:
        raw: depth read by ``mjr_readPixels`` with ``readDepthMap = mjDEPTH_ZEROFAR`` (0 at the far plane).
        znear: near clip distance in metres (``model.vis.map.znear * model.stat.extent``).
        zfar: far clip distance in metres (``model.vis.map.zfar * model.stat.extent``).

    Returns:
        z along the optical axis in metres; pixels at (or within 0.1 % of) the far plane are 0.
    """
    near, far = np.float32(znear), np.float32(zfar)
    # mujoco.Renderer's maths for the reversed-Z buffer: the constants in float32 like the GL buffer, the
    # division in float64
    c = np.float32(-0.5) * (-(far + near) / (far - near)) - np.float32(0.5)
    dd = np.float32(-0.5) * (-(np.float32(2) * far * near) / (far - near))
    raw = np.asarray(raw, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = dd / (raw + c)
    return np.where((raw > 0) & np.isfinite(z) & (z < 0.999 * far), z, 0.0).astype(np.float32)


class MujocoCameraRenderer:
    """Offscreen RGB + metric depth of cameras of any MuJoCo model, one render per camera.

    CPU fast path: sets ``model.vis.quality.offsamples = 0`` (no MSAA) and ``model.light_castshadow[:] = 0``
    (no shadows) before the GL context exists, and switches off planar reflections (each reflective
    material otherwise renders the scene twice; on llvmpipe this halves the render time). Pixels change
    slightly: aliased edges, no shadows, no mirror image in the table. The model's offscreen buffer
    grows if the image is larger. Call :meth:`close` (or use a ``with`` block) to free the GL context.

    Args:
        model: the ``mujoco.MjModel`` (modified in place as described).
        width, height: image size in pixels.
        max_depth: depths beyond this many metres are stored as 0 (invalid). The skybox is drawn tens
            of metres away and would otherwise appear as a depth; scenes here are a few metres across.
        max_geom: capacity of the visual scene.
    """

    def __init__(
        self, model: Any, width: int, height: int, *, max_depth: float = 10.0, max_geom: int = 2000
    ) -> None:
        import mujoco

        self.mj = mujoco
        self.model = model
        self.width, self.height = int(width), int(height)
        self.max_depth = float(max_depth)
        model.vis.quality.offsamples = 0
        model.light_castshadow[:] = 0
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), self.width)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), self.height)
        try:
            self.gl = mujoco.GLContext(self.width, self.height)
            self.gl.make_current()
            self.ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        except Exception as e:  # mujoco.FatalError, GLFW/EGL errors
            gl = os.environ.get("MUJOCO_GL")
            raise ConfigError(
                f"could not create an offscreen OpenGL context (MUJOCO_GL={gl!r}): {e}. "
                "Set MUJOCO_GL=egl (or osmesa) in the environment before Python first imports mujoco, "
                "and install the EGL/Mesa system packages (scripts/install_system_deps.sh)"
            ) from e
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.ctx)
        self.ctx.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self.scn = mujoco.MjvScene(model, maxgeom=max_geom)
        self.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.opt = mujoco.MjvOption()
        self.cam = mujoco.MjvCamera()
        self.cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self.rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._depth = np.empty((self.height, self.width), np.float32)
        self.znear = float(model.vis.map.znear * model.stat.extent)
        self.zfar = float(model.vis.map.zfar * model.stat.extent)
        self._closed = False

    def render(self, data: Any, cam_id: int, *, depth: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Camera ``cam_id``: RGB uint8 (H, W, 3) row 0 at the top, depth float32 metres (H, W) or None."""
        if self._closed:
            raise DataError("render() on a closed renderer", fix="create a new environment / renderer")
        mj = self.mj
        self.gl.make_current()
        self.cam.fixedcamid = int(cam_id)
        mj.mjv_updateScene(self.model, data, self.opt, None, self.cam, mj.mjtCatBit.mjCAT_ALL, self.scn)
        mj.mjr_render(self.rect, self.scn, self.ctx)
        mj.mjr_readPixels(self._rgb, self._depth if depth else None, self.rect, self.ctx)
        rgb = np.ascontiguousarray(self._rgb[::-1])  # GL rows are bottom-up
        if not depth:
            return rgb, None
        z = depth_buffer_to_metres(self._depth[::-1], self.znear, self.zfar)
        z[z > self.max_depth] = 0.0
        return rgb, z

    def close(self) -> None:
        """Free the GL resources (idempotent)."""
        if not self._closed:
            self._closed = True
            try:
                self.gl.make_current()
                self.ctx.free()
            finally:
                self.gl.free()

    def __enter__(self) -> MujocoCameraRenderer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

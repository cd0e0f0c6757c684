"""How 16-bit depth PNGs encode metres, per dataset source.

Depth files of real datasets do not agree on a unit, and one of them does not even store a plain
number: SUN RGB-D's own release (the PNGs its toolbox reads with ``read3dPoints.m``) stores each
depth in millimetres **rotated right by 3 bits** within the 16-bit word, so ``raw * 1e-4`` comes out
20 % short and ``raw * 1e-3`` 8x too long. An encoding is therefore a named setting:

=====================  =========================================================================
encoding               metres from the stored uint16 ``raw``
=====================  =========================================================================
``sunrgbd-toolbox``    ``((raw >> 3) | (raw << 13)) & 0xFFFF`` millimetres (SUN RGB-D's release)
``mm``                 ``raw * 1e-3`` (ARKitScenes, BOP at depth_scale 1, pre-converted SUN RGB-D)
``0.1mm``              ``raw * 1e-4`` (posevla's generated data)
``kitti``              ``raw / 256`` (KITTI depth completion maps)
``linear``             ``raw * depth_scale`` with the scale given separately
=====================  =========================================================================

:data:`SOURCE_DEPTH_ENCODINGS` holds each Omni3D source's default; a json's ``info.depth_encoding``
or a command's ``--depth-encoding`` overrides it, and ``info.depth_scale`` selects ``linear``.
0 stays 0 (invalid) in every encoding.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEPTH_ENCODINGS", "SOURCE_DEPTH_ENCODINGS", "check_depth_encoding", "decode_depth",
           "source_depth_encoding"]

#: Encoding name -> metres per unit after decoding (None for ``linear``: the scale is given).
DEPTH_ENCODINGS: dict[str, float | None] = {
    "sunrgbd-toolbox": 1e-3,
    "mm": 1e-3,
    "0.1mm": 1e-4,
    "kitti": 1.0 / 256.0,
    "linear": None,
}

#: Default encoding of the depth PNGs of each Omni3D source with depth (matched ignoring case and
#: ``-_ ``). Objectron, Hypersim and nuScenes ship no depth PNG, so they are absent.
SOURCE_DEPTH_ENCODINGS: dict[str, str] = {
    "SUNRGBD": "sunrgbd-toolbox",
    "ARKitScenes": "mm",
    "KITTI": "kitti",
    "posevla-tabletop": "0.1mm",
}


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in "-_ ")


def source_depth_encoding(source: str | None) -> str | None:
    """The default depth encoding of an Omni3D source name (e.g. ``"SUNRGBD"``), or None if unknown."""
    table = {_key(k): v for k, v in SOURCE_DEPTH_ENCODINGS.items()}
    return table.get(_key(source or ""))


def check_depth_encoding(name: str) -> str:
    """``name`` if it is a known encoding; else a ValueError listing the valid ones."""
    if name not in DEPTH_ENCODINGS:
        raise ValueError(f"unknown depth encoding {name!r}; valid: {', '.join(DEPTH_ENCODINGS)}")
    return name


def decode_depth(raw: np.ndarray, encoding: str, depth_scale: float | None = None) -> np.ndarray:
    """Metres (float32, same shape) of stored integer depth ``raw`` in ``encoding`` (0 = invalid)."""
    check_depth_encoding(encoding)
    if encoding == "sunrgbd-toolbox":
        r = raw.astype(np.uint32)
        mm = ((r >> 3) | (r << 13)) & 0xFFFF  # 16-bit rotate right by 3
        return (mm.astype(np.float32) * np.float32(1e-3)).astype(np.float32)
    scale = DEPTH_ENCODINGS[encoding] if encoding != "linear" else depth_scale
    if scale is None:
        raise ValueError("the 'linear' depth encoding needs a depth_scale (metres per unit)")
    return (raw.astype(np.float32) * np.float32(scale)).astype(np.float32)

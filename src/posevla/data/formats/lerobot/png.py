"""PNG frames of LeRobot v3 image / depth features: header checks without decoding, encode, decode."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from posevla.data.formats.lerobot.schema import _PNG_IEND, _PNG_SIG
from posevla.errors import DataError


def _png_check(
    head: bytes, tail: bytes, *, h: int, w: int, depth: bool, file: str, record: str, key: str
) -> None:
    """Header (size, bit depth, colour type) and IEND trailer of a PNG, without decoding it."""
    fix = "the image is missing, truncated or corrupt; rewrite the dataset"
    if not head.startswith(_PNG_SIG) or len(head) < 26 or head[12:16] != b"IHDR":
        raise DataError(
            "not a PNG file (bad signature or header)", file=file, record=record, field=key, fix=fix
        )
    pw, ph, bd, ct = struct.unpack(">IIBB", head[16:26])
    want_bd, want_ct = (16, 0) if depth else (8, 2)
    if (pw, ph) != (w, h):
        raise DataError(
            f"PNG is {pw}x{ph} but feature '{key}' says {w}x{h}",
            file=file,
            record=record,
            field=key,
            fix="fix the feature shape in meta/info.json or restore the original image",
        )
    if (bd, ct) != (want_bd, want_ct):
        kind = "16-bit grayscale" if depth else "8-bit RGB"
        raise DataError(
            f"expected a {kind} PNG, got bit depth {bd} colour type {ct}",
            file=file,
            record=record,
            field=key,
            fix=f"store '{key}' as {kind} PNG",
        )
    if not tail.endswith(_PNG_IEND):
        raise DataError(
            "PNG is truncated (no IEND chunk at the end)", file=file, record=record, field=key, fix=fix
        )


def _encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _decode_png(data: bytes | Path, *, depth: bool, file: str, record: str, key: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()
            arr = np.asarray(img)
            mode = img.mode
    except FileNotFoundError:
        raise DataError(
            "image file not found",
            file=file,
            record=record,
            field=key,
            fix="restore the file or rewrite the dataset",
        ) from None
    except (OSError, SyntaxError, ValueError, zlib.error, struct.error) as e:
        raise DataError(
            f"cannot decode PNG ({e})",
            file=file,
            record=record,
            field=key,
            fix="the image is truncated or corrupt; rewrite the dataset",
        ) from None
    if depth:
        if arr.ndim != 2 or arr.dtype.kind not in "ui" or mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise DataError(
                f"expected a 16-bit grayscale depth PNG, got mode {mode} {arr.dtype} {arr.shape}",
                file=file,
                record=record,
                field=key,
                fix="store depth as a uint16 PNG",
            )
        return arr
    if mode != "RGB" or arr.dtype != np.uint8 or arr.ndim != 3:
        raise DataError(
            f"expected an 8-bit RGB PNG, got mode {mode}",
            file=file,
            record=record,
            field=key,
            fix="convert the image to 8-bit RGB",
        )
    return arr



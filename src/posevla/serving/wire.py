"""The wire format of `posevla serve`: one msgpack map per binary websocket frame, numpy arrays inline.

Compatible with openpi's ``openpi_client.msgpack_numpy`` (packages/openpi-client in Physical-Intelligence/openpi),
so its ``WebsocketClientPolicy`` talks to our server unchanged:

* an array is the map ``{b"__ndarray__": True, b"data": <raw bytes, C order>, b"dtype": <numpy dtype.str,
  e.g. "|u1", "<f4">, b"shape": [d0, d1, ...]}`` (byte-string keys, msgpack ``bin``); a numpy scalar is
  ``{b"__npgeneric__": True, b"data": <python value>, b"dtype": <dtype.str>}``;
* everything else is plain msgpack (str keys, str / int / float / bool / None / list / map).

Nothing is ever unpickled: object, void and complex dtypes are refused both ways. Decoding is strict because
it faces the network: :func:`unpack` checks every array header (known numeric dtype, a shape of non-negative
ints, ``len(data) == prod(shape) * itemsize``, at most `max_array_bytes`) and raises :class:`WireError` (a
:class:`~posevla.errors.DataError`) saying what was wrong. Decoded arrays are read-only views of the frame.

This module imports no torch: the robot-side client uses it.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from posevla.errors import DataError

__all__ = ["WireError", "pack", "unpack", "ALLOWED_DTYPE_KINDS", "MAX_DEPTH"]

#: dtype kinds an array on the wire may have: bool, signed / unsigned int, float.
ALLOWED_DTYPE_KINDS = frozenset("biuf")
#: Deepest nesting of maps / lists a frame may have (msgpack itself recurses).
MAX_DEPTH = 32


class WireError(DataError):
    """A frame that is not a valid message of the wire format (garbage bytes, bad array header, ...)."""


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in ALLOWED_DTYPE_KINDS:
        raise WireError(
            f"cannot send an array of dtype {obj.dtype} (kind {obj.dtype.kind!r})",
            field="dtype",
            fix="send bool, integer or float arrays (images as uint8, states as float32/float64)",
        )
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": list(arr.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    if isinstance(obj, tuple):
        return list(obj)
    raise WireError(
        f"cannot send a value of type {type(obj).__name__}",
        fix="send dicts, lists, strings, numbers, bools, None and numpy arrays",
    )


def pack(obj: Any) -> bytes:
    """One message as the bytes of a binary frame (WireError for values the format cannot carry)."""
    try:
        return msgpack.packb(obj, default=_pack_default, use_bin_type=True)
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"cannot encode the message: {e}") from None


def _dtype(raw: Any, where: str) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    try:
        dt = np.dtype(raw) if isinstance(raw, str) else None
    except (TypeError, ValueError):
        dt = None
    if dt is None:
        raise WireError(f"{where}: dtype {raw!r} is not a numpy dtype string", field="dtype",
                        fix="use numpy's dtype.str, e.g. '|u1' or '<f4'")
    if dt.kind not in ALLOWED_DTYPE_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise WireError(f"{where}: dtype {dt} (kind {dt.kind!r}) is not allowed on the wire", field="dtype",
                        fix="send bool, integer or float arrays; object/void/complex dtypes are refused")
    return dt


def _decode_array(obj: dict, where: str, max_array_bytes: int) -> np.ndarray:
    missing = [k.decode() for k in (b"data", b"dtype", b"shape") if k not in obj]
    if missing:
        raise WireError(f"{where}: an __ndarray__ map lacks {missing}", field="__ndarray__")
    data, shape = obj[b"data"], obj[b"shape"]
    if not isinstance(data, bytes):
        raise WireError(f"{where}: array data must be bytes (msgpack bin), got {type(data).__name__}", field="data")
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ) or len(shape) > 32:
        raise WireError(f"{where}: array shape must be a list of at most 32 non-negative ints, got {shape!r}",
                        field="shape")
    dt = _dtype(obj[b"dtype"], where)
    n = math.prod(shape) * dt.itemsize
    if n > max_array_bytes:
        raise WireError(f"{where}: an array of shape {list(shape)} {dt} is {n / 1e6:.1f} MB, more than the "
                        f"{max_array_bytes / 1e6:.1f} MB an array may have", field="shape",
                        fix="send images at the model's input size (the server's metadata lists the shapes)")
    if len(data) != n:
        raise WireError(f"{where}: array data has {len(data)} bytes but shape {list(shape)} of {dt} needs {n}",
                        field="data")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _decode(obj: Any, where: str, max_array_bytes: int, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise WireError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(obj, dict):
        if b"__ndarray__" in obj:
            return _decode_array(obj, where, max_array_bytes)
        if b"__npgeneric__" in obj:
            dt = _dtype(obj.get(b"dtype"), where)
            try:
                return dt.type(obj.get(b"data"))
            except (TypeError, ValueError, OverflowError) as e:
                raise WireError(f"{where}: numpy scalar of dtype {dt} with data {obj.get(b'data')!r}: {e}") from None
        out = {}
        for k, v in obj.items():
            if isinstance(k, bytes):
                k = k.decode("utf-8", "replace")
            if not isinstance(k, str):
                raise WireError(f"{where}: map keys must be strings, got {type(k).__name__} {k!r}")
            out[k] = _decode(v, f"{where}/{k}" if where else k, max_array_bytes, depth + 1)
        return out
    if isinstance(obj, list):
        return [_decode(v, f"{where}[{i}]", max_array_bytes, depth + 1) for i, v in enumerate(obj)]
    return obj


def unpack(data: bytes, *, max_array_bytes: int = 64 << 20) -> Any:
    """Decode one frame (strictly; module docstring). Raises WireError naming what is wrong and where."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected a binary frame, got {type(data).__name__}",
                        fix="send msgpack bytes in a binary websocket frame (openpi_client.msgpack_numpy.packb)")
    try:
        raw = msgpack.unpackb(bytes(data), raw=False, strict_map_key=False, use_list=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        raise WireError(f"the frame is not one msgpack message ({type(e).__name__}: {e})",
                        fix="pack the observation with openpi_client.msgpack_numpy.packb") from None
    except Exception as e:  # msgpack raises a few other types on truncated input (e.g. OutOfData)
        raise WireError(f"the frame is not one msgpack message ({type(e).__name__}: {e})",
                        fix="pack the observation with openpi_client.msgpack_numpy.packb") from None
    return _decode(raw, "", max_array_bytes, 0)

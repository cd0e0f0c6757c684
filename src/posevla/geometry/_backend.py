"""Tiny numpy/torch dispatch used by the geometry functions.

Every public geometry function takes numpy arrays or torch tensors and returns the same kind.
The helpers here let one implementation serve both: :func:`is_torch` decides the kind from an
input, :func:`like` converts other inputs (or constants) to the kind, dtype and device of a
reference, and the thin wrappers (:func:`stack`, :func:`cat`, ...) paper over the few places where
numpy and torch spell things differently (``axis`` vs ``dim``). torch is never imported unless a
tensor is actually passed in.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Array = Any  # np.ndarray | torch.Tensor


def is_torch(x: Any) -> bool:
    """True when ``x`` is a torch tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch")


def ensure_float(x: Any) -> Array:
    """Return ``x`` as a floating array of its own kind (numpy: float64 unless already float)."""
    if is_torch(x):
        return x if x.is_floating_point() else x.double()
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return a


def like(x: Any, ref: Array) -> Array:
    """Convert ``x`` (numpy, torch, list, scalar) to the kind, float dtype and device of ``ref``."""
    if is_torch(ref):
        import torch

        if is_torch(x):
            return x.to(dtype=ref.dtype, device=ref.device)
        a = np.asarray(x)
        if not a.flags.writeable:  # torch warns on read-only arrays (e.g. module constants)
            a = a.copy()
        return torch.as_tensor(a, dtype=ref.dtype, device=ref.device)
    if is_torch(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=ref.dtype)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of ``x`` (detached from any autograd graph)."""
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def xp(x: Any):
    """The array module for ``x``: ``torch`` for tensors, ``numpy`` otherwise."""
    if is_torch(x):
        import torch

        return torch
    return np


def stack(xs: Sequence[Array], axis: int) -> Array:
    if is_torch(xs[0]):
        import torch

        return torch.stack(list(xs), dim=axis)
    return np.stack(xs, axis=axis)


def cat(xs: Sequence[Array], axis: int) -> Array:
    if is_torch(xs[0]):
        import torch

        return torch.cat(list(xs), dim=axis)
    return np.concatenate(xs, axis=axis)


def norm(x: Array, axis: int = -1, keepdims: bool = False) -> Array:
    if is_torch(x):
        import torch

        return torch.linalg.norm(x, dim=axis, keepdim=keepdims)
    return np.linalg.norm(x, axis=axis, keepdims=keepdims)


def clip(x: Array, lo: float | None, hi: float | None) -> Array:
    if is_torch(x):
        return x.clamp(min=lo, max=hi)
    return np.clip(x, lo, hi)


def transpose_last2(x: Array) -> Array:
    return x.transpose(-1, -2) if is_torch(x) else np.swapaxes(x, -1, -2)


def eye(n: int, ref: Array) -> Array:
    if is_torch(ref):
        import torch

        return torch.eye(n, dtype=ref.dtype, device=ref.device)
    return np.eye(n, dtype=ref.dtype)


def zeros_like(x: Array) -> Array:
    return xp(x).zeros_like(x)


def ones_like(x: Array) -> Array:
    return xp(x).ones_like(x)


def broadcast_to(x: Array, shape: Sequence[int]) -> Array:
    return xp(x).broadcast_to(x, tuple(shape))


def cross(a: Array, b: Array) -> Array:
    if is_torch(a):
        import torch

        return torch.linalg.cross(a, b, dim=-1)
    return np.cross(a, b, axis=-1)

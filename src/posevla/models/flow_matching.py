"""Conditional flow matching of action chunks (spec §1.4): pure functions, no module state.

τ = ``time_min`` + (1 − ``time_min``)·Beta(α, β) ∈ [time_min, 1] (:func:`sample_flow_time`); the noisy input
``x_τ = τ·ε + (1 − τ)·a`` and the velocity target ``u = ε − a`` (:func:`flow_matching_pair`); the MSE over
real action dims and chunk steps inside the episode (:func:`flow_matching_loss`); the sinusoidal embedding of
τ (:func:`sinusoidal_time_embedding`). Sampling integrates ``dx/dτ = v_θ`` with Euler steps from τ = 1 to 0
(`posevla.models.pose_vla.PoseVLA.sample_actions`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from posevla.errors import ConfigError, DataError

__all__ = [
    "pad_last_dim",
    "sinusoidal_time_embedding",
    "sample_flow_time",
    "flow_matching_pair",
    "flow_matching_loss",
    "euler_schedule",
]


def pad_last_dim(x: torch.Tensor, size: int, what: str = "tensor") -> torch.Tensor:
    """Zero-pad the last dim of `x` to `size` (DataError if it is already wider)."""
    n = x.shape[-1]
    if n > size:
        raise DataError(
            f"{what} has {n} dims in its last axis but the model takes at most {size}",
            field=what,
            fix=f"raise ActionExpertConfig.max_{what}_dim or reduce the {what} vector",
        )
    return F.pad(x, (0, size - n)) if n < size else x


def sinusoidal_time_embedding(
    tau: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0
) -> torch.Tensor:
    """(B,) flow times → (B, dim) float32 embedding ``[sin(2π τ / p_k) ; cos(2π τ / p_k)]``.

    The ``dim // 2`` periods ``p_k`` are geometrically spaced from `min_period` to `max_period`.
    """
    if dim % 2:
        raise ConfigError(f"time-embedding dim must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32, device=tau.device)  # (dim/2,)
    period = min_period * (max_period / min_period) ** fraction  # (dim/2,)
    angle = tau.float()[:, None] * (2.0 * math.pi / period)[None, :]  # (B, dim/2)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)  # (B, dim)


def sample_flow_time(
    batch_size: int,
    *,
    beta: tuple[float, float] = (1.5, 1.0),
    time_min: float = 0.001,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B,) float32 training flow times τ = time_min + (1 − time_min)·Beta(α, β) ∈ [time_min, 1].

    Uses torch's global RNG (seed it with ``torch.manual_seed`` for reproducibility).
    """
    dist = torch.distributions.Beta(
        torch.tensor(float(beta[0]), device=device), torch.tensor(float(beta[1]), device=device)
    )
    return (time_min + (1.0 - time_min) * dist.sample((batch_size,))).float()  # (B,)


def flow_matching_pair(
    actions: torch.Tensor, noise: torch.Tensor, tau: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy input ``x_τ = τ·ε + (1 − τ)·a`` and the velocity target ``u = ε − a``.

    Args:
        actions: (B, H, A) clean action chunk a.
        noise: (B, H, A) ε ~ N(0, I).
        tau: (B,) flow time.
    """
    if actions.shape != noise.shape:
        raise DataError(f"noise of shape {tuple(noise.shape)} for actions of shape {tuple(actions.shape)}")
    if tau.shape != actions.shape[:1]:
        raise DataError(f"flow time of shape {tuple(tau.shape)}, expected ({actions.shape[0]},)")
    t = tau.to(actions.dtype)[:, None, None]  # (B, 1, 1)
    x_tau = t * noise + (1.0 - t) * actions  # (B, H, A)
    return x_tau, noise - actions


def flow_matching_loss(
    v_pred: torch.Tensor,
    target: torch.Tensor,
    action_is_pad: torch.Tensor | None = None,
    action_dim: int | None = None,
) -> torch.Tensor:
    """fp32 MSE between predicted and target velocity over valid entries.

    Args:
        v_pred, target: (B, H, A_max).
        action_is_pad: (B, H) bool, True where the chunk runs past the episode end (excluded);
            None = all valid.
        action_dim: the first `action_dim` dims are real, the rest zero padding (excluded); None = all.

    Returns:
        The mean of ``(v_pred − target)²`` over steps with ``action_is_pad`` False and the first
        `action_dim` dims.
    """
    if v_pred.shape != target.shape:
        raise DataError(f"v_pred {tuple(v_pred.shape)} and target {tuple(target.shape)} differ in shape")
    B, H, A = target.shape
    a = A if action_dim is None else int(action_dim)
    if not 1 <= a <= A:
        raise DataError(f"action_dim={action_dim} must be in [1, {A}]")
    err = (v_pred.float()[..., :a] - target.float()[..., :a]).pow(2)  # (B, H, a)
    if action_is_pad is None:
        return err.mean()
    if action_is_pad.shape != (B, H):
        raise DataError(
            f"action_is_pad of shape {tuple(action_is_pad.shape)}, expected ({B}, {H})", field="action_is_pad"
        )
    keep = (~action_is_pad.to(device=err.device, dtype=torch.bool)).float()  # (B, H)
    n = keep.sum() * a
    if float(n) == 0.0:
        raise DataError(
            "every action step of the batch is padding (action_is_pad all True)", field="action_is_pad"
        )
    return (err * keep[..., None]).sum() / n


def euler_schedule(num_steps: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, float]:
    """The flow times of `num_steps` Euler steps from τ = 1 to 0 and the step ``dt = −1/num_steps``.

    Returns:
        ``(taus, dt)``: taus (num_steps,) float32 = ``1 + k·dt`` for k = 0 … num_steps − 1 (computed in
        Python doubles, as a per-step ``torch.full((B,), 1.0 + k * dt)`` would), and dt.
    """
    steps = int(num_steps)
    if steps < 1:
        raise DataError(f"num_steps must be >= 1, got {num_steps}")
    dt = -1.0 / steps
    taus = torch.tensor([1.0 + k * dt for k in range(steps)], dtype=torch.float32, device=device)  # (steps,)
    return taus, dt

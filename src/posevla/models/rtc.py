"""Real-time chunking (RTC): guided inpainting of an action chunk whose start is already committed.

After Black, Galliker & Levine 2025, "Real-Time Execution of Action Chunking Flow Policies". While a robot
executes chunk ``A_old``, the next chunk is sampled from an observation taken ``s`` actions into it; by the
time it is ready, ``d`` more actions (the inference delay) have run. The first ``d`` actions of the new chunk
are therefore *frozen* to what the robot does anyway (the rest of ``A_old``), and the new chunk is sampled so
that it continues them: inpainting with pseudo-inverse guidance (ΠGDM) on the flow's predicted clean chunk,
weighted by a soft mask (:func:`soft_prefix_weights`) that is 1 on the frozen part, decays exponentially over
the rest of the overlap, and is 0 where ``A_old`` has no actions left.

**Time convention.** posevla (like π0) integrates from τ = 1 (noise) to τ = 0 (data):
``x_τ = τ·ε + (1 − τ)·a``, ``v = ε − a``, Euler ``x ← x + Δτ·v`` with ``Δτ = −1/n``. The paper uses
``t = 1 − τ`` (t = 0 noise, t = 1 data, ``v_paper = a − ε = −v``). In posevla's terms, at every step:

* predicted clean chunk  ``â = x − τ·v(x, τ)``                   (paper: ``Â¹ = Aᵗ + (1 − t)·v_paper``);
* error on the prefix     ``e = W ⊙ (Y − â)``                       (Y the frozen prefix, W the soft mask);
* guidance (a VJP)        ``g = (∂â/∂x)ᵀ e``                        (autograd through the expert w.r.t. x);
* guidance weight         ``w = min(β, τ / ((1 − τ)·r²))``, ``r² = τ² / (τ² + (1 − τ)²)``
  (paper: ``min(β, (1 − t) / (t·r_t²))``, ``r_t² = (1 − t)² / (t² + (1 − t)²)``); at τ = 1 it is β;
* guided velocity         ``v' = v − w·g`` (the paper adds ``w·g`` to ``v_paper = −v``), ``x ← x + Δτ·v'``.

With W = 0 the guidance vanishes and :func:`sample_actions_rtc` equals the plain Euler loop of
`PoseVLA.sample_actions` (``reuse_prefix=False``) exactly, and its default fused sampler to float rounding, for
the same noise (`posevla.policy.Policy.infer` skips the guidance then). Everything is in the model's *normalised* action space; `posevla.policy.Policy.infer` normalises the
de-normalised prefix a client sends. The VLM prefix is encoded once (no gradient); only the expert is
differentiated, w.r.t. x, once per Euler step (about 2–3× the cost of an unguided step).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from posevla.errors import ConfigError, DataError
from posevla.models.pose_vla import PoseVLA

__all__ = ["soft_prefix_weights", "sample_actions_rtc", "guidance_weight"]


def _int(value: object, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def soft_prefix_weights(horizon: int, inference_delay: int, execution_horizon: int) -> np.ndarray:
    """The paper's soft mask W (H,) float64 over the new chunk's steps.

    ``W_i = 1`` for ``i < d`` (frozen: those actions run before the new chunk can start);
    ``W_i = c_i·(e^{c_i} − 1)/(e − 1)`` with ``c_i = (H − s − i)/(H − s − d + 1)`` for ``d ≤ i < H − s``
    (the rest of the old chunk: followed less and less); ``W_i = 0`` for ``i ≥ H − s`` (the old chunk has no
    actions there).

    Args:
        horizon: H, actions per chunk.
        inference_delay: d, actions executed between the observation and the new chunk's start; ``d ≤ H − s``.
        execution_horizon: s, actions of a chunk executed before the next request; ``1 ≤ s ≤ H``.

    Raises:
        ConfigError: non-integer values or ``d > H − s`` (the old chunk would run out before the new one
            starts).
    """
    H = _int(horizon, "horizon", 1)
    d = _int(inference_delay, "inference_delay", 0)
    s = _int(execution_horizon, "execution_horizon", 1)
    if s > H:
        raise ConfigError(f"execution_horizon s={s} exceeds the chunk size H={H}")
    if d > H - s:
        raise ConfigError(
            f"inference_delay d={d} exceeds H - s = {H} - {s} = {H - s}: the previous chunk has only {H - s} "
            f"actions left when the request is made, so it would run out before the new chunk starts; "
            f"request earlier (smaller execution_horizon) or make inference faster"
        )
    i = np.arange(H, dtype=np.float64)  # (H,)
    c = (H - s - i) / (H - s - d + 1)  # (H,)
    decay = c * np.expm1(c) / (math.e - 1.0)  # (H,)
    return np.where(i < d, 1.0, np.where(i < H - s, decay, 0.0))  # (H,)


def guidance_weight(tau: float, max_guidance: float) -> float:
    """ΠGDM guidance weight at posevla flow time τ (1 = noise): ``min(β, τ / ((1 − τ)·r²))``, r² as above."""
    if tau >= 1.0:
        return float(max_guidance)
    r2 = tau * tau / (tau * tau + (1.0 - tau) ** 2)
    if r2 == 0.0:  # τ = 0: the chunk is data already; nothing left to guide
        return 0.0
    return float(min(max_guidance, tau / ((1.0 - tau) * r2)))


def _prefix_weights(weights: torch.Tensor | np.ndarray, B: int, H: int) -> torch.Tensor:
    w = torch.as_tensor(np.asarray(weights) if not isinstance(weights, torch.Tensor) else weights)
    if w.ndim == 1:
        w = w[None].expand(B, -1)  # (B, H)
    if tuple(w.shape) != (B, H):
        raise DataError(
            f"prefix_weights of shape {tuple(w.shape)}, expected ({H},) or ({B}, {H})",
            field="prefix_weights",
            fix="build them with soft_prefix_weights(H, inference_delay, execution_horizon)",
        )
    w = w.float()
    if not torch.isfinite(w).all() or bool((w < 0).any()):
        raise DataError("prefix_weights must be finite and >= 0", field="prefix_weights")
    return w


def sample_actions_rtc(
    model: PoseVLA,
    batch: dict[str, torch.Tensor],
    *,
    prefix_actions: torch.Tensor,
    prefix_weights: torch.Tensor | np.ndarray,
    noise: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    num_steps: int | None = None,
    max_guidance: float = 5.0,
    action_dim: int | None = None,
) -> torch.Tensor:
    """Sample an action chunk that continues `prefix_actions` where `prefix_weights` > 0; (B, H, A).

    Same integration as `PoseVLA.sample_actions` (τ = 1 → 0, `num_steps` Euler steps, prefix keys/values
    encoded once), plus the guidance of the module docstring at every step.

    Args:
        model: the policy model.
        batch: the prefix keys (`posevla.models.pose_vla`); ``batch["state"]`` is used when `state` is None.
        prefix_actions: (B, H, A_max) the frozen chunk Y, normalised, zero-padded (rows where the weight is 0
            and dims past `action_dim` are ignored).
        prefix_weights: (H,) or (B, H) soft mask W (:func:`soft_prefix_weights`).
        noise: (B, H, A_max) starting point x_1; drawn from N(0, I) when None.
        state: (B, Ds) robot state (unpadded or padded).
        num_steps: Euler steps (default ``cfg.num_inference_steps``).
        max_guidance: β, the cap of the guidance weight (the paper uses 5).
        action_dim: the first `action_dim` dims are real actions (guided and returned); default all.

    Raises:
        DataError: mis-shaped or non-finite prefix / weights / noise.
        ConfigError: a negative or non-finite `max_guidance`, or `num_steps` < 1.
    """
    cfg = model.cfg
    steps = cfg.num_inference_steps if num_steps is None else _int(num_steps, "num_steps", 1)
    if isinstance(max_guidance, bool) or not math.isfinite(float(max_guidance)) or float(max_guidance) < 0:
        raise ConfigError(f"max_guidance must be a finite number >= 0, got {max_guidance!r}")
    A_max, H = cfg.max_action_dim, cfg.chunk_size
    a_dim = A_max if action_dim is None else _int(action_dim, "action_dim", 1)
    if a_dim > A_max:
        raise ConfigError(f"action_dim={a_dim} exceeds the model's max_action_dim={A_max}")
    B = batch["input_ids"].shape[0]
    state = model._state(batch["state"] if state is None else state, B)  # (B, Ds_max)
    dtype, device = model.expert.dtype, model.expert.action_in_proj.weight.device
    shape = (B, H, A_max)
    if noise is None:
        noise = torch.randn(shape, device=device, dtype=dtype)
    elif tuple(noise.shape) != shape:
        raise DataError(f"noise of shape {tuple(noise.shape)}, expected {shape}", field="noise")
    if not isinstance(prefix_actions, torch.Tensor) or tuple(prefix_actions.shape) != shape:
        got = getattr(prefix_actions, "shape", type(prefix_actions).__name__)
        raise DataError(
            f"prefix_actions of shape {tuple(got)}, expected {shape} (normalised, zero-padded to H, A_max)",
            field="prefix_actions",
        )
    if not torch.isfinite(prefix_actions).all():
        raise DataError("prefix_actions holds NaN / inf", field="prefix_actions")
    w = _prefix_weights(prefix_weights, B, H).to(device)  # (B, H)
    dim_mask = (torch.arange(A_max, device=device) < a_dim).float()  # (A_max,)
    mask = w[:, :, None] * dim_mask[None, None, :]  # (B, H, A_max)
    y = prefix_actions.to(device=device, dtype=torch.float32)  # (B, H, A_max)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            prefix = model.encode_prefix(batch)
        x = noise.to(device=device, dtype=dtype)  # (B, H, A_max) at τ = 1
        dt = -1.0 / steps
        for k in range(steps):
            tau_f = 1.0 + k * dt
            tau = torch.full((B,), tau_f, dtype=torch.float32, device=device)  # (B,)
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)  # (B, H, A_max)
                v = model.expert.velocity(state, x_in, tau, prefix)  # (B, H, A_max)
                a_hat = x_in - tau_f * v  # (B, H, A_max) predicted clean chunk
                err = mask * (y - a_hat.float())  # (B, H, A_max)
                (g,) = torch.autograd.grad(a_hat, x_in, grad_outputs=err.to(a_hat.dtype))  # (B, H, A_max)
            weight = guidance_weight(tau_f, float(max_guidance))
            x = x + dt * (v.detach() - weight * g)  # (B, H, A_max)
    finally:
        model.train(was_training)
    x = x.detach()
    return x if action_dim is None else x[..., :a_dim]

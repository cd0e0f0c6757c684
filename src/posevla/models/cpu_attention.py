"""fp32 attention for bf16 training on CPUs: transformers' SDPA attention, upcast where its CPU kernel is slow.

Torch's CPU flash-attention kernel is 2-5x slower in bf16 than in fp32 on the shapes of our models (its backward
most; `posevla bench train` measures it), so under bf16 autocast with gradients on a CPU the attention of every
transformers attention module of a model installed here runs in fp32: its inputs are upcast, the kernel runs
outside autocast, the output is cast back to bf16. fp32 calls, inference (no gradients) and GPUs go to the
unchanged function. The route is a per-module forward pre-hook / forward hook pair that swaps transformers'
"sdpa" entry for the duration of that module's forward, so activation checkpointing's recomputation takes the
same route as the forward it repeats.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["FP32_ATTENTION_ON_CPU_BF16", "cpu_bf16_training_attention", "install_cpu_bf16_attention",
           "cpu_bf16_autocast"]


#: Run transformers' "sdpa" attention of CPU bf16 training calls in fp32 (`install_cpu_bf16_attention`); False
#: keeps SDPA's bf16 CPU kernel (slower, for comparison).
FP32_ATTENTION_ON_CPU_BF16 = True


def _dispatching_sdpa(original: Any) -> Any:
    """transformers' "sdpa" attention function `original`, run in fp32 for CPU bf16 calls with gradients."""

    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        bf16 = FP32_ATTENTION_ON_CPU_BF16 and query.device.type == "cpu" and torch.is_grad_enabled() and (
            torch.bfloat16 in (query.dtype, key.dtype, value.dtype) or cpu_bf16_autocast(query.device)
        )  # the cases where SDPA's CPU flash kernel would run in bf16
        if not bf16:
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()  # an additive mask in the queries' dtype
        with torch.autocast("cpu", enabled=False):
            out, weights = original(module, query.float(), key.float(), value.float(), attention_mask, *args,
                                    **kwargs)  # (B, S, heads, hd)
        return out.to(torch.bfloat16), weights

    return attention


_SWAP = threading.Lock()
_swap_depth = 0
_swap_saved: tuple[bool, Any] = (False, None)


def _swap_in(*_: Any) -> None:
    """Put the dispatching "sdpa" into transformers' attention table (nested calls count; forward pre-hook)."""
    global _swap_depth, _swap_saved
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as table

    with _SWAP:
        if _swap_depth == 0:
            _swap_saved = ("sdpa" in table._local_mapping, table._local_mapping.get("sdpa"))
            table["sdpa"] = _dispatching_sdpa(table["sdpa"])
        _swap_depth += 1


def _swap_out(*_: Any) -> None:
    """Undo `_swap_in` once; the table is as before when the outermost call leaves (forward hook)."""
    global _swap_depth
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as table

    with _SWAP:
        _swap_depth -= 1
        if _swap_depth == 0:
            had, before = _swap_saved
            if had:
                table["sdpa"] = before
            else:
                del table["sdpa"]


@contextlib.contextmanager
def cpu_bf16_training_attention(active: bool = True) -> Iterator[None]:
    """While active, transformers' "sdpa" attention of bf16 (or bf16-autocast) calls on the CPU with gradients runs
    in fp32: its inputs are upcast, SDPA's CPU flash kernel runs in fp32 outside autocast, the output is cast back to
    bf16.

    Why: that kernel is several times slower in bf16 than in fp32, its backward most (`posevla bench train`
    measures 2-5× per call on the tiny model's shapes), so fp32 attention is both faster and more precise than
    the bf16 one it replaces (the flash kernel keeps fp32 accumulators either way). Everything else (fp32 calls,
    no gradients, other devices) goes to the unchanged function, so only CPU bf16 training is touched. The swap
    is of transformers' process-wide attention table (its local entry for "sdpa"), restored on exit; calls of
    other models while it is active take the same route under the same conditions.
    """
    if not active:
        yield
        return
    _swap_in()
    try:
        yield
    finally:
        _swap_out()


def install_cpu_bf16_attention(model: nn.Module) -> None:
    """Route `model`'s attention through `cpu_bf16_training_attention`, per attention module (once each).

    Every transformers attention module of `model` (SigLIP's, Gemma's, the expert's) gets a forward pre-hook and
    an always-called forward hook that hold the swap for the duration of its own forward. Being module hooks,
    they also run when activation checkpointing recomputes a layer in the backward pass (the recompute restores
    the forward's autocast and grad mode), so the recomputed attention takes the route of the original and
    saves the same tensors. Other models in the process are untouched outside those calls.
    """
    for m in model.modules():
        if type(m).__name__.endswith("Attention") and not getattr(m, "_posevla_cpu_bf16_attention", False):
            m.register_forward_pre_hook(_swap_in)
            m.register_forward_hook(_swap_out, always_call=True)
            m._posevla_cpu_bf16_attention = True


def cpu_bf16_autocast(device: torch.device) -> bool:
    """True when bf16 autocast is on for `device`, a CPU, and gradients are enabled (the case of the swap)."""
    return (
        device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )

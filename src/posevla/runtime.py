"""What this process runs on: device and precision, decided once at the edge (trainer, evaluator, policy) and
logged with a reason, and the versions of the packages it runs with (written into checkpoints and eval cards)."""

from __future__ import annotations

import contextlib
import re
from functools import lru_cache

import torch

from posevla.errors import ConfigError


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where autocast is faster."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_device(device: str, flag: str = "--device") -> str:
    """`device` if it names a device posevla runs on (``auto``, ``cpu``, ``cuda``, ``cuda:N``), else a
    `ConfigError` naming `flag`; whether a GPU is there is decided later, where the model is placed."""
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device)):
        raise ConfigError(f"{flag} {device!r} is unknown; use auto, cpu, cuda or cuda:N")
    return device


def pick_device_and_precision(device: str = "auto", precision: str = "auto") -> tuple[torch.device, bool, str]:
    """(device, use_bf16_autocast, human-readable reason)."""
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no GPU; use --device cpu")
    dev = torch.device(device)
    if precision == "fp32":
        return dev, False, "fp32 requested"
    if precision not in ("auto", "bf16"):
        raise ConfigError(f"unknown precision '{precision}'; use auto, bf16 or fp32")
    if dev.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return dev, ok, "GPU supports bf16" if ok else "GPU lacks bf16, using fp32"
    if precision == "bf16":
        return dev, True, "bf16 requested"
    ok = cpu_has_bf16()
    return dev, ok, "CPU has AVX512-BF16/AMX" if ok else "CPU lacks native bf16, fp32 is faster"


def autocast_context(device: torch.device, use_bf16: bool):
    """bf16 autocast on `device` when `use_bf16`, else a no-op context."""
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def package_versions() -> dict[str, str]:
    """Installed versions of posevla and the packages its results depend on ("not installed" if absent)."""
    import importlib.metadata as md

    out = {}
    for name in ("posevla", "torch", "transformers", "mujoco", "numpy", "safetensors", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out

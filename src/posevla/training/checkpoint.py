"""Self-describing, atomically written checkpoints.

Layout of `<out_dir>/checkpoints/step_000500/`:
  model.safetensors      weights (tied embeddings stored once)
  optimizer.pt           optimizer + scheduler state
  trainer_state.json     step, data position, metrics of the last step
  rng.pt                 torch / numpy / python RNG states (for exact resume)
  config.json            the fully resolved TrainConfig + model config
  bins.json              the pose-token bin spec the model was trained with
  norm_stats.json        state / action normalisation statistics (post-training checkpoints only;
                         `posevla.data.normalize.load_norm_stats` reads and validates it)
  tokenizer/             the text tokenizer (pose tokens included)
  versions.json          package versions

A checkpoint is written under a temporary name and renamed into place; `checkpoints/latest` (a text
file naming the directory) is replaced atomically only after that rename, so killing the process at
any moment never leaves a corrupt "latest". No device is recorded anywhere.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from posevla.errors import CheckpointError

REQUIRED_FILES = ("model.safetensors", "trainer_state.json", "config.json", "bins.json")


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("posevla", "torch", "transformers", "mujoco", "numpy", "safetensors", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    config: dict[str, Any],
    bins_json: dict[str, Any],
    tokenizer,
    trainer_state: dict[str, Any],
    keep: int = 2,
    norm_stats: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `step` atomically and point `latest` at it; prune old ones beyond `keep`.

    `norm_stats` is the ``norm_stats.json`` document (`posevla.data.normalize.norm_stats_json`) of a model
    that reads a state / predicts actions; None for VLM-only stages.
    """
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Tied weights share storage; safetensors refuses shared tensors, so store each storage once.
    seen: dict[int, str] = {}
    aliases: dict[str, str] = {}
    unique: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.shape == unique[seen[ptr]].shape:
            aliases[k] = seen[ptr]
        else:
            seen[ptr] = k
            unique[k] = state[k]
    save_file(unique, str(tmp / "model.safetensors"), metadata={"aliases": json.dumps(aliases)})
    if optimizer is not None:
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None},
            tmp / "optimizer.pt",
        )
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2, default=str))
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (tmp / "bins.json").write_text(json.dumps(bins_json, indent=2))
    if norm_stats is not None:
        (tmp / "norm_stats.json").write_text(json.dumps(norm_stats, indent=2))
    (tmp / "versions.json").write_text(json.dumps(package_versions(), indent=2))
    tokenizer.save(tmp / "tokenizer")
    with open(tmp / "model.safetensors", "rb") as f:  # make sure the bytes are on disk before the rename
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_json_atomic(root / "latest.json", {"step": step, "dir": final.name})
    # prune
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from either itself, a `checkpoints/` folder or a run directory."""
    p = Path(path)
    for root in (p, p / "checkpoints"):
        latest = root / "latest.json"
        if latest.exists():
            try:
                name = json.loads(latest.read_text())["dir"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{latest} is unreadable ({e}); delete it and point at a step_* dir") from e
            return root / name
    if (p / "model.safetensors").exists():
        return p
    raise CheckpointError(
        f"no checkpoint at {p}: expected a step_* directory with model.safetensors, or a run directory "
        "with checkpoints/latest.json. Train first (`posevla train ...`) or pass the right path."
    )


def read_checkpoint_meta(ckpt: str | Path) -> dict[str, Any]:
    """config.json, bins.json and trainer_state.json of a checkpoint, validated."""
    d = resolve_checkpoint(ckpt)
    missing = [f for f in REQUIRED_FILES if not (d / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {d} is incomplete: missing {', '.join(missing)}; it cannot be used")
    out = {}
    for key, fname in (("config", "config.json"), ("bins", "bins.json"), ("trainer_state", "trainer_state.json")):
        try:
            out[key] = json.loads((d / fname).read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{d / fname} is not valid JSON ({e}); the checkpoint is corrupt") from e
    out["dir"] = d
    return out


def load_model_weights(model: torch.nn.Module, ckpt_dir: str | Path, *, strict: bool = True) -> None:
    """Load model.safetensors (with tied-weight aliases) into `model`."""
    d = resolve_checkpoint(ckpt_dir)
    from safetensors import safe_open

    path = d / "model.safetensors"
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path} cannot be read ({e}); the checkpoint is corrupt") from e
    for k, src in aliases.items():
        tensors[k] = tensors[src]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "was it written for another model size? Check config.json in the checkpoint."
        )


def load_training_state(ckpt_dir: str | Path, optimizer, scheduler) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG; return trainer_state.json."""
    d = resolve_checkpoint(ckpt_dir)
    try:
        opt = torch.load(d / "optimizer.pt", weights_only=False)
        rng = torch.load(d / "rng.pt", weights_only=False)
    except (FileNotFoundError, pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot resume from {d}: {e}") from e
    optimizer.load_state_dict(opt["optimizer"])
    if scheduler is not None and opt.get("scheduler") is not None:
        scheduler.load_state_dict(opt["scheduler"])
    set_rng_state(rng)
    return json.loads((d / "trainer_state.json").read_text())

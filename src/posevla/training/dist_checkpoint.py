"""Checkpoints of distributed runs: the same step_* folder, with the optimizer state sharded by
torch.distributed.checkpoint (DCP).

What a parallel run (``--parallel ddp|fsdp``) writes into ``checkpoints/step_N/``:

* ``model.safetensors``: the full weights, gathered to rank 0 (FSDP2: `get_model_state_dict` with
  ``full_state_dict``), tied weights stored once: exactly what a one-process run writes, so
  `posevla.training.checkpoint.load_checkpoint`, the policy, the server and the evaluators read it unchanged;
* ``optimizer/``: the AdamW state as a DCP checkpoint (``.metadata`` + one ``.distcp`` file per rank), keyed by
  parameter name, each rank writing its own shard (FSDP2) or rank 0 the replicated state (DDP);
* ``optimizer.pt``: the scheduler state and ``{"optimizer_dcp": "optimizer"}``; ``rng.pt``,
  ``trainer_state.json`` and the rest as in a one-process checkpoint, written by rank 0; the manifest covers
  the DCP files too.

Atomicity is the one-process checkpoint's: every rank writes under the temporary folder rank 0 named, rank 0
renames it into place once all ranks are done, and ``latest.json`` moves only after that (the trainer
promotes a checkpoint once the next loss is finite). A rank killed mid-write leaves a temporary folder that
the restarted run removes.

Resuming reads the optimizer state by parameter name (:func:`load_optimizer`), so a checkpoint resumes on
any world size and either wrapper: DCP reshards a 2-rank FSDP2 state onto 1 process or 4 ranks, and a
one-process ``optimizer.pt`` (kept by position) is renamed to parameter names first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posevla.errors import CheckpointError
from posevla.training.checkpoint import OPTIMIZER_DCP_DIR, _latest_name, _write_files
from posevla.training.distributed import DistContext
from posevla.training.integrity import write_manifest

__all__ = ["save_distributed_checkpoint", "load_optimizer", "tied_aliases", "unwrap"]


def unwrap(engine: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return getattr(engine, "module", engine)


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{name: first name}`` of every parameter registered under more than one name (tied embeddings)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _full_weights(engine: nn.Module, ctx: DistContext) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """(unique fp32 CPU tensors, aliases) of the whole model on rank 0; None on the other ranks.

    Collective under FSDP2 (every rank contributes its shards); a DDP replica is read on rank 0 alone.
    """
    model = unwrap(engine)
    if ctx.parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = model.state_dict() if ctx.is_main else {}
    if not ctx.is_main:
        return None
    aliases = tied_aliases(model)
    unique = {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in aliases}
    return unique, {k: v for k, v in aliases.items() if v in unique}


def save_distributed_checkpoint(
    out_dir: str | Path,
    step: int,
    *,
    engine: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ctx: DistContext,
    config: dict[str, Any],
    bins_json: dict[str, Any],
    tokenizer: Any,
    trainer_state: dict[str, Any],
    norm_stats: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `step` of a parallel run (module docstring), not yet `latest`. Call on every rank.

    Raises:
        CheckpointError: a write failed on some rank; nothing of the step is kept and the previous
            checkpoint stays `latest`.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = Path(ctx.broadcast(str(root / f".tmp_step_{step:07d}_{os.getpid()}") if ctx.is_main else None))
    error: str | None = None
    if ctx.is_main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        except OSError as e:
            error = f"{tmp}: {e.strerror or e}"
    error = ctx.broadcast(error)
    if error is None:
        weights = _full_weights(engine, ctx)
        try:
            dcp.save({"optimizer": get_optimizer_state_dict(unwrap(engine), optimizer)},
                     checkpoint_id=str(tmp / OPTIMIZER_DCP_DIR))
        except Exception as e:  # DCP wraps a rank's OSError in its own exception type
            error = f"{tmp / OPTIMIZER_DCP_DIR}: {e}"
        errors = [x for x in ctx.gather(error) if x]
        error = errors[0] if errors else None
    if error is None and ctx.is_main:
        try:
            _write_files(tmp, step, unwrap(engine), optimizer, scheduler, config, bins_json, tokenizer,
                         trainer_state, norm_stats, weights=weights)
            write_manifest(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as e:
            error = f"{tmp}: {e.strerror or e}"
    error = ctx.broadcast(error)
    if error is not None:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        prev = _latest_name(root)
        raise CheckpointError(
            f"could not write the checkpoint of step {step} ({error}); nothing was kept of it and "
            f"{'the previous checkpoint ' + prev + ' stays latest' if prev else 'no earlier checkpoint exists'}. "
            "Free disk space or fix the folder's permissions (every rank must see the same folder), then "
            "continue with --resume"
        )
    ctx.barrier()
    return final


def load_optimizer(engine: nn.Module | None, optimizer: torch.optim.Optimizer, ckpt: Path, saved: Any) -> None:
    """Restore the optimizer state of checkpoint `ckpt` (``saved`` = its optimizer.pt) onto `optimizer`.

    `engine` is the module the optimizer steps (plain, DDP or FSDP2). A DCP state is loaded by parameter
    name and resharded to this run; a one-process state (by position) loads directly into a plain or DDP
    model and is renamed to parameter names for FSDP2.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    if "optimizer_dcp" not in saved:
        if engine is None or not _is_fsdp(engine):
            optimizer.load_state_dict(saved["optimizer"])
            return
        full = _by_name(unwrap(engine), optimizer, saved["optimizer"])
        set_optimizer_state_dict(unwrap(engine), optimizer, full, options=StateDictOptions(full_state_dict=True))
        return
    if engine is None:
        raise CheckpointError(f"{ckpt} holds a sharded optimizer state ({saved['optimizer_dcp']}/): resuming it "
                              "needs the model (load_training_state(..., model=...))")
    path = ckpt / str(saved["optimizer_dcp"])
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path}/.metadata is missing: the sharded optimizer state of {ckpt} is incomplete; "
                              "resume from another checkpoint or start a new run")
    model = unwrap(engine)
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # the template: this run's shapes, shards
    dcp.load(state, checkpoint_id=str(path))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def _is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(module), FSDPModule)


def _by_name(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """A positional optimizer state_dict (``torch.optim`` layout) keyed by parameter names instead."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    groups = []
    for g_saved, g in zip(saved["param_groups"], optimizer.param_groups, strict=True):
        groups.append({**{k: v for k, v in g_saved.items() if k != "params"},
                       "params": [order[i] for i in g_saved["params"]]})
    return {"state": {order[int(i)]: s for i, s in saved["state"].items()}, "param_groups": groups}

"""Multi-process training on PyTorch's own engine: torchrun ranks, DDP or FSDP2, and the global batch.

``torchrun --nproc_per_node N -m posevla.cli train CONFIG --parallel ddp|fsdp`` starts N copies of the one
training loop (`posevla.training.trainer`); this module is what they share:

* :func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins the process
  group (NCCL on GPUs, gloo on CPUs) and picks this rank's device (``cuda:LOCAL_RANK``).
* :func:`wrap` makes the model data-parallel: ``ddp`` = `DistributedDataParallel` (a full replica per rank,
  gradients all-reduced); ``fsdp`` = FSDP2 `fully_shard` on every transformer layer (SigLIP encoder layers,
  Gemma decoder layers, the expert's layers) and then on the whole model, with a bf16-compute / fp32-reduce
  mixed-precision policy under bf16; optional activation checkpointing per layer.
* The **global batch** (``--batch-size``) is split into contiguous row ranges (:func:`batch_rows`); each
  rank builds only its rows with the same pure function of (seed, step) as one process (`RankShare`), so
  N ranks train on exactly the batches one process would.
* Losses are means over a varying number of terms (answer tokens, valid action entries). :func:`global_mean`
  weights each rank's mean by its count, so the logged loss and the gradient are those of the global
  batch, not a mean of per-rank means.

Nothing here is home-made communication: collectives are `torch.distributed`'s, the wrappers torch's own.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from posevla.errors import ConfigError

__all__ = [
    "DistContext",
    "setup",
    "shutdown",
    "wrap",
    "batch_rows",
    "RankShare",
    "global_mean",
    "all_finite",
    "transformer_layers",
    "restart_count",
]


@dataclasses.dataclass(frozen=True)
class DistContext:
    """This process's place in a run: rank, world size, local rank and how the model is parallelised."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    parallel: str = "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, writes metrics and the checkpoint's plain files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when the model is wrapped (``ddp`` / ``fsdp``), even on one rank."""
        return self.parallel != "none"

    def barrier(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a picklable Python object)."""
        if not (dist.is_available() and dist.is_initialized()) or self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the ranks (a new tensor on `t`'s device; the collective runs on the backend's)."""
        buf = t.to(_comm_device(t), copy=True)
        dist.all_reduce(buf)
        return buf.to(t.device)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not (dist.is_available() and dist.is_initialized()) or self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def restart_count() -> int:
    """How often torchrun restarted this run's workers (``--max-restarts``); 0 outside torchrun."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def setup(parallel: str, device: torch.device, batch_size: int) -> tuple[DistContext, torch.device]:
    """Join torchrun's process group when the run is parallel; return the context and this rank's device.

    Raises:
        ConfigError: several ranks without ``--parallel``, or a global batch that does not divide by them.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and parallel == "none":
        raise ConfigError(
            f"this process is rank {rank} of {world} (torchrun) but --parallel is 'none'; pass --parallel ddp "
            "(a replica per rank) or --parallel fsdp (sharded), or start one process without torchrun"
        )
    if batch_size % world:
        raise ConfigError(
            f"--batch-size {batch_size} (the global batch) does not divide by the {world} ranks; pass a multiple "
            f"of {world}, e.g. {batch_size + world - batch_size % world}"
        )
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, parallel=parallel)
    if parallel == "none":
        return ctx, device
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:  # one process, --parallel given: a group of one
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=30)
        store, rank, world = next(dist.rendezvous("env://", rank, world, timeout=timeout))
        # torchrun keeps its store across restarts (--max-restarts): without a per-attempt prefix the
        # restarted ranks can read the dead ranks' addresses and never connect
        store = dist.PrefixStore(f"posevla/attempt_{restart_count()}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return ctx, device


def shutdown() -> None:
    """Leave the process group (the end of a parallel run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the model ------------------------------------------------------------------------------------------------


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks (SigLIP encoder layers, Gemma decoder layers, the expert's layers):
    the units FSDP2 shards and activation checkpointing recomputes."""
    return [m for m in model.modules() if type(m).__name__.endswith(("EncoderLayer", "DecoderLayer"))]


def wrap(
    model: nn.Module,
    ctx: DistContext,
    device: torch.device,
    *,
    use_bf16: bool,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """The module the loop calls: `model` itself, a DDP replica, or `model` sharded in place by FSDP2.

    Activation checkpointing (torch's composable ``checkpoint``) applies to each transformer layer whose
    forward does not write a key/value cache (the VLM's layers in post-training hand their keys/values to
    the expert, and a recomputed forward would write them twice).
    """
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        writers = {id(m) for m in _cache_writers(model)}
        for layer in transformer_layers(model):
            if id(layer) not in writers:
                checkpoint(layer)
    if ctx.parallel == "none":
        return model
    if ctx.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # post-training leaves the VLM's last MLP and its LM head without gradient (the expert reads keys and
        # values only), so DDP must look for unused parameters
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    if ctx.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if use_bf16 else None
        kw: dict[str, Any] = {} if mp is None else {"mp_policy": mp}
        writers = {id(m) for m in _cache_writers(model)}
        for layer in transformer_layers(model):
            # a layer whose keys/values the expert reads stays gathered from its forward to its backward: its
            # output may feed nothing (the last one), so no pre-backward hook would gather it again
            fully_shard(layer, reshard_after_forward=id(layer) not in writers, **kw)
        fully_shard(model, **kw)
        return model
    raise ConfigError(f"--parallel {ctx.parallel!r} is unknown; use none, ddp or fsdp")


def _cache_writers(model: nn.Module) -> list[nn.Module]:
    """Post-training's VLM decoder layers: they write the prefix keys/values into a cache the expert reads,
    so a forward recomputed in the backward pass would append them twice (they are not checkpointed; the
    SigLIP layers, the expert's layers and every stage-1/2 layer are)."""
    vlm = getattr(model, "vlm", None)
    if vlm is None or not hasattr(model, "expert"):
        return []
    return [m for m in vlm.modules() if type(m).__name__.endswith("DecoderLayer")]


# -- the global batch -------------------------------------------------------------------------------------------


def batch_rows(batch_size: int, ctx: DistContext) -> tuple[int, int]:
    """The contiguous rows [lo, hi) of the global batch this rank trains on."""
    per = batch_size // ctx.world_size
    return ctx.rank * per, (ctx.rank + 1) * per


@dataclasses.dataclass
class RankShare:
    """``make_batch(step)`` of one rank: rows [lo, hi) of the global batch, built alone (picklable, so loader
    workers can run it). The batch functions take ``rows=(lo, hi)`` and build only those examples."""

    make_batch: Callable[..., dict[str, torch.Tensor]]
    lo: int
    hi: int

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        return self.make_batch(step, rows=(self.lo, self.hi))


def global_mean(value: torch.Tensor, count: torch.Tensor, ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over the global batch, its total count) from this rank's mean `value` over `count` terms.

    The result is detached and identical on every rank; one process returns `value` itself.
    """
    if ctx.world_size == 1:
        return value.detach(), count
    buf = torch.stack([value.detach().double() * count.double(), count.double()]).to(_comm_device(value))
    dist.all_reduce(buf)
    return (buf[0] / buf[1]).to(value.dtype).to(value.device), buf[1].to(count.device)


def all_finite(params: Iterator[torch.Tensor] | list[torch.Tensor], ctx: DistContext) -> bool:
    """True when every rank's (shard of every) parameter is finite."""
    ok = all(bool(torch.isfinite(_local(p)).all()) for p in params)
    if ctx.world_size == 1 or not dist.is_initialized():
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=_comm_device(None))
    dist.all_reduce(flag)
    return float(flag.item()) == 0.0


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _comm_device(t: torch.Tensor | None) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if t is None else t.device

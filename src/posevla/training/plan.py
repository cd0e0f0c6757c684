"""``posevla plan``: what a training config costs per GPU (memory, tokens) before it runs, from the config alone.

:func:`memory_plan` adds, per GPU:

* **parameters**: the stored weights (fp32 under ``bf16`` mixed precision: they are the master weights the
  optimizer updates) and the bf16 *working copies* the forward computes with. Single process / DDP run under
  ``torch.autocast``: it casts every matmul weight to bf16 once per step and the copies stay saved for the
  backward (2 B per parameter). FSDP2 (`posevla.training.distributed.wrap`: ``MixedPrecisionPolicy(bf16, fp32)``)
  all-gathers bf16 copies per layer instead: the root module's (embeddings, projector, priors, the expert's
  projections) for the whole step, two layers at a time (the one computing and the one prefetched), and in
  post-training every Gemma layer of the VLM (they stay gathered from forward to backward: the expert reads
  their keys and values).
* **gradients**: fp32 like the stored weights (FSDP: a shard, plus the fp32 reduce-scatter buffers of the root
  and of one layer).
* **optimizer**: AdamW's two moments, fp32 (``exp_avg``, ``exp_avg_sq``; 8 B per parameter, sharded under FSDP),
  plus the step's temporaries: none for the fused kernel (``fused_adamw``), one fp32 parameter-sized buffer for
  torch's multi-tensor (``foreach``) step on GPUs, one tensor of the largest parameter for its per-tensor loop on
  CPUs.
* **activations**: the tensors the forward saves for the backward, at the per-GPU batch and the config's
  sequence: prefix = image tokens × views + the text prompt, + the answer (token objective) or + the expert's
  ``1 + H`` tokens attending to the prefix (action objective). Per layer type the bytes per token were taken
  from what torch's autograd saves for transformers' SigLIP / Gemma layers with SDPA attention (coefficients
  below, e.g. a Gemma layer saves 4 MLP-wide tensors per token); plus the attention masks, the vision inputs,
  and the LM head's fp32 logits over the answer tokens with their cross-entropy buffers (3 × 4 B per answer
  token and vocabulary entry). With activation checkpointing a recomputed layer
  saves only its input, and one layer's activations exist again while it is recomputed.

The total is params + grads + optimizer + activations: an upper bound of a step's peak (in the backward,
gradients grow while activations are freed, so the measured peak lies somewhat below it; ``tests/test_plan.py``
checks it against the measured peak of real CPU steps). FSDP divides parameters, gradients and optimizer
states by the number of GPUs; DDP replicates them.

Precisions: ``fp32``; ``bf16`` (the trainer's mixed precision, as above; the default, as ``auto`` is on GPUs);
``bf16-pure`` (the model cast to bf16, ``model.to(torch.bfloat16)``: bf16 weights, gradients and moments, no
master copy, no working copies; not what the trainer does, but what a bare bf16 forward + backward costs).
"""

from __future__ import annotations

import dataclasses
import math

from posevla.data.collate import ExampleSpec
from posevla.errors import ConfigError, check_int
from posevla.models.config import ActionExpertConfig, PoseVLMConfig, get_expert_config
from posevla.models.counts import ParamCounts, analytic_counts, layer_params
from posevla.tokens import BinCounts
from posevla.training.config import TrainConfig

__all__ = ["DEFAULT_ANSWER_TOKENS", "PRECISIONS", "MemoryPlan", "memory_plan", "model_configs", "model_memory_plan"]

#: Answer tokens of the token objective when not given: a 3-view answer of about 5 objects per view (16 tokens
#: each: name, 4 ``<loc>``, 3 translation, 3 size, 3 rotation, ``;``) or a bimanual stage-2 plan (5 waypoints
#: per arm, ≈ 247 tokens), rounded up.
DEFAULT_ANSWER_TOKENS = 256
PRECISIONS = ("fp32", "bf16", "bf16-pure")
GB = 1e9

# Saved-for-backward tensors per token and layer, as multiples of a width: (fp32 tensors ×width, compute-dtype
# tensors ×width, ...). Modes: "fp32"; "autocast" (fp32 weights and residual stream, bf16 matmuls); "bf16"
# (bf16 weights: FSDP's mixed precision and bf16-pure). Read off torch.autograd.graph.saved_tensors_hooks over
# transformers' layers (SDPA, one logsumexp per head and query instead of the attention matrix).
# Gemma decoder layer: (fp32 ×h, ×h, ×q-width, ×kv-width, ×mlp) -- norms keep fp32 copies, MLP saves 4 tensors.
_GEMMA = {"fp32": (0, 6, 2, 2, 4), "autocast": (4, 5, 3, 1, 4), "bf16": (4, 2, 2, 2, 4)}
# Expert layer: (fp32 ×h, ×h, ×q-width, ×mlp) per suffix token, + 2 head-expanded key/value tensors over all keys.
_EXPERT = {"fp32": (0, 6, 2, 4), "autocast": (4, 2, 2, 4), "bf16": (4, 2, 2, 4)}
# SigLIP encoder layer: (fp32 ×v, ×v, ×mlp): q, k, v, attention out, 2 LayerNorm in/out, fc1 out, GELU out.
_SIGLIP = {"fp32": (0, 8, 2), "autocast": (2, 8, 2), "bf16": (0, 8, 2)}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory of one training step of a config (module docstring); bytes are per GPU."""

    config: str
    gpus: int
    parallel: str
    precision: str
    activation_checkpointing: bool
    per_gpu_batch: int
    global_batch: int
    params: int
    """Parameters of the whole model."""
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    tokens_per_step: int
    """Tokens through the language model (and the expert) per optimizer step, all GPUs together."""
    sequence: dict[str, int]
    """Per sample: image tokens, prompt, answer / expert tokens, the LM's sequence and the expert's keys."""
    breakdown: dict[str, int]
    """Activation bytes per GPU by part."""
    notes: tuple[str, ...] = ()
    gpu_mem_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.activations_bytes

    @property
    def fits(self) -> bool | None:
        """Whether the total fits in ``gpu_mem_bytes`` (None when no GPU memory was given)."""
        return None if self.gpu_mem_bytes is None else self.total_bytes <= self.gpu_mem_bytes

    def table(self) -> str:
        """The plan as markdown: the setting, the memory per GPU by kind, the activation parts, the verdict."""
        s = self.sequence
        seq = " + ".join(f"{v:,} {k}" for k, v in s.items() if k not in ("lm_sequence", "expert_keys"))
        head = [
            (f"**{self.config}**: {self.gpus} GPU(s), {self.parallel}, {self.precision}, activation checkpointing "
             f"{'on' if self.activation_checkpointing else 'off'}; global batch {self.global_batch} = "
             f"{self.per_gpu_batch} per GPU; {self.params:,} parameters"),
            f"per sample: {seq} (LM sequence {s['lm_sequence']:,}); {self.tokens_per_step:,} tokens per step",
            "",
            "| per GPU | GB |",
            "|---|---:|",
        ]
        rows = [("parameters", self.params_bytes), ("gradients", self.grads_bytes),
                ("optimizer (AdamW)", self.optimizer_bytes), ("activations", self.activations_bytes)]
        rows += [(f"↳ {k}", v) for k, v in self.breakdown.items()]  # the parts of the activations
        body = [f"| {k} | {v / GB:,.2f} |" for k, v in rows]
        body.append(f"| **total** | **{self.total_bytes / GB:,.2f}** |")
        tail = [""] + [f"- {n}" for n in self.notes]
        if self.gpu_mem_bytes is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            tail.append(f"- **{verdict}** in {self.gpu_mem_bytes / GB:g} GB per GPU "
                        f"({100 * self.total_bytes / self.gpu_mem_bytes:.0f} % used)")
        return "\n".join(head + body + tail)


def model_configs(cfg: TrainConfig) -> tuple[PoseVLMConfig, ActionExpertConfig | None]:
    """The architecture a new run of `cfg` builds: the VLM, and the expert of the action objective."""
    mcfg = cfg.model.resolve()
    ecfg = get_expert_config(cfg.expert, chunk_size=cfg.action.chunk_size) if cfg.objective == "actions" else None
    return mcfg, ecfg


def memory_plan(
    cfg: TrainConfig,
    *,
    gpus: int = 1,
    parallel: str | None = None,
    activation_checkpointing: bool | None = None,
    batch_per_gpu: int | None = None,
    precision: str | None = None,
    answer_tokens: int | None = None,
    device: str = "cuda",
    gpu_mem_gb: float | None = None,
) -> MemoryPlan:
    """The per-GPU memory plan of one training step of `cfg` (module docstring for what is counted).

    Args:
        cfg: the training config (its global ``batch_size``, model, expert, action chunk, precision, ...).
        gpus: GPUs (ranks) of the run.
        parallel: ``none`` | ``ddp`` | ``fsdp`` (default: the config's; ``none`` needs ``gpus == 1``).
        activation_checkpointing: default: the config's.
        batch_per_gpu: samples per GPU (default: ``cfg.batch_size / gpus``, which must divide).
        precision: ``fp32`` | ``bf16`` | ``bf16-pure`` (default: the config's; ``auto`` plans ``bf16``).
        answer_tokens: answer length of the token objective (default `DEFAULT_ANSWER_TOKENS`).
        device: ``cuda`` or ``cpu``: which AdamW step temporaries to plan (multi-tensor vs per-tensor loop).
        gpu_mem_gb: memory per GPU to check the total against.

    Raises:
        ConfigError: naming the flag, the value expected and the fix.
    """
    gpus = check_int(gpus, "--gpus", lo=1)
    par = cfg.parallel if parallel is None else parallel
    if par not in ("none", "ddp", "fsdp"):
        raise ConfigError(f"--parallel {par!r} is unknown; use none, ddp or fsdp")
    if par == "none" and gpus > 1:
        raise ConfigError(f"--gpus {gpus} with --parallel none: one process trains on one GPU; pass --parallel "
                          "fsdp (shards the model) or ddp (a replica per GPU), or --gpus 1")
    prec = (cfg.precision if precision is None else precision).replace("auto", "bf16")
    if prec not in PRECISIONS:
        raise ConfigError(f"--precision {prec!r} is unknown; use one of {', '.join(PRECISIONS)}")
    ckpt = cfg.activation_checkpointing if activation_checkpointing is None else bool(activation_checkpointing)
    if batch_per_gpu is None:
        if cfg.batch_size % gpus:
            near = [g for g in range(2, min(cfg.batch_size, 64) + 1) if cfg.batch_size % g == 0]
            raise ConfigError(
                f"--batch-size {cfg.batch_size} (the global batch) is not divisible by --gpus {gpus}: the batch is "
                f"split evenly over the GPUs. Pass a --batch-size that is a multiple of {gpus} (e.g. "
                f"{gpus * max(1, cfg.batch_size // gpus)}), or --gpus that divides {cfg.batch_size} "
                f"({', '.join(map(str, near)) or 'only 1'}), or give --batch-per-gpu")
        b = cfg.batch_size // gpus
    else:
        b = check_int(batch_per_gpu, "--batch-per-gpu", lo=1)
    mcfg, ecfg = model_configs(cfg)
    return model_memory_plan(mcfg, ecfg, cfg.bins, name=cfg.name, gpus=gpus, parallel=par, precision=prec,
                             activation_checkpointing=ckpt, batch_per_gpu=b, answer_tokens=answer_tokens,
                             fused_adamw=cfg.fused_adamw, priors=cfg.objective == "tokens" or cfg.action.priors,
                             device=device, gpu_mem_gb=gpu_mem_gb)


def model_memory_plan(
    mcfg: PoseVLMConfig,
    ecfg: ActionExpertConfig | None,
    bins: BinCounts | None = None,
    *,
    name: str = "custom",
    gpus: int = 1,
    parallel: str = "none",
    precision: str = "bf16",
    activation_checkpointing: bool = False,
    batch_per_gpu: int = 1,
    answer_tokens: int | None = None,
    fused_adamw: bool = False,
    priors: bool = True,
    device: str = "cuda",
    gpu_mem_gb: float | None = None,
) -> MemoryPlan:
    """:func:`memory_plan` for model configs (any architecture, not only the named sizes); `ecfg` None = the
    token objective (the VLM alone), else post-training with that expert; `bins`: the pose-token counts (default:
    the paper's); `priors`: the batches carry the depth
    and ray maps (post-training with ``--action.priors false`` does not: its embedders see one zero map)."""
    gpus, b = check_int(gpus, "--gpus", lo=1), check_int(batch_per_gpu, "--batch-per-gpu", lo=1)
    par, prec, ckpt = parallel, precision, bool(activation_checkpointing)
    if par not in ("none", "ddp", "fsdp") or prec not in PRECISIONS:
        raise ConfigError(f"parallel {par!r} / precision {prec!r}: use none|ddp|fsdp and {'|'.join(PRECISIONS)}")
    n_ans = DEFAULT_ANSWER_TOKENS if answer_tokens is None else check_int(answer_tokens, "--answer-tokens", lo=1)
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"device {device!r} is unknown; plan for 'cuda' or 'cpu'")

    counts = analytic_counts(mcfg, ecfg, BinCounts() if bins is None else bins)
    P = counts.total
    spec = ExampleSpec.from_model(mcfg)
    fsdp = par == "fsdp"
    shard = gpus if fsdp else 1
    # compute mode of the activations: autocast over fp32 weights, or bf16 weights (FSDP's policy, bf16-pure)
    mode = "fp32" if prec == "fp32" else ("autocast" if prec == "bf16" and not fsdp else "bf16")
    w_bytes = 2 if prec == "bf16-pure" else 4  # stored weights / gradients / moments

    # -- parameters, gradients, optimizer ----------------------------------------------------------------------
    notes: list[str] = []
    actions = ecfg is not None
    emb = counts.embedding_rows * mcfg.text_hidden
    layers = layer_params(mcfg, ecfg)
    root = P - sum(n * k for n, k in layers.values())  # parameters outside the transformer layers
    biggest_layer = max(n for n, _ in layers.values())
    stored = w_bytes * math.ceil(P / shard)
    copies = 0
    if prec == "bf16" and not fsdp:
        copies = 2 * (P - emb if actions else P)  # every matmul weight; the tied embedding only as the LM head
        notes.append("bf16 autocast over fp32 weights: fp32 master weights (updated by AdamW) + a bf16 copy of "
                     "every matmul weight, cast once per step and saved for the backward")
    elif prec == "bf16":
        gathered = root + 2 * biggest_layer + (layers["gemma"][0] * mcfg.text_layers if actions else 0)
        copies = 2 * gathered
        notes.append("FSDP2 bf16 mixed precision: fp32 master shards; bf16 all-gathered copies of the root "
                     "(embeddings, projector, priors, projections) and of two layers at a time"
                     + (", and of every VLM layer in post-training (the expert reads their keys/values)" if actions
                        else ""))
    elif prec == "bf16-pure":
        notes.append("bf16-pure: the model cast to bf16 (weights, gradients and AdamW moments in bf16, no master "
                     "copy)")
    params_bytes = stored + copies
    grads_bytes = w_bytes * math.ceil(P / shard)
    if par == "ddp":
        grads_bytes *= 2
        notes.append("DDP: its all-reduce buckets hold a second copy of the gradients")
    if fsdp:
        grads_bytes += 4 * (root + biggest_layer)  # fp32 reduce-scatter inputs of the root and of one layer
    optimizer_bytes = 2 * w_bytes * math.ceil(P / shard)
    if not fused_adamw:
        largest = max(emb, *(n for n, _ in layers.values()))
        optimizer_bytes += w_bytes * (math.ceil(P / shard) if device == "cuda" else math.ceil(largest / shard))
    opt = "fused" if fused_adamw else ("multi-tensor" if device == "cuda" else "per-tensor")
    notes.append(f"AdamW ({opt} step): 2 moments ({'bf16' if w_bytes == 2 else 'fp32'}) per parameter"
                 + (f", sharded over {gpus} GPUs (FSDP)" if fsdp else (f", replicated on {gpus} GPUs (DDP)"
                                                                     if par == "ddp" else "")))

    # -- activations -----------------------------------------------------------------------------------------
    seq = _sequence(mcfg, ecfg, spec, n_ans)
    acts = _activations(mcfg, ecfg, counts, b, seq, mode, ckpt, priors)
    lm_tokens = seq["lm_sequence"] + (seq.get("expert tokens", 0))
    if ckpt:
        notes.append("activation checkpointing: SigLIP, " + ("expert" if actions else "Gemma") + " layers "
                     "recomputed in the backward" + (" (the VLM's Gemma layers are not: the expert reads their "
                                                     "keys/values)" if actions else ""))
    return MemoryPlan(
        config=name, gpus=gpus, parallel=par, precision=prec, activation_checkpointing=ckpt, per_gpu_batch=b,
        global_batch=b * gpus, params=P, params_bytes=params_bytes, grads_bytes=grads_bytes,
        optimizer_bytes=optimizer_bytes, activations_bytes=sum(acts.values()), tokens_per_step=b * gpus * lm_tokens,
        sequence=seq, breakdown=acts, notes=tuple(notes),
        gpu_mem_bytes=None if gpu_mem_gb is None else int(gpu_mem_gb * GB),
    )


# -- pieces ------------------------------------------------------------------------------------------------


def _sequence(mcfg: PoseVLMConfig, ecfg: ActionExpertConfig | None, spec: ExampleSpec, n_ans: int) -> dict[str, int]:
    """Tokens per sample: image tokens (all views), prompt, answer or expert suffix, the LM's and expert's lengths."""
    img = spec.n_image_tokens * spec.num_views
    seq = {"image tokens": img, "prompt tokens": spec.prompt_len}
    if ecfg is None:
        seq["answer tokens"] = n_ans
        seq["lm_sequence"] = img + spec.prompt_len + n_ans
    else:
        seq["expert tokens"] = 1 + ecfg.chunk_size
        seq["lm_sequence"] = img + spec.prompt_len
        seq["expert_keys"] = img + spec.prompt_len + 1 + ecfg.chunk_size
    return seq


def _activations(mcfg: PoseVLMConfig, ecfg: ActionExpertConfig | None, counts: ParamCounts, b: int,
                 seq: dict[str, int], mode: str, ckpt: bool, priors: bool) -> dict[str, int]:
    """Saved-for-backward bytes per GPU by part (+ the LM head's transient buffers); see the coefficient tables."""
    a = 4 if mode == "fp32" else 2  # compute dtype
    r = 2 if mode == "bf16" else 4  # residual stream (the layers' inputs)
    m = mcfg
    L = seq["lm_sequence"]
    n_img = b * m.num_views
    Tv, T = n_img * m.tokens_per_view, b * L  # vision tokens, LM tokens

    f32, cv, cm = _SIGLIP[mode]
    siglip_layer = Tv * (4 * f32 * m.vision_hidden + a * (cv * m.vision_hidden + cm * m.vision_mlp))
    siglip_layer += 4 * n_img * m.vision_heads * m.tokens_per_view  # logsumexp
    f32, ch, cq, ckv, cmlp = _GEMMA[mode]
    hq, hkv = m.text_heads * m.head_dim, m.text_kv_heads * m.head_dim
    gemma_layer = T * (4 * f32 * m.text_hidden + a * (ch * m.text_hidden + cq * hq + ckv * hkv + cmlp * m.text_mlp))
    gemma_layer += a * b * L * L + 4 * b * m.text_heads * L + 8 * T  # mask, logsumexp, RMSNorm statistics
    out: dict[str, int] = {}
    ckpt_vlm = ckpt and ecfg is None  # post-training's VLM layers write the expert's keys/values: not recomputed
    out["vision (SigLIP layers)"] = m.vision_layers * (Tv * m.vision_hidden * r if ckpt else siglip_layer)
    if m.use_priors and priors:  # per prior: the patches, fc1 out, GELU out, fc2 out
        p2 = m.patch_size**2
        out["prior embedders"] = a * Tv * ((2 + 3) * p2 + 2 * 9 * m.vision_hidden)
    out["Gemma layers"] = m.text_layers * (T * m.text_hidden * r if ckpt_vlm else gemma_layer)
    recompute = [siglip_layer if ckpt else 0, gemma_layer if ckpt_vlm else 0]
    # vision inputs (saved for the patch convolution's weight gradient), embeddings, projector, final norm
    misc = a * n_img * 3 * m.image_size**2 + Tv * m.vision_hidden * (4 + a) + 2 * r * T * m.text_hidden
    if ecfg is None:
        n = b * seq["answer tokens"]
        V = counts.embedding_rows
        # fp32 logits over the answer tokens: the log-softmax saved for the backward and two more (n, V) fp32
        # buffers at the end of the forward (the logits, the metrics' cross-entropy) / the start of the backward
        # (the gradients of the log-softmax and of the logits)
        out["LM head (logits, CE)"] = 3 * 4 * n * V + a * n * m.text_hidden
    else:
        e = ecfg
        S, K = seq["expert tokens"], seq["expert_keys"]
        Te = b * S
        f32, ch, cq, cmlp = _EXPERT[mode]
        expert_layer = Te * (4 * f32 * e.hidden + a * (ch * e.hidden + cq * e.heads * e.head_dim + cmlp * e.mlp))
        expert_layer += a * 2 * b * e.heads * K * e.head_dim + 4 * b * e.heads * S + 8 * Te
        out["expert layers"] = e.layers * (Te * e.hidden * r if ckpt else expert_layer)
        recompute.append(expert_layer if ckpt else 0)
        misc += a * b * S * K + 4 * Te * e.hidden  # the suffix mask, the suffix embedding
    out["inputs, embeddings, masks"] = misc
    if ckpt:
        out["recomputed layer (backward)"] = max(recompute)
    return {k: int(v) for k, v in out.items()}

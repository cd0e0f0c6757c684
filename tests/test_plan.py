"""`posevla plan` / `memory_plan`: the estimate against the measured peak of real CPU training steps, the
sharding arithmetic, the errors and the CLI.

**How the peak is measured.** Each case runs in a fresh subprocess (one for all cases, to pay the imports
once): build the model with the factory and a fake batch (`PoseVLMConfig.fake_batch` /
`ActionExpertConfig.fake_batch`), run one full AdamW step (forward, backward, grad-clip, step) so the moments
exist, then profile a second step with torch's profiler (``profile_memory=True``) and take the peak of the running
sum of the CPU allocator's allocation and free events, on top of the bytes that are live at its start (weights,
gradients, moments: counted from the tensors). That is the peak of live tensor bytes, what the plan estimates.
``ru_maxrss`` is not used: it is a high-water mark of the whole process (the first step already sets it, so a
second step's growth reads as ~0), and it counts the allocator's cached and fragmented pages, the Python heap and
the libraries, not tensors.

The tiny sizes are dominated by their activations too, but their widths are far from the paper's; the "mid" size
(224 px views, SigLIP 256 wide, Gemma 384 wide with an 8× MLP as Gemma-2B's) checks the same formulas at more
realistic proportions. The plan's total is an upper bound (gradients and activations are counted as if they
coexisted), so the measured peak should be at most a little above it and not far below.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from posevla.cli import main
from posevla.errors import ConfigError
from posevla.models.config import get_expert_config, get_model_config
from posevla.tokens import BinCounts
from posevla.training.configs import get_config
from posevla.training.plan import memory_plan, model_memory_plan

torch.set_num_threads(1)

TINY_BINS = {"loc": 128, "trans_xy": 64, "trans_z": 64, "size": 64, "rot": 72}
#: A size between tiny and the paper's: 3 × 256 image tokens, Gemma 384 wide with an 8× MLP (Gemma-2B's ratio).
MID = dict(vision_hidden=256, vision_heads=4, vision_mlp=1024, vision_layers=4, text_hidden=384, text_heads=6,
           head_dim=64, text_mlp=3072, projection_dim=384, text_layers=6, pose_tags=False, image_size=224,
           patch_size=14, prompt_len=40)
MID_EXPERT = dict(hidden=192, mlp=768, heads=6, head_dim=64, layers=6)
CASES = [
    dict(name="tiny-tokens-fp32", model="tiny", bins=TINY_BINS, batch=8, precision="fp32"),
    dict(name="tiny-tokens-bf16", model="tiny", bins=TINY_BINS, batch=8, precision="bf16"),
    # the paper's token counts: 8,111 vocabulary rows, so the LM head's logits weigh as at paper size
    dict(name="tiny-tokens-bf16-vocab8k", model="tiny", bins={}, batch=8, precision="bf16"),
    dict(name="tiny-actions-bf16", model="tiny", expert="tiny", bins=TINY_BINS, batch=8, precision="bf16"),
    # checkpointing in fp32: under CPU bf16 the recomputed expert layers fail torch's checkpoint metadata check
    # (PoseVLA's CPU bf16 attention swap is active in the forward only)
    dict(name="tiny-actions-fp32-ckpt", model="tiny", expert="tiny", bins=TINY_BINS, batch=8, precision="fp32",
         checkpointing=True),
    dict(name="mid-tokens-bf16", model="tiny", model_overrides=MID, bins=TINY_BINS, batch=4, precision="bf16"),
    dict(name="mid-tokens-bf16-ckpt", model="tiny", model_overrides=MID, bins=TINY_BINS, batch=4, precision="bf16",
         checkpointing=True),
    dict(name="mid-actions-fp32", model="tiny", model_overrides=MID, expert="tiny", expert_overrides=MID_EXPERT,
         bins=TINY_BINS, batch=2, precision="fp32", priors=False),
]
TOLERANCE = 0.25

#: Run in a subprocess: argv[1] = JSON list of cases; prints one JSON line per case.
MEASURE = r'''
import contextlib
import gc
import json
import sys

import torch

torch.set_num_threads(1)
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from posevla.models.config import get_expert_config, get_model_config
from posevla.models.factory import build_policy, build_vlm
from posevla.tokens import BinCounts, PoseCodec


def allocation_peak(prof) -> int:
    """Peak of the running sum of the CPU allocator's allocations (+) and frees (-) seen while profiling."""
    events = []

    def walk(node):
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    cur = peak = 0
    for _, nbytes in sorted(events):
        cur += nbytes
        peak = max(peak, cur)
    return peak


def storage_bytes(tensors) -> int:
    seen, n = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            n += st.nbytes()
    return n


def measure(case: dict) -> dict:
    torch.manual_seed(0)
    bins = BinCounts(**case["bins"]).uniform()
    mcfg = get_model_config(case["model"]).replace(**case.get("model_overrides", {}))
    if case.get("expert"):
        ecfg = get_expert_config(case["expert"]).replace(**case.get("expert_overrides", {}))
        model = build_policy(mcfg, ecfg, bins)
        # a prompt that fills the prompt slot: the prefix drops columns that are padding in every sample, and
        # the plan assumes a full prefix
        tok, words = model.vlm.tokenizer, "pick up the red cup and put it in the drawer".split()
        prompt = "put"
        while len(tok.encode_text(prompt + " " + words[0])) <= mcfg.prompt_len - 2:
            prompt, words = prompt + " " + words[0], words[1:] + words[:1]
        batch = ecfg.fake_batch(case["batch"], mcfg, tok, priors=case.get("priors", True), prompts=[prompt])
        cache_writers = [m for m in model.vlm.modules() if type(m).__name__.endswith("DecoderLayer")]
    else:
        model = build_vlm(mcfg, bins)
        batch = mcfg.fake_batch(case["batch"], model.tokenizer, PoseCodec(bins))
        cache_writers = []
    if case.get("checkpointing"):  # as posevla.training.distributed.wrap: every layer but the cache writers
        from torch.distributed._composable import checkpoint

        skip = {id(m) for m in cache_writers}
        for m in model.modules():
            if type(m).__name__.endswith(("EncoderLayer", "DecoderLayer")) and id(m) not in skip:
                checkpoint(m)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-10)
    bf16 = case["precision"] == "bf16"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(batch)["loss"]
        # zeroed in place: the old gradients stay allocated through the forward, as in the trainer (which frees
        # them only after it), and every allocation of the step is one the profiler sees
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()  # the first step creates AdamW's moments
    params = list(model.parameters())
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
    base = storage_bytes(params + [p.grad for p in params if p.grad is not None] + state)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    growth = allocation_peak(prof)
    L = int(batch["input_ids"].shape[1])
    return {"name": case["name"], "base_bytes": base, "peak_bytes": base + growth, "seq": L,
            "answer_tokens": L - mcfg.prefix_len}


for case in json.loads(sys.argv[1]):
    print(json.dumps(measure(case)), flush=True)
    gc.collect()
'''


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    proc = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(CASES)], capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["name"]: r for r in rows}


def _plan(case: dict, answer_tokens: int):
    mcfg = get_model_config(case["model"]).replace(**case.get("model_overrides", {}))
    ecfg = (get_expert_config(case["expert"]).replace(**case.get("expert_overrides", {}))
            if case.get("expert") else None)
    return model_memory_plan(mcfg, ecfg, BinCounts(**case["bins"]), name=case["name"], batch_per_gpu=case["batch"],
                             precision=case["precision"], activation_checkpointing=case.get("checkpointing", False),
                             answer_tokens=max(1, answer_tokens), priors=case.get("priors", True), device="cpu")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_plan_matches_the_measured_peak(measured, case):
    got = measured[case["name"]]
    plan = _plan(case, got["answer_tokens"])
    ratio = plan.total_bytes / got["peak_bytes"]
    print(f"{case['name']}: measured {got['peak_bytes'] / 1e6:.1f} MB, planned {plan.total_bytes / 1e6:.1f} MB "
          f"(x{ratio:.3f})")
    assert abs(ratio - 1) <= TOLERANCE, plan.table()
    # the weights, gradients and moments alone are counted to within the optimizer step's temporaries
    states = plan.params_bytes + plan.grads_bytes + plan.optimizer_bytes
    assert got["base_bytes"] <= states <= 1.25 * got["base_bytes"]


def test_checkpointing_and_sharding_arithmetic():
    cfg = get_config("stage1-paligemma-3b")
    full = memory_plan(cfg, gpus=16)
    assert (full.parallel, full.per_gpu_batch, full.global_batch, full.precision) == ("fsdp", 7, 112, "bf16")
    assert full.tokens_per_step == 112 * (768 + 64 + 256)
    ckpt = memory_plan(cfg, gpus=16, activation_checkpointing=True)
    assert ckpt.activations_bytes < full.activations_bytes / 3
    assert (ckpt.params_bytes, ckpt.optimizer_bytes) == (full.params_bytes, full.optimizer_bytes)
    # FSDP divides the fp32 master weights, gradients and moments; DDP keeps a full replica on every GPU
    f8, f16 = memory_plan(cfg, gpus=8), memory_plan(cfg, gpus=16, batch_per_gpu=14)
    assert f8.optimizer_bytes == pytest.approx(2 * f16.optimizer_bytes, rel=1e-6)
    assert f8.activations_bytes == f16.activations_bytes  # 14 per GPU either way
    ddp = memory_plan(cfg, gpus=16, parallel="ddp")
    assert ddp.optimizer_bytes == 8 * ddp.params  # fused AdamW: two fp32 moments, no temporaries
    assert ddp.params_bytes > 4 * ddp.params  # fp32 weights + bf16 working copies
    # a bare bf16 forward + backward (model.to(bfloat16)): weights and gradients at 2 bytes
    pure = memory_plan(cfg, gpus=1, parallel="none", precision="bf16-pure", batch_per_gpu=1)
    assert (pure.params_bytes, pure.grads_bytes) == (2 * pure.params, 2 * pure.params)
    assert 0 < pure.activations_bytes < pure.params_bytes


def test_bad_input_is_a_clear_error():
    cfg = get_config("stage1-paligemma-3b")
    with pytest.raises(ConfigError, match=r"--batch-size 112 .* not divisible by --gpus 5.*multiple of 5"):
        memory_plan(cfg, gpus=5)
    with pytest.raises(ConfigError, match=r"--gpus must be an integer >= 1, got 0"):
        memory_plan(cfg, gpus=0)
    with pytest.raises(ConfigError, match=r"--parallel none.*--parallel fsdp"):
        memory_plan(cfg, gpus=2, parallel="none")
    with pytest.raises(ConfigError, match=r"--precision 'fp16' is unknown"):
        memory_plan(cfg, precision="fp16")


def test_cli_plan(capsys):
    main(["plan", "stage1-paligemma-3b", "--gpus", "16", "--gpu-mem-gb", "96"])
    out = capsys.readouterr().out
    assert "16 GPU(s), fsdp, bf16" in out and "7 per GPU" in out and "**fits** in 96 GB" in out
    for row in ("parameters", "gradients", "optimizer (AdamW)", "activations", "**total**"):
        assert f"| {row}" in out
    main(["plan", "stage1-paligemma-3b", "--gpus", "16", "--gpu-mem-gb", "24"])
    assert "does NOT fit" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["plan", "stage1-paligema-3b"])
    assert e.value.code == 1 and "CONFIG: unknown training config" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["plan", "stage1-paligemma-3b", "--gpus", "5"])
    assert e.value.code == 1 and "not divisible by --gpus 5" in capsys.readouterr().err

"""Action-chunk latency: PoseVLA.sample_actions vs transformers' PI0ForConditionalGeneration.

A thin wrapper of `posevla bench latency --part expert` (`posevla.bench.latency` describes the method):

    python benchmarks/bench_expert.py [--configs parity tiny] [--precisions fp32 bf16] [--reps 30]
                                      [--threads 1] [--compile] [--json OUT]

``--levers [parity|tiny] [REPS]`` instead times what each sampling lever buys, adding them one at a time
(fp32, alternating with transformers' π0 in the same run):

* ``plain``: the unfused sampler (prefix through `PoseVLM._lm`, one `GemmaActionExpert.velocity` call per
  Euler step, ``eval()``/``train()`` around it), the sampler before the levers;
* ``+prefix``: `PoseVLA.encode_prefix` (the language model called with its key-padding mask, shared padding
  columns dropped);
* ``+fused``: `GemmaActionExpert.sample` (`ChunkFlow`: state token, masks, positions, time terms once per
  chunk, static key/value buffer, stacked q/k/v with RoPE rows);
* ``now``: `PoseVLA.sample_actions` as it is (also skips the ``eval()`` walk over every module when the
  model is already in eval mode).
"""

from __future__ import annotations

import sys

import torch

from posevla.bench.latency import _alternate, _build_pair, _expert_inputs, find_reference, main


def levers(name: str = "parity", reps: int = 30) -> None:
    """Print median / p95 ms and the ratio to transformers of each lever added in turn (module docstring)."""
    from posevla.models.action_expert import PrefixKV

    torch.set_num_threads(1)
    ours, ref = _build_pair(name, find_reference())
    batch, noise = _expert_inputs(ours, 1)
    ids, attn = batch["input_ids"], batch["attention_mask"]
    common = {"input_ids": ids, "pixel_values": batch["pixel_values"], "attention_mask": attn,
              "pixel_attention_mask": torch.ones(1, ours.vlm.cfg.num_views, dtype=torch.bool)}
    state = ours._state(batch["state"], 1)  # (1, Ds_max)

    def vlm_prefix() -> PrefixKV:  # through PaliGemma's own forward, every padded column kept
        feats = ours.vlm.image_features(batch["pixel_values"])  # (V, N, D)
        pos = (attn.long().cumsum(-1) - 1).clamp(min=0)  # (1, P)
        out = ours.vlm._lm(ids, attn, torch.zeros_like(ids), feats, use_cache=True, position_ids=pos)
        return PrefixKV(kv=tuple((layer.keys, layer.values) for layer in out.cache.layers), pad_mask=attn.bool())

    def loop(prefix: PrefixKV, steps: int = 10) -> torch.Tensor:
        x, dt = noise.clone(), -1.0 / steps  # (1, H, A)
        for k in range(steps):
            tau = torch.full((1,), 1.0 + k * dt, dtype=torch.float32)  # (1,)
            x = x + dt * ours.expert.velocity(state, x, tau, prefix)  # (1, H, A)
        return x

    def walked(f):  # the eval()/train() walk over every module of the unfused sampler
        def g() -> torch.Tensor:
            ours.eval()
            try:
                return f()
            finally:
                ours.train(False)

        return g

    runs = {
        "plain": walked(lambda: loop(vlm_prefix())),
        "+prefix": walked(lambda: loop(ours.encode_prefix(batch))),
        "+fused": walked(lambda: ours.expert.sample(state, noise.clone(), ours.encode_prefix(batch), 10)),
        "now": lambda: ours.sample_actions(batch, noise=noise),
        "transformers": lambda: ref.sample_actions(state=batch["state"], noise=noise, num_steps=10, **common),
    }
    with torch.no_grad():
        out = {k: f() for k, f in runs.items()}
        timing = _alternate(runs, reps, 2)
    base = timing["transformers"]
    print(f"{name}: levers added in turn, fp32, 1 thread, {reps} reps (alternating)")
    for k, t in timing.items():
        d = (out[k] - out["transformers"]).abs().max().item()
        print(f"{k:<13} median {t['median_ms']:7.2f} p95 {t['p95_ms']:7.2f} ms   / transformers "
              f"{t['median_ms'] / base['median_ms']:.3f} (p95 {t['p95_ms'] / base['p95_ms']:.3f})   "
              f"max |Δaction| {d:.2g}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--levers"]:
        levers(*(f(a) for f, a in zip((str, int), sys.argv[2:4])))
    else:
        main(["--part", "expert", *sys.argv[1:]])

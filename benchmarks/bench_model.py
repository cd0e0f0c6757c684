"""Model speed on this machine, each figure next to a baseline measured in the same run.

  * training step (fwd + bwd + AdamW) of a model size: fp32 vs bf16 autocast (ratio)
  * the cost of the pose tags (`PoseVLMConfig.pose_tags`): fp32 step with vs without them (ratio)
  * grammar-constrained greedy decoding: with the KV cache vs re-running the sequence (ratio)

Usage: python benchmarks/bench_model.py [--model tiny] [--batch 16] [--answer 120] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def fake_batch(model, cfg, batch: int, answer: int, with_answer: bool = True) -> dict[str, torch.Tensor]:
    tok = model.tokenizer
    ex = [tok.build_example("detect the mug", None, n_image_tokens=cfg.n_image_tokens, prompt_len=cfg.prompt_len)] * batch
    b = tok.collate(ex)
    if with_answer:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(10, tok.vocab_size, (batch, answer), generator=g)
        ones = torch.ones(batch, answer, dtype=torch.long)
        b = {
            "input_ids": torch.cat([b["input_ids"], ids], 1),
            "attention_mask": torch.cat([b["attention_mask"], ones], 1),
            "token_type_ids": torch.cat([b["token_type_ids"], ones], 1),
            "labels": torch.cat([b["labels"], ids], 1),
        }
    S, V = cfg.image_size, cfg.num_views
    g = torch.Generator().manual_seed(1)
    b["pixel_values"] = torch.rand(batch, V, 3, S, S, generator=g) * 2 - 1
    b["ray"] = torch.randn(batch, V, 3, S, S, generator=g)
    b["depth"] = torch.rand(batch, V, 2, S, S, generator=g)
    b["prior_mask"] = torch.ones(batch, 2)
    return b


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--answer", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from posevla.models import PoseVLM, get_model_config
    from posevla.tokens import BinCounts, BinSpec, PoseCodec, PoseGrammar
    from posevla.runtime import cpu_has_bf16

    cfg = get_model_config(args.model)
    rng = np.random.default_rng(0)
    bins = BinSpec.fit(rng.normal(0, 0.2, 1000), rng.uniform(0.3, 1.5, 500), rng.uniform(0.02, 0.3, 1500),
                       BinCounts(trans_xy=256, trans_z=256, size=256))
    codec = PoseCodec(bins)
    torch.manual_seed(0)
    model = PoseVLM.build(cfg, None, codec.vocabulary(), bins=bins)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model={args.model} params={n_params / 1e6:.2f}M batch={args.batch} answer={args.answer} "
          f"threads={args.threads} cpu_bf16={cpu_has_bf16()}")

    batch = fake_batch(model, cfg, args.batch, args.answer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(bf16: bool, m=model, o=opt):
        def run():
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
            with ctx:
                loss = m.compute_loss(batch)["loss"]
            o.zero_grad()
            loss.backward()
            o.step()
        return run

    t32 = time_it(step(False), args.repeats)
    t16 = time_it(step(True), max(1, args.repeats // 2))
    print(f"train step fp32: {t32:.3f} s ({args.batch / t32:.1f} samples/s)")
    print(f"train step bf16 autocast: {t16:.3f} s  -> bf16/fp32 time ratio {t16 / t32:.2f}")
    if cfg.pose_tags:
        torch.manual_seed(0)
        plain = PoseVLM.build(cfg.replace(pose_tags=False), None, codec.vocabulary(), bins=bins)
        t_plain = time_it(step(False, plain, torch.optim.AdamW(plain.parameters(), lr=1e-4)), args.repeats)
        t_tags = time_it(step(False), args.repeats)  # again, right after, so both see the same machine load
        print(f"train step fp32 without pose tags: {t_plain:.3f} s, with: {t_tags:.3f} s "
              f"-> tags/plain time ratio {t_tags / t_plain:.2f}")

    model.eval()
    prefix = fake_batch(model, cfg, args.batch, 0, with_answer=False)
    tok = model.tokenizer
    token_ids = tok.pose_token_ids(codec.vocabulary())
    grammars = lambda: [PoseGrammar(token_ids, tok.eos_id, tok.name_ids(["mug"]), allow_empty_view=False)  # noqa: E731
                        for _ in range(args.batch)]
    n_new = 64
    t_cache = time_it(lambda: model.generate(prefix, grammars(), n_new, use_cache=True), args.repeats)
    t_nocache = time_it(lambda: model.generate(prefix, grammars(), n_new, use_cache=False), 1)
    print(f"decode {n_new} tokens x {args.batch}: KV cache {t_cache:.2f} s, no cache {t_nocache:.2f} s "
          f"-> speed-up {t_nocache / t_cache:.1f}x")


if __name__ == "__main__":
    main()

"""The reference π0 of the parity tests and the expert benchmark: transformers' own `PI0ForConditionalGeneration`.

Not part of posevla: it exists to check posevla's action expert against an independent implementation
(`tests/test_action_expert.py`, `benchmarks/bench_expert.py`).
"""

from __future__ import annotations

import torch


def build_pi0_reference(policy: torch.nn.Module) -> torch.nn.Module:
    """A randomly initialised transformers `PI0ForConditionalGeneration` (eval mode) with `policy`'s VLM and
    expert architecture, e.g. for parity checks and benchmarks after `load_pi0_state_dict`."""
    from transformers import PI0Config, PI0ForConditionalGeneration

    e = policy.cfg
    cfg = PI0Config(
        vlm_config=policy.vlm.hf.config.to_dict(),
        dit_config={
            "model_type": "gemma",
            "hidden_size": e.hidden,
            "num_hidden_layers": e.layers,
            "intermediate_size": e.mlp,
            "num_attention_heads": e.heads,
            "num_key_value_heads": e.kv_heads,
            "head_dim": e.head_dim,
        },
        chunk_size=e.chunk_size,
        max_state_dim=e.max_state_dim,
        max_action_dim=e.max_action_dim,
    )
    return PI0ForConditionalGeneration(cfg).eval()

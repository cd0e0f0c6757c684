"""posevla: Pose-VLA (universal pose pre-training for VLA policies) in PyTorch.

The public surface, imported on first use (``import posevla`` stays light)::

    posevla.load_policy(path)        # a post-trained checkpoint as a Policy: infer(obs) -> action chunk
    posevla.Policy                   # the inference wrapper (posevla.policy)
    posevla.load_checkpoint(path)    # any checkpoint, rebuilt from what it saved (posevla.training.checkpoint)
    posevla.PoseVLA, posevla.PoseVLMConfig   # the model and its architecture config (posevla.models)
    posevla.get_config(name)         # a named training config (posevla.training.configs)

Everything else may move between releases; the layout is described in the README and docs/design.md.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["load_policy", "Policy", "load_checkpoint", "PoseVLA", "PoseVLMConfig", "get_config", "__version__"]

_LAZY = {
    "load_policy": "posevla.policy",
    "Policy": "posevla.policy",
    "load_checkpoint": "posevla.training.checkpoint",
    "PoseVLA": "posevla.models",
    "PoseVLMConfig": "posevla.models",
    "get_config": "posevla.training.configs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'posevla' has no attribute {name!r}")

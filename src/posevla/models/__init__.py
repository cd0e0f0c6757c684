"""posevla.models: the Pose-VLM (PaliGemma + pose tokens + geometry priors) and its tokenizer.

Public API::

    PoseVLMConfig, MODEL_CONFIGS, get_model_config, to_hf_config, config_from_hf   # config.py
    PoseTextTokenizer, build_example, collate_text, IGNORE_INDEX                   # text.py
    PatchEmbedMlp                                                                 # priors.py
    PoseVLM, GenerationResult, PRIOR_DEPTH, PRIOR_RAY                             # posevlm.py
"""

from posevla.models.config import MODEL_CONFIGS, PoseVLMConfig, config_from_hf, get_model_config, to_hf_config
from posevla.models.posevlm import PRIOR_DEPTH, PRIOR_RAY, GenerationResult, PoseVLM
from posevla.models.priors import PatchEmbedMlp
from posevla.models.text import IGNORE_INDEX, PoseTextTokenizer, build_example, collate_text

__all__ = [
    "MODEL_CONFIGS",
    "PoseVLMConfig",
    "config_from_hf",
    "get_model_config",
    "to_hf_config",
    "PoseVLM",
    "GenerationResult",
    "PRIOR_DEPTH",
    "PRIOR_RAY",
    "PatchEmbedMlp",
    "IGNORE_INDEX",
    "PoseTextTokenizer",
    "build_example",
    "collate_text",
]

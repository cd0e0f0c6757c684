"""posevla.models: the Pose-VLM (PaliGemma + pose tokens + geometry priors) and its tokenizer.

Public API::

    PoseVLMConfig, MODEL_CONFIGS, get_model_config, to_hf_config, config_from_hf   # config.py
    PoseTextTokenizer, build_example, collate_text, IGNORE_INDEX                   # text.py
    PatchEmbedMlp                                                                 # priors.py
    PoseVLM, GenerationResult, PRIOR_DEPTH, PRIOR_RAY                             # posevlm.py
    ActionExpertConfig, EXPERT_CONFIGS, get_expert_config, GemmaActionExpert      # action_expert.py
    PoseVLAPolicyModel                                                            # pose_vla.py
    load_pi0_state_dict, load_pi0_checkpoint, expert_config_from_pi0              # pi0_weights.py
"""

from posevla.models.action_expert import (
    EXPERT_CONFIGS,
    ActionExpertConfig,
    GemmaActionExpert,
    get_expert_config,
)
from posevla.models.config import MODEL_CONFIGS, PoseVLMConfig, config_from_hf, get_model_config, to_hf_config
from posevla.models.pi0_weights import expert_config_from_pi0, load_pi0_checkpoint, load_pi0_state_dict
from posevla.models.pose_vla import PoseVLAPolicyModel
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
    "ActionExpertConfig",
    "EXPERT_CONFIGS",
    "get_expert_config",
    "GemmaActionExpert",
    "PoseVLAPolicyModel",
    "load_pi0_state_dict",
    "load_pi0_checkpoint",
    "expert_config_from_pi0",
]

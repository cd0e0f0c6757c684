"""posevla.models: the Pose-VLM (PaliGemma + pose tokens + geometry priors), the action expert, and builders.

Public API::

    PoseVLMConfig, MODEL_CONFIGS, get_model_config                 # config.py: architectures, named sizes
    ActionExpertConfig, EXPERT_CONFIGS, get_expert_config          #   (both can fake_batch(...))
    build_vlm, build_policy                                        # factory.py: models from model configs
    PoseVLM, GenerationResult                                      # posevlm.py: compute_loss, generate
    PoseVLA                                                        # pose_vla.py: compute_loss, sample_actions
    PoseTextTokenizer                                              # text.py
    load_pi0_checkpoint, load_pi0_state_dict, expert_config_from_pi0   # pi0_weights.py
    init_expert_from_pi0                                           #   (the expert alone, from a π0 dir)
"""

from posevla.models.config import (
    EXPERT_CONFIGS,
    MODEL_CONFIGS,
    ActionExpertConfig,
    PoseVLMConfig,
    get_expert_config,
    get_model_config,
)
from posevla.models.factory import build_policy, build_vlm
from posevla.models.pi0_weights import (
    expert_config_from_pi0,
    init_expert_from_pi0,
    load_pi0_checkpoint,
    load_pi0_state_dict,
)
from posevla.models.pose_vla import PoseVLA
from posevla.models.posevlm import GenerationResult, PoseVLM
from posevla.models.text import PoseTextTokenizer

__all__ = [
    "PoseVLMConfig",
    "MODEL_CONFIGS",
    "get_model_config",
    "ActionExpertConfig",
    "EXPERT_CONFIGS",
    "get_expert_config",
    "build_vlm",
    "build_policy",
    "PoseVLM",
    "GenerationResult",
    "PoseVLA",
    "PoseTextTokenizer",
    "load_pi0_checkpoint",
    "load_pi0_state_dict",
    "expert_config_from_pi0",
    "init_expert_from_pi0",
]

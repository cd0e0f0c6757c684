"""posevla.serving: run a post-trained Pose-VLA checkpoint on observations (spec §2.3 inference).

* :class:`Policy` -- ``Policy.from_checkpoint(dir)``; ``policy.infer(obs) -> dict`` with the de-normalised
  action chunk (and optionally the VLM's decoded waypoint plan); ``policy(obs)`` gives a
  :class:`posevla.envs.PolicyOutput` for :func:`posevla.eval.rollout.rollout`.
* :class:`ActionChunker` -- executes a chunk open-loop and re-queries the policy every ``replan_every`` steps.
"""

from posevla.serving.policy import ActionChunker, Policy

__all__ = ["Policy", "ActionChunker"]

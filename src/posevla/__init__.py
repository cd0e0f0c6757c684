"""posevla: Pose-VLA (universal pose pre-training for VLA policies) in PyTorch."""

__version__ = "0.1.0"

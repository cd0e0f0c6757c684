"""Shared fixtures: single-threaded torch, EGL rendering, and a tiny generated dataset."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Six generated scenes (3 views each) at 128×96, written once per test session."""
    from posevla.sim.tabletop import generate_dataset

    root = tmp_path_factory.mktemp("scenes")
    generate_dataset(root, 6, seed=7, width=128, height=96, workers=1, progress=False)
    return root

"""Shared test setup: Triton runs in its interpreter when no GPU is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before triton compiles anything: kernels then run on the CPU, in numpy.
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: Real pretrained checkpoints kept beside the project (never copied into it).
SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"


@pytest.fixture
def shared_models() -> Path:
    if not SHARED_MODELS.is_dir():
        pytest.skip(f"reference models not found at {SHARED_MODELS} (only in the dev workspace)")
    return SHARED_MODELS

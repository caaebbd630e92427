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


@pytest.fixture(scope="session")
def member_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """{name: (folder, the transformers model)} of the three members of `members`."""
    from checkpoints import make_checkpoint  # here: TRITON_INTERPRET is set before imports
    from members import MEMBER_SPECS

    out = {}
    for i, (name, (kind, overrides)) in enumerate(MEMBER_SPECS.items()):
        folder = tmp_path_factory.mktemp(name)
        out[name] = (folder, make_checkpoint(folder, kind, seed=10 + i, context=1024, **overrides))
    return out

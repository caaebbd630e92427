"""Fixtures over tiny random checkpoints (see tests/checkpoints.py)."""

from __future__ import annotations

import pytest
from checkpoints import CASES, make_checkpoint


@pytest.fixture(scope="session", params=sorted(CASES))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(case name, folder, the transformers model) for each architecture variant."""
    kind, overrides = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, make_checkpoint(folder, kind, **overrides)

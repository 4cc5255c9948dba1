"""What the API's test modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Stack, start_stack, stop_stack


@pytest.fixture(scope="session")
def own_stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Stack]:
    """The compatibility routes' ``spotgen dev``, shared by their modules (tests/scheduling.py runs them in one
    process): progress is written often, for tests that watch a job run."""
    running = start_stack(tmp_path_factory.mktemp("own-stack"), tiny_models, {"SPOTGEN_PROGRESS_INTERVAL_S": "0.05"})
    yield running
    stop_stack(running)

"""The tiny models' store for the comfy tests that run graphs (tests/comfy/runner.py); a module that needs input
images of its own adds them to a harness of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.models.store import ModelStore
from tests.pipelines.harness import Harness


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    return Harness(ModelStore(tiny_models, "cpu"))

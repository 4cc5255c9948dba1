"""Fixtures of the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.models.store import ModelStore
from tests.pipelines.harness import Harness


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    return Harness(ModelStore(tiny_models, "cpu"))

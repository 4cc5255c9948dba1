"""Fixtures of the model tests: a private copy of the tiny models that a test may change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def models(tmp_path: Path, tiny_models: Path) -> Path:
    """A private copy of the tiny models (tests here change files and catalogs)."""
    target = tmp_path / "models"
    shutil.copytree(tiny_models, target, ignore=shutil.ignore_patterns(".tiny.lock"))
    return target

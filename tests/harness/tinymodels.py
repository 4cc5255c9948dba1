"""The benchmarks' models: the directory a caller gives (``make bench`` builds the tiny models once), or, when a
benchmark runs alone, the tiny models built in a temporary directory for that run."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

Figures = Callable[[Path], dict[str, Any]]


def on_tiny_models(figures: Figures) -> Callable[[Path | None], dict[str, Any]]:
    """``figures(models)``, with ``models`` left out meaning freshly built tiny models."""

    @functools.wraps(figures)
    def run(models: Path | None = None) -> dict[str, Any]:
        if models is not None:
            return figures(models)
        from runtime.models.tiny import build_tiny_models

        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_models(Path(tmp) / "models")
            return figures(Path(tmp) / "models")

    return run

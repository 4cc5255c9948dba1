"""What the API's test modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import webuiapi

from tests.conftest import Stack, start_stack, stop_stack


@pytest.fixture(scope="session")
def own_stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Stack]:
    """The compatibility routes' ``spotgen dev``, shared by their modules (tests/scheduling.py runs them in one
    process): progress is written often, for tests that watch a job run."""
    running = start_stack(tmp_path_factory.mktemp("own-stack"), tiny_models, {"SPOTGEN_PROGRESS_INTERVAL_S": "0.05"})
    yield running
    stop_stack(running)


@pytest.fixture(scope="session")
def webui(own_stack: Stack) -> webuiapi.WebUIApi:
    """The real ``webuiapi`` client on the compatibility stack, as a WebUI script builds it (its sampler is
    "Euler a"), at 4 steps so that the tiny models answer at once."""
    url = urlsplit(own_stack.api_url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port, steps=4)

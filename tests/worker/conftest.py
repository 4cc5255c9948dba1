"""The worker tests' shared stacks: session-scoped, so that each starts once per test process; tests/scheduling.py
sends the modules that use one to the same process. Tests keep apart by their own job ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import Stack, start_stack, stop_stack
from tests.harness.faultproxy import FaultProxy
from tests.worker.interrupt_pool import ENV, Pool


@pytest.fixture(scope="session")
def interrupt_stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Stack]:
    """No workers of its own: the interrupt tests' ``Pool`` runs the workers they signal."""
    running = start_stack(tmp_path_factory.mktemp("interrupt"), tiny_models, ENV, workers=0,
                          args=("--visibility-timeout", "2"))
    yield running
    stop_stack(running)


@pytest.fixture(scope="session")
def interrupt_pool(interrupt_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    workers = Pool(interrupt_stack, tmp_path_factory.mktemp("steps") / "steps.log")
    workers.ensure(2)
    yield workers
    workers.stop()


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[tuple[Stack, FaultProxy]]:
    """The outage tests' stack (no workers of its own) and the fault proxy in front of its emulator: each module
    starts the workers it needs behind the proxy (tests/worker/test_outages.py)."""
    stack = start_stack(tmp_path_factory.mktemp("outages"), tiny_models, workers=0,
                        args=("--visibility-timeout", "5"))
    emulator = urlsplit(stack.state["aws_endpoint_url"])
    proxy = FaultProxy((emulator.hostname, emulator.port)).start()
    yield stack, proxy
    proxy.stop()
    stop_stack(stack)

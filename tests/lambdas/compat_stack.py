"""What the compatibility route modules share: their stack, a test image, and the Lambdas run in this process.

``stack`` is the compatibility modules' shared ``spotgen dev`` (``own_stack``), registered under the name the tests
use; ``in_process`` is that stack's deployment as a Lambda of this process
sees it, for tests that change its settings.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from lambdas.common import Deployment
from runtime.config import Settings
from runtime.local.devstack import EMULATOR_CREDENTIALS
from runtime.storage import aws
from runtime.storage.jobstore import JobStore
from tests.conftest import Stack


@pytest.fixture(scope="module", name="stack")
def stack_fixture(own_stack: Stack) -> Stack:
    return own_stack


def _png_b64(size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


PNG_B64 = _png_b64()


def in_process(stack: Stack, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Deployment:
    """The stack's deployment as a Lambda of this process sees it, with ``settings`` changed."""
    for name, value in EMULATOR_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = Settings.from_env(stack.env).model_copy(update=settings)
    return Deployment(config, JobStore(aws.client("s3", config), config), aws.client("sns", config))

"""What the ``/sdapi/v1`` listing, options and png-info modules share: ``spotgen dev`` in this process without
workers (the routes' Lambda code behind the local gateway, on the real emulator), whose sync wait is short, so a
generation answers 504 naming its queued job at once; and that job as the API queued it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.config import Settings
from runtime.contract.envelope import read_celery_message
from runtime.local.devsettings import dev_compat
from runtime.local.devstack import DevStack
from runtime.storage import aws
from tests.conftest import dev_stack


@pytest.fixture(scope="module", name="api")
def api_fixture(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[DevStack]:
    """The tiny models' catalog with ``spotgen dev``'s compatibility settings (their aliases, ``sdruntime`` on
    ``tiny-sd`` for ``/sdapi/v1``)."""
    settings = dev_compat(Settings(models_dir=tiny_models, poll_wait_s=1)).model_copy(update={"sync_wait_s": 0.2})
    with dev_stack(settings, Path(tmp_path_factory.mktemp("sdapi-api"))) as stack:
        yield stack


def queued_spec(api: DevStack, job_id: str) -> dict[str, Any]:
    """The job's message, taken off the work queue (no worker here)."""
    sqs = aws.client("sqs", api.settings)
    for _ in range(20):
        for message in sqs.receive_message(QueueUrl=api.settings.queue_url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1).get("Messages", []):
            sqs.delete_message(QueueUrl=api.settings.queue_url, ReceiptHandle=message["ReceiptHandle"])
            _headers, [spec], _kwargs = read_celery_message(message["Body"])
            if spec["id"] == job_id:
                return spec
    raise AssertionError(f"no message for job {job_id}")

"""The private internals of kombu and diffusers that spotgen relies on, named in one place.

``runtime/worker/sqs.py`` overrides private methods of kombu's SQS channel, and ``pipelines/resume.py`` relies on
how diffusers' pipelines call ``prepare_latents`` and honour ``interrupt``. pyproject.toml bounds both packages
below their next minor version; when that bound is raised, this is the test that fails if an internal moved, with
the internal's name, instead of a worker that stops receiving or a resume that quietly starts over. Each check
reads the installed package (signatures, and the order of calls in the source), not a copy of it."""

from __future__ import annotations

import inspect
import re

import diffusers
import kombu
import pytest
from kombu.asynchronous.aws import connection as aws_connection
from kombu.transport import SQS, virtual

#: What runtime/worker/sqs.py overrides or calls on kombu's SQS channel, with the parameters it passes or expects.
KOMBU_CHANNEL = {
    "_on_messages_ready": ["self", "queue", "qname", "messages"],
    "_get_async": ["self", "queue", "count", "callback"],
    "_schedule_queue": ["self", "queue"],
    "_get_bulk_async": ["self", "queue", "callback"],
    "_loop1": ["self", "queue", "messages_fetched"],
    "_get_from_sqs": ["self", "queue_name", "queue_url", "connection", "count", "callback"],
    "_new_queue": ["self", "queue", "kwargs"],
    "canonical_queue_name": ["self", "queue_name"],
    "asynsqs": ["self", "queue"],
    "sqs": ["self", "queue"],
    "basic_ack": ["self", "delivery_tag", "multiple"],
    "_delete_rejected_message": ["self", "delivery_tag"],
}

#: The diffusers pipeline classes spotgen runs through ``pipelines.resume.run_resumable``.
RESUMABLE = ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
             "StableDiffusionControlNetPipeline", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
             "StableDiffusionXLControlNetPipeline"]


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_pins_are_below_the_next_minor_version() -> None:
    # The versions these checks were written against; a new minor version is read again before the bound moves.
    assert kombu.__version__.startswith("5.7."), kombu.__version__
    assert diffusers.__version__.startswith("0.42."), diffusers.__version__


@pytest.mark.parametrize("name", sorted(KOMBU_CHANNEL))
def test_kombu_sqs_channel_internal(name: str) -> None:
    method = getattr(SQS.Channel, name, None)
    assert callable(method), f"kombu's SQS.Channel has no {name}: runtime/worker/sqs.py overrides or calls it"
    assert parameters(method) == KOMBU_CHANNEL[name], f"SQS.Channel.{name}'s parameters changed"


def test_kombu_receives_through_the_chain_sqs_py_repairs() -> None:
    # _get_bulk_async goes through _get_async (which sqs.py replaces); _loop1 schedules the next receive through
    # _schedule_queue; _schedule_queue reads _active_queues and the QoS; a failed request answers [] (the case
    # sqs.py's _on_messages_ready turns into ReceiveFailed); the virtual channel's basic_ack only releases.
    assert "self._get_async(" in inspect.getsource(SQS.Channel._get_bulk_async)
    assert "self._schedule_queue, queue" in inspect.getsource(SQS.Channel._loop1)
    schedule = inspect.getsource(SQS.Channel._schedule_queue)
    assert "_active_queues" in schedule and "can_consume" in schedule
    assert re.search(r"return \[\]", inspect.getsource(aws_connection.AsyncAWSQueryConnection._on_list_ready))
    assert "messages.get('Messages')" in inspect.getsource(SQS.Channel._on_messages_ready).replace('"', "'")
    assert parameters(virtual.Channel.basic_ack) == ["self", "delivery_tag", "multiple"]
    assert "_delete_rejected_message" in inspect.getsource(SQS.Channel.basic_reject)


@pytest.mark.parametrize("name", RESUMABLE)
def test_diffusers_pipeline_internals_resume_relies_on(name: str) -> None:
    cls = getattr(diffusers, name)
    call = inspect.getsource(cls.__call__)
    assert "callback_on_step_end" in parameters(cls.__call__), f"{name}.__call__ takes no callback_on_step_end"
    assert "generator" in parameters(cls.prepare_latents), f"{name}.prepare_latents takes no generator"
    # Resumable.prepare_latents puts the saved state back once the timesteps are set: the call comes after them.
    timesteps = min(i for i in (call.find("retrieve_timesteps("), call.find("self.get_timesteps(")) if i >= 0)
    latents = call.find("self.prepare_latents(")
    assert 0 <= timesteps < latents, f"{name}.__call__ no longer sets the timesteps before prepare_latents"
    # Resumable.interrupt skips the steps already done: each step starts by reading it and skipping with continue.
    loop = call[latents:]
    assert re.search(r"for i, t in enumerate\(timesteps\):\s+if self\.interrupt:\s+continue", loop), (
        f"{name}.__call__ no longer skips a step with `if self.interrupt: continue` at its top")
    assert "self._interrupt = False" in call and "self._num_timesteps = len(timesteps)" in call
    assert isinstance(inspect.getattr_static(cls, "interrupt"), property)
    assert isinstance(inspect.getattr_static(cls, "num_timesteps"), property)

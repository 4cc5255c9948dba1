"""spotgen's public face: a client for its API (``spotgen.Client``, and ``spotgen.AsyncClient`` for asyncio), and
the plugin contract for pipeline authors (``spotgen.Pipeline``, ``RunContext``, ``SetupContext``, ...: the very
objects of ``runtime.plugins``, re-exported, and ``OutputOptions``, which a plugin's ``Inputs`` subclass to take the
output format; ``spotgen.diffusers``, ``spotgen.testing`` and ``spotgen.images`` are imported by path).

``runtime/`` is the implementation; this package re-exports what users import, and stays light: importing it
never imports torch, diffusers or celery.

    import spotgen
    client = spotgen.Client()                      # SPOTGEN_API_URL, or spotgen dev's address
    job = client.submit("txt2img", "tiny-sd", {"prompt": "a red fox", "width": 64, "height": 64})
    job.wait()
    job.save("out/")
"""

from runtime.contract import JobStatus
from runtime.contract.formats import OutputOptions
from runtime.plugins import CheckpointError, JobStopped, Pipeline, RetryableError, RunContext, SetupContext, StepState
from spotgen.aio import AsyncClient, AsyncJob
from spotgen.auth import ApiKey
from spotgen.client import Client, Job, inline_image
from spotgen.errors import ApiError, JobFailed, Unreachable

__all__ = ["ApiError", "ApiKey", "AsyncClient", "AsyncJob", "CheckpointError", "Client", "Job", "JobFailed",
           "JobStatus", "JobStopped", "OutputOptions", "Pipeline", "RetryableError", "RunContext", "SetupContext",
           "StepState", "Unreachable", "inline_image"]

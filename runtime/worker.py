"""Running one job, from a queue message to outputs, status and notification. Knows nothing of Celery.

The message is validated again here (the queue is never trusted). Failures that would fail again on any
worker raise ``PermanentError`` after the status says ``failed``; the Celery layer then moves the message
to the dead-letter queue. Anything else (an AWS outage, say) propagates and the message is redelivered.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

from PIL import Image, PngImagePlugin
from pydantic import BaseModel, ValidationError

from runtime.config import Settings
from runtime.contract import (
    JOB_ID_RE,
    ContractError,
    JobErrorInfo,
    JobSpec,
    JobState,
    Notification,
    Progress,
    StatusDoc,
    raise_contract_error,
    utcnow,
)
from runtime.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageRefError
from runtime.models import ModelError, ModelStore
from runtime.plugins import Pipeline, Registry, RunContext, SetupContext
from runtime.progress import ProgressWriter
from runtime.storage import JobStore, output_key, result_key

log = logging.getLogger("spotgen.worker")


class PermanentError(Exception):
    """The job can never succeed as sent: it ends ``failed`` and its message goes to the dead-letter queue."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(code, message, field)  # all arguments in args: Celery pickles exceptions
        self.info = JobErrorInfo(code=code, message=message, field=field)

    def __str__(self) -> str:
        return f"{self.info.code}: {self.info.message}"


def encode_png(image: Image.Image, parameters: dict[str, Any]) -> bytes:
    """PNG with the generation parameters in a ``parameters`` text chunk; same inputs give the same bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", json.dumps(parameters, sort_keys=True, separators=(",", ":")))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """Decode an input image with explicit limits (never trust what is in the bucket)."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ("PNG", "JPEG", "WEBP"):
            raise ImageRefError(f"input images must be PNG, JPEG or WebP, not {image.format}")
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageRefError(f"input image has more than {MAX_IMAGE_PIXELS} pixels")
        return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise ImageRefError(f"input image cannot be decoded: {exc}") from None


class JobRunner:
    """Runs jobs one at a time in a worker process; pipelines are set up once and reused."""

    def __init__(self, settings: Settings, store: JobStore, sns: Any, registry: Registry,
                 models: ModelStore) -> None:
        self.settings, self.store, self.sns = settings, store, sns
        self.registry, self.models = registry, models
        self._pipelines: dict[str, Pipeline] = {}

    # -- entry point ---------------------------------------------------------------------------------------
    def run(self, message: Any) -> StatusDoc | None:
        """Run the job a queue message carries; returns the final status, or None for a duplicate."""
        spec = self.parse(message)
        doc = self.store.read_status(spec.id)
        if doc is not None and doc.state.final:
            log.info("job %s is already %s; duplicate delivery skipped", spec.id, doc.state)
            return None
        if doc is None:  # a message that did not come through the API: give it a status of its own
            now = utcnow()
            doc = StatusDoc(id=spec.id, state=JobState.queued, pipeline=spec.pipeline, model=spec.model,
                            seed=spec.seed, context=spec.context, request_hash=spec.request_hash,
                            created_at=now, updated_at=now)
        try:
            pipeline, inputs = self.prepare(spec)
            doc = self.update(doc, state=JobState.running, attempts=doc.attempts + 1, started_at=utcnow(),
                              progress=Progress(step=0, total=getattr(inputs, "steps", 0)))
            started = time.perf_counter()
            images = self.execute(spec, pipeline, inputs, doc)
        except PermanentError as exc:
            self.finish(doc, JobState.failed, [], exc.info)
            raise
        generated = time.perf_counter()
        keys = self.store_outputs(spec, images)
        final = self.finish(doc, JobState.succeeded, keys, None)
        log.info("job %s succeeded: pipeline %.3f s, storing and notifying %.3f s", spec.id,
                 generated - started, time.perf_counter() - generated)
        return final

    def parse(self, message: Any) -> JobSpec:
        try:
            return JobSpec.model_validate(message)
        except ValidationError as exc:
            try:
                raise_contract_error(exc, "message")
            except ContractError as err:
                raise PermanentError("invalid_message", err.message, err.field) from None
            raise  # unreachable

    def prepare(self, spec: JobSpec) -> tuple[Pipeline, BaseModel]:
        """Everything that can be refused before the GPU is touched: pipeline, model, inputs."""
        cls = self.registry.get(spec.pipeline)
        if cls is None:
            raise PermanentError("unknown_pipeline", f"this worker has no pipeline {spec.pipeline!r} "
                                 f"(it has {', '.join(self.registry.names())})", "pipeline")
        try:
            self.models.entry(spec.model, "base")
            inputs = cls.Inputs.model_validate(spec.inputs, context={"input_bucket": self.store.input_bucket})
        except ModelError as exc:
            raise PermanentError(exc.code, str(exc), "model") from None
        except ValidationError as exc:
            try:
                raise_contract_error(exc, "inputs")
            except ContractError as err:
                raise PermanentError("invalid_inputs", err.message, err.field) from None
        return self.pipeline(spec.pipeline), inputs

    def pipeline(self, name: str) -> Pipeline:
        if name not in self._pipelines:
            cls = self.registry.get(name)
            assert cls is not None
            instance = cls()
            instance.setup(SetupContext(device=self.settings.device, models=self.models))
            self._pipelines[name] = instance
        return self._pipelines[name]

    def execute(self, spec: JobSpec, pipeline: Pipeline, inputs: BaseModel, doc: StatusDoc) -> list[Image.Image]:
        def write_progress(step: int, total: int) -> None:
            self.update(doc, progress=Progress(step=step, total=total))

        report = ProgressWriter(write_progress, self.settings.progress_interval_s)
        ctx = RunContext(job_id=spec.id, model=spec.model, seed=spec.seed, device=self.settings.device,
                         models=self.models, report=report, fetch_image=self.fetch_image)
        try:
            images = pipeline.run(inputs, ctx)
        except (PermanentError, ModelError, ImageRefError) as exc:
            if isinstance(exc, PermanentError):
                raise
            raise PermanentError(getattr(exc, "code", "invalid_image"), str(exc)) from None
        except Exception as exc:  # a pipeline bug or a bad input it found: both fail the same way again
            log.exception("pipeline %s failed on job %s", spec.pipeline, spec.id)
            raise PermanentError("pipeline_error", f"{type(exc).__name__}: {exc}") from None
        finally:
            report.close()
        if not isinstance(images, list) or not images or not all(isinstance(i, Image.Image) for i in images):
            raise PermanentError("pipeline_error", f"pipeline {spec.pipeline!r} must return a non-empty list of "
                                 "PIL images")
        return images

    def fetch_image(self, uri: str) -> Image.Image:
        return decode_image(self.store.get_input(uri, MAX_IMAGE_BYTES))

    # -- results ----------------------------------------------------------------------------------------
    def store_outputs(self, spec: JobSpec, images: list[Image.Image]) -> list[str]:
        parameters = {"pipeline": spec.pipeline, "model": spec.model, "seed": spec.seed, **spec.inputs}
        keys = []
        for index, image in enumerate(images):
            key = output_key(spec.output_prefix, spec.id, index)
            self.store.put_output(key, encode_png(image, {**parameters, "index": index}))
            keys.append(key)
        return keys

    def update(self, doc: StatusDoc, **changes: Any) -> StatusDoc:
        """Change the running job's status document in place and write it."""
        for name, value in {**changes, "updated_at": utcnow()}.items():
            setattr(doc, name, value)
        self.store.write_status(doc)
        return doc

    def finish(self, doc: StatusDoc, state: JobState, keys: list[str], error: JobErrorInfo | None) -> StatusDoc:
        """Result document, final status, then the notification: in this order, so a client that hears the
        notification finds everything in place."""
        progress = doc.progress if error else Progress(step=doc.progress.total, total=doc.progress.total)
        now = utcnow()
        final = doc.model_copy(update={"state": state, "outputs": keys, "error": error, "progress": progress,
                                       "finished_at": now, "updated_at": now})
        self.store.put_json(result_key(doc.id), final.model_dump(mode="json"))
        self.store.write_status(final)
        self.notify(final)
        return final

    def notify(self, doc: StatusDoc) -> None:
        if not self.settings.results_topic_arn:
            return
        note = Notification(id=doc.id, state=doc.state, error=doc.error, context=doc.context,
                            outputs=[f"s3://{self.store.output_bucket}/{key}" for key in doc.outputs])
        self.sns.publish(TopicArn=self.settings.results_topic_arn, Message=note.model_dump_json(),
                         MessageAttributes={"state": {"DataType": "String", "StringValue": doc.state.value}})

    def fail_foreign(self, job_id: str | None, code: str, message: str) -> None:
        """A message the worker could not even parse: fail its job if it names one that is still open."""
        if not job_id or not JOB_ID_RE.match(job_id):
            return
        try:
            doc = self.store.read_status(job_id)
        except (ValueError, ValidationError):
            return
        if doc is not None and not doc.state.final:
            self.finish(doc, JobState.failed, [], JobErrorInfo(code=code, message=message))

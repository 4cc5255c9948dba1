"""Running one job, from a queue message to its final status. Knows nothing of Celery.

The message is validated again here (the queue is never trusted). Failures that would fail again on any
worker raise ``PermanentError`` after the status says ``failed``; the Celery layer then moves the message
to the dead-letter queue. Anything else (an AWS outage, say) propagates and the message is redelivered.

A delivery of a job that is already final does nothing but make sure its one notification went out; what a
finished job leaves behind, and why it is written only once, is the output stage's (``runtime.worker.outputs``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Any

from PIL import Image
from pydantic import BaseModel, ValidationError

from runtime.config import Settings
from runtime.contract import (
    ContractError,
    ImageRefError,
    JobErrorInfo,
    JobSpec,
    JobState,
    Progress,
    ResumeInfo,
    StatusDoc,
    raise_contract_error,
    utcnow,
)
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.ops.observe import NOOP, JobInfo, Observer, PhaseClock
from runtime.plugins import (
    JobCancelled,
    JobInterrupted,
    JobSuperseded,
    Pipeline,
    PluginError,
    Registry,
    RetryableError,
    RunContext,
    SetupContext,
    StepState,
)
from runtime.storage.jobstore import JobStore
from runtime.worker import checkpoint
from runtime.worker.checkpoint import CheckpointError, Saver
from runtime.worker.errors import PermanentError
from runtime.worker.images import fetch_image
from runtime.worker.interrupt import Interruption
from runtime.worker.jobstatus import JobEnded, StatusTracker
from runtime.worker.lease import Lease
from runtime.worker.outputs import Outputs
from runtime.worker.progress import ProgressWriter
from runtime.worker.schemas import check_schema
from runtime.worker.stages import Stage, observing, run_all
from runtime.worker.steplog import StepLog

log = logging.getLogger("spotgen.worker")


class JobRunner:
    """Runs jobs one at a time in a worker process; pipelines are set up once and reused."""

    def __init__(self, settings: Settings, store: JobStore, sns: Any, registry: Registry, models: ModelStore,
                 interruption: Interruption | None = None, observer: Observer = NOOP) -> None:
        self.settings, self.store, self.sns = settings, store, sns
        self.registry, self.models = registry, models
        self.interruption = interruption
        #: Metrics, traces and log context (``runtime.ops.telemetry``); does nothing by default.
        self.observer = observer
        self.steplog = StepLog(settings.step_log)
        self.outputs = Outputs(settings, store, sns, observer)
        self._pipelines: dict[str, Pipeline] = {}
        #: Jobs this worker stored a checkpoint of (its own attempt's), so the end knows whether to delete one.
        self._saved: set[str] = set()

    # -- entry point ---------------------------------------------------------------------------------------
    def run(self, message: Any, lease: Lease | None = None, trace_id: str | None = None) -> StatusDoc | None:
        """Run the job a queue message carries, all of it on this thread. Returns its final status, or None when
        this delivery did not end it (a duplicate, or an interruption that handed the job back)."""
        return run_all(self.begin(message, lease, trace_id))

    def begin(self, message: Any, lease: Lease | None = None, trace_id: str | None = None) -> Stage | StatusDoc | None:
        """The job up to the device: its message, status, inputs and checkpoint, read and checked. Returns the
        stage that generates, for the device thread (``runtime.worker.handoff``), or the end when there is nothing
        to generate. ``trace_id``: the trace the message carries, for logs and the status when this process
        exports no spans itself."""
        spec = self.parse(message)
        self._saved.discard(spec.id)
        stack = contextlib.ExitStack()
        job = stack.enter_context(observing(self.observer, JobInfo.of(spec, trace_id)))
        trackers: list[StatusTracker] = []

        def ended(exc: JobEnded) -> None:
            log.info("job %s is already %s; this delivery stops", spec.id, exc.doc.state)
            self.outputs.settle(trackers[0])

        def prepare() -> Any:
            if lease is not None:
                lease.start()  # here, so that its heartbeat thread runs in the job's context
            trackers.append(StatusTracker.open(self.store, spec))
            return self._prepare(spec, trackers[0], lease, job)

        return Stage(prepare, stack, job, ended)()

    def _prepare(self, spec: JobSpec, tracker: StatusTracker, lease: Lease | None, job: JobInfo) -> Any:
        doc = tracker.doc
        if doc.state.final:
            log.info("job %s is already %s; duplicate delivery skipped", spec.id, doc.state)
            self.outputs.settle(tracker)
            return None
        if self.interruption is not None and self.interruption.requested and lease is not None:
            lease.requeue()  # received just as the worker is going away: hand it on untouched
            job.outcome = "handed_back"
            return None
        if doc.cancel_requested_at is not None:
            return self.outputs.finish(tracker, JobState.cancelled, [], None)
        if self.expired(spec):
            return self.outputs.finish(tracker, JobState.expired, [], self.expired(spec))
        try:
            pipeline, inputs = self.prepare(spec)
        except PermanentError as exc:
            self.outputs.finish(tracker, JobState.failed, [], exc.info)
            raise
        resume, note = self.resume_state(spec, pipeline, doc)
        return functools.partial(self._generate, spec, tracker, lease, job, pipeline, inputs, resume, note)

    def _generate(self, spec: JobSpec, tracker: StatusTracker, lease: Lease | None, job: JobInfo,
                  pipeline: Pipeline, inputs: BaseModel, resume: StepState | None, note: str) -> Any:
        """On the device: the job's images; returns its output stage."""
        if self.expired(spec):  # its deadline passed while it waited for the device
            return self.outputs.finish(tracker, JobState.expired, [], self.expired(spec))
        doc = tracker.doc
        attempt = doc.attempts + 1
        from_step = resume.step if resume else 0
        resident = self.models.resident(spec.model)
        # Stored with the first progress report, checkpoint or the final status, whichever comes first; at once
        # when a model must load first, so that a client sees the job running while it loads.
        tracker.defer(state=JobState.running, attempts=attempt, started_at=doc.started_at or utcnow(),
                      phase="generating" if resident else "loading_model", model_cache="hit" if resident else "miss",
                      resume=ResumeInfo(attempt=attempt, from_step=from_step, note=note) if attempt > 1 else None,
                      progress=Progress(step=from_step, total=doc.progress.total or getattr(inputs, "steps", 0)),
                      trace_id=job.trace_id or doc.trace_id, loras=getattr(inputs, "loras", doc.loras))
        if not resident:
            tracker.flush()
        job.attempt, job.from_step = attempt, from_step
        self.observer.job_started(job)
        if attempt > 1:
            self.observer.resumed(job, resume is not None, doc.progress.step - from_step)
        started = time.perf_counter()
        try:
            with self.observer.phase("generate", pipeline=spec.pipeline, model=spec.model):
                images = self.execute(spec, pipeline, inputs, tracker, resume, attempt, job)
        except PermanentError as exc:
            self.outputs.finish(tracker, JobState.failed, [], exc.info)
            raise
        except JobCancelled:
            log.info("job %s cancelled at step %d", spec.id, tracker.doc.progress.step)
            return self.outputs.finish(tracker, JobState.cancelled, [], None)
        except JobSuperseded:
            raise JobEnded(tracker.ended or tracker.doc) from None
        except JobInterrupted:
            tracker.write(state=JobState.queued, phase=None, interruptions=tracker.doc.interruptions + 1)
            if lease is not None:
                lease.requeue()
            log.warning("job %s interrupted at step %d and handed back", spec.id, tracker.doc.progress.step)
            job.outcome = "interrupted"
            return None
        except Exception:  # the delivery fails (SQS tries again): the attempt goes on record first, if S3 answers
            with contextlib.suppress(Exception):
                tracker.flush()
            raise
        generated = time.perf_counter()
        job.images = len(images)
        # A checkpoint may exist if this attempt saved one or an earlier attempt ran; else no DELETE is needed.
        saved = attempt > 1 or spec.id in self._saved

        def store() -> StatusDoc:  # the output stage, on the output thread while the next job generates
            stored = time.perf_counter()
            retry = self.outputs.stage()  # one budget for the whole output stage
            with self.observer.phase("store_outputs", images=len(images)):
                keys = self.outputs.store_outputs(spec, images, retry)
            final = self.outputs.finish(tracker, JobState.succeeded, keys, None, retry, checkpoint=saved)
            log.info("job %s succeeded: pipeline %.3f s, storing and notifying %.3f s (%.3f s after the images)",
                     spec.id, generated - started, time.perf_counter() - stored, time.perf_counter() - generated)
            return final

        return store

    @staticmethod
    def expired(spec: JobSpec) -> JobErrorInfo | None:
        """Why the job must not start, if its deadline (``expires_at``) has passed."""
        if spec.expires_at is None or utcnow() < spec.expires_at:
            return None
        return JobErrorInfo(code="expired", message=f"the job's deadline {spec.expires_at.isoformat()} passed "
                            "before a worker could start it", field="expires_at")

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
        check_schema(spec, cls)  # before the inputs: another version of them may refuse what the API accepted
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

    def setup(self) -> None:
        """Set up every registered pipeline before the first job, so that a plugin that cannot run here (an
        attention kernel this device lacks, a missing dependency) stops start-up instead of failing jobs."""
        for name in self.registry.names():
            try:
                self.pipeline(name)
            except (ModelError, PluginError):
                raise
            except Exception as exc:
                raise PluginError(f"pipeline {name!r} failed to set up: {type(exc).__name__}: {exc}") from exc

    def preload(self, model_ids: list[str]) -> None:
        """Load the configured models before the first job, so a missing or broken model stops start-up instead
        of failing every job that names it. ``ModelError`` says which model and why. Each model is loaded by the
        first pipeline (in registry order) whose ``load`` takes models of its kind."""
        for model_id in model_ids:
            entry = self.models.catalog.models.get(model_id)
            if entry is None:
                raise ModelError("unknown_model", f"preload model {model_id!r} is not in the catalog "
                                 f"{self.models.models_dir / 'catalog.json'}")
            started = time.perf_counter()
            try:
                loaded = any(self.pipeline(name).load(model_id, entry.kind) for name in self.registry.names())
            except ModelError:
                raise
            except Exception as exc:  # a corrupt file, a config diffusers cannot read...
                raise ModelError("model_load_failed", f"preload model {model_id!r} failed to load: "
                                 f"{type(exc).__name__}: {exc}") from exc
            if not loaded:
                raise ModelError("model_not_loadable", f"preload model {model_id!r} is a {entry.kind} model, and no "
                                 f"pipeline of this worker loads {entry.kind} models "
                                 f"(it has {', '.join(self.registry.names())})")
            log.info("preloaded model %s in %.2f s", model_id, time.perf_counter() - started)

    def pipeline(self, name: str) -> Pipeline:
        if name not in self._pipelines:
            cls = self.registry.get(name)
            assert cls is not None
            instance = cls()
            instance.setup(SetupContext(device=self.settings.device, models=self.models))
            self._pipelines[name] = instance
        return self._pipelines[name]

    # -- checkpoints ----------------------------------------------------------------------------------
    def resume_state(self, spec: JobSpec, pipeline: Pipeline, doc: StatusDoc) -> tuple[StepState | None, str]:
        """The checkpoint to continue from, if there is a usable one, and a note for the status."""
        again = "; restarted from the beginning"
        if not type(pipeline).checkpoints:
            return None, (f"pipeline {spec.pipeline!r} does not save checkpoints{again}" if doc.attempts else "")
        if not doc.attempts:  # no attempt has started (each records itself before it saves): nothing to read
            return None, ""
        try:
            data = self.store.get_checkpoint(spec.id, checkpoint.MAX_CHECKPOINT_BYTES)
            if data is None:
                return None, (f"no checkpoint was saved{again}" if doc.attempts else "")
            state = checkpoint.load(data, spec.fingerprint())
        except (CheckpointError, ValueError) as exc:
            log.warning("job %s: checkpoint ignored: %s", spec.id, exc)
            return None, f"checkpoint ignored ({exc}){again}"
        if state.step == 0:  # an attempt whose state could not be saved left only why (``execute``'s on_step)
            reason = state.values.get("unsaved")
            return None, f"{reason if isinstance(reason, str) and reason else 'no checkpoint was saved'}{again}"
        log.info("job %s resumes at step %d", spec.id, state.step)
        return state, f"resumed at step {state.step} from a checkpoint"

    def execute(self, spec: JobSpec, pipeline: Pipeline, inputs: BaseModel, tracker: StatusTracker,
                resume: StepState | None, attempt: int, job: JobInfo | None = None) -> list[Image.Image]:
        def write_progress(step: int, total: int) -> None:
            tracker.write(progress=Progress(step=step, total=total), phase="generating")

        job = job or JobInfo.of(spec)
        report = ProgressWriter(write_progress, self.settings.progress_interval_s)
        def store_checkpoint(data: bytes) -> None:
            tracker.flush()  # the attempt goes on record before its checkpoint, so the next one looks for it
            self.put_checkpoint(job, data)

        saver = Saver(store_checkpoint)
        fingerprint, every = spec.fingerprint(), self.settings.checkpoint_every
        clock = PhaseClock()

        unsaved: list[str] = []  # why this run's state cannot be checkpointed, once a try has failed

        def dump(state: Any) -> bytes | None:
            if unsaved:
                return None
            try:
                return checkpoint.dump(state(), fingerprint)
            except CheckpointError as exc:  # the pipeline cannot save this run (its sampler, say): restart instead
                sampler = getattr(inputs, "scheduler", None)
                what = f"sampler {sampler}" if isinstance(sampler, str) else f"pipeline {spec.pipeline!r}"
                unsaved.append(f"{what} cannot be checkpointed ({exc})")
                log.warning("job %s: %s; an interruption will restart it from the beginning", spec.id, unsaved[0])
                return None

        def on_step(step: int, total: int, state: Any) -> None:
            self.observer.step(job, step, total, clock.step(step, total))
            report(step, total)
            self.steplog.write(spec.id, attempt, step)
            if tracker.ended is not None:
                raise JobSuperseded
            if tracker.cancel_requested:
                raise JobCancelled
            if state is None or step >= total:  # nothing to save, or only decoding is left: finish instead
                return
            if self.interruption is not None and self.interruption.requested:
                tracker.doc.progress = Progress(step=step, total=total)
                data = dump(state)
                if data is None:
                    log.warning("job %s interrupted at step %d without a checkpoint of it; the next attempt %s",
                                spec.id, step, f"resumes at step {resume.step} again" if resume else "restarts")
                if data is None and resume is None:  # a step-0 checkpoint tells the next attempt why it restarts
                    data = checkpoint.dump(StepState(step=0, values={"unsaved": unsaved[0]}), fingerprint)
                if data is not None and not saver.save(data, wait=True):
                    log.error("job %s: the interruption checkpoint could not be stored", spec.id)
                raise JobInterrupted
            if every and step % every == 0 and (data := dump(state)) is not None:
                saver.save(data)

        fetch = functools.partial(fetch_image, self.store, self.settings.store_retry_s)
        ctx = RunContext(job_id=spec.id, model=spec.model, seed=spec.seed, device=self.settings.device,
                         models=self.models, report=on_step, fetch_image=fetch, resume_from=resume,
                         on_phase=clock.mark)
        try:
            images = pipeline.run(inputs, ctx)
        except CheckpointError as exc:  # the checkpoint passed its checks but does not fit this run
            if resume is None:
                raise PermanentError("pipeline_error", f"CheckpointError: {exc}") from None
            log.warning("job %s: checkpoint ignored: %s; restarting from the beginning", spec.id, exc)
            ctx.resume_from = None
            clock.reset()
            images = pipeline.run(inputs, ctx)
        except (PermanentError, RetryableError, ModelError, ImageRefError) as exc:
            if isinstance(exc, PermanentError | RetryableError):
                raise
            raise PermanentError(getattr(exc, "code", "invalid_image"), str(exc)) from None
        except ContractError as exc:  # an input only the model can judge (a LoRA's family, a prompt too long)
            raise PermanentError(exc.code, exc.message, exc.field) from None
        except Exception as exc:  # a pipeline bug or a bad input it found: both fail the same way again
            log.exception("pipeline %s failed on job %s", spec.pipeline, spec.id)
            raise PermanentError("pipeline_error", f"{type(exc).__name__}: {exc}") from None
        finally:
            report.close()
            saver.close()
            self.observer.phases(job, clock.phases())
        if not isinstance(images, list) or not images or not all(isinstance(i, Image.Image) for i in images):
            raise PermanentError("pipeline_error", f"pipeline {spec.pipeline!r} must return a non-empty list of "
                                 "PIL images")
        return images

    def put_checkpoint(self, job: JobInfo, data: bytes) -> None:
        """Store a checkpoint (on the upload thread), timed for metrics and traced as a child of the job."""
        started = time.perf_counter()
        self._saved.add(job.id)  # before the PUT: one that fails after S3 stored it must still be deleted
        with self.observer.phase("checkpoint", job, bytes=len(data)):
            self.store.put_checkpoint(job.id, data)
        self.observer.checkpoint_written(job, len(data), time.perf_counter() - started)

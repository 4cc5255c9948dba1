"""Running one job, stage by stage, from a queue message to its final status. Knows nothing of Celery.

``runtime.worker.job`` draws the path; this module runs its stages (``receive``, then ``advance`` through
prepare, generate and store). The message is validated again here (the queue is never trusted). A stage that
raises goes through the failure policy (``runtime.worker.failures``): the verdict is recorded in the status
(``failed``, or left for the next delivery) and on the job, and the exception goes on to the holder of the
message, which dead-letters the message or leaves it to come back.

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
    RunContext,
    SetupContext,
)
from runtime.storage.jobstore import JobStore
from runtime.worker import failures
from runtime.worker.checkpoint import CheckpointError, Saver
from runtime.worker.errors import PermanentError
from runtime.worker.handback import HandBack
from runtime.worker.images import fetch_image
from runtime.worker.interrupt import Interruption
from runtime.worker.job import Job
from runtime.worker.jobstatus import JobEnded, StatusTracker
from runtime.worker.lease import Lease
from runtime.worker.outputs import Outputs
from runtime.worker.progress import ProgressWriter
from runtime.worker.resume import resume_state
from runtime.worker.schemas import check_schema
from runtime.worker.stages import Stage, observing
from runtime.worker.steplog import StepLog
from runtime.worker.steps import StepHook

log = logging.getLogger("spotgen.worker")


class JobRunner:
    """Runs jobs one at a time in a worker process; pipelines are set up once and reused."""

    def __init__(self, settings: Settings, store: JobStore, sns: Any, registry: Registry, models: ModelStore,
                 interruption: Interruption | None = None, observer: Observer = NOOP) -> None:
        self.settings, self.store, self.sns = settings, store, sns
        self.registry, self.models = registry, models
        self.interruption = interruption
        #: The interruption policy (``runtime.worker.handback``).
        self.handback = HandBack(interruption)
        #: Metrics, traces and log context (``runtime.ops.telemetry``); does nothing by default.
        self.observer = observer
        self.steplog = StepLog(settings.step_log)
        self.outputs = Outputs(settings, store, sns, observer)
        self._pipelines: dict[str, Pipeline] = {}
        #: Jobs this worker stored a checkpoint of (its own attempt's), so the end knows whether to delete one.
        self._saved: set[str] = set()

    # -- the path ------------------------------------------------------------------------------------------
    def run(self, message: Any, lease: Lease | None = None, trace_id: str | None = None) -> StatusDoc | None:
        """Run the job a queue message carries, all of it on this thread. Returns its final status, or None when
        this delivery did not end it (a duplicate, or an interruption that handed the job back)."""
        job = self.receive(message, lease, trace_id)
        while not job.done:
            self.advance(job)
        return job.final

    def receive(self, message: Any, lease: Lease | None = None, trace_id: str | None = None) -> Job:
        """The job a message carries, parsed (``PermanentError`` when it is not one), its observation begun.
        ``trace_id``: the trace the message carries, for logs and the status when this process exports no spans."""
        spec = self.parse(message)
        self._saved.discard(spec.id)
        stack = contextlib.ExitStack()
        info = stack.enter_context(observing(self.observer, JobInfo.of(spec, trace_id)))
        return Job(spec, lease, info, stack)

    def advance(self, job: Job) -> None:
        """Run the job's next stage on this thread; ``job.stage`` becomes the one after. The last one ends the
        job's observation. A failure is judged (``fail``) and raised again, for the holder of the message."""
        run = {Stage.prepare: self._prepare, Stage.generate: self._generate, Stage.store: self._store}[job.stage]
        with job.observation:
            try:
                try:
                    job.stage = run(job)
                except Exception as exc:
                    if isinstance(exc, JobEnded):
                        raise
                    job.stage = Stage.done
                    self.fail(job, exc)
                    raise
            except JobEnded as exc:  # another delivery, or the client, ended the job meanwhile
                job.stage, job.verdict = Stage.done, None
                log.info("job %s is already %s; this delivery stops", job.id, exc.doc.state)
                assert job.tracker is not None
                self.outputs.settle(job.tracker)
                return
            if job.final is not None:
                job.info.outcome = job.final.state.value
            if not job.done:
                job.observation = job.observation.pop_all()  # open until the last stage

    def fail(self, job: Job, exc: Exception) -> None:
        """Apply the failure policy to a stage's exception: ``job.verdict``, and the status that records it:
        ``failed`` with the error when the job ends, else ``retrying`` with the reason. Raises what recording an
        end raised, if it did (that is then the failure: an outage, say)."""
        job.verdict = verdict = failures.judge(failures.classify(exc), job.receive_count,
                                               self.settings.max_receive_count)
        tracker = job.tracker
        if tracker is not None and verdict.final and not tracker.doc.state.final:
            try:
                job.final = self.outputs.finish(tracker, JobState.failed, [], verdict.error)
            except JobEnded:
                raise
            except Exception as error:
                job.info.outcome = "error"
                job.verdict = failures.judge(failures.classify(error), job.receive_count,
                                             self.settings.max_receive_count)
                self.observer.job_failure(job.info, job.verdict.failure.kind, "failed" if job.verdict.final
                                          else "retried")
                raise error from exc
        elif tracker is not None and not tracker.doc.state.final:  # one try: S3 may be what failed
            with contextlib.suppress(Exception):
                tracker.write(state=JobState.retrying, phase=None, error=verdict.failure.info)
        job.info.outcome = job.info.outcome or ("failed" if job.final is not None else "error")
        self.observer.job_failure(job.info, verdict.failure.kind, "failed" if verdict.final else "retried")
        if verdict.failure.code == "device_error" and self.interruption is not None:
            self.interruption.leave(f"job {job.id} lost the device ({verdict.failure.message})")
        log.warning("job %s: %s failure (%s); %s", job.id, verdict.failure.kind, verdict.failure.message,
                    "it ends failed" if verdict.final else
                    f"retried in about {verdict.retry_in_s or 0:.0f} s (delivery {job.receive_count} of "
                    f"{self.settings.max_receive_count})")

    def _prepare(self, job: Job) -> Stage:
        """The job up to the device: its status, inputs and checkpoint, read and checked."""
        spec = job.spec
        if job.lease is not None:
            job.lease.start()  # here, so that its heartbeat thread runs in the job's context
        job.tracker = tracker = StatusTracker.open(self.store, spec)
        doc = tracker.doc
        if doc.state.final:
            log.info("job %s is already %s; duplicate delivery skipped", spec.id, doc.state)
            self.outputs.settle(tracker)
            return Stage.done
        if self.handback.unstarted(job):  # received just as the worker is going away
            return Stage.done
        if doc.cancel_requested_at is not None:
            job.final = self.outputs.finish(tracker, JobState.cancelled, [], None)
            return Stage.done
        if self.expired(spec):
            job.final = self.outputs.finish(tracker, JobState.expired, [], self.expired(spec))
            return Stage.done
        job.pipeline, job.inputs = self.prepare(spec)
        job.resume, job.note = resume_state(self.store, spec, job.pipeline, doc)
        return Stage.generate

    def _generate(self, job: Job) -> Stage:
        """On the device: the job's images."""
        spec, tracker = job.spec, job.tracker
        assert tracker is not None and job.pipeline is not None and job.inputs is not None
        if self.expired(spec):  # its deadline passed while it waited for the device
            job.final = self.outputs.finish(tracker, JobState.expired, [], self.expired(spec))
            return Stage.done
        doc, inputs, resume = tracker.doc, job.inputs, job.resume
        job.attempt = attempt = doc.attempts + 1
        from_step = resume.step if resume else 0
        resident = self.models.resident(spec.model)
        # Stored with the first progress report, checkpoint or the final status, whichever comes first; at once
        # when a model must load first, so that a client sees the job running while it loads.
        tracker.defer(state=JobState.running, attempts=attempt, started_at=doc.started_at or utcnow(),
                      phase="generating" if resident else "loading_model", model_cache="hit" if resident else "miss",
                      resume=ResumeInfo(attempt=attempt, from_step=from_step, note=job.note) if attempt > 1 else None,
                      progress=Progress(step=from_step, total=doc.progress.total or getattr(inputs, "steps", 0)),
                      trace_id=job.info.trace_id or doc.trace_id, loras=getattr(inputs, "loras", doc.loras),
                      error=None)  # a retried job's reason is past
        if doc.started_at is None and self.outputs.webhooks.wants(doc, "started"):  # best effort, off this thread
            self.outputs.webhooks.started(tracker)
        if not resident:
            tracker.flush()
        job.info.attempt, job.info.from_step = attempt, from_step
        self.observer.job_started(job.info)
        if attempt > 1:
            self.observer.resumed(job.info, resume is not None, doc.progress.step - from_step)
        job.started = time.perf_counter()
        try:
            with self.observer.phase("generate", pipeline=spec.pipeline, model=spec.model):
                job.images = self.execute(job)
        except JobCancelled:
            log.info("job %s cancelled at step %d", spec.id, tracker.doc.progress.step)
            job.final = self.outputs.finish(tracker, JobState.cancelled, [], None)
            return Stage.done
        except JobSuperseded:
            raise JobEnded(tracker.ended or tracker.doc) from None
        except JobInterrupted:
            self.handback.interrupted(job)
            return Stage.done
        job.mark_generated()
        job.info.images = len(job.images)
        # A checkpoint may exist if this attempt saved one or an earlier attempt ran; else no DELETE is needed.
        job.checkpointed = attempt > 1 or spec.id in self._saved
        return Stage.store

    def _store(self, job: Job) -> Stage:
        """The output stage, on the job's thread once it gave the device up (while the next job generates)."""
        spec, tracker = job.spec, job.tracker
        assert tracker is not None
        stored = time.perf_counter()
        retry = self.outputs.stage()  # one budget for the whole output stage
        with self.observer.phase("store_outputs", images=len(job.images)):
            keys = self.outputs.store_outputs(spec, job.images, retry)
        job.final = self.outputs.finish(tracker, JobState.succeeded, keys, None, retry, checkpoint=job.checkpointed)
        log.info("job %s succeeded: pipeline %.3f s, storing and notifying %.3f s (%.3f s after the images)",
                 spec.id, job.generated - job.started, time.perf_counter() - stored,
                 time.perf_counter() - job.generated)
        return Stage.done

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
            if spec.model not in cls.builtin_models:
                self.models.entry(spec.model, cls.model_kind)
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
        """Load these models now, one after another, each by the first pipeline (in registry order) whose
        ``load`` takes its kind; ``ModelError`` says which model and why (``runtime.worker.preload``)."""
        from runtime.worker.preload import check_catalog, load_model

        check_catalog(self, model_ids)
        for model_id in model_ids:
            load_model(self, model_id)

    def pipeline(self, name: str) -> Pipeline:
        if name not in self._pipelines:
            cls = self.registry.get(name)
            assert cls is not None
            instance = cls()
            instance.setup(SetupContext(device=self.settings.device, models=self.models))
            self._pipelines[name] = instance
        return self._pipelines[name]

    def execute(self, job: Job) -> list[Image.Image]:
        """The pipeline's run, with its step hook (``runtime.worker.steps``). What it raises is the pipeline's
        failure (``failures.PipelineFailed``), classified by the failure policy; a checkpoint that passed its
        checks but does not fit the run restarts it from the beginning."""
        spec, tracker, pipeline, inputs = job.spec, job.tracker, job.pipeline, job.inputs
        assert tracker is not None and pipeline is not None and inputs is not None

        def write_progress(step: int, total: int, phase: str | None = None) -> None:
            tracker.write(progress=Progress(step=step, total=total, phase=phase), phase="generating")

        report = ProgressWriter(write_progress, self.settings.progress_interval_s)
        saver = Saver(functools.partial(self._store_checkpoint, job))
        clock = PhaseClock()
        hook = StepHook(job, self.observer, self.steplog, self.handback, report, saver, self.settings.checkpoint_every,
                        clock)
        fetch = functools.partial(fetch_image, self.store, self.settings.store_retry_s)
        ctx = RunContext(job_id=spec.id, model=spec.model, seed=spec.seed, device=self.settings.device,
                         models=self.models, report=hook, fetch_image=fetch, resume_from=job.resume,
                         on_phase=clock.mark, on_begin_phase=report.begin)
        try:
            images = self._run_pipeline(job, pipeline, inputs, ctx, clock)
        finally:
            report.close()
            saver.close()
            self.observer.phases(job.info, clock.phases())
        if not isinstance(images, list) or not images or not all(isinstance(i, Image.Image) for i in images):
            raise PermanentError("pipeline_error", f"pipeline {spec.pipeline!r} must return a non-empty list of "
                                 "PIL images")
        return images

    def _run_pipeline(self, job: Job, pipeline: Pipeline, inputs: BaseModel, ctx: RunContext,
                      clock: PhaseClock) -> Any:
        """The pipeline's run; whatever it raises, on every try, goes through the failure policy. A checkpoint
        that passed its checks but does not fit the run restarts it from step 0; out of memory frees what it can
        and runs it once more."""
        memory_freed = False
        while True:
            try:
                return pipeline.run(inputs, ctx)
            except Exception as exc:
                if isinstance(exc, CheckpointError) and ctx.resume_from is not None:
                    log.warning("job %s: checkpoint ignored: %s; restarting from the beginning", job.id, exc)
                    ctx.resume_from = None
                    clock.reset()
                    continue
                failure = failures.classify(exc, in_pipeline=True)
                if failure.code == "out_of_memory" and not memory_freed:
                    memory_freed = True
                    freed = failures.free_memory(self.models, keep=(job.spec.model,))
                    log.warning("job %s: out of memory (%s); freed %d bytes of idle models and the device cache, "
                                "running it again", job.id, exc, freed)
                    self.observer.job_failure(job.info, failure.kind, "recovered")
                    clock.reset()
                    continue
                if failure.code == "pipeline_error" and not isinstance(exc, failures.PipelineFailed):
                    log.exception("pipeline %s failed on job %s", job.spec.pipeline, job.id)
                raise failures.PipelineFailed(failure) from exc

    def _store_checkpoint(self, job: Job, data: bytes) -> None:
        """On the upload thread: the attempt goes on record before its checkpoint, so the next one looks for it."""
        assert job.tracker is not None
        job.tracker.flush()
        self.put_checkpoint(job.info, data)

    def put_checkpoint(self, job: JobInfo, data: bytes) -> None:
        """Store a checkpoint (on the upload thread), timed for metrics and traced as a child of the job."""
        started = time.perf_counter()
        self._saved.add(job.id)  # before the PUT: one that fails after S3 stored it must still be deleted
        with self.observer.phase("checkpoint", job, bytes=len(data)):
            self.store.put_checkpoint(job.id, data)
        self.observer.checkpoint_written(job, len(data), time.perf_counter() - started)

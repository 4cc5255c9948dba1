"""Preloading: the ``SPOTGEN_PRELOAD`` models loaded before the first job, or the first one before it and the rest
while the worker serves (``SPOTGEN_SERVE_AFTER_PRELOAD``).

A replacement node that waits for every preload model holds back the jobs its first model could already serve,
for as long as the others take to load (Flux's transformer and T5 are tens of gigabytes). With ``first``, the
worker takes jobs once the first model is loaded and loads the rest on a thread of its own, and no job waits
longer than it would on a worker that preloads nothing:

- a job for a loaded model runs at once;
- a job for the model being loaded waits for that load, never starts a second one: the model store loads each
  key once, and a second caller waits on that key's own lock (``ModelStore.get``), so memory holds one copy;
- a job for a preload model not loaded yet loads it itself, as any worker would, and the preload later finds it
  loaded (a hit, no second load);
- a job for any other model loads it as usual.

What this does cost: while a job runs, the preload's load shares the disk, the CPU and the device with it.

Why the first model before any job, not none: the device, the loaders and the node cache are then proven on a
real model before a message is taken (a worker that cannot load anything stops start-up as before, exit 1), and
readiness means a job can be served from memory now. The catalog is checked for every preload id first, so a
typo stops start-up at once whichever the setting.

The first preload model's fetch into the node cache (tier 0 to 1) starts before the pipelines are imported, on a
thread of its own (``fetch_ahead``): a process spends seconds importing torch and diffusers, while the fetch
waits on EFS or S3, so overlapping them takes the shorter off a new node's time to its first image. Only the
first: a later one's fetch could evict it from a small node cache before it loads. A fetch that fails there is
only logged; the preload's own fetch then tries again and reports what is wrong.

A preload model that fails to load keeps today's rule: the worker does not serve with it missing. Before the
first job that is start-up failing (exit 1, with the reason); on the thread, readiness turns false at once (the
``/readyz`` body names the model and why), and once the consumer has started the worker leaves the way a drain
does (no more intake, the jobs in hand finish or are handed back) and exits 1 with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from runtime.models.catalog import ModelError

if TYPE_CHECKING:
    from runtime.models.store import ModelStore
    from runtime.worker.runner import JobRunner

log = logging.getLogger("spotgen.worker")

State = Literal["waiting", "loading", "loaded", "failed"]


class PreloadReport(BaseModel):
    """The preload models as ``/readyz`` reports them (its body's ``models``), each in one list."""

    loaded: list[str] = Field(default_factory=list)
    #: Being loaded now, by the preload (a job for one of these waits for that load).
    loading: list[str] = Field(default_factory=list)
    #: Not started yet (a job for one of these loads it itself).
    waiting: list[str] = Field(default_factory=list)
    #: Model id: why it failed to load.
    failed: dict[str, str] = Field(default_factory=dict)


def fetch_ahead(store: ModelStore, model_ids: list[str]) -> threading.Thread | None:
    """Fetch ``model_ids`` into the store's node cache on a thread; None where there is none (or nothing to do).
    A second fetch of a model (the preload's, a job's) waits for this one's and finds it copied: the node cache
    locks each model across threads and processes."""
    if store.node_cache is None or not model_ids:
        return None

    def fetch() -> None:
        for model_id in model_ids:
            try:
                entry = store.catalog.models.get(model_id)
                if entry is not None:  # an unknown id is the preload's error to report
                    store.source(model_id, entry.kind)
            except Exception as exc:  # noqa: BLE001 - the preload fetches it again and says what is wrong
                log.info("model %s: fetch ahead of the preload failed (%s); the preload fetches it", model_id, exc)

    thread = threading.Thread(target=fetch, name="preload-fetch", daemon=True)
    thread.start()
    return thread


def check_catalog(runner: JobRunner, model_ids: list[str]) -> None:
    """Every preload id is in the catalog: a typo must stop start-up before any load, not minutes later."""
    for model_id in model_ids:
        if runner.models.catalog.models.get(model_id) is None:
            raise ModelError("unknown_model", f"preload model {model_id!r} is not in the catalog "
                             f"{runner.models.models_dir / 'catalog.json'}")


def load_model(runner: JobRunner, model_id: str) -> None:
    """Load one preload model through the first pipeline (in registry order) whose ``load`` takes its kind.
    ``ModelError`` says which model and why, so that it can stop start-up instead of failing every job."""
    check_catalog(runner, [model_id])
    entry = runner.models.catalog.models[model_id]
    names = runner.registry.names()
    started = time.perf_counter()
    try:
        loaded = any(runner.pipeline(name).load(model_id, entry.kind) for name in names)
    except ModelError:
        raise
    except Exception as exc:  # a corrupt file, a config diffusers cannot read...
        raise ModelError("model_load_failed", f"preload model {model_id!r} failed to load: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not loaded:
        raise ModelError("model_not_loadable", f"preload model {model_id!r} is a {entry.kind} model, and no "
                         f"pipeline of this worker loads {entry.kind} models (it has {', '.join(names)})")
    log.info("preloaded model %s in %.2f s", model_id, time.perf_counter() - started)


class Preload:
    """One worker's preload: ``start`` loads what must be loaded before the first job and starts a thread for the
    rest; ``report`` is what ``/readyz`` shows. ``on_failure`` is called (once the worker serves: ``serving``)
    when a model loaded on the thread fails."""

    def __init__(self, runner: JobRunner, model_ids: list[str], serve: Literal["all", "first"] = "all",
                 on_failure: Callable[[ModelError], None] | None = None) -> None:
        self.runner, self.serve, self.on_failure = runner, serve, on_failure
        self.model_ids = list(dict.fromkeys(model_ids))
        self._states: dict[str, State] = dict.fromkeys(self.model_ids, "waiting")
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Set once the worker consumes (Celery's ``worker_ready``): leaving before that could kill start-up.
        self.serving = threading.Event()
        #: The load on the thread that failed, if one did: the worker then exits 1.
        self.failure: ModelError | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Check the catalog for every id, load the models the setting wants before the first job (raising
        ``ModelError`` as start-up's failure), and the rest on a thread."""
        check_catalog(self.runner, self.model_ids)
        now = self.model_ids if self.serve == "all" else self.model_ids[:1]
        for model_id in now:
            self._load(model_id)
        rest = self.model_ids[len(now):]
        if not rest:
            return
        log.info("serving with %s loaded; loading %s meanwhile", ", ".join(now), ", ".join(rest))
        self.thread = threading.Thread(target=self._background, args=(rest,), name="preload", daemon=True)
        self.thread.start()

    def report(self) -> PreloadReport:
        """Where each preload model stands. One the preload has not reached yet but a job loaded shows loaded."""
        with self._lock:
            states, errors = dict(self._states), dict(self._errors)
        report = PreloadReport(failed=errors)
        for model_id, state in states.items():
            if state == "waiting" and self.runner.models.resident(model_id):
                state = "loaded"
            if state != "failed":
                getattr(report, state).append(model_id)
        return report

    def _load(self, model_id: str) -> None:
        self._set(model_id, "loading")
        try:
            load_model(self.runner, model_id)
        except ModelError as exc:
            self._set(model_id, "failed", str(exc))
            raise
        self._set(model_id, "loaded")

    def _background(self, rest: list[str]) -> None:
        started = time.perf_counter()
        for model_id in rest:
            try:
                self._load(model_id)
            except ModelError as exc:
                self.failure = exc
                log.error("spotgen worker: cannot serve without preload model %s: %s; the worker leaves (exit 1)",
                          model_id, exc)
                self.serving.wait()
                if self.on_failure is not None:
                    self.on_failure(exc)
                return
        log.info("preload finished while serving: %s loaded in %.2f s", ", ".join(rest),
                 time.perf_counter() - started)

    def _set(self, model_id: str, state: State, error: str | None = None) -> None:
        with self._lock:
            self._states[model_id] = state
            if error is not None:
                self._errors[model_id] = error

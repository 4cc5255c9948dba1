"""Shared fixtures: tiny models built once, and the embedded stack as real processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.inbox import Inbox
from tests.zygote import SOCKET_VARIABLE, Forked, Zygote

ROOT = Path(__file__).resolve().parent.parent
# One torch thread per process, set before anything imports torch and inherited by every worker the tests start:
# the suite runs pytest and several workers on 2 cores, and torch's default of one thread per core makes them
# spin against each other (measured: 88 s against 6 s for tests/pipelines/test_inputs_matter.py under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, the controller starts the run's one worker zygote (tests/zygote.py) before its test
    processes start, so that they share it: the worker's code is imported once per run, not once per process."""
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        os.environ[SOCKET_VARIABLE] = zygote().start()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadscope`` (make test): whole modules, and the modules that share a stack together
    (tests/scheduling.py)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from tests.scheduling import StackScheduling

    return StackScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest units of work first (tests/scheduling.py's ``FIRST``, then the other harness runs marked
    ``heavy``; a stable sort keeps the rest in order), so that with several test processes they overlap the short
    tests instead of ending the run alone."""
    from tests.scheduling import order

    items.sort(key=lambda item: (order(item.nodeid), item.get_closest_marker("heavy") is None))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per run, not once per test process (5 s of CPU each): under xdist, in the run's temporary
    directory that the processes share; ``build_tiny_models`` locks, so the first builds and the others wait and
    read. No test writes there."""
    from runtime.models.tiny import build_tiny_models

    base = tmp_path_factory.getbasetemp()
    path = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "tiny-models"
    build_tiny_models(path)
    return path


@pytest.fixture(scope="session")
def emulator() -> Iterator[str]:
    """The AWS emulator alone (moto's server on loopback), for tests of one client against SQS or S3 without a
    stack; its endpoint URL. Tests keep apart by their own queue and bucket names."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def two_models(tiny_models: Path, tmp_path: Path) -> Path:
    """`tiny-sd-b`: the same weights under a second id, as a second model."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    catalog = json.loads((models / "catalog.json").read_text())
    catalog["models"]["tiny-sd-b"] = {**catalog["models"]["tiny-sd"], "aliases": []}  # an alias names one model
    (models / "catalog.json").write_text(json.dumps(catalog))
    return models


@contextlib.contextmanager
def dev_stack(settings: Any, log_dir: Path, workers: int = 0, **options: Any) -> Iterator[Any]:
    """A DevStack in this process with ``workers`` workers forked from the zygote (``settings``: its
    ``Settings``). The environment it exports to this process (as a Lambda's) is put back afterwards, and its warm
    "Lambdas" are forgotten, so later tests inherit neither."""
    from lambdas.common import deployment
    from runtime.local.devstack import EMULATOR_CREDENTIALS, DevStack

    saved = dict(os.environ)
    stack = DevStack(settings, port=0, aws_port=0, log_dir=log_dir, workers=0, **options)
    procs: list[Forked] = []
    try:
        stack.start()
        procs = fork_workers({**os.environ, "PYTHONPATH": str(ROOT), **stack.settings.to_env(),
                              **EMULATOR_CREDENTIALS}, log_dir, workers, stack.pool_queues)
        yield stack
    finally:
        stop_workers(procs)
        stack.stop()
        deployment.cache_clear()
        os.environ.clear()
        os.environ.update(saved)


def in_process_stack(models: Path, log_dir: Path, settings: dict[str, Any] | None = None,
                     **options: Any) -> contextlib.AbstractContextManager[Any]:
    """``dev_stack`` serving `tiny-sd` and `tiny-sd-b`, with one worker unless ``workers`` says otherwise."""
    from runtime.config import Settings

    base = Settings(models_dir=models, models=["tiny-sd", "tiny-sd-b"], poll_wait_s=1, **(settings or {}))
    return dev_stack(base, log_dir, **{"workers": 1, **options})


def fork_workers(env: dict[str, str], log_dir: Path, workers: int, pools: dict[str, dict[str, str]]) -> list[Forked]:
    """The workers a dev stack starts (``worker-{i}.log``, and ``worker-{pool}-{i}.log`` for each pool), forked
    from the zygote instead, which has imported the worker's code once (tests/zygote.py)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for index in range(workers):
        procs.append(zygote().spawn(env, log_dir / f"worker-{index}.log"))
        procs += [zygote().spawn({**env, **queue}, log_dir / f"worker-{pool}-{index}.log")
                  for pool, queue in pools.items()]
    return procs


def stop_workers(procs: list[Forked], timeout: float = 60) -> None:
    """Warm shutdown (SIGTERM) of all at once, then kill what is left: as a dev stack stops its workers."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stack:
    """A running `spotgen dev` process, its workers and clients for the emulator it serves."""

    def __init__(self, state: dict[str, Any], proc: subprocess.Popen[bytes], log_dir: Path) -> None:
        self.state, self.proc, self.log_dir = state, proc, log_dir
        self.workers: list[Forked] = []
        self.api_url: str = state["api_url"]
        self.env: dict[str, str] = state["env"]
        endpoint = state["aws_endpoint_url"]
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name=self.env["SPOTGEN_REGION"])
        self.s3 = session.client("s3", endpoint_url=endpoint)
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        self.sns = session.client("sns", endpoint_url=endpoint)

    @functools.cached_property
    def inbox(self) -> Inbox:
        """The stack's results and dead-letter queues, read by job id: one per stack, shared by its tests."""
        pools = [queue["SPOTGEN_QUEUE_URL"] for queue in self.state.get("pools", {}).values()]
        return Inbox(self.sqs, self.state["results_queue_url"], self.env["SPOTGEN_DEAD_LETTER_QUEUE_URL"],
                     [self.env["SPOTGEN_QUEUE_URL"], *pools])

    def worker_log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))


def start_stack(tmp: Path, models: Path, extra_env: dict[str, str] | None = None, timeout: float = 60,
                args: tuple[str, ...] = (), python: str = sys.executable, workers: int = 1) -> Stack:
    """``spotgen dev`` in a process of its own, with ``workers`` workers: forked from this process's zygote, or
    started by ``spotgen dev`` itself when it runs another Python (whose packages the zygote lacks)."""
    state_file = tmp / "stack.json"
    log_dir = tmp / "logs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPOTGEN_POLL_WAIT_S": "1",
           "SPOTGEN_PLUGINS": "tests.plugins:AlwaysFails,tests.plugins:SolidColor,tests.plugins:SlowSteps,"
                                 "tests.plugins:SlowResumable,tests.plugins:Flaky",
           "SPOTGEN_EXTRA_PIPELINES": "always-fails,solid,slow,slow-resumable,flaky",
           # a webhook receiver that never answers costs a test seconds, not the default's half minute
           "SPOTGEN_WEBHOOK_TIMEOUT_S": "1", "SPOTGEN_WEBHOOK_RETRY_S": "3", **(extra_env or {})}
    proc = subprocess.Popen(
        [python, "-m", "runtime.cli", "dev", "--port", "0", "--aws-port", "0", "--models", str(models),
         "--state-file", str(state_file), "--log-dir", str(log_dir), "--workers",
         str(workers if python != sys.executable else 0), *args],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "dev.log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + timeout
    while not state_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"spotgen dev did not start:\n{(tmp / 'dev.log').read_text()}")
        time.sleep(0.1)
    stack = Stack(json.loads(state_file.read_text()), proc, log_dir)
    if python == sys.executable:
        from runtime.local.devstack import EMULATOR_CREDENTIALS

        stack.workers = fork_workers({**env, **stack.env, **EMULATOR_CREDENTIALS}, log_dir, workers,
                                     stack.state.get("pools", {}))
    return stack


def stop_stack(stack: Stack) -> None:
    stop_workers(stack.workers)
    stack.proc.send_signal(signal.SIGTERM)
    try:
        stack.proc.wait(60)
    except subprocess.TimeoutExpired:
        stack.proc.kill()
        raise


@functools.cache
def zygote() -> Zygote:
    """This test process's worker zygote (tests/zygote.py), started on first use."""
    return Zygote()


def spawn_worker(stack: Stack, name: str, extra_env: dict[str, str] | None = None) -> Forked:
    """A `spotgen worker` process of our own (for tests that signal or kill workers), logging to the stack's
    log directory as ``worker-{name}.log``; forked from the zygote, which has imported the worker's code once."""
    from runtime.local.devstack import EMULATOR_CREDENTIALS

    stack.log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **stack.env, **EMULATOR_CREDENTIALS, **(extra_env or {})}
    return zygote().spawn(env, stack.log_dir / f"worker-{name}.log")


def run_harness(module: str, args: list[str], log_dir: Path, timeout: float) -> tuple[dict[str, Any], str]:
    """Run a harness of tests/harness in a subprocess (its embedded stack sets process-wide environment
    variables the other tests' stacks must not inherit); its last line's JSON figures, and a context for
    assertion messages."""
    proc = subprocess.run([sys.executable, "-m", module, *args, "--log-dir", str(log_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    context = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\nworker logs: {log_dir}"
    assert lines, context
    figures = json.loads(lines[-1])
    assert (figures["ok"] is True) == (proc.returncode == 0), context
    return figures, context


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("stack"), tiny_models)
    yield running
    stop_stack(running)

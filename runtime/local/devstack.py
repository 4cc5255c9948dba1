"""The embedded local stack: AWS emulator, the production resources, the API and real worker processes.

Everything listens on 127.0.0.1. The emulator (moto's server) serves S3, SNS and SQS over HTTP; the
resources are created by ``runtime.local.provision`` exactly as production has them; the API is the Lambda code
behind ``runtime.local.gateway``; workers are ``spotgen worker`` subprocesses configured only by environment, as
in a container. With an API key, the compatibility routes are behind the production authorizer as on AWS (its
hashed key in the emulator's SSM); without one they are open, like the rest of this loopback-only stack.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, ClassVar

from runtime.config import Settings
from runtime.local.provision import VISIBILITY_TIMEOUT_S, Resources, add_work_queue, pool_filter_policies, provision
from runtime.storage import aws

log = logging.getLogger("spotgen.dev")

#: How often the stack runs the sweep (``lambdas/sweep.py``; every minute on AWS): a job whose submit died before
#: publishing is published at most ``outbox.WINDOW_S`` + this (+ one pass) after its creation.
SWEEP_INTERVAL_S = 5.0

#: The emulator accepts any credentials; fixed ones keep real credentials out of local traffic.
EMULATOR_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing"}


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if the dev process dies, even by SIGKILL, so none is left behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _fresh_emulator(endpoint: str) -> None:
    """Clear moto's state in this process (its documented ``/moto-api/reset``). An earlier stack's queues and
    topics of the same names stay there otherwise, with what still holds them: a long poll of that stack's
    worker, cut off when its emulator stopped, went on waiting inside moto on the queue, took the next stack's
    first message and left it invisible for the 60 s of the visibility timeout."""
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10):
        pass


class DevStack:
    #: The stacks running in this process. moto keeps one state per process, shared by every emulator it serves,
    #: so the first stack to start clears what earlier ones left (``_fresh_emulator``) and a second one beside it
    #: must not.
    _running: ClassVar[set[int]] = set()

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 8080, aws_port: int = 4566,
                 workers: int = 1, log_dir: Path | None = None, visibility_timeout_s: int = VISIBILITY_TIMEOUT_S,
                 pools: dict[str, list[str]] | None = None, api_key: str | None = None,
                 sweep_interval_s: float = SWEEP_INTERVAL_S) -> None:
        self.base, self.host, self.port, self.aws_port = settings, host, port, aws_port
        self.workers, self.log_dir = workers, log_dir
        self.visibility_timeout_s = visibility_timeout_s
        #: Extra worker pools, each with a queue of its own that receives the jobs for the listed models (SNS
        #: filter policy on the ``model`` attribute); the default queue gets every other model.
        self.pools = pools or {}
        self.pool_queues: dict[str, dict[str, str]] = {}
        if api_key is not None and not api_key.strip():
            raise ValueError("the API key is empty")
        #: The key the compatibility routes require (``x-api-key``); None: they are open. Kept in memory only.
        self._api_key = api_key
        self.settings: Settings = settings
        self.resources: Resources | None = None
        self._emulator: Any = None
        self._api: Any = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        #: Each worker's metrics and probes base URL, by worker name (a port of its own, on 127.0.0.1).
        self.metrics_urls: dict[str, str] = {}
        self.sweep_interval_s = sweep_interval_s
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return self.settings.public_url

    def start(self) -> DevStack:
        from moto.server import ThreadedMotoServer

        from lambdas import api
        from runtime.local import snstracing
        from runtime.local.gateway import make_server, serve_in_thread

        os.environ.update(EMULATOR_CREDENTIALS)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        snstracing.install()
        self._emulator = ThreadedMotoServer(ip_address=self.host, port=self.aws_port, verbose=False)
        self._emulator.start()
        host, aws_port = self._emulator.get_host_and_port()
        endpoint = f"http://{host}:{aws_port}"
        if not DevStack._running:
            _fresh_emulator(endpoint)
        DevStack._running.add(id(self))
        emulator = self.base.model_copy(update={"aws_endpoint_url": endpoint})
        sns, sqs = aws.client("sns", emulator), aws.client("sqs", emulator)
        default_policy, pool_policies = pool_filter_policies(self.pools)
        self.resources = provision(aws.client("s3", emulator), sns, sqs, filter_policy=default_policy,
                                   max_receive_count=self.base.max_receive_count,
                                   visibility_timeout_s=self.visibility_timeout_s)
        for pool in self.pools:
            name, url, dlq = add_work_queue(sqs, sns, self.resources.jobs_topic_arn, f"spotgen-{pool}",
                                            pool_policies[pool],
                                            self.base.max_receive_count, self.visibility_timeout_s)
            self.pool_queues[pool] = {"SPOTGEN_QUEUE_NAME": name, "SPOTGEN_QUEUE_URL": url,
                                      "SPOTGEN_DEAD_LETTER_QUEUE_URL": dlq}
        fields = {k: v for k, v in vars(self.resources).items() if k in Settings.model_fields}
        authorize = None
        if self._api_key is not None:
            from lambdas import authorizer
            from runtime.local.apikey import put_dev_key

            fields["api_keys_parameter"] = put_dev_key(aws.client("ssm", emulator), self._api_key)
            authorizer.keys.cache_clear()  # a warm authorizer of an earlier stack in this process holds its keys
            authorize = authorizer.handler
        from runtime.local import comfyws

        self._api = make_server(api.handler, self.host, self.port, authorize=authorize,
                                upgrade=(comfyws.is_upgrade, comfyws.serve))
        # Workers get metrics ports of their own (``_spawn_worker``); the exported settings say 0, so that a
        # worker started by hand from them does not collide with those.
        self.settings = emulator.model_copy(update={**fields, "metrics_port": 0, "metrics_host": self.host,
                                                    "public_url": f"http://{self.host}:{self._api.server_port}"})
        os.environ.update(self.settings.to_env())  # the in-process Lambda handlers read it, as on AWS
        from lambdas.common import deployment

        deployment.cache_clear()  # a warm "Lambda" of an earlier stack in this process holds its clients
        serve_in_thread(self._api)
        self._stopping.clear()
        self._sweeper = threading.Thread(target=self._sweep, name="sweep", daemon=True)
        self._sweeper.start()
        for index in range(self.workers):
            self._procs.append(self._spawn_worker(str(index)))
            for pool, queue in self.pool_queues.items():
                self._procs.append(self._spawn_worker(f"{pool}-{index}", queue))
        return self

    def _sweep(self) -> None:
        """The scheduled sweep of the template, on a timer: the same code with the same clients as the API's."""
        from lambdas.common import deployment
        from lambdas.sweep import sweep

        while not self._stopping.wait(self.sweep_interval_s):
            try:
                done = sweep(deployment())
            except Exception:  # noqa: BLE001 - the emulator going away at stop; the next pass tries again
                log.debug("sweep failed", exc_info=True)
                continue
            if set(done) - {"in_flight"}:
                log.info("sweep: %s", done)

    def _spawn_worker(self, name: str, queue: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.to_env(), **EMULATOR_CREDENTIALS, **(queue or {})}
        if self.base.metrics_port:
            port = self._metrics_port()
            env["SPOTGEN_METRICS_PORT"] = str(port)
            self.metrics_urls[name] = f"http://{self.host}:{port}"
        if self.settings.device == "cpu" and "OMP_NUM_THREADS" not in env:
            # CPU workers share the machine's cores; more torch threads than cores makes every worker slower.
            processes = self.workers * (1 + len(self.pools))
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, processes)))
        out: Any = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"worker-{name}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        return subprocess.Popen([sys.executable, "-m", "runtime.cli", "worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT if out else None, start_new_session=True,
                                preexec_fn=_die_with_parent)

    def _metrics_port(self) -> int:
        """A free port: never a fixed one, which another stack on the same machine may be about to take."""
        with socket.socket() as probe:
            probe.bind((self.host, 0))
            return probe.getsockname()[1]

    def check_workers(self) -> None:
        for proc in self._procs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker process {proc.pid} exited with status {proc.returncode}"
                                   + (f"; see {self.log_dir}" if self.log_dir else ""))

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until every worker's ``/readyz`` answers 200 (models loaded, consuming), so that a first job's queue
        time is not the workers' start-up. RuntimeError if one exits or the time runs out."""
        import time
        import urllib.error
        import urllib.request

        from runtime.ops.health import READY_PATH

        deadline = time.monotonic() + timeout
        for url in self.metrics_urls.values():
            while True:
                self.check_workers()
                try:
                    with urllib.request.urlopen(url + READY_PATH, timeout=2) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass  # not listening yet, or 503 while it starts
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {url} was not ready within {timeout:.0f} s"
                                       + (f"; see {self.log_dir}" if self.log_dir else ""))
                time.sleep(0.1)

    def state(self) -> dict[str, Any]:
        """What a client or a test needs to talk to this stack."""
        assert self.resources is not None
        return {"api_url": self.api_url, "aws_endpoint_url": self.settings.aws_endpoint_url,
                "results_queue_url": self.resources.results_queue_url, "pid": os.getpid(),
                "worker_pids": [p.pid for p in self._procs], "env": self.settings.to_env(),
                "pools": self.pool_queues, "metrics_urls": self.metrics_urls,
                "api_key_required": self._api_key is not None}  # whether, never which: the key is not written

    def write_state(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        tmp.replace(path)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown for workers (SIGTERM), then kill what is left; then the sweep, the API and the emulator."""
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout)
            self._sweeper = None
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()
        for handle in self._logs:
            handle.close()
        if self._api is not None:
            self._api.shutdown()
            self._api.server_close()
            self._api = None
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None
        DevStack._running.discard(id(self))

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""`spotgen worker` processes forked from one that has already imported the worker's code.

Why: a worker spends about 5 s of CPU importing torch, diffusers and transformers before it does anything, and the
suite starts dozens of workers of its own on two cores: that import was a third of the suite's CPU. The zygote (a
name from Android's app launcher) imports once per run, for every test process; each worker it forks then runs
``spotgen worker`` (``runtime.cli.main``) from the start of its ``main`` in a process of its own: its own session
(as ``start_new_session``), environment, working directory and log, real signals and a real exit status. What it
skips is only the import. Start-up itself (settings, preload, probes, the broker connection) runs as in any worker. What
is read only at import is the zygote's: ``sys.path`` (a ``PYTHONPATH`` of the child's own is not applied) and
environment variables that libraries read when loaded.

The zygote starts no Python thread (checked before each fork) and runs no torch operation, so no torch thread
pool or lock held by a thread is copied into a child (OpenBLAS's idle threads, when OMP_NUM_THREADS lets numpy start
them, are restarted by its own fork handlers, as in any forked numpy process); a child sets torch's thread count
from its own ``OMP_NUM_THREADS``, which libgomp otherwise reads once, when torch is first loaded.

``Forked`` answers what the tests use of ``subprocess.Popen``: ``pid``, ``poll``, ``wait``, ``send_signal``,
``terminate``, ``kill`` and ``returncode`` (negative for a signal, as Popen's). The zygote reaps its children and
sends each one's exit status over the connection that asked for it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "runtime.cli", "worker"]  # what a forked worker stands for (Popen's ``args``)


class Forked:
    """A forked worker, seen as a ``subprocess.Popen``."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self.conn, self.pid, self.args = conn, pid, COMMAND
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._read(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._read(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def _read(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            if not select.select([self.conn], [], [], timeout)[0]:
                return None
            self.returncode = _answer(self.conn, f"worker {self.pid} exited")["returncode"]
            self.conn.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # as Popen: never signal a pid that may have been reused
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


#: Where the test processes of one run find the zygote their controller started (``Zygote.start``).
SOCKET_VARIABLE = "SPOTGEN_TESTS_ZYGOTE"


class Zygote:
    """The client. One zygote serves every test process of a run: the first to need it (pytest-xdist's
    controller, in tests/conftest.py's ``pytest_configure``, else this process) starts it, and it exits when that
    process closes its control connection (at exit, or when it dies)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path = os.environ.get(SOCKET_VARIABLE, "")

    def start(self) -> str:
        """Start the zygote (it imports nothing until asked for a worker) and own it; its socket's path."""
        self._path = os.path.join(tempfile.mkdtemp(prefix="zygote-"), "socket")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "tests.zygote", self._path], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline() != b"listening\n":  # its first line, once it listens; nothing if it died
            proc.kill()
            raise RuntimeError(f"the zygote did not start (exit {proc.wait()})")
        proc.stdout.close()
        atexit.register(self._stop, proc, self._connect({"control": True}))
        return self._path

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes], control: socket.socket) -> None:
        """Close the control connection and reap the zygote, so that its CPU, and its workers', is counted in
        this process's (``/usr/bin/time make test`` reads the whole tree's)."""
        control.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _connect(self, request: dict[str, Any]) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(self._path)
        conn.sendall(json.dumps(request).encode() + b"\n")
        return conn

    def spawn(self, env: dict[str, str], log: Path, cwd: Path | str = ROOT) -> Forked:
        """A ``spotgen worker`` with this environment, appending its stdout and stderr to ``log``."""
        with self._lock:
            if not self._path:
                self.start()
        log.touch()  # there when spawn returns, as Popen's opened stdout would be
        conn = self._connect({"env": env, "log": str(log), "cwd": str(cwd)})
        answer = _answer(conn, "a worker was forked")
        if "error" in answer:
            raise RuntimeError(f"the zygote could not fork: {answer['error']}")
        return Forked(conn, answer["pid"])


def _answer(conn: socket.socket, what: str) -> dict[str, Any]:
    """One line from the zygote, read a byte at a time: the next line (the exit status) may follow at once."""
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            raise RuntimeError(f"the zygote went away before {what}")
        line += byte
    return json.loads(line)


def _preload() -> None:
    """What a worker imports before its first job, and the diffusers and transformers classes the tiny jobs use."""
    import diffusers
    import transformers

    import runtime.cli
    import runtime.worker.app
    from runtime.plugins import Registry

    Registry.default()
    # what a worker's start reads before its first job: the tracing SDK, celery's command line, and botocore's
    # service models and endpoints (through the process's one loader, runtime.storage.aws.data_loader)
    import celery.bin.celery
    import opentelemetry.sdk.trace

    import runtime.ops.tracing
    from runtime.storage import aws

    for service in ("s3", "sqs", "sns", "ssm"):
        aws.session().client(service, region_name="us-east-1")
    del celery, opentelemetry
    for name in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
                 "StableDiffusionControlNetPipeline", "StableDiffusionXLPipeline", "FluxPipeline",
                 "StableDiffusion3Pipeline", "AutoencoderKL", "UNet2DConditionModel", "ControlNetModel"):
        getattr(diffusers, name)
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer", "T5EncoderModel"):
        getattr(transformers, name)
    del runtime


def _child(request: dict[str, Any], ready: int) -> int:
    """Runs in the forked process: become a worker started by Popen, then run it and exit as Python would."""
    os.setsid()
    out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    for sig in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as the interpreter sets it at start
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = [COMMAND[0], "worker"]
    os.write(ready, b"1")
    os.close(ready)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    from runtime.cli import main

    code: Any = 0
    try:
        code = main(["worker"])
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, then exit 1
        traceback.print_exc()
        code = 1
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # waits for non-daemon threads, as interpreter exit does
    import logging

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    return int(code or 0)


def serve(path: str) -> None:
    """The zygote's loop: fork on each request, report each child's exit on its connection. It imports the
    worker's code at the first request, so that a run that starts no worker pays nothing for it."""
    preloaded = False
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(64)
    os.write(1, b"listening\n")  # what the client waits for
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # and nothing more on that pipe
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    controls: list[socket.socket] = []
    while True:
        for key, _ in selector.select(0.05):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                request = json.loads(conn.makefile("r").readline())
                if request.get("control"):
                    selector.register(conn, selectors.EVENT_READ)
                    controls.append(conn)
                    continue
                if not preloaded:
                    _preload()
                    preloaded = True
                if threading.active_count() != 1:
                    conn.sendall(json.dumps({"error": "the zygote has threads: a fork would copy them"}).encode()
                                 + b"\n")
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                started, ready = os.pipe()
                pid = os.fork()
                if pid == 0:  # the child never returns into this loop
                    code = 1
                    try:
                        selector.close()
                        listener.close()
                        for held in [*children.values(), *controls, conn]:
                            held.close()
                        os.close(started)
                        code = _child(request, ready)
                    except BaseException:  # noqa: BLE001 - setting up failed: said on stderr, exit 1
                        traceback.print_exc()
                    finally:
                        os._exit(code)
                os.close(ready)
                # answer once the child is in its own session with its log and environment, as Popen returns
                # only after the exec, so that a signal sent at once reaches the worker's process group
                said = os.read(started, 1)
                os.close(started)
                conn.sendall(json.dumps({"pid": pid} if said else {"error": f"child {pid} died setting up"})
                             .encode() + b"\n")
                if said:
                    children[pid] = conn
                else:
                    conn.close()
            else:  # the control connection: readable means closed, so stop, leaving no worker behind
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                for pid in children:
                    os.waitpid(pid, 0)
                return
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no child at all
                break
            if not pid:
                break
            conn = children.pop(pid, None)
            if conn is None:  # a child that died setting up: its asker was told
                continue
            with contextlib.suppress(OSError):  # the test process may be gone
                conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])

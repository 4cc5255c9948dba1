"""Liveness and readiness of a worker, and the HTTP server that serves them with the metrics.

Kubernetes probes (``infra/k8s``) use exactly these paths on ``Settings.metrics_port`` (9400):

- ``/livez``: the process is not wedged. While it holds jobs (one generating, and the one before it storing its
  outputs), each one's lease heartbeat thread must be alive (a dead one means the message will be delivered to a
  second worker); while idle, the consumer must have finished a receive (with or without messages, or failed)
  within ``stall_s``. That is receive *progress*, not a loop that ticks: a receive chain that stopped fails
  liveness even while the event loop runs, so Kubernetes restarts the pod. An outage does not: failed receives
  are progress, and a restart would not bring the network back. Start-up (imports, preload) counts as alive: a
  startup probe covers it.
- ``/readyz``: the worker can serve jobs now: the preload models it waits for loaded (all of them, or with
  ``SPOTGEN_SERVE_AFTER_PRELOAD=first`` the first: ``runtime.worker.preload``), none failed, the consumer
  started on its queue, the last receive reached SQS, and no shutdown under way. It turns false the moment an
  interruption starts (it reads ``Interruption.requested``) and while AWS is unreachable, and true again with
  the first receive that works. Its body's ``models`` says which preload models are loaded, loading, waiting
  and failed.
- ``/metrics``: Prometheus text format.

Each probe answers 200 or 503 with a small JSON body saying which check failed. ``spotgen worker --check``
asks ``/readyz`` on 127.0.0.1, for exec probes.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LIVE_PATH = "/livez"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
DEFAULT_PORT = 9400
#: An idle consumer that has not finished a receive for this long is considered stuck (the worker sets a
#: bound from its settings: ``runtime.worker.sqs.receive_bound_s``).
STALL_S = 60.0


class Health:
    """The worker's state as the probes see it. The Celery side calls ``consuming``, the receive chain
    ``received`` and a job's end ``progress``; start-up calls ``preloaded``; the interruption and the running
    job's lease are read at probe time."""

    def __init__(self, interruption: Any = None, stall_s: float = STALL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interruption = interruption
        self.stall_s, self.clock = stall_s, clock
        self.preload_done = False
        #: The preload models' states for the ``/readyz`` body (``PreloadReport.model_dump``); None: no report.
        self.models: Callable[[], dict[str, Any]] | None = None
        self.consumer = False
        self.last_progress: float | None = None
        #: Why the last receive failed; None once one worked.
        self.receive_error: str | None = None

    def preloaded(self) -> None:
        self.preload_done = True

    def consuming(self, on: bool) -> None:
        self.consumer = on
        if on:
            self.progress()

    def progress(self) -> None:
        """The consumer moved: a receive finished, or a job (which holds the consumer) ended."""
        self.last_progress = self.clock()

    def received(self, ok: bool, error: str | None = None) -> None:
        self.receive_error = None if ok else (error or "receive failed")
        self.progress()

    def idle_s(self) -> float | None:
        """Seconds since the consumer last moved, for the ``/livez`` body."""
        return None if self.last_progress is None else round(self.clock() - self.last_progress, 3)

    def live(self) -> tuple[bool, dict[str, str]]:
        leases = list(getattr(self.interruption, "leases", None) or ())
        checks: dict[str, str] = {}
        stalled = self.last_progress is not None and self.clock() - self.last_progress > self.stall_s
        if leases:
            checks["heartbeat"] = "ok" if all(lease.alive or lease.handed_back for lease in leases) \
                else "the lease heartbeat thread died"
        elif self.consumer and stalled:
            checks["consumer"] = (f"no receive has finished for {self.clock() - self.last_progress:.0f} s "
                                  f"(bound {self.stall_s:.0f} s): the receive chain is stuck")
        else:
            checks["consumer"] = "ok" if self.consumer else "starting"
        return all(v in ("ok", "starting") for v in checks.values()), checks

    def ready(self) -> tuple[bool, dict[str, str]]:
        interruption = self.interruption
        failed = (self.models() if self.models is not None else {}).get("failed") or {}
        checks = {
            "preload": f"failed: {'; '.join(failed.values())}" if failed
            else "ok" if self.preload_done else "loading models",
            "queue": "ok" if self.consumer else "not consuming",
            "aws": "ok" if self.receive_error is None else f"SQS unreachable: {self.receive_error}",
            "shutdown": "ok" if interruption is None or not interruption.requested
            else f"shutting down ({interruption.reason})",
        }
        return all(v == "ok" for v in checks.values()), checks


def serve(health: Health, metrics: Callable[[], tuple[bytes, str]] | None, host: str,
          port: int) -> ThreadingHTTPServer:
    """Serve the probes and ``metrics()`` (body, content type) on ``host:port`` from a daemon thread.
    OSError (the port is taken) is left to the caller: a worker without probes must not start."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path in (LIVE_PATH, READY_PATH):
                ok, checks = health.live() if path == LIVE_PATH else health.ready()
                extra = {"consumer_idle_s": health.idle_s()} if path == LIVE_PATH else \
                    {"models": health.models()} if health.models is not None else {}
                body = json.dumps({"ok": ok, "checks": checks, **extra}).encode()
                self._send(200 if ok else 503, body, "application/json")
            elif path == METRICS_PATH and metrics is not None:
                body, content_type = metrics()
                self._send(200, body, content_type)
            else:
                self._send(404, b'{"error":"not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - probes every few seconds: quiet
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-http", daemon=True).start()
    return server


def check(port: int, host: str = "127.0.0.1", path: str = READY_PATH, timeout_s: float = 3.0) -> tuple[bool, str]:
    """Ask a worker's probe; (passed, what it said). For ``spotgen worker --check``."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout_s) as resp:  # noqa: S310
            return resp.status == 200, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return False, exc.read().decode(errors="replace")
    except OSError as exc:
        return False, f"cannot reach http://{host}:{port}{path}: {exc}"

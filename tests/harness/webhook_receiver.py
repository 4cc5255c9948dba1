"""A webhook receiver on 127.0.0.1 for tests and harnesses: it records every POST (headers and body as received),
verifies each signature with the ``standardwebhooks`` package (a second implementation of the specification, not
spotgen's), and answers as the URL's path says:

- ``/ok/...``: 200;
- ``/flaky/...``: 500 to the first two POSTs of each ``webhook-id``, then 200;
- ``/silent/...``: no answer until the receiver stops (the sender's timeout ends each POST);
- ``/redirect/...``: 302 to ``/ok/redirected`` (a sender that followed it would show up there);
- ``/hold/...``: the first POST of each ``webhook-id`` sets ``arrived`` and waits for ``release`` without ever
  answering (a test kills the sender meanwhile); later ones get 200.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    #: The status answered (None: not answered yet, never, or it could not be sent).
    status: int | None
    #: The signature verified with standardwebhooks under the receiver's secret.
    verified: bool

    @property
    def event(self) -> str:
        return str(json.loads(self.body).get("event"))

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def job(self) -> str:
        return str(json.loads(self.body).get("id"))


class Receiver:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[Received] = []
        self.lock = threading.RLock()  # the conditions of wait_for read the records under it
        self.changed = threading.Condition(self.lock)
        self.arrived, self.release, self.stopping = threading.Event(), threading.Event(), threading.Event()
        self._tries: Counter[str] = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.answer(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{path.lstrip('/')}"

    def answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except Exception:  # noqa: BLE001 - recorded: the test asserts on it
            verified = False
        kind = handler.path.strip("/").split("/", 1)[0]
        status: int | None = 200
        record = Received(handler.path, headers, body, None, verified)  # recorded on arrival, answered below
        with self.changed:
            self._tries[headers.get("webhook-id", "")] += 1
            tries = self._tries[headers.get("webhook-id", "")]
            self.received.append(record)
            self.changed.notify_all()
        if kind == "flaky":
            status = 500 if tries <= 2 else 200
        elif kind == "redirect":
            status = 302
        elif kind == "silent":
            self.stopping.wait()
            status = None
        elif kind == "hold" and tries == 1:
            self.arrived.set()
            self.release.wait()
            status = None
        if status is None:
            return
        with self.changed:  # decided, so processed, before the answer goes: the sender may read it at once
            record.status = status
            self.changed.notify_all()
        try:
            handler.send_response(status)
            if status == 302:
                handler.send_header("Location", "/ok/redirected")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        except OSError:  # the answer was lost: the sender tries again, with the same webhook-id
            return

    def of(self, job_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.job == job_id]

    def accepted(self, job_id: str) -> Counter[str]:
        """How many POSTs of each event the receiver answered 2xx (what a receiver processes)."""
        return Counter(r.event for r in self.of(job_id) if r.status is not None and 200 <= r.status < 300)

    def wait_for(self, what: str, check: Any, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(check, timeout):
                raise AssertionError(f"the receiver did not get {what} within {timeout:g} s: {self.received}")


# -- the harnesses' webhook verdict (make chaos, make faults) -----------------------------------------------------
#: The settings a harness's stack and workers get: loopback receivers, a known secret, and a short budget and claim
#: (a claim lives max(lease, retry + 2 x timeout)), so a webhook a killed worker held comes back within seconds.
HARNESS_SETTINGS = {"webhook_loopback": True, "webhook_retry_s": 2.0, "webhook_timeout_s": 2.0}


def ask_webhooks(receiver: Receiver, jobs: list[Any]) -> None:
    """Every job of a harness asks for its ``completed`` webhook (their requests are POSTed after this)."""
    for job in jobs:
        job.request["webhook"] = {"url": receiver.url(f"/ok/{job.id}"), "events": ["completed"]}


def settle_webhooks(receiver: Receiver, job_ids: list[str], timeout: float) -> None:
    """Wait until each job's webhook was accepted, or ``timeout`` (the figures then say which were lost)."""
    with receiver.changed:
        receiver.changed.wait_for(lambda: all(receiver.accepted(j)["completed"] for j in job_ids), timeout)


def webhook_figures(receiver: Receiver, job_ids: list[str]) -> dict[str, int]:
    """Lost: a job whose ``completed`` no POST delivered. Doubled: a job whose ``completed`` came under more than
    one ``webhook-id`` (a receiver that deduplicates as the specification says would act twice), or any POST of
    another job's or an unknown event. A POST sent again with the same id (its sender killed, or its answer lost,
    before the delivery was recorded) is what the id is for: counted apart, not as a double."""
    with receiver.lock:
        received = list(receiver.received)
    lost = doubled = resent = 0
    for job_id in job_ids:
        mine = [r for r in received if r.job == job_id and r.event == "completed"]
        accepted = [r for r in mine if r.status is not None and 200 <= r.status < 300]
        lost += not accepted
        doubled += len({r.id for r in mine}) > 1
        resent += max(0, len(accepted) - 1)
    return {"webhooks_lost": lost, "webhooks_doubled": doubled + sum(1 for r in received if r.job not in job_ids),
            "webhooks_resent_same_id": resent, "webhooks_unverified": sum(1 for r in received if not r.verified)}


def webhook_checks(figures: dict[str, Any]) -> dict[str, bool]:
    return {"no webhook event lost": figures["webhooks_lost"] == 0,
            "no webhook event doubled, every signature valid":
                figures["webhooks_doubled"] == 0 and figures["webhooks_unverified"] == 0}

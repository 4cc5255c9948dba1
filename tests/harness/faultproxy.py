"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, in front of the AWS emulator (S3, SQS and SNS on one port).

Real networks blink: connections are refused, cut mid-request, slow, or answered with throttling and 5xx. The
proxy makes each of those happen on demand between the workers and the emulator, and it reads HTTP just enough
to name every request (service from the SigV4 credential scope, operation from ``X-Amz-Target``, ``Action`` or
the S3 method), so a fault can be timed to land on one kind of call: the output upload, the ack, the
notification.

Faults, all from the test's thread:

* ``down()`` / ``up()``: refuse new connections (the listening socket is closed, so a connect gets ECONNREFUSED)
  and cut every open one with a TCP reset; ``outage(seconds)`` does both with a timer;
* ``latency = s``: wait before forwarding each request; ``trickle = bytes_per_s``: dribble the answers;
* ``garbage = True``: answer every request with bytes that are not HTTP, then close;
* ``fail(service, count, status)``: answer the next ``count`` requests of a service with its throttling or
  5xx error, as AWS words it;
* ``on(match, seconds, after=False)``: when a request matches, start an outage of ``seconds``; with
  ``after=True`` the request is forwarded first and its answer lost (the ambiguous case: it happened, the
  caller cannot know). It returns an event set once the cut started; ``disarm()`` drops the triggers and
  failures not used yet.

Whether a fault took effect can be read, so that a harness counts the faults that happened, not the ones it
asked for: ``injected`` counts the error answers and garbage, ``fired`` the requests delayed (``latency``),
the answers trickled (``trickle``) and the timed cuts (``cut``). ``lost`` holds the requests that reached
upstream but whose answer never reached the caller (cut, or reset by an outage): they happened, and a caller
that retries one does it twice, as against AWS.

Standard library only; one thread per connection, which is plenty for a handful of workers.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.harness.awswire import describe, error_response


@dataclass
class Request:
    """One request as it passed the proxy."""

    method: str
    path: str
    service: str
    operation: str
    head: bytes = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def raw(self) -> bytes:
        return self.head + self.body


def _reset(sock: socket.socket) -> None:
    """Cut a connection as a broken network path does: SO_LINGER 0 makes the close a TCP reset, and the shutdown
    first wakes the proxy's own thread blocked reading it (a close alone does not, on Linux)."""
    for step in (lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
                 lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        with contextlib.suppress(OSError):
            step()


class _Closed(Exception):
    pass


def _read_until(sock: socket.socket, buf: bytearray, marker: bytes) -> bytes:
    while (end := buf.find(marker)) < 0:
        data = sock.recv(65536)
        if not data:
            raise _Closed
        buf += data
    out = bytes(buf[: end + len(marker)])
    del buf[: end + len(marker)]
    return out


def _read_exactly(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = sock.recv(max(65536, n - len(buf)))
        if not data:
            raise _Closed
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _header(head: bytes, name: bytes) -> bytes | None:
    match = re.search(rb"^" + name + rb":\s*(.*?)\s*$", head, re.IGNORECASE | re.MULTILINE)
    return match.group(1) if match else None


def _read_body(sock: socket.socket, buf: bytearray, head: bytes, response_to: str | None = None) -> bytes:
    """The message body after ``head``: by Content-Length, chunked, or (answers only) until the peer closes."""
    status = int(head.split(b" ", 2)[1]) if response_to is not None else 0
    if response_to == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b""
    length = _header(head, b"content-length")
    if length is not None:
        return _read_exactly(sock, buf, int(length))
    if (_header(head, b"transfer-encoding") or b"").lower() == b"chunked":
        out = bytearray()
        while True:
            line = _read_until(sock, buf, b"\r\n")
            size = int(line.split(b";")[0], 16)
            out += line + _read_exactly(sock, buf, size + 2)
            if size == 0:
                return bytes(out)
    if response_to is None:
        return b""
    out = bytearray(buf)
    buf.clear()
    while data := sock.recv(65536):
        out += data
    return bytes(out)


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream`` (host, port) and injects the faults it is told to."""

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self.port = port
        self.latency = 0.0
        self.trickle = 0
        self.garbage = False
        self.seen: Counter[tuple[str, str]] = Counter()  # (service, operation) -> requests forwarded
        self.injected: Counter[str] = Counter()
        self.fired: Counter[str] = Counter()  # "latency", "trickle", "cut": faults that met a request
        self.lost: list[Request] = []  # forwarded upstream, answer lost
        self.log: list[tuple[float, str]] = []  # (monotonic, what happened), for the harness's report
        self._lock = threading.Lock()
        self._down = False
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._failures: list[list] = []  # [service, count, status]
        self._triggers: list[tuple[Callable[[Request], bool], float, bool, threading.Event]] = []
        self._holds: list[tuple[Callable[[Request], bool], threading.Event, float, threading.Event]] = []
        self._timer: threading.Timer | None = None
        self._stopped = threading.Event()

    # -- life ---------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._listen()
        threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self.down()
        if self._timer is not None:
            self._timer.cancel()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults -------------------------------------------------------------------------------------------
    @property
    def is_down(self) -> bool:
        return self._down

    def down(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            self._down = True
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            listener.close()
        for sock in conns:
            _reset(sock)
        self._note("down")

    def up(self) -> None:
        """Accept connections again (a no-op when up: the end of an outage and a test's clean-up may race)."""
        with self._lock:
            if self._stopped.is_set() or not self._down:
                return
            self._down = False
            timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        self._listen()
        self._note("up")

    def outage(self, seconds: float) -> None:
        """Down now, up again after ``seconds`` (from a timer; an outage already under way is extended)."""
        if self._timer is not None:
            self._timer.cancel()
        self.down()
        self._timer = threading.Timer(seconds, self.up)
        self._timer.daemon = True
        self._timer.start()

    def fail(self, service: str, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests to ``service`` (s3, sqs, sns) with its error for ``status``."""
        with self._lock:
            self._failures.append([service, count, status])

    def on(self, match: Callable[[Request], bool], seconds: float, after: bool = False) -> threading.Event:
        """Once: when a request matches, an outage of ``seconds`` starts, before it is forwarded or (``after``)
        once it was forwarded and answered upstream, so that the answer is lost. Returns an event set once the
        outage started: a trigger that no request matched did nothing."""
        fired = threading.Event()
        with self._lock:
            self._triggers.append((match, seconds, after, fired))
        return fired

    def disarm(self) -> None:
        """Drop the triggers of ``on`` and the failures of ``fail`` that no request has used yet, so that a fault
        that found nothing to land on does not land later, on something else."""
        with self._lock:
            self._triggers.clear()
            self._failures.clear()

    def hold(self, match: Callable[[Request], bool], release: threading.Event,
             timeout_s: float = 60.0) -> threading.Event:
        """Once: a request that matches waits, before it is forwarded, until ``release`` is set (or ``timeout_s``
        has passed). Returns an event that is set once that request is being held."""
        held = threading.Event()
        with self._lock:
            self._holds.append((match, release, timeout_s, held))
        return held

    # -- plumbing -----------------------------------------------------------------------------------------
    def _note(self, what: str) -> None:
        self.log.append((time.monotonic(), what))

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for attempt in range(100):  # the port of the previous listener may take a moment to be free
            try:
                sock.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if attempt == 99:
                    raise
                time.sleep(0.05)
        sock.listen(64)
        sock.settimeout(0.2)
        self.port = sock.getsockname()[1]
        with self._lock:
            self._listener = sock

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                if self._down:
                    _reset(client)
                    continue
                self._conns.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take_failure(self, service: str) -> int | None:
        with self._lock:
            for entry in self._failures:
                if entry[0] == service and entry[1] > 0:
                    entry[1] -= 1
                    return entry[2]
        return None

    def _take_hold(self, request: Request) -> tuple[threading.Event, float, threading.Event] | None:
        with self._lock:
            for i, (match, release, timeout_s, held) in enumerate(self._holds):
                if match(request):
                    del self._holds[i]
                    return release, timeout_s, held
        return None

    def _take_trigger(self, request: Request) -> tuple[float, bool, threading.Event] | None:
        with self._lock:
            for i, (match, seconds, after, fired) in enumerate(self._triggers):
                if match(request):
                    del self._triggers[i]
                    return seconds, after, fired
        return None

    def _cut(self, trigger: tuple[float, bool, threading.Event], request: Request) -> None:
        self._note(f"cut {'after' if trigger[1] else 'before'} {request.service} {request.operation}")
        self.fired["cut"] += 1
        trigger[2].set()  # before the cut, so that whoever sees its effect sees that it fired
        self.outage(trigger[0])

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        forwarded: Request | None = None  # from the moment it reached upstream until its answer was sent
        inbuf, upbuf = bytearray(), bytearray()
        try:
            while True:
                head = _read_until(client, inbuf, b"\r\n\r\n")
                if re.search(rb"^expect:\s*100-continue", head, re.IGNORECASE | re.MULTILINE):
                    # botocore sends a PUT's body only once told to go on (or after a second): say so here,
                    # and forward the request without the header, so upstream sends no interim answer.
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = re.sub(rb"(?im)^expect:[^\r\n]*\r\n", b"", head)
                body = _read_body(client, inbuf, head)
                request = Request(*describe(head, body), head=head, body=body)
                if self.garbage:
                    self.injected["garbage"] += 1
                    client.sendall(b"\x00\x17 this is not HTTP \xff\xfe\r\n\r\n")
                    return
                status = self._take_failure(request.service)
                if status is not None:
                    self.injected[f"{request.service} {status}"] += 1
                    client.sendall(error_response(request.service, status))
                    continue
                trigger = self._take_trigger(request)
                if trigger is not None and not trigger[1]:
                    self._cut(trigger, request)
                    return
                hold = self._take_hold(request)
                if hold is not None:
                    self._note(f"holding {request.service} {request.operation}")
                    hold[2].set()
                    hold[0].wait(hold[1])
                if self.latency:
                    self.fired["latency"] += 1
                    time.sleep(self.latency)
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=120)
                    with self._lock:
                        if self._down:
                            return
                        self._conns.add(upstream)
                forwarded = request
                upstream.sendall(request.raw)
                self.seen[(request.service, request.operation)] += 1
                response_head = _read_until(upstream, upbuf, b"\r\n\r\n")
                while response_head.split(b" ", 2)[1].startswith(b"1"):  # an interim answer: the final one follows
                    response_head = _read_until(upstream, upbuf, b"\r\n\r\n")
                response = response_head + _read_body(upstream, upbuf, response_head, request.method)
                if re.search(rb"(?im)^connection:\s*close", response_head):
                    # the emulator (werkzeug) closes after every answer: the next request goes on a new
                    # connection, never into one that is closing (which would swallow it)
                    with self._lock:
                        self._conns.discard(upstream)
                    upstream.close()
                    upstream, upbuf = None, bytearray()
                if trigger is not None:
                    self._cut(trigger, request)
                    return
                self._send(client, response)
                forwarded = None
        except (_Closed, OSError, ValueError, IndexError):
            pass
        finally:
            if forwarded is not None:
                self.lost.append(forwarded)
            with self._lock:
                self._conns.discard(client)
                if upstream is not None:
                    self._conns.discard(upstream)
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _send(self, client: socket.socket, data: bytes) -> None:
        rate = self.trickle  # read once: the harness may turn trickling off while an answer is being sent
        if not rate:
            client.sendall(data)
            return
        self.fired["trickle"] += 1
        step = max(1, rate // 20)
        for i in range(0, len(data), step):
            client.sendall(data[i: i + step])
            time.sleep(step / rate)

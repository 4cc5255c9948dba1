"""kombu's SQS transport, made to survive a network that blinks.

The worker's broker is ``runtime.worker.sqs:Transport``, kombu 5.7's SQS transport with three changes, each
in the smallest place that fixes it:

1. **The receive chain never stops.** kombu receives with a chain of promises: ``_schedule_queue`` starts an
   async ReceiveMessage whose answer goes through ``_on_messages_ready`` to ``_loop1``, which schedules the
   next receive. When the HTTP request fails (curl could not connect or the connection broke, reported as
   HTTP 599; or a 5xx, 408 or 504 answer), ``AsyncAWSQueryConnection._on_list_ready``
   (kombu/asynchronous/aws/connection.py) returns ``[]`` instead of a response, and
   ``Channel._on_messages_ready`` (kombu/transport/SQS/__init__.py) calls ``[].get('Messages')``:
   ``AttributeError: 'list' object has no attribute 'get'``. Other failures (a 4xx such as throttling, an
   answer that is not HTTP) raise in ``_on_list_ready`` itself. Either way the exception is thrown into the
   promise chain, whose promises have no error handler, so it escapes into the event loop: an idle worker
   dies with "Unrecoverable error", and one that was busy logs "Error in timer" and never schedules a receive
   again, while it stays alive. Here the answer goes to a promise that has an error handler, a failed
   receive is reported, and the next one is scheduled after a short backoff with jitter
   (``RECEIVE_BACKOFF_S``). tests/worker/test_sqs_outage.py reproduces the upstream failure with the stock
   transport.
2. **An ack survives a blink, and may come later.** ``basic_ack`` deletes the message with the blocking
   client; a failure is retried with backoff for ``ack_retry_s``, then given up cleanly: the delivery is
   released and the message comes back after its visibility timeout, when the worker finds the job final and
   only makes sure its one notification went out (``runtime.worker.runner``). A delivery marked ``DEFERRED``
   is only released: its job's output stage deletes it once the outputs are stored (``runtime.worker.handoff``).
3. **A reject needs no network.** kombu deletes a message rejected without requeue unless its queue has a
   redrive policy, which it looks up with GetQueueAttributes; during an outage that lookup fails and the
   reject with it ("Couldn't reject"). Every spotgen work queue has a dead-letter queue (``runtime.local
   .provision``, ``lambdas/template.yaml``), and messages that must go are deleted explicitly by the
   dead-letter hooks (``runtime.worker.deadletter``), so a reject here only releases the delivery and leaves
   the message to SQS's redrive policy.

What the chain does is reported to ``receive_hook`` (a transport option): ``hook(ok, error)`` after every
receive, for the probes (``runtime.ops.health``) and the AWS error metric. Before each receive,
``receive_start(ends_at)`` is told when its long poll ends at the latest, and may refuse it: a worker going
away receives no more, and a job it hands back is held until its last poll has ended (``runtime.worker.app``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from kombu.transport import SQS, virtual
from vine import ensure_promise, promise

from runtime.storage.retry import Retry, backoff

log = logging.getLogger("spotgen.sqs")

#: First and largest pause between failed receives: short, so that the worker consumes again within a
#: moment of the network coming back, and long enough not to spin on a refused connection.
RECEIVE_BACKOFF_S = (0.2, 5.0)
#: The transport option that carries ``hook(ok: bool, error: BaseException | None)``.
RECEIVE_HOOK = "spotgen_receive_hook"
#: The transport option that carries ``start(ends_at: float) -> bool``, called before each receive with the
#: monotonic time by which its long poll ends; False: receive no more (the worker is going away).
RECEIVE_START = "spotgen_receive_start"
#: The transport option that bounds how long an ack (DeleteMessage) is retried, in seconds.
ACK_RETRY = "spotgen_ack_retry_s"
#: Set in a delivery's ``delivery_info`` when its job's output stage owns the DeleteMessage: the ack then only
#: releases the delivery (kombu's QoS), so that the next message is received while the outputs are stored.
DEFERRED = "spotgen_delete_deferred"


#: kombu's async HTTP requests time out after this many seconds (AsyncHTTPSConnection's default), so a
#: receive on a network that drops packets fails after at most this long.
RECEIVE_TIMEOUT_S = 20.0


def receive_bound_s(poll_wait_s: float) -> float:
    """The longest an idle, healthy consumer goes without finishing a receive: a long poll (or a request that
    times out), the largest backoff after a failure, and a margin. ``/livez`` fails past it."""
    return max(poll_wait_s, RECEIVE_TIMEOUT_S) + RECEIVE_BACKOFF_S[1] + 15.0


def delete_message(client: Any, queue_url: str, handle: str, retry_s: float) -> bool:
    """DeleteMessage, retried with backoff for ``retry_s``, then given up cleanly: the message comes back after
    its visibility timeout, and that delivery finds the job final and only settles it. True when deleted (or
    already gone); raises only AccessDenied, a misconfiguration that no retry fixes."""
    try:
        Retry(retry_s)(lambda: client.delete_message(QueueUrl=queue_url, ReceiptHandle=handle), "DeleteMessage")
        return True
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code == "AccessDenied":
            raise
        if code in ("ReceiptHandleIsInvalid", "InvalidParameterValue"):  # stale handles need nothing more
            return True
        error: BaseException = exc
    except Exception as exc:  # noqa: BLE001 - the budget is spent: give up cleanly
        error = exc
    log.warning("could not acknowledge (delete) a message: %s: %s; it is delivered again after its visibility "
                "timeout, and that delivery finds the job final and only settles it", type(error).__name__, error)
    return False


class ReceiveFailed(Exception):
    """A ReceiveMessage that got no answer to parse (kombu turned it into an empty list)."""


class Channel(SQS.Channel):
    _receive_failures = 0

    def _hook(self) -> Callable[[bool, BaseException | None], None] | None:
        return self.transport_options.get(RECEIVE_HOOK)

    def _on_messages_ready(self, queue: Any, qname: Any, messages: Any) -> int:
        if not isinstance(messages, dict):  # kombu's "the request failed" (see the module docstring)
            raise ReceiveFailed("ReceiveMessage failed: no connection to SQS, or a timeout or server error")
        return super()._on_messages_ready(queue, qname, messages)

    def _get_async(self, queue: str, count: int = 1, callback: Any = None) -> Any:
        """kombu's, with an error handler on the promise the HTTP answer goes to. kombu wraps that answer in
        ``transform`` promises that have none, and a promise without one re-raises even after a later promise
        in the chain handled the error."""
        q_url, qname = self._new_queue(queue), self.canonical_queue_name(queue)
        callback = ensure_promise(callback)

        def ready(messages: Any) -> Any:
            return callback(self._on_messages_ready(q_url, queue, messages))

        return self._get_from_sqs(queue_name=qname, queue_url=q_url, count=count,
                                  connection=self.asynsqs(queue=qname),
                                  callback=promise(ready, on_error=callback.throw))

    def _schedule_queue(self, queue: str) -> None:
        if queue not in self._active_queues:
            return
        if not self.qos.can_consume():
            self._loop1(queue)
            return
        start = self.transport_options.get(RECEIVE_START)
        if start is not None and not start(time.monotonic() + float(self.wait_time_seconds or 0) + 1.0):
            return
        done = promise(self._received, (queue,), on_error=self._receive_failed)
        try:
            self._get_bulk_async(queue, callback=done)
        except Exception as exc:  # noqa: BLE001 - e.g. signing or connecting failed before any request
            self._receive_failed(queue, exc)

    def _received(self, queue: str, fetched: int = 0) -> None:
        if self._receive_failures:
            log.warning("receiving from SQS again after %d failed attempts", self._receive_failures)
        self._receive_failures = 0
        self._report(True, None)
        self._loop1(queue, fetched)

    def _receive_failed(self, queue: str, exc: BaseException | None = None) -> None:
        self._receive_failures += 1
        if self._receive_failures == 1 or self._receive_failures % 20 == 0:
            log.warning("receiving from SQS failed (%d in a row): %s: %s; trying again", self._receive_failures,
                        type(exc).__name__, exc)
        self._report(False, exc)
        delay = backoff(self._receive_failures, *RECEIVE_BACKOFF_S)
        if self.hub is not None:
            self.hub.call_later(delay, self._schedule_queue, queue)

    def _report(self, ok: bool, exc: BaseException | None) -> None:
        hook = self._hook()
        if hook is not None:
            try:
                hook(ok, exc)
            except Exception:  # noqa: BLE001 - the probes' bookkeeping must never stop receiving
                log.warning("receive hook failed", exc_info=True)

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        try:
            info = self.qos.get(delivery_tag).delivery_info
            url, handle = info["sqs_queue"], info["sqs_message"]["ReceiptHandle"]
        except KeyError:
            return super().basic_ack(delivery_tag, multiple)
        if info.get(DEFERRED):  # the output stage deletes it once the outputs are stored (runtime.worker.handoff)
            return virtual.Channel.basic_ack(self, delivery_tag, multiple)
        queue = self.canonical_queue_name(info["routing_key"]) if "routing_key" in info else None
        try:
            delete_message(self.sqs(queue=queue), url, handle, float(self.transport_options.get(ACK_RETRY, 0) or 0))
        except ClientError as exc:  # AccessDenied: raised, as kombu does, once the delivery is released
            virtual.Channel.basic_ack(self, delivery_tag, multiple)
            raise SQS.AccessDeniedQueueException(exc.response["Error"].get("Message", "")) from exc
        virtual.Channel.basic_ack(self, delivery_tag, multiple)  # the delivery is released whatever happened
        return None

    def _delete_rejected_message(self, delivery_tag: Any) -> None:
        """Left to the queue's redrive policy (see the module docstring): no lookup, no delete."""


class Transport(SQS.Transport):
    Channel = Channel

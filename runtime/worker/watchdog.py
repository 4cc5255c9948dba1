"""Bounds on what a shutdown waits for: a call that may hang, and in the end the process itself.

A socket timeout does not bound an AWS call. botocore's read timeout starts again with every byte received,
so an answer trickled a byte at a time never times out, and botocore tries 5 times on top (5 x 30 s on a
silent network). A lock held across such a call holds everyone who waits on it just as long. So what a
shutdown must finish by a deadline runs on a daemon thread of its own, and the caller stops waiting at the
deadline: the call is abandoned, and ends with the process. An abandoned call may still complete later (a
hand-back copy sent after all): each is one the exactly-once rules already absorb (a second delivery).

The last bound is the process's own: ``last_resort`` arms faulthandler's C watchdog thread, which needs no
GIL, so the process ends even if a C extension holds the GIL forever (exit status 1, with every thread's
traceback on stderr, which says what was hanging).
"""

from __future__ import annotations

import contextvars
import faulthandler
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def bounded(call: Callable[[], T], timeout_s: float | None, what: str) -> T:
    """``call()``, waited for ``timeout_s`` at most (None: without bound). Raises ``TimeoutError`` past it (at
    once when no time is left), leaving the call to finish, or not, on its own thread."""
    if timeout_s is None:
        return call()
    if timeout_s <= 0:
        raise TimeoutError(f"{what}: no time left before the shutdown deadline")
    outcome: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=contextvars.copy_context().run, args=(run,), name=f"bounded: {what}",
                     daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"{what}: no answer within {timeout_s:.1f} s (the shutdown deadline); abandoned")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def all_until(calls: Sequence[Callable[[], Any]], until: float) -> int:
    """Run ``calls`` at once, each on a daemon thread, and wait for them until ``until`` (monotonic) at most.
    Returns how many ended in time; the others are abandoned."""
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(call,), name="final call",
                                daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()))
    return sum(not thread.is_alive() for thread in threads)


def last_resort(seconds: float) -> None:
    """End the process ``seconds`` from now whatever holds the GIL (faulthandler's timer thread: exit status 1
    after dumping every thread's traceback to stderr). Only one is armed per process; arming again moves it."""
    faulthandler.dump_traceback_later(max(0.001, seconds), exit=True, file=sys.stderr)

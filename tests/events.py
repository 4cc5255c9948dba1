"""Waiting for an event instead of sleeping or timing: what the tests do on machines of any speed and load."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(what: str, check: Callable[[], Any], timeout: float = 60, every: float = 0.1) -> Any:
    """``check()``'s first truthy answer. ``timeout`` is a deadline for a hang, never a measurement: give it
    room for a loaded machine."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)
    return result

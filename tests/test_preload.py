"""Preloading: a worker loads its configured models before taking jobs, and refuses to start without them."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from runtime.nodecache import NodeCache
from tests.conftest import Stack, spawn_worker


def log_of(stack: Stack, name: str) -> str:
    return (stack.log_dir / f"worker-{name}.log").read_text(errors="replace")


def test_preload_failure_stops_start_up_with_the_reason(stack: Stack) -> None:
    proc = spawn_worker(stack, "preload-missing", {"SPOTGEN_PRELOAD": "tiny-sd,no-such-model"})
    assert proc.wait(120) == 1
    log = log_of(stack, "preload-missing")
    assert "cannot start" in log and "'no-such-model' is not in the catalog" in log
    assert "ready." not in log  # it never consumed


def test_preloaded_models_are_loaded_before_the_worker_is_ready(stack: Stack, tmp_path: Path) -> None:
    proc = spawn_worker(stack, "preload-ok", {"SPOTGEN_PRELOAD": "tiny-sd,tiny-controlnet",
                                              "SPOTGEN_NODE_CACHE_DIR": str(tmp_path / "node-cache")})
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log_of(stack, "preload-ok"):
            assert proc.poll() is None and time.monotonic() < deadline, log_of(stack, "preload-ok")
            time.sleep(0.1)
        log = log_of(stack, "preload-ok")
        order = [log.index(text) for text in ("preloaded model tiny-sd", "preloaded model tiny-controlnet", " ready.")]
        assert order == sorted(order)
        assert "tiny-sd: copied" in log and "tiny-controlnet: copied" in log  # through the node cache
        assert NodeCache(tmp_path / "node-cache", 1024**3).is_cached("tiny-sd")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

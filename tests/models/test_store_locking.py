"""Tier 2 under concurrency: a load in progress never blocks the questions probes and metrics ask, one key loads
once however many callers wait for it, and an out-of-memory release keeps the running job's models.

The loaders here are plain callables that block on an event, because what is tested is the store's locking, not a
pipeline: with a real model the window would be the seconds a load takes, and the test would race it."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from runtime.models.store import ModelStore

#: How long a call that must not block may take before the test calls it blocked. Not a speed bound: the calls
#: answer in microseconds; a store that holds its lock across the load blocks them until the loader is released.
BLOCKED_S = 20


def _answers(call: object) -> bool:
    """Whether ``call()`` returns while a load is held open (it runs in a thread, so a deadlock fails the test)."""
    done = threading.Event()
    threading.Thread(target=lambda: (call(), done.set()), daemon=True).start()  # type: ignore[operator]
    return done.wait(BLOCKED_S)


def test_a_load_in_progress_does_not_block_resident_memory_or_other_keys(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    entered, release = threading.Event(), threading.Event()

    def slow() -> bytes:
        entered.set()
        release.wait(60)
        return b"x" * 10

    loader = threading.Thread(target=store.get, args=("big", slow, "big-model"), daemon=True)
    loader.start()
    assert entered.wait(BLOCKED_S)
    try:
        assert _answers(lambda: store.resident("big-model"))
        assert _answers(store.memory_bytes)
        assert _answers(lambda: store.get("small", lambda: b"y", "small-model"))
        assert store.resident("small-model") and not store.resident("big-model")
    finally:
        release.set()
        loader.join(BLOCKED_S)
    assert store.resident("big-model")


def test_callers_of_one_key_wait_for_one_load(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> object:
        calls.append(1)
        entered.set()
        release.wait(60)
        return object()

    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(store.get("k", slow, "m"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert entered.wait(BLOCKED_S)
    release.set()
    for thread in threads:
        thread.join(BLOCKED_S)
    assert len(calls) == 1 and store.loads == 1 and store.hits == 3
    assert len(results) == 4 and all(result is results[0] for result in results)


def test_a_failed_load_lets_the_next_caller_try_again(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)

    def broken() -> object:
        raise OSError("EFS said no")

    for _ in range(2):
        try:
            store.get("k", broken, "m")
        except OSError:
            pass
        else:
            raise AssertionError("the loader's error must reach the caller")
    assert store.get("k", lambda: "ok", "m") == "ok" and store.loads == 1


def test_release_idle_keeps_the_running_jobs_models(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for model in ("a", "b", "c"):
        store.get(f"{model}/unet", lambda: torch.nn.Linear(16, 16), model)
        store.get(f"{model}/vae", lambda: torch.nn.Linear(4, 4), model)
    held = store.memory_bytes()
    freed = store.release_idle(keep=["b"])
    assert store.resident("b") and not store.resident("a") and not store.resident("c")
    assert freed > 0 and store.memory_bytes() == held - freed
    assert freed == 2 * (16 * 16 + 16 + 4 * 4 + 4) * 4  # float32: a's and c's weights and biases
    assert store.get("b/unet", lambda: torch.nn.Linear(1, 1), "b").in_features == 16 and store.loads == 6

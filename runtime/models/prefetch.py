"""Reading a model's files into the page cache while diffusers builds its modules, so the disk never waits on Python.

A load from disk does two things in turn, per component: build the modules (Python and CPU: configs, layers on the
meta device, a few hundred ms for a UNet whatever its size) and then read the weights through safetensors' mmap
(the disk). One after the other, a cold load costs the sum; with the files read ahead by a thread of their own
while the first component is being built, it costs about the larger of the two (``make bench``'s "load against
read" figures, ``tests/harness/bench_coldstart.py``). The thread reads into one reused buffer: the bytes land in the
page cache, which safetensors then maps without another trip to the disk, and no copy of the model is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger("spotgen.models")

CHUNK = 1 << 20
#: Read-ahead goes by spans, each skipped when its first page is already in the page cache.
SPAN = 8 << 20


class Prefetcher:
    """Per model store: while a load runs on a thread (``loading``), the files its sources name (``files``) are
    read ahead once each by a background thread, which stops when that load ends."""

    def __init__(self, enabled: bool = True) -> None:
        #: Off: loads read their files themselves, as before (the benchmark's "before" figure).
        self.enabled = enabled
        self._local = threading.local()
        #: Bytes read ahead, all loads together (tests and the benchmark read it).
        self.bytes_read = 0
        self._count = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether a load runs on this thread (only then are files read ahead)."""
        return self.enabled and getattr(self._local, "stop", None) is not None

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """The span of one load on this thread; a nested load (a VAE inside a pipeline's) joins the outer one."""
        if getattr(self._local, "stop", None) is not None:
            yield
            return
        stop = threading.Event()
        self._local.stop, self._local.seen = stop, set()
        try:
            yield
        finally:
            stop.set()
            self._local.stop = None

    def files(self, paths: Iterable[Path]) -> threading.Thread | None:
        """Read ``paths`` ahead (those not yet read in this load), in sorted order, as diffusers loads components
        in its model index's sorted order; nothing outside a load. The thread, or None when nothing was started."""
        stop: threading.Event | None = getattr(self._local, "stop", None)
        if stop is None or not self.enabled:
            return None
        todo = sorted(p for p in paths if p not in self._local.seen)
        if not todo:
            return None
        self._local.seen.update(todo)
        thread = threading.Thread(target=self._read, args=(todo, stop), name="spotgen-prefetch", daemon=True)
        thread.start()
        return thread

    def _read(self, paths: list[Path], stop: threading.Event) -> None:
        buffer, probe = bytearray(CHUNK), bytearray(4096)
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:  # the loader reports a missing file itself
                continue
            try:
                size, offset = os.fstat(fd).st_size, 0
                while offset < size and not stop.is_set():
                    if not cached(fd, offset, probe):  # in memory already (a warm node): no copy for nothing
                        position = offset
                        while position < min(offset + SPAN, size) and (n := os.preadv(fd, [buffer], position)):
                            position += n
                            with self._count:
                                self.bytes_read += n
                    offset += SPAN
            except OSError as exc:
                log.debug("prefetch of %s stopped: %s", path, exc)
            finally:
                os.close(fd)
            if stop.is_set():
                return


def cached(fd: int, offset: int, probe: bytearray) -> bool:
    """Whether the page at ``offset`` is in the page cache (read without waiting for the disk: ``RWF_NOWAIT``);
    False where that cannot be told (then the span is read)."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return False
    try:
        return os.preadv(fd, [probe], offset, flag) > 0
    except (BlockingIOError, OSError):
        return False

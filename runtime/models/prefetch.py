"""Reading a model's files into the page cache while diffusers builds its modules, so the disk never waits on Python.

A load from disk does two things in turn, per component: build the modules (Python and CPU: configs, layers on the
meta device, a few tens of ms for a UNet whatever its size) and then read the weights through a mapping of their
files (the disk: ``pipelines.mapped``). One after the other, a cold load costs the sum; with the files read
ahead by a thread of their own while the components are being built, it costs about the larger of the two
(``make bench``'s "load against read" figures, ``tests/harness/bench_coldstart.py``).

The thread moves the bytes with ``sendfile`` to ``/dev/null``: the kernel reads them into the page cache, which
the load then maps without another trip to the disk, and no byte is copied to user space (a read into a buffer
cost a core's worth of copying, and it took the GIL back after every MiB: a load's Python, which holds the GIL for
up to 5 ms at a time, slowed the read down to its own pace).
Files go in the order a load needs them: the smallest folder's first (``smallest_first``), as
``pipelines.components`` loads a pipeline's components, so the largest one (the UNet or the transformer) is read
last, while the others are built.
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
#: The most one ``sendfile`` call moves, with the GIL released: past the first span not in the page cache, the rest
#: of a file is read in runs this long.
RUN = 256 << 20


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
        """Read ``paths`` ahead (those not yet read in this load), the smallest folder's first
        (``smallest_first``); nothing outside a load. The thread, or None when nothing was started."""
        stop: threading.Event | None = getattr(self._local, "stop", None)
        if stop is None or not self.enabled:
            return None
        todo = smallest_first(p for p in paths if p not in self._local.seen)
        if not todo:
            return None
        self._local.seen.update(todo)
        thread = threading.Thread(target=self._read, args=(todo, stop), name="spotgen-prefetch", daemon=True)
        thread.start()
        return thread

    def _read(self, paths: list[Path], stop: threading.Event) -> None:
        probe = bytearray(4096)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            for path in paths:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:  # the loader reports a missing file itself
                    continue
                try:
                    size, offset = os.fstat(fd).st_size, 0
                    while offset < size and cached(fd, offset, probe):  # in memory already (a warm node)
                        offset += SPAN
                    while offset < size and not stop.is_set():  # the rest, a run at a time, never probed again:
                        n = _into_page_cache(fd, null, offset, min(RUN, size - offset))  # each probe is a turn
                        self._count_read(n)  # of the GIL, which the load's Python holds for up to 5 ms
                        offset = offset + n if n else size
                except OSError as exc:
                    log.debug("prefetch of %s stopped: %s", path, exc)
                finally:
                    os.close(fd)
                if stop.is_set():
                    return
        finally:
            os.close(null)

    def _count_read(self, n: int) -> None:
        with self._count:
            self.bytes_read += n


def _into_page_cache(fd: int, null: int, offset: int, length: int) -> int:
    """Read ``length`` bytes of ``fd`` from ``offset`` into the page cache, to ``/dev/null`` in the kernel
    (``sendfile``); through a buffer where ``sendfile`` cannot (not Linux). Bytes read."""
    done = 0
    try:
        while done < length and (n := os.sendfile(null, fd, offset + done, length - done)):
            done += n
        return done
    except OSError:  # no sendfile from a file here: the bytes come through a buffer instead
        buffer = bytearray(CHUNK)
        while done < length and (n := os.preadv(fd, [memoryview(buffer)[:min(CHUNK, length - done)]],
                                               offset + done)):
            done += n
        return done


def folder_bytes(folder: Path) -> int:
    """Bytes of the files directly in ``folder`` (a pipeline component's weights and configs): what orders a
    load's reads and its components, smallest first."""
    try:
        return sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())
    except OSError:
        return 0


def smallest_first(paths: Iterable[Path]) -> list[Path]:
    """``paths`` by the bytes of their folders, smallest first, then by name: a pipeline's configs, tokenizers and
    small encoders before its UNet or transformer, the order ``pipelines.components`` loads them in."""
    listed = list(paths)
    sizes = {folder: folder_bytes(folder) for folder in {path.parent for path in listed}}
    return sorted(listed, key=lambda path: (sizes[path.parent], str(path)))


def cached(fd: int, offset: int, probe: bytearray) -> bool:
    """Whether the page at ``offset`` is in the page cache (read without waiting for the disk: ``RWF_NOWAIT``);
    False where that cannot be told (then the span is read). Not free of effects: a probe of a page not in memory
    starts reading it (Linux 6.18 measured), so a second probe of it may say True; probe a page once."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return False
    try:
        return os.preadv(fd, [probe], offset, flag) > 0
    except (BlockingIOError, OSError):
        return False

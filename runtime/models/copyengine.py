"""The parallel copy engine of the node cache (``copy_tree`` is its entry point).

Several reader threads fill a copy at once (EFS is slow per stream and fast in parallel). How a chunk is copied
depends on what the manifest asks for:

* nothing to hash: ``copy_file_range``, inside the kernel, with no trip through this process;
* xxh3_128 (in pieces, so every reader hashes its own chunks): ``copy_file_range`` too, one ``_HOT_BYTES`` part
  at a time, and the part is then read back *from the destination* and hashed while it is still in the page
  cache and the CPU's cache. What is hashed is what the destination holds, the bytes that are fsync'ed and
  committed, whatever happens to the source meanwhile; the copy costs one kernel copy plus one read of hot
  memory, instead of a read into this process, a hash and a write out of it. Not an mmap of the source: a
  source file that shrinks under an mmap raises SIGBUS, which kills the worker, where a read fails with an
  error; nor of the copy: hashing the copy through an mmap measured no faster than this read of hot memory;
* sha256 (one ordered digest, the manifests written before xxh3_128) or a ``copy_file_range`` that the file
  systems refuse (NFS to local disk: EXDEV): ``pread`` into a buffer, hashed there, then ``pwrite``.

Buffers: a sha256 chunk's buffer lives until the collecting thread has fed the digest (at most ``2 * readers``
of them); every other path uses one buffer per reader thread, allocated once (a ``bytearray`` is zeroed when
made: a new 8 MiB buffer per chunk cost more system time than the copy's own extra pass).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.models.copying import (
    SHA256,
    XXH3_128,
    Digest,
    NodeCacheError,
    combine_pieces,
    parse_digest,
)

#: errnos of a ``copy_file_range`` that these file systems cannot do (not an I/O error): copy through a buffer
_NOT_IN_KERNEL = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)
_local = threading.local()
# A reader copies and hashes its chunk this much at a time, so that each part is hashed while in the CPU's cache
# (copied in the kernel, then read back from the copy; through a buffer, hashed then written): hashing a whole
# 8 MiB chunk after writing it read it from memory once more, which measured 1.26x the time of the same copy
# unhashed, against 1.01-1.15x this way (bench_cache's model, 2 cores; 256 KiB to 1 MiB alike, both ways)
_HOT_BYTES = 1 << 20
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


def _thread_buffer(n: int) -> memoryview:
    """This reader thread's own buffer, at least ``n`` bytes (the pool's threads end with the copy)."""
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < n:
        buf = _local.buf = bytearray(n)
    return memoryview(buf)[:n]


@dataclass
class _File:
    """One file being copied: the destination is opened (and preallocated) up front, the source lazily by the
    first reader thread, so that EFS's slow opens happen in parallel too."""

    rel: str
    src: Path
    size: int
    dst_fd: int
    expected: Digest | None  # from the manifest, or None: no hashing
    step: int  # bytes per copy chunk: for xxh3_128, a whole number of the manifest's pieces
    src_fd: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_kernel: bool = hasattr(os, "copy_file_range")
    pieces: list[bytes] = field(default_factory=list)  # xxh3_128: each piece's digest, in file order

    def __post_init__(self) -> None:
        self.digest = hashlib.sha256() if self.expected is not None and self.expected.kind == SHA256 else None

    def source_fd(self) -> int:
        with self.lock:
            if self.src_fd < 0:
                self.src_fd = os.open(self.src, os.O_RDONLY)
            return self.src_fd

    def actual(self) -> Digest:
        if self.digest is not None:
            return Digest(SHA256, self.digest.hexdigest())
        assert self.expected is not None
        return Digest(XXH3_128, combine_pieces(self.pieces), self.expected.chunk_bytes)

    def close(self) -> None:
        with self.lock:
            for name in ("src_fd", "dst_fd"):
                if getattr(self, name) >= 0:
                    os.close(getattr(self, name))
                    setattr(self, name, -1)


def _copy_chunk(f: _File, offset: int, buf: bytearray | None) -> tuple[int, list[bytes]]:
    """Copy one chunk and start writing it to disk; for xxh3_128, this reader thread also hashes its pieces
    (xxhash releases the GIL). ``buf`` is given for sha256 only (the collecting thread hashes from it)."""
    n, pieces = _copy_bytes(f, offset, buf)
    _start_writeback(f.dst_fd, offset, n)
    return n, pieces


def _start_writeback(fd: int, offset: int, n: int) -> None:
    """Have the kernel start writing ``n`` bytes at ``offset`` to disk now, without waiting for it
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``): the disk writes while the readers go on reading, where
    otherwise the whole copy stays dirty in memory until its fsync (measured, alternating rounds on 2 cores: a
    cold fetch 0.83-0.96 of the time without; for a 33 GB Flux it also keeps the dirty pages few). Only a hint:
    the fsync before the commit is what makes the copy durable and reports errors."""
    sync_file_range = _libc_sync_file_range()
    if sync_file_range is not None:
        sync_file_range(fd, offset, n, _SYNC_FILE_RANGE_WRITE)


@functools.cache
def _libc_sync_file_range() -> Any:
    """libc's ``sync_file_range``, or None where there is none (not Linux: the fsync alone)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


def _copy_bytes(f: _File, offset: int, buf: bytearray | None) -> tuple[int, list[bytes]]:
    n = min(f.step, f.size - offset)
    xxh3 = f.expected is not None and f.expected.kind == XXH3_128
    if f.in_kernel and buf is None:
        try:
            if not xxh3:
                _kernel_copy(f, offset, n, f.dst_fd)
                return n, []
            return n, _pieces_copied(f, offset, n)
        except OSError as exc:
            if exc.errno not in _NOT_IN_KERNEL:
                raise
            # another file system (NFS to local disk): through a buffer, the whole chunk again, from its start
            f.in_kernel = False
    view = memoryview(buf)[:n] if buf is not None else _thread_buffer(n)
    _read(f.source_fd(), view, offset, f"{f.rel} shrank while it was being copied")
    if not xxh3:
        _write(f, view, offset)
        return n, []

    def written(at: int, m: int) -> memoryview:
        _write(f, view[at:at + m], offset + at)
        return view[at:at + m]  # hashed while still in the CPU's cache

    return n, _hashed_pieces(f, n, written)


def _pieces_copied(f: _File, offset: int, n: int) -> list[bytes]:
    """The xxh3_128 pieces of ``n`` bytes at ``offset``, copied in the kernel a part at a time, each part then
    hashed from the destination (see the module's docstring for why the destination)."""
    hot = _thread_buffer(_HOT_BYTES)

    def copied(at: int, m: int) -> memoryview:
        _kernel_copy(f, offset + at, m, f.dst_fd)
        _read(f.dst_fd, hot[:m], offset + at, f"the copy of {f.rel} shrank while it was being hashed")
        return hot[:m]

    return _hashed_pieces(f, n, copied)


def _hashed_pieces(f: _File, n: int, part: Callable[[int, int], memoryview]) -> list[bytes]:
    """The xxh3_128 pieces (the manifest's ``chunk_bytes`` each) of a chunk's ``n`` bytes, each fed ``_HOT_BYTES``
    at a time by ``part(at, m)``, which copies the ``m`` bytes at ``at`` in the chunk and returns them."""
    import xxhash

    assert f.expected is not None
    pieces, size = [], f.expected.chunk_bytes
    for start in range(0, n, size):
        digest = xxhash.xxh3_128()
        for at in range(start, min(n, start + size), _HOT_BYTES):
            digest.update(part(at, min(n, start + size, at + _HOT_BYTES) - at))
        pieces.append(digest.digest())
    return pieces


def _kernel_copy(f: _File, offset: int, n: int, dst_fd: int) -> None:
    done = 0
    while done < n:
        got = os.copy_file_range(f.source_fd(), dst_fd, n - done, offset + done, offset + done)
        if got == 0:
            raise OSError(errno.EIO, f"{f.rel} shrank while it was being copied")
        done += got


def _read(fd: int, view: memoryview, offset: int, shrank: str) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(errno.EIO, shrank)
        done += got


def _write(f: _File, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(f.dst_fd, view[done:], offset + done)


def _fsync_close(f: _File) -> None:
    os.fsync(f.dst_fd)
    f.close()


def _step(expected: Digest | None, chunk: int) -> int:
    if expected is None or expected.kind != XXH3_128:
        return chunk
    return max(expected.chunk_bytes, chunk // expected.chunk_bytes * expected.chunk_bytes)


def copy_tree(label: str, files: list[tuple[str, Path, int]], dest: Path, manifest: dict[str, str] | None,
              readers: int, chunk: int) -> None:
    """``readers`` threads copy chunks of ``chunk`` bytes, several files at once (EFS
    throughput grows with parallel streams), each file fsync'ed as soon as it is complete.

    For xxh3_128 the readers hash their own chunks, and a copy chunk is rounded to a whole number of the
    manifest's pieces. Chunks are consumed in the order they were submitted, so this thread collects the pieces
    in file order, and for sha256 (one ordered digest, the old kind) feeds it from the chunk's buffer while the
    readers go on (hashlib releases the GIL). At most ``2 * readers`` chunks are in flight, which bounds memory
    to ``2 * readers`` buffers for sha256 and one per reader otherwise."""
    expected = {rel: parse_digest(value) for rel, value in (manifest or {}).items()}
    steps = {rel: _step(expected.get(rel), chunk) for rel, _, _ in files}
    buf_bytes = max(steps.values(), default=chunk)
    window = 2 * readers
    pending: deque[tuple[Future[tuple[int, list[bytes]]], _File, bytearray | None, bool]] = deque()
    free: list[bytearray] = []
    opened: list[_File] = []
    syncs: list[Future[None]] = []
    pool = ThreadPoolExecutor(readers, thread_name_prefix="nodecache")

    def finish(f: _File) -> None:
        if f.expected is not None and (actual := f.actual()) != f.expected:
            raise NodeCacheError(f"{label}: {f.rel} read from {f.src} has {actual.kind} {actual.hex} but the "
                                 f"manifest says {f.expected.hex}: tier 0 does not match the manifest")
        syncs.append(pool.submit(_fsync_close, f))

    def drain_one() -> None:
        future, f, buf, last = pending.popleft()
        n, pieces = future.result()
        if buf is not None:
            assert f.digest is not None
            f.digest.update(memoryview(buf)[:n])
            free.append(buf)
        f.pieces += pieces
        if last:
            finish(f)

    try:
        for rel, src, size in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            # read and write: an xxh3_128 part is read back from the copy to be hashed
            f = _File(rel, src, size, os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644),
                      expected.get(rel), steps[rel])
            opened.append(f)
            if size:
                # the final size at once, so that parallel writes never extend the file; not posix_fallocate:
                # writing into its unwritten extents measured 2-7x slower on ext4 (free space is checked before)
                os.ftruncate(f.dst_fd, size)
            else:
                finish(f)
            for offset in range(0, size, f.step):
                if len(pending) >= window:
                    drain_one()
                buf = (free.pop() if free else bytearray(buf_bytes)) if f.digest is not None else None
                pending.append((pool.submit(_copy_chunk, f, offset, buf), f, buf, offset + f.step >= size))
        while pending:
            drain_one()
        for future in syncs:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for f in opened:
            f.close()

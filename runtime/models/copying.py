"""Model files on their way to the node cache: listing them safely, hashing them, and the parallel copy engine.

A copy is filled by several reader threads at once (EFS is slow per stream and fast in parallel), hashed from
the very bytes written (no second read) when a manifest gives the expected sha256, and copied in the kernel
(``copy_file_range``) when there is nothing to hash. Listing follows a symlink only when it stays inside the
model and names a regular file, so a copy never reads outside the model.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

CHUNK_BYTES = 8 << 20  # per pread: big enough for EFS's per-request latency, small enough to spread a file


class NodeCacheError(ValueError):
    """A model that cannot be put in (or kept in) the node cache; the message names the model and the reason.

    Retrying does not help. I/O failures that may pass (disk full, an EFS error) are raised as ``OSError``."""


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def walk_files(label: str, source: Path) -> list[tuple[str, Path, int]]:
    """(relative POSIX path, path to open, size) of every file under ``source``, largest first.

    A symlink is followed only when it stays inside ``source`` and names a regular file; a symlinked directory,
    a link leaving the directory or any special file is refused, so a copy never reads outside the model."""
    if not source.is_dir():
        raise NodeCacheError(f"{label}: source directory {source} does not exist or is not a directory "
                             "(is the EFS volume mounted?)")
    base = source.resolve()
    files = []

    def failed(exc: OSError) -> None:
        raise NodeCacheError(f"{label}: cannot read {source}: {exc}")

    try:
        for dirpath, dirnames, filenames in os.walk(base, onerror=failed):
            for name in dirnames:
                if os.path.islink(os.path.join(dirpath, name)):
                    raise NodeCacheError(f"{label}: {os.path.join(dirpath, name)} is a symlinked directory; refused")
            for name in filenames:
                path = Path(dirpath, name)
                rel, target = path.relative_to(base).as_posix(), path.resolve()
                if not target.is_relative_to(base):
                    raise NodeCacheError(f"{label}: {rel} is a symlink leaving {source} (to {target}); refused")
                st = os.stat(target)
                if not stat.S_ISREG(st.st_mode):
                    raise NodeCacheError(f"{label}: {rel} is not a regular file; refused")
                files.append((rel, target, st.st_size))
    except OSError as exc:
        raise NodeCacheError(f"{label}: cannot read {source}: {exc}") from None
    if not files:
        raise NodeCacheError(f"{label}: source directory {source} holds no files (is the EFS volume mounted?)")
    return sorted(files, key=lambda f: (-f[2], f[0]))


def listed_files(label: str, files: dict[str, Path]) -> list[tuple[str, Path, int]]:
    """``walk_files``'s result for an explicit file list, whose paths the caller has checked; names are re-checked
    here because they become paths under the cache."""
    out = []
    for rel, path in files.items():
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise NodeCacheError(f"{label}: {rel!r} is not a relative path inside the model")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise NodeCacheError(f"{label}: cannot read {path}: {exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NodeCacheError(f"{label}: {rel} is not a regular file; refused")
        out.append((rel, Path(path), st.st_size))
    if not out:
        raise NodeCacheError(f"{label}: no files to copy")
    return sorted(out, key=lambda f: (-f[2], f[0]))


def sha256_file(path: Path) -> str:
    """sha256 hex of a file, read in large chunks (EFS pays a round trip per request)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_manifest(directory: Path) -> dict[str, str]:
    """relative path -> sha256 hex of every file under ``directory``: what ``fetch(manifest=...)`` checks."""
    return {rel: sha256_file(path) for rel, path, _ in sorted(walk_files(f"manifest of {directory}", Path(directory)))}


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _File:
    """One file being copied: the destination is opened (and preallocated) up front, the source lazily by the
    first reader thread, so that EFS's slow opens happen in parallel too."""

    rel: str
    src: Path
    size: int
    dst_fd: int
    expected: str | None  # sha256 from the manifest, or None: no hashing
    src_fd: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_kernel: bool = hasattr(os, "copy_file_range")

    def __post_init__(self) -> None:
        self.digest = hashlib.sha256() if self.expected is not None else None

    def source_fd(self) -> int:
        with self.lock:
            if self.src_fd < 0:
                self.src_fd = os.open(self.src, os.O_RDONLY)
            return self.src_fd

    def close(self) -> None:
        with self.lock:
            for name in ("src_fd", "dst_fd"):
                if getattr(self, name) >= 0:
                    os.close(getattr(self, name))
                    setattr(self, name, -1)


def _copy_chunk(f: _File, offset: int, buf: bytearray, chunk: int) -> int:
    n = min(chunk, f.size - offset)
    if f.digest is None and f.in_kernel:  # nothing to hash: let the kernel copy (no trip through this process)
        try:
            done = 0
            while done < n:
                got = os.copy_file_range(f.source_fd(), f.dst_fd, n - done, offset + done, offset + done)
                if got == 0:
                    raise OSError(errno.EIO, f"{f.rel} shrank while it was being copied")
                done += got
            return n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            f.in_kernel = False  # another file system (NFS to local disk on older kernels): copy through buf
    view = memoryview(buf)[:n]
    done = 0
    while done < n:
        got = os.preadv(f.source_fd(), [view[done:]], offset + done)
        if got == 0:
            raise OSError(errno.EIO, f"{f.rel} shrank while it was being copied")
        done += got
    done = 0
    while done < n:
        done += os.pwrite(f.dst_fd, view[done:], offset + done)
    return n


def _fsync_close(f: _File) -> None:
    os.fsync(f.dst_fd)
    f.close()


def copy_tree(label: str, files: list[tuple[str, Path, int]], dest: Path, manifest: dict[str, str] | None,
              readers: int, chunk: int = CHUNK_BYTES) -> None:
    """Copy ``files`` into ``dest`` with ``readers`` threads doing pread/pwrite of ``chunk`` bytes, several files
    at once (EFS throughput grows with parallel streams), each file fsync'ed as soon as it is complete.

    Chunks are consumed in the order they were submitted, so this thread feeds each file's sha256 in order from
    the buffer just written, while the readers go on (hashlib releases the GIL). At most ``2 * readers``
    buffers are in flight, which bounds memory to ``2 * readers * chunk``."""
    window = 2 * readers
    pending: deque[tuple[Future[int], _File, bytearray, bool]] = deque()
    free: list[bytearray] = []
    opened: list[_File] = []
    syncs: list[Future[None]] = []
    pool = ThreadPoolExecutor(readers, thread_name_prefix="nodecache")

    def finish(f: _File) -> None:
        if f.digest is not None and f.digest.hexdigest() != f.expected:
            raise NodeCacheError(f"{label}: {f.rel} read from {f.src} has sha256 {f.digest.hexdigest()} but the "
                                 f"manifest says {f.expected}: tier 0 does not match the manifest")
        syncs.append(pool.submit(_fsync_close, f))

    def drain_one() -> None:
        future, f, buf, last = pending.popleft()
        n = future.result()
        if f.digest is not None:
            f.digest.update(memoryview(buf)[:n])
        free.append(buf)
        if last:
            finish(f)

    try:
        for rel, src, size in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            f = _File(rel, src, size, os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644),
                      manifest.get(rel) if manifest is not None else None)
            opened.append(f)
            if size:
                # the final size at once, so that parallel writes never extend the file; not posix_fallocate:
                # writing into its unwritten extents measured 2-7x slower on ext4 (free space is checked before)
                os.ftruncate(f.dst_fd, size)
            else:
                finish(f)
            for offset in range(0, size, chunk):
                if len(pending) >= window:
                    drain_one()
                buf = free.pop() if free else bytearray(chunk)
                pending.append((pool.submit(_copy_chunk, f, offset, buf, chunk), f, buf, offset + chunk >= size))
        while pending:
            drain_one()
        for future in syncs:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for f in opened:
            f.close()

"""S3 as tier 0: a model directory under ``s3://bucket/prefix``, fetched into the node cache by parallel ranged GETs.

Beside EFS, because a replacement spot node waits for its models: S3 serves each prefix with many connections at
once and needs no mount, while EFS is a shared POSIX file system without request costs (docs/deploy.md, "S3 or
EFS"). The transfer is s3transfer's (boto3's TransferManager): it splits each object into ranged GETs of one part
size, runs ``concurrency`` of them at a time over all the model's files, asks again for the range of a part whose
answer was cut (never the whole file), and pins every part to the listed version with If-Match on its ETag. This
module chooses the part size, gives each object a file object (``_Sink``) that writes each arriving chunk at its
offset in the tier-1 temporary file and hashes it on the way, and checks the result against the manifest. The
node cache does the rest as for a local copy: budget, locks, and the one rename that commits a complete copy.

Hashing while the bytes arrive: an xxh3_128 digest is made of pieces of the manifest's ``chunk_bytes``
(``runtime.models.copying``); a part is a whole number of pieces and s3transfer writes a part's chunks in order
from its one I/O thread, so every piece is hashed from the writes themselves. A retried part starts again at a
piece's start, which starts that piece's hash again. Only a piece that was not written in one run from its start
(a foreign part size) is read back from the file to be hashed. That one thread writes and hashes every byte: on a
node whose network outruns it, it bounds the fetch (not measured against real S3 here). sha256 (the old
manifests: one ordered digest) is fed from the writes that reach the end of what is hashed so far, and catches up
by reading back, from the page cache, what arrived ahead of it.

Nothing here is named by a request: the catalog (the operator's configuration) names the URLs, which
``parse_s3_url`` checks, and the worker's IAM role reads the models prefix only (lambdas/template.yaml).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.models.copying import (
    CHUNK_BYTES,
    PICKLE_SUFFIXES,
    SHA256,
    XXH3_128,
    Digest,
    NodeCacheError,
    parse_digest,
)

#: Bucket names as S3 allows them today (lowercase, digits, dots and hyphens); the prefix is a path of keys.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SEGMENT = re.compile(r"^[A-Za-z0-9!_.'()+=@,:~-]+$")  # S3's safe characters less '*', a wildcard in IAM
#: Parallel GETs: S3 serves about 100 MB/s per connection, so a 25 Gbit/s node needs a few dozen.
CONCURRENCY = 32
#: Attempts of one part's GET when its answer is cut; botocore's own retries (5xx, throttling, refused
#: connections) come on top, inside each attempt.
ATTEMPTS = 5


class S3FetchError(OSError):
    """A GET that failed past its retries (refused or cut connections, 5xx, throttling): may pass, as OSError says."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


def parse_s3_url(value: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; ValueError saying what is wrong. The prefix names a "directory":
    no empty, ``.`` or ``..`` segment, no trailing slash, only the characters S3 calls safe in keys."""
    if not isinstance(value, str) or not value.startswith("s3://"):
        raise ValueError(f"{value!r} is not an S3 URL (s3://bucket/prefix)")
    bucket, _, prefix = value[5:].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"{value!r}: {bucket!r} is not an S3 bucket name (3-63 characters of a-z, 0-9, '.', '-')")
    parts = prefix.split("/")
    if not prefix or any(p in ("", ".", "..") or not _SEGMENT.match(p) for p in parts):
        raise ValueError(f"{value!r}: the prefix must be a path of keys without empty, '.' or '..' parts or a "
                         "trailing '/', in letters, digits and !_.'()+=@,:~-")
    return bucket, prefix


def default_client(concurrency: int = CONCURRENCY) -> Any:
    """The worker's S3 client for model sources: the deployment's endpoint and region (``SPOTGEN_*``), the
    retries of the worker's other clients (``runtime.storage.aws``: botocore's standard mode, 5 attempts), and a
    connection per parallel GET."""
    import boto3
    from botocore.config import Config

    from runtime.config import Settings

    settings = Settings.from_env()
    return boto3.session.Session().client(
        "s3", region_name=settings.region, endpoint_url=settings.aws_endpoint_url or None,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                      max_pool_connections=concurrency + 4))


def part_bytes(digests: list[Digest], wanted: int = CHUNK_BYTES) -> int:
    """The ranged GETs' size: ``wanted`` rounded to a whole number of every xxh3_128 manifest's pieces (powers of
    two, so a multiple of the largest is a multiple of all)."""
    piece = max((d.chunk_bytes for d in digests if d.kind == XXH3_128), default=0)
    return wanted if not piece else max(piece, wanted // piece * piece)


@dataclass
class S3Tree:
    """A model directory on S3, as ``NodeCache.fetch`` takes it instead of a path: ``files`` lists it (the node
    cache checks the list against the manifest and the budget), ``download`` fills the temporary directory."""

    url: str
    client: Any
    concurrency: int = CONCURRENCY
    attempts: int = ATTEMPTS
    part_bytes: int = CHUNK_BYTES
    #: Bytes of the last download read back from tier 1 to hash them (0 when every byte was hashed on arrival).
    reread: int = 0
    _etags: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.bucket, self.prefix = parse_s3_url(self.url)

    def __str__(self) -> str:
        return self.url

    def files(self, label: str) -> list[tuple[str, str, int]]:
        """(relative path, key, size) of every object under the prefix, largest first; pickle weights and names
        that could leave the copy's directory are refused, as for a directory on EFS."""
        out, base = [], self.prefix + "/"
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(base):]
                    if rel.endswith("/") and obj["Size"] == 0:
                        continue  # a "folder" the console made
                    if any(p in ("", ".", "..") for p in rel.split("/")) or "\\" in rel or "\x00" in rel:
                        raise NodeCacheError(f"{label}: s3://{self.bucket}/{obj['Key']} is not a path inside the "
                                             "model; refused")
                    if rel.lower().endswith(PICKLE_SUFFIXES):
                        raise NodeCacheError(f"{label}: {self.url}/{rel} is a pickle file; only safetensors are "
                                             "loaded (convert it and remove it from the prefix)")
                    self._etags[obj["Key"]] = obj["ETag"]
                    out.append((rel, obj["Key"], int(obj["Size"])))
        except NodeCacheError:
            raise
        except Exception as exc:  # botocore's errors past its retries: a refused endpoint, 5xx, access denied
            raise _failure(label, f"listing {self.url}/", exc) from exc
        if not out:
            raise NodeCacheError(f"{label}: {self.url}/ holds no objects (is the URL right? was the model uploaded?)")
        return sorted(out, key=lambda f: (-f[2], f[0]))

    def download(self, label: str, files: list[tuple[str, str, int]], dest: Path, manifest: dict[str, str] | None,
                 readers: int, chunk: int = CHUNK_BYTES) -> None:
        """Fetch ``files`` into ``dest`` (which ``files`` has listed), each checked against ``manifest`` as its
        bytes arrive and fsync'ed; raises without cleaning ``dest`` (the node cache removes it whole)."""
        from s3transfer.manager import TransferConfig, TransferManager

        expected = {rel: parse_digest(value) for rel, value in (manifest or {}).items()}
        part = part_bytes(list(expected.values()), self.part_bytes)
        # chunks wait for the one I/O thread in a queue of at most 64 MiB: the GETs pause when the disk lags
        config = TransferConfig(multipart_threshold=part, multipart_chunksize=part, io_chunksize=min(part, 1 << 20),
                                max_request_concurrency=max(readers, self.concurrency), max_io_queue_size=64,
                                num_download_attempts=self.attempts)
        sinks: list[_Sink] = []
        try:
            with TransferManager(self.client, config) as manager:  # on an error it cancels the other parts
                futures = []
                for rel, key, size in files:
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    sink = _Sink(rel, os.open(dest / rel, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), size,
                                 expected.get(rel))
                    sinks.append(sink)
                    if size:
                        os.ftruncate(sink.fd, size)  # parts land anywhere: the file has its size from the start
                        known = _Known(size, self._etags.get(key))
                        futures.append((rel, key, manager.download(self.bucket, key, sink, subscribers=[known])))
                for rel, key, future in futures:
                    try:
                        future.result()
                    except Exception as exc:
                        raise _failure(label, f"fetching {rel} (s3://{self.bucket}/{key})", exc, False) from exc
            for sink in sinks:
                if sink.expected is not None and (actual := sink.actual()) != sink.expected:
                    raise NodeCacheError(f"{label}: {self.url}/{sink.rel} has {actual.kind} {actual.hex} but "
                                         f"the manifest says {sink.expected.hex}: the object does not match the "
                                         "manifest (corrupted, or changed after the manifest was written)")
                os.fsync(sink.fd)
            self.reread = sum(sink.reread for sink in sinks)
        finally:
            for sink in sinks:
                os.close(sink.fd)


def _failure(label: str, what: str, exc: Exception, labelled: bool = True) -> Exception:
    """The error to raise for a failed S3 call: access and existence are the deployment's to fix (NodeCacheError);
    the rest (connections, 5xx, throttling, an object changed under the download) may pass (S3FetchError; not
    ``labelled`` where the node cache names the model and the source itself)."""
    code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))
    cause = f"{type(exc).__name__}: {exc}"
    if code in ("AccessDenied", "NoSuchBucket", "NoSuchKey", "403", "404", "InvalidAccessKeyId"):
        return NodeCacheError(f"{label}: {what} failed: {cause} (does the worker's role grant s3:GetObject and "
                              "s3:ListBucket on this prefix? lambdas/template.yaml's ModelsS3Prefix)")
    return S3FetchError(f"{label + ': ' if labelled else ''}{what} failed after its retries: {cause}")


class _Known:
    """An s3transfer subscriber that gives each download the size and ETag the listing returned, so no HEAD is
    sent per file and every ranged GET carries If-Match."""

    def __init__(self, size: int, etag: str | None) -> None:
        self.size, self.etag = size, etag

    def on_queued(self, future: Any, **_: Any) -> None:
        future.meta.provide_transfer_size(self.size)
        if self.etag:
            future.meta.provide_object_etag(self.etag)

    def on_progress(self, **_: Any) -> None:
        pass

    def on_done(self, **_: Any) -> None:
        pass


class _Sink:
    """The file object s3transfer writes one object into (``seek`` then ``write``): each write goes to the tier-1
    file at its offset with ``pwrite`` and through the hash while it is still in the CPU's cache."""

    def __init__(self, rel: str, fd: int, size: int, expected: Digest | None) -> None:
        self.rel, self.fd, self.size, self.expected = rel, fd, size, expected
        self.pos = 0
        self.lock = threading.Lock()
        self.piece = expected.chunk_bytes if expected is not None and expected.kind == XXH3_128 else 0
        self.pieces: dict[int, bytes] = {}  # xxh3_128: finished pieces
        self.open: dict[int, tuple[Any, int]] = {}  # piece -> (its hash so far, the next offset it needs)
        self.dirty: set[int] = set()  # pieces not written in one run from their start: read back at the end
        self.sha = hashlib.sha256() if expected is not None and expected.kind == SHA256 else None
        self.frontier = 0  # sha256: bytes [0, frontier) hashed
        self.ahead: dict[int, int] = {}  # sha256: written beyond the frontier, offset -> end
        self.rehash = False  # sha256: bytes below the frontier were written again: hash the file at the end
        self.reread = 0  # bytes read back from the file to hash them (not read as they arrived)

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data: bytes) -> int:
        view, at = memoryview(data), self.pos
        with self.lock:
            done = 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], at + done)
            if self.piece:
                self._pieces(view, at)
            elif self.sha is not None:
                self._ordered(view, at)
        self.pos = at + len(view)
        return len(view)

    def _pieces(self, view: memoryview, at: int) -> None:
        import xxhash

        while view:
            index = at // self.piece
            start, end = index * self.piece, min((index + 1) * self.piece, self.size)
            take = min(len(view), end - at)
            if at == start:  # a piece begins, or begins again (a retried part): hash it from here
                self.pieces.pop(index, None)
                self.dirty.discard(index)
                self.open[index] = (xxhash.xxh3_128(), start)
            state = self.open.get(index)
            if state is None or state[1] != at:
                self.dirty.add(index)
                self.open.pop(index, None)
            else:
                state[0].update(view[:take])
                if at + take == end:
                    self.pieces[index] = self.open.pop(index)[0].digest()
                else:
                    self.open[index] = (state[0], at + take)
            view, at = view[take:], at + take

    def _ordered(self, view: memoryview, at: int) -> None:
        assert self.sha is not None
        end = at + len(view)
        if at > self.frontier:
            self.ahead[at] = max(end, self.ahead.get(at, 0))
            return
        if at < self.frontier:
            self.rehash = True  # written again where already hashed: the digest cannot be trusted
        if end > self.frontier:
            self.sha.update(view[self.frontier - at:])
            self.frontier = end
        while (following := self.ahead.pop(self.frontier, None)) is not None:
            if following > self.frontier:
                self.sha.update(self._read(self.frontier, following))
                self.frontier = following

    def _read(self, offset: int, end: int) -> bytes:
        self.reread += end - offset
        return os.pread(self.fd, end - offset, offset)

    def actual(self) -> Digest:
        """The digest of the bytes in the file, from what was hashed on arrival and what must be read back."""
        assert self.expected is not None
        if self.sha is not None:
            if self.rehash or self.frontier < self.size:
                self.sha, self.frontier, self.ahead = hashlib.sha256(), 0, {}
                for offset in range(0, self.size, CHUNK_BYTES):
                    self.sha.update(self._read(offset, min(self.size, offset + CHUNK_BYTES)))
            return Digest(SHA256, self.sha.hexdigest())
        import xxhash

        pieces = []
        for index in range(-(-self.size // self.piece)):
            if index not in self.pieces or index in self.dirty:
                start = index * self.piece
                self.pieces[index] = xxhash.xxh3_128_digest(self._read(start, min(self.size, start + self.piece)))
            pieces.append(self.pieces[index])
        return Digest(XXH3_128, xxhash.xxh3_128_hexdigest(b"".join(pieces)), self.piece)

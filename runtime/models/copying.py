"""Model files on their way to the node cache: listing them safely, hashing them, and the copy's entry point.

A copy is filled by several reader threads at once (EFS is slow per stream and fast in parallel), copied in the
kernel (``copy_file_range``) where the file systems allow it, and checked against the manifest from the bytes
of the copy itself, read back while still in memory (no second read from disk); ``runtime.models.copyengine``
is the engine and says how. Listing follows a symlink only when it stays inside the model and names a regular
file, so a copy never reads outside the model.

Two hash kinds (docs/models.md "Manifests"). ``sha256`` (manifests without a ``hash`` field) is one digest of
the whole file, fed in order by one thread: about 1.7 GB/s, which bounded the copy. ``xxh3_128`` (what
``spotgen models manifest`` writes) is a non-cryptographic hash for integrity in transit, made of pieces so
that every reader thread hashes its own chunks, out of order::

    piece_i = xxh3_128(file[i * chunk_bytes:(i + 1) * chunk_bytes]).digest()   # 16 bytes, big-endian
    value   = xxh3_128(piece_0 + piece_1 + ... + piece_{n-1}).hexdigest()      # n = ceil(size / chunk_bytes)

(seed 0; an empty file has no piece: xxh3_128(b"")), with ``chunk_bytes`` recorded in the manifest. Inside the
node cache and ``verify`` an expected digest is one string that says its kind: 64 hex digits for sha256 (as
manifests always held, so copies made before keep matching), ``xxh3_128:<chunk_bytes>:<32 hex digits>``.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 8 << 20  # per pread: big enough for EFS's per-request latency, small enough to spread a file
SHA256, XXH3_128 = "sha256", "xxh3_128"
#: Weights that run code when unpickled: never loaded, never fetched (``runtime.models.catalog`` re-exports it).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HASH_KINDS = (SHA256, XXH3_128)
#: The pieces of an xxh3_128 digest that ``spotgen models manifest`` records: one copy chunk each.
HASH_CHUNK_BYTES = CHUNK_BYTES
_HEX_DIGITS = {SHA256: 64, XXH3_128: 32}
_HEX = {kind: re.compile(rf"^[0-9a-f]{{{n}}}$") for kind, n in _HEX_DIGITS.items()}


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


def check_hash_chunk(chunk_bytes: object) -> int:
    """``chunk_bytes`` of an xxh3_128 manifest: a power of two from 4 KiB to 1 GiB, so that a copy chunk can
    always be a whole number of pieces."""
    if not isinstance(chunk_bytes, int) or isinstance(chunk_bytes, bool) or not 4096 <= chunk_bytes <= 1 << 30 \
            or chunk_bytes & (chunk_bytes - 1):
        raise ValueError(f"chunk_bytes {chunk_bytes!r} is not a power of two from 4096 to {1 << 30}")
    return chunk_bytes


@dataclass(frozen=True)
class Digest:
    """An expected (or computed) digest of one file: its hash kind, hex value and, for xxh3_128, piece size."""

    kind: str
    hex: str
    chunk_bytes: int = 0

    def __str__(self) -> str:
        return self.hex if self.kind == SHA256 else f"{self.kind}:{self.chunk_bytes}:{self.hex}"


def parse_digest(value: str) -> Digest:
    """A digest string (64 hex digits: sha256; ``xxh3_128:<chunk_bytes>:<32 hex digits>``) as a ``Digest``;
    ValueError saying what is wrong otherwise."""
    parts = value.split(":")
    if len(parts) == 1:
        kind, chunk, hexdigest = SHA256, 0, parts[0]
    elif len(parts) == 3 and parts[0] == XXH3_128 and parts[1].isdigit():
        kind, chunk, hexdigest = XXH3_128, check_hash_chunk(int(parts[1])), parts[2]
    elif len(parts) == 3 and parts[0] != XXH3_128:
        raise ValueError(f"unknown hash kind {parts[0]!r} (known: {', '.join(HASH_KINDS)})")
    else:
        raise ValueError(f"{value!r} is not a digest: 64 hex digits (sha256) or xxh3_128:<chunk_bytes>:<32 hex digits>")
    if not _HEX[kind].match(hexdigest):
        raise ValueError(f"{hexdigest!r} is not a {kind} digest ({_HEX_DIGITS[kind]} lowercase hex digits)")
    return Digest(kind, hexdigest, chunk)


def digest_string(kind: str, hexdigest: str, chunk_bytes: int = 0) -> str:
    """The digest string of a manifest's ``kind`` entry, as ``parse_digest`` reads it; ValueError if it is none."""
    if kind not in HASH_KINDS:
        raise ValueError(f"unknown hash kind {kind!r} (known: {', '.join(HASH_KINDS)})")
    if not isinstance(hexdigest, str) or not _HEX[kind].match(hexdigest):
        raise ValueError(f"{hexdigest!r} is not a {kind} digest ({_HEX_DIGITS[kind]} lowercase hex digits)")
    return str(Digest(kind, hexdigest, check_hash_chunk(chunk_bytes) if kind == XXH3_128 else 0))


def _pieces(view: memoryview, chunk_bytes: int) -> list[bytes]:
    import xxhash  # the worker extra's: reading a catalog (`spotgen models parameters`, say) does without it

    return [xxhash.xxh3_128_digest(view[i:i + chunk_bytes]) for i in range(0, len(view), chunk_bytes)]


def combine_pieces(pieces: list[bytes]) -> str:
    """An xxh3_128 digest's value from its pieces' digests (the module docstring's formula)."""
    import xxhash

    return xxhash.xxh3_128_hexdigest(b"".join(pieces))


def file_digest(path: Path, kind: str = SHA256, chunk_bytes: int = HASH_CHUNK_BYTES) -> Digest:
    """The ``kind`` digest of a file, read in large chunks (EFS pays a round trip per request); for xxh3_128
    with pieces of ``chunk_bytes``, as ``copy_tree`` computes it from the bytes it copies."""
    if kind == SHA256:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK_BYTES):
                digest.update(chunk)
        return Digest(SHA256, digest.hexdigest())
    if kind != XXH3_128:
        raise ValueError(f"unknown hash kind {kind!r} (known: {', '.join(HASH_KINDS)})")
    check_hash_chunk(chunk_bytes)
    buf, pieces = bytearray(max(chunk_bytes, CHUNK_BYTES // chunk_bytes * chunk_bytes)), []
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            pieces += _pieces(memoryview(buf)[:n], chunk_bytes)
    return Digest(XXH3_128, combine_pieces(pieces), chunk_bytes)


def matches(path: Path, expected: str) -> tuple[bool, Digest]:
    """Whether ``path`` has the digest string ``expected``, and its digest of the same kind."""
    want = parse_digest(expected)
    actual = file_digest(path, want.kind, want.chunk_bytes or HASH_CHUNK_BYTES)
    return actual == want, actual


def sha256_file(path: Path) -> str:
    """sha256 hex of a file (old manifests' kind)."""
    return file_digest(path).hex


def manifest_of(directory: Path, kind: str = XXH3_128, chunk_bytes: int = HASH_CHUNK_BYTES) -> dict[str, str]:
    """relative path -> digest string of every file under ``directory``: what ``fetch(manifest=...)`` checks."""
    return {rel: str(file_digest(path, kind, chunk_bytes))
            for rel, path, _ in sorted(walk_files(f"manifest of {directory}", Path(directory)))}


def sha256_manifest(directory: Path) -> dict[str, str]:
    """``manifest_of`` in sha256, the kind of manifests written before xxh3_128."""
    return manifest_of(directory, SHA256)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


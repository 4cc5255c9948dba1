"""Tier 1 of the model cache: node-local copies of the model directories on tier 0 (EFS, or S3: ``s3source``).

Tier 0 is the read-only source of truth shared by every node: the EFS mount, slow per stream, or an S3 prefix
(``S3Tree``), fetched by parallel ranged GETs. Tier 1 is a directory on node-local disk (NVMe or a hostPath) that
the worker pods of one node share. A model is copied there once per node and then loaded from local disk.

Layout under ``root`` (model ids match ``MODEL_ID``; no path is ever built from anything else)::

    <id>/model/...          the copy: exactly the files of the source directory (what ``fetch`` returns)
    <id>/marker.json        file list with sizes and mtimes, manifest digest, copied-at; written before the rename
    <id>/last_used          its mtime is the LRU clock, touched on every hit
    .locks/<id>.fill        flock: exclusive while copying or removing the model, shared while checking a hit
    .locks/<id>.use         flock: shared while a process holds the model (``hold``); eviction skips it
    .locks/.budget          flock: exclusive while making room and reserving space for a copy
    .tmp-<id>-<pid>-<rnd>/  a copy in progress (``reserved_bytes`` inside counts against the budget)
    .trash-<id>-...         a removed entry, renamed away first so that removal is atomic too

A copy goes into a temporary directory, is hashed from the very bytes written (no second read) and checked
against the manifest, fsync'ed, and committed by one ``os.rename``: a directory under a model's name is always
complete. Lock files are never deleted (deleting a lock file lets two processes lock different inodes).
flock works across the pods of a node: they share one kernel, even in different PID namespaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sysconfig
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.models.copyengine import copy_tree
from runtime.models.copying import (
    CHUNK_BYTES,
    NodeCacheError,
    fsync_path,
    listed_files,
    matches,
    mib,
    parse_digest,
    walk_files,
)

if TYPE_CHECKING:
    from runtime.models.s3source import S3Tree
log = logging.getLogger("spotgen.nodecache")

MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MODEL_DIR, MARKER, LAST_USED, RESERVED = "model", "marker.json", "last_used", "reserved_bytes"
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_ABSENT = "absent"
_STALE = "was made for a different manifest (the model changed on tier 0)"


@dataclass
class FetchResult:
    path: Path  # the tier-1 model directory, to load from
    copied: bool  # True when this call copied the model from tier 0
    bytes_copied: int
    seconds: float


def _check_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not MODEL_ID.match(model_id):
        raise NodeCacheError(f"invalid model id {model_id!r}: ids match {MODEL_ID.pattern}")
    return model_id


def _manifest_digest(manifest: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class NodeCache:
    """Node-local model copies under ``root``, at most ``budget_bytes`` in all, filled with ``readers`` threads.

    What protects a model from eviction: removal (by ``evict`` or to make room) takes the model's ``fill`` lock
    exclusively, so it waits for a copy in progress, and then its ``use`` lock exclusively without waiting,
    so it never removes a model some process holds. ``fetch`` itself returns the path and releases its locks;
    a caller that then loads the model takes ``hold(model_id)`` around fetch *and* load::

        with cache.hold(model_id):
            pipe = load(cache.fetch(model_id, efs_dir, manifest).path)

    After the load nothing needs the files: Linux keeps open and mmap'ed files readable after they are removed.
    A hit reads nothing on tier 0, so cached models keep working while EFS is slow or unreachable.
    """

    def __init__(self, root: Path, budget_bytes: int, readers: int = 8, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        if budget_bytes <= 0 or readers < 1 or chunk_bytes < 4096:
            raise ValueError("budget_bytes and readers must be positive and chunk_bytes at least 4096")
        self.root, self.budget_bytes, self.readers, self.chunk_bytes = Path(root), budget_bytes, readers, chunk_bytes
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)

    # -- public --------------------------------------------------------------------------------------------
    def fetch(self, model_id: str, source: Path | S3Tree, manifest: dict[str, str] | None = None, *,
              verify: bool = False, files: dict[str, Path] | None = None) -> FetchResult:
        """The tier-1 copy of ``source``, copied first if absent, incomplete, corrupted or made for another manifest.

        ``files`` ({relative path in the copy: file to read}) replaces the walk of ``source`` when the caller
        has already decided what a model consists of (``ModelStore`` does: a single-file checkpoint plus its
        config directory, symlinks inside the models directory). A hit checks that every file recorded in the
        marker exists with its size and mtime (a few stats); ``verify=True`` also re-hashes the copy against
        the manifest (or the hashes recorded at copy time). An ``S3Tree`` source is listed and downloaded instead.
        ``manifest``: relative path -> digest string (``copying.parse_digest``), as ``ModelStore.manifest`` has it."""
        started = time.perf_counter()
        _check_id(model_id)
        if manifest is not None:
            manifest = {str(k): str(v).lower() for k, v in manifest.items()}
            for rel, value in manifest.items():
                try:
                    parse_digest(value)
                except ValueError as exc:
                    raise NodeCacheError(f"model {model_id!r}: the manifest's entry for {rel}: {exc}") from None
        digest = _manifest_digest(manifest) if manifest is not None else None
        path = self.root / model_id / MODEL_DIR
        with self._locked(f"{model_id}.fill", fcntl.LOCK_SH):
            if self._problem(model_id, digest, manifest, verify) is None:
                self._touch(model_id)
                return FetchResult(path, False, 0, time.perf_counter() - started)
        with self._locked(f"{model_id}.fill", fcntl.LOCK_EX):
            problem = self._problem(model_id, digest, manifest, verify)  # another process may have copied it
            if problem is None:
                self._touch(model_id)
                return FetchResult(path, False, 0, time.perf_counter() - started)
            if problem != _ABSENT:
                log.log(logging.INFO if problem == _STALE else logging.WARNING,
                        "model %s: the tier-1 copy %s; removing it and copying it again from %s",
                        model_id, problem, source)
                self._remove(model_id)
            source = source if hasattr(source, "download") else Path(source)  # an S3Tree, or a directory
            copied = self._fill(model_id, source, manifest, digest, files)
            return FetchResult(path, True, copied, time.perf_counter() - started)

    @contextlib.contextmanager
    def hold(self, model_id: str) -> Iterator[None]:
        """Keep ``model_id`` from being evicted, by any process of the node, while the block runs (a shared lock)."""
        with self._locked(f"{_check_id(model_id)}.use", fcntl.LOCK_SH):
            yield

    def is_cached(self, model_id: str) -> bool:
        """Whether a complete copy that passes the cheap check is there now (False while a copy is in progress)."""
        with self._locked(f"{_check_id(model_id)}.fill", fcntl.LOCK_SH, wait=False) as locked:
            return locked and self._problem(model_id, None, None, False) is None

    def size(self, model_id: str) -> int | None:
        marker = self._marker(_check_id(model_id))
        return None if marker is None else marker["bytes"]

    def evict(self, model_id: str) -> bool:
        """Remove the model's copy (complete or not): True if there was one. Waits for a copy in progress;
        a model that a process holds is not removed (NodeCacheError)."""
        with self._locked(f"{_check_id(model_id)}.fill", fcntl.LOCK_EX), \
                self._locked(f"{model_id}.use", fcntl.LOCK_EX, wait=False) as free:
            if not free:
                raise NodeCacheError(f"model {model_id!r} is in use by a process on this node; not evicted")
            return self._remove(model_id)

    def entries(self) -> list[tuple[str, int, float]]:
        """(model id, bytes, last used epoch) of every complete copy, by id."""
        out = []
        for path in sorted(self.root.iterdir()):
            marker = self._marker(path.name) if MODEL_ID.match(path.name) else None
            if marker is not None:
                out.append((path.name, marker["bytes"], self._last_used(path.name, marker)))
        return out

    # -- internals -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, name: str, op: int, wait: bool = True) -> Iterator[bool]:
        """flock ``.locks/<name>``: yields True, or False when ``wait`` is off and someone else holds it."""
        fd = os.open(self.root / ".locks" / name, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, op if wait else op | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                locked = False
            yield locked
        finally:
            os.close(fd)  # releases the lock

    def _marker(self, model_id: str) -> dict[str, Any] | None:
        try:
            marker = json.loads((self.root / model_id / MARKER).read_text())
            files = marker["files"]
            ok = (marker["format"] == 1 and marker["model_id"] == model_id and isinstance(marker["bytes"], int)
                  and isinstance(marker["copied_at"], float) and "manifest_sha256" in marker
                  and all(isinstance(info["size"], int) and isinstance(info["mtime_ns"], int) and "sha256" in info
                          and not rel.startswith("/") and ".." not in rel.split("/") for rel, info in files.items()))
            return marker if ok else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _last_used(self, model_id: str, marker: dict[str, Any]) -> float:
        try:
            return os.stat(self.root / model_id / LAST_USED).st_mtime
        except OSError:
            return float(marker["copied_at"])

    def _touch(self, model_id: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.root / model_id / LAST_USED)

    def _problem(self, model_id: str, digest: str | None, manifest: dict[str, str] | None,
                 verify: bool) -> str | None:
        """None for a usable copy, ``_ABSENT``, or what is wrong with it."""
        if not (self.root / model_id).exists():
            return _ABSENT
        marker = self._marker(model_id)
        if marker is None:
            return "has no complete marker (an interrupted or foreign copy)"
        if digest is not None and marker["manifest_sha256"] != digest:
            return _STALE
        model = self.root / model_id / MODEL_DIR
        for rel, info in marker["files"].items():
            try:
                st = os.stat(model / rel)
            except OSError:
                return f"lost {rel}"
            if st.st_size != info["size"]:
                return f"has {rel} with {st.st_size} bytes instead of {info['size']}"
            if st.st_mtime_ns != info["mtime_ns"]:
                return f"has {rel} modified after it was copied"
        hashes = manifest or {rel: info["sha256"] for rel, info in marker["files"].items() if info["sha256"]}
        if verify and hashes:
            with ThreadPoolExecutor(self.readers) as pool:
                same = list(pool.map(lambda rel: matches(model / rel, hashes[rel])[0], hashes))
            if wrong := sorted(rel for rel, ok in zip(hashes, same, strict=True) if not ok):
                kinds = sorted({parse_digest(hashes[rel]).kind for rel in wrong})
                return f"does not match the {'/'.join(kinds)} of {', '.join(wrong)}"
        return None

    def _fill(self, model_id: str, source: Path | S3Tree, manifest: dict[str, str] | None, digest: str | None,
              listed: dict[str, Path] | None = None) -> int:
        label, remote = f"model {model_id!r}", None if isinstance(source, Path) else source
        files: list[Any] = remote.files(label) if remote else walk_files(label, source) if listed is None \
            else listed_files(label, listed)
        if manifest is not None:
            names = {rel for rel, _, _ in files}
            missing = sorted(manifest.keys() - names)
            # as `spotgen models verify` rules: an unlisted weight file would be loaded unchecked; an unlisted
            # README or config is copied as it is
            extra = sorted(rel for rel in names - manifest.keys() if rel.lower().endswith(_WEIGHTS))
            if missing or extra:
                raise NodeCacheError(f"{label}: {source} does not match the manifest: missing {missing[:5]}, "
                                     f"weight files not in the manifest {extra[:5]}")
        total = sum(size for _, _, size in files)
        if total > self.budget_bytes:
            raise NodeCacheError(f"{label} is {mib(total)} ({total} bytes), larger than the whole node cache "
                                 f"budget of {mib(self.budget_bytes)} ({self.budget_bytes} bytes)")
        tmp = self._reserve(model_id, total)
        try:
            (tmp / MODEL_DIR).mkdir()
            (remote.download if remote else copy_tree)(label, files, tmp / MODEL_DIR, manifest, self.readers,
                                                       self.chunk_bytes)
            records = {}
            for rel, _, size in files:
                st = os.stat(tmp / MODEL_DIR / rel)
                if st.st_size != size:
                    raise NodeCacheError(f"{label}: the copy of {rel} has {st.st_size} bytes, not {size}")
                records[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                "sha256": manifest.get(rel) if manifest else None}
            (tmp / LAST_USED).touch()
            marker = {"format": 1, "model_id": model_id, "source": str(source), "copied_at": time.time(),
                      "bytes": total, "manifest_sha256": digest, "files": records}
            (tmp / MARKER).write_text(json.dumps(marker, indent=1))
            fsync_path(tmp / MARKER)
            directories = {tmp, tmp / MODEL_DIR}
            for rel, _, _ in files:
                directories.update((tmp / MODEL_DIR / rel).parents[:rel.count("/")])
            for directory in directories:
                fsync_path(directory)
            os.rename(tmp, self.root / model_id)
            fsync_path(self.root)
        except OSError as exc:  # disk full, an EFS error, a file changing on tier 0: may pass, so not NodeCacheError
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(exc.errno, f"{label}: copying {source} into the node cache failed: "
                          f"{exc.strerror or exc}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return total

    def _reserve(self, model_id: str, total: int) -> Path:
        """Under the budget lock: drop stale leftovers, evict least-recently-used models that nobody holds until
        ``total`` more bytes fit, and create the temporary directory with the reservation in it."""
        with self._locked(".budget", fcntl.LOCK_EX):
            used, candidates = 0, []
            for path in self.root.iterdir():
                name = path.name
                if name.startswith(".trash-"):
                    shutil.rmtree(path, ignore_errors=True)
                elif name.startswith(".tmp-"):
                    owner = name[5:].rsplit("-", 2)[0]
                    used += self._tmp_reservation(path, owner, model_id)
                elif MODEL_ID.match(name) and name != model_id and path.is_dir():
                    marker = self._marker(name)
                    if marker is not None:
                        used += marker["bytes"]
                        candidates.append((self._last_used(name, marker), name, marker["bytes"]))
                    else:  # a foreign or half-removed directory: count what it holds
                        with contextlib.suppress(OSError):
                            used += sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
            busy = []
            for _, victim, size in sorted(candidates):
                if used + total <= self.budget_bytes:
                    break
                with self._locked(f"{victim}.fill", fcntl.LOCK_EX, wait=False) as a, \
                        self._locked(f"{victim}.use", fcntl.LOCK_EX, wait=False) as b:
                    if a and b and self._remove(victim):
                        log.info("evicted model %s (%s) to make room for %s", victim, mib(size), model_id)
                        used -= size
                    elif not (a and b):
                        busy.append(victim)
            if used + total > self.budget_bytes:
                raise NodeCacheError(f"model {model_id!r} needs {mib(total)} but only "
                                     f"{mib(max(0, self.budget_bytes - used))} of the node cache budget of "
                                     f"{mib(self.budget_bytes)} can be freed; in use: {', '.join(busy) or 'none'}")
            free = shutil.disk_usage(self.root).free  # a budget larger than the disk: fail now, not half-way
            if total > free:
                raise NodeCacheError(f"model {model_id!r} is {mib(total)} but the node cache disk has only "
                                     f"{mib(free)} free (budget {mib(self.budget_bytes)})")
            tmp = self.root / f".tmp-{model_id}-{os.getpid()}-{secrets.token_hex(4)}"
            tmp.mkdir()
            (tmp / RESERVED).write_text(str(total))
            return tmp

    def _tmp_reservation(self, path: Path, owner: str, model_id: str) -> int:
        """Bytes a copy in progress reserves, or 0 after removing it when its owner is gone (its fill lock is
        free, or it is ours: we hold that lock, so any temporary directory of our model is a leftover)."""
        if MODEL_ID.match(owner) and owner != model_id:
            with self._locked(f"{owner}.fill", fcntl.LOCK_EX, wait=False) as free:
                if not free:
                    with contextlib.suppress(OSError, ValueError):
                        return int((path / RESERVED).read_text())
                    return 0
        log.info("removing the leftover of an interrupted copy: %s", path.name)
        shutil.rmtree(path, ignore_errors=True)
        return 0

    def _remove(self, model_id: str) -> bool:
        """Rename the entry away (atomic), then delete it. The caller holds the model's fill lock."""
        trash = self.root / f".trash-{model_id}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(self.root / model_id, trash)
        except FileNotFoundError:
            return False
        shutil.rmtree(trash, ignore_errors=True) if trash.is_dir() else trash.unlink()
        return True


def use_compile_cache(directory: Path) -> None:
    """Point PyTorch's compile caches (Inductor's FX graph and autograd caches, Triton's kernels) at
    ``directory`` on node-local disk, so that a second pod of the node finds what the first compiled. Only
    environment variables, which PyTorch reads when it compiles: nothing is imported here. Settings already in
    the environment win."""
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(directory / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(directory / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def compile_toolchain_problem(mode: str, device: str, path: str | None = None,
                              include_dir: Path | None = None) -> str | None:
    """Why ``torch.compile`` cannot run here, or None. It compiles at run time: on CUDA Triton builds its
    launchers with a C compiler (``$CC``, else gcc or clang, as Triton looks) against Python.h; on the CPU
    Inductor builds C++ (``$CXX``, else g++). The worker image's final stage ships neither, so a worker refuses
    the setting at start-up instead of failing every job. ``path`` and ``include_dir`` default to this
    process's PATH and Python's include directory."""
    if mode == "off":
        return None
    language, variable, names = ("C", "CC", ("gcc", "clang")) if device.startswith("cuda") else \
        ("C++", "CXX", ("g++",))
    wanted = os.environ.get(variable)
    found = shutil.which(wanted, path=path) if wanted else next(
        (hit for name in names if (hit := shutil.which(name, path=path))), None)
    if found is None:
        looked = f"{variable}={wanted}" if wanted else f"{' or '.join(names)} on PATH"
        return (f"SPOTGEN_COMPILE={mode} needs a {language} compiler at run time (torch.compile on {device}), and "
                f"there is none ({looked}): unset SPOTGEN_COMPILE, or run an image that has one")
    scheme = sysconfig.get_default_scheme()
    include = include_dir or Path(sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)
                                  ["include"])
    if not (include / "Python.h").is_file():
        return (f"SPOTGEN_COMPILE={mode} needs Python's headers at run time (torch.compile builds against "
                f"{include}/Python.h), and there are none: unset SPOTGEN_COMPILE, or run an image that has them")
    return None

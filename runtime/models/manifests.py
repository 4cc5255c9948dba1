"""Manifests and verification: a digest of every file of a model, written and checked on demand.

``spotgen models manifest`` writes one, ``spotgen models verify`` checks a model against it, and the node cache
checks each copy it makes against it (``runtime.models.nodecache``). New manifests are xxh3_128 in pieces, which
the node cache's readers hash as they copy (sha256 in one ordered stream bounded the copy); sha256 manifests,
written before, still verify. The format is in ``runtime.models.copying`` and docs/models.md "Manifests".
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runtime.models.catalog import DEFAULT_MANIFEST_DIR, WEIGHT_SUFFIXES, CatalogEntry, ModelError
from runtime.models.copying import HASH_CHUNK_BYTES, XXH3_128, file_digest, matches, parse_digest
from runtime.models.store import ModelStore


def manifest_path(store: ModelStore, model_id: str) -> tuple[Path, bool]:
    """Where ``model_id``'s manifest lives, and whether the catalog names it (else the default location
    ``manifests/<id>.json``, which the catalog entry still has to name before ``verify`` uses it)."""
    entry = store.entry(model_id, store._kind(model_id))
    if entry.manifest is not None:
        return store._inside(model_id, "manifest", entry.manifest), True
    return store.models_dir / DEFAULT_MANIFEST_DIR / f"{model_id}.json", False


def write_manifest(store: ModelStore, model_id: str,
                   chunk_bytes: int = HASH_CHUNK_BYTES) -> tuple[Path, dict[str, str], bool]:
    """Hash every file of ``model_id`` (xxh3_128 in pieces of ``chunk_bytes``) and write its manifest atomically
    (a reader never sees half of one).

    Returns the manifest's path, its files (hex digests, as written), and whether the catalog names that path.
    Nothing else changes: the catalog is configuration and stays as its owner wrote it."""
    source = store.source(model_id, store._kind(model_id))
    files = {rel: file_digest(path, XXH3_128, chunk_bytes).hex for rel, path in sorted(source.files.items())}
    target, named = manifest_path(store, model_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"hash": XXH3_128, "chunk_bytes": chunk_bytes, "files": files}, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; workers may run as another user
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target, files, named


@dataclass
class Verification:
    """What ``verify_model`` found: ``status`` is ``ok``, ``fail`` or ``no manifest``."""

    model_id: str
    status: Literal["ok", "fail", "no manifest"]
    problems: list[str] = field(default_factory=list)  # why it failed, worst first
    notes: list[str] = field(default_factory=list)  # worth knowing, not a failure
    files: int = 0


def verify_model(store: ModelStore, model_id: str) -> Verification:
    """Check ``model_id``'s files against its manifest: every listed file present with its digest (of the
    manifest's kind), and no weight file present that the manifest does not list (it would be loaded unchecked)."""
    try:
        manifest = store.manifest(model_id)
        if manifest is None:
            return Verification(model_id, "no manifest")
        url = store.catalog.s3_url(store.entry(model_id, store._kind(model_id)))
        if url is not None and store.node_cache is None:
            return _verify_listing(store, model_id, url, manifest)
        source = store.source(model_id, store._kind(model_id))
    except ModelError as exc:
        return Verification(model_id, "fail", [f"{exc.code}: {exc}"])
    root = source.manifest_root or source.path
    # an S3 model is checked in its tier-1 copy (the node cache checked it against the manifest as it arrived)
    inside = store.models_dir if url is None else root
    problems: list[str] = []
    for rel, expected in sorted(manifest.items()):
        path = (root / rel).resolve()
        if not path.is_relative_to(inside):
            problems.append(f"outside the models directory: {rel}")
        elif not path.is_file():
            problems.append(f"missing: {rel}")
        elif not matches(path, expected)[0]:
            problems.append(f"{parse_digest(expected).kind} mismatch: {rel}")
    unlisted = sorted(set(source.files) - set(manifest))
    problems += [f"unlisted weight file: {rel}" for rel in unlisted if rel.lower().endswith(WEIGHT_SUFFIXES)]
    others = [rel for rel in unlisted if not rel.lower().endswith(WEIGHT_SUFFIXES)]
    notes = [f"{len(others)} unlisted non-weight file(s): {', '.join(others[:5])}"] if others else []
    return Verification(model_id, "fail" if problems else "ok", problems, notes, len(manifest))


def _verify_listing(store: ModelStore, model_id: str, url: str, manifest: dict[str, str]) -> Verification:
    """An S3 model where nothing fetches it (no node cache): its objects' names against the manifest; their bytes
    are checked by each node's fetch, as they arrive."""
    from runtime.models.copying import NodeCacheError
    from runtime.models.s3source import S3Tree, default_client

    store.s3_client = store.s3_client or default_client()
    try:
        listed = {rel for rel, _, _ in S3Tree(url, store.s3_client).files(f"model {model_id!r}")}
    except (NodeCacheError, OSError) as exc:
        return Verification(model_id, "fail", [str(exc.args[-1])])
    problems = [f"missing: {rel}" for rel in sorted(manifest.keys() - listed)]
    problems += [f"unlisted weight file: {rel}" for rel in sorted(listed - manifest.keys())
                 if rel.lower().endswith(WEIGHT_SUFFIXES)]
    notes = [f"on S3 ({url}): names checked; the bytes are checked against the manifest by each node's fetch"]
    return Verification(model_id, "fail" if problems else "ok", problems, notes, len(manifest))


def iter_entries(store: ModelStore) -> Iterator[tuple[str, CatalogEntry]]:
    """The catalog's entries by id."""
    yield from sorted(store.catalog.models.items())

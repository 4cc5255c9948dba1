"""The model catalog and the in-process store of loaded models.

A request names a catalog id, never a path: the catalog (``catalog.json`` in the models directory, the EFS
volume in production) maps ids to model files under that directory. The store loads each model once per
process and hands the same objects to every pipeline that asks, so txt2img, img2img and ControlNet share one
UNet, one VAE and one text encoder.

A catalog entry names either a diffusers-format directory or a single-file checkpoint (one ``.safetensors``
in the original Stable Diffusion layout, as SD WebUI users keep them) together with a local diffusers config
directory, so that loading it needs no download. Every path in the catalog and in a manifest is relative and
must stay inside the models directory, symlinks included: the catalog is configuration, and a typo or a
hostile edit must not make a worker read arbitrary files. Only safetensors weights are ever loaded; pickle
files (``.bin``, ``.ckpt``, ...) run code when unpickled, so a model that contains one is refused.

``catalog.json``::

    {"models": {
      "sd15":  {"path": "stable-diffusion-v1-5", "kind": "base", "family": "sd1",
                "revision": "451f4fe", "manifest": "manifests/sd15.json"},
      "dream": {"path": "checkpoints/dreamshaper_8.safetensors", "config": "configs/sd15", "family": "sd1"},
      "canny": {"path": "sd-controlnet-canny", "kind": "controlnet", "family": "sd1"}}}

A manifest (``spotgen models manifest ID`` writes one) is ``{"files": {"relative/path": "<sha256 hex>", ...}}``.
Its paths are relative to the model's directory for a diffusers model (the form the node cache checks copies
against) and relative to the models directory for a single-file model (its checkpoint plus its config files).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime.contract import MODEL_ID_RE, ModelId
from runtime.nodecache import sha256_file
from runtime.observe import NOOP, Observer

if TYPE_CHECKING:
    from runtime.nodecache import NodeCache

CATALOG_FILE = "catalog.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_SUFFIX = ".safetensors"
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
DEFAULT_MANIFEST_DIR = "manifests"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+@:-]{0,127}$")

T = TypeVar("T")


log = logging.getLogger("spotgen.models")


class ModelError(ValueError):
    """A model that cannot be used: unknown id, wrong kind, missing or unsafe files."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _relative_path(value: str) -> str:
    """The syntactic half of the path rule (the other half, where symlinks lead, needs the disk: ``_inside``).

    Checked when the catalog loads, so a path that could never be valid is reported at once with its entry."""
    if not value or value != value.strip() or "\x00" in value:
        raise ValueError("must be a non-empty path without surrounding spaces")
    if "\\" in value:
        raise ValueError("use '/' to separate directories")
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("~"):
        raise ValueError("must be relative to the models directory, not absolute")
    if ".." in path.parts:
        raise ValueError("must not contain '..': catalog paths stay inside the models directory")
    if path == PurePosixPath("."):
        raise ValueError("must name a file or directory inside the models directory, not the directory itself")
    return value


RelPath = Annotated[str, AfterValidator(_relative_path)]


def _revision(value: str) -> str:
    if not _REVISION.match(value):
        raise ValueError("a revision is 1-128 characters of letters, digits and . _ / + @ : - (a commit, tag or "
                         "version)")
    return value


class CatalogEntry(BaseModel):
    """One model: where its files are, what it is, and optionally how to check them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A diffusers-format directory, or a single-file ``.safetensors`` checkpoint (then ``config`` is required).
    path: RelPath
    kind: Literal["base", "controlnet"] = "base"
    family: Literal["sd1", "sd2", "sdxl"] = "sd1"
    #: Which version of the model this is (a Hub commit, a tag); informational, shown by ``spotgen models list``.
    revision: Annotated[str, AfterValidator(_revision)] | None = None
    #: A JSON file ``{"files": {relpath: sha256}}`` that ``spotgen models verify`` checks the files against.
    manifest: RelPath | None = None
    #: For a single-file checkpoint: a local diffusers config directory (model_index.json, the component
    #: configs, tokenizer and scheduler; no weights), so that loading it never needs the Hub.
    config: RelPath | None = None

    @property
    def single_file(self) -> bool:
        return PurePosixPath(self.path).suffix.lower() == SAFETENSORS_SUFFIX

    @model_validator(mode="after")
    def _config_only_for_single_files(self) -> CatalogEntry:
        if self.config is not None and not self.single_file:
            raise ValueError(f"'config' is only for single-file checkpoints ('{SAFETENSORS_SUFFIX}' paths); "
                             f"{self.path!r} is a diffusers directory, which carries its own configs")
        return self


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[ModelId, CatalogEntry]

    @classmethod
    def load(cls, models_dir: Path) -> Catalog:
        path = models_dir / CATALOG_FILE
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ModelError("catalog_missing", f"no model catalog at {path}; build tiny models with "
                             "`spotgen models tiny DIR` or write one") from None
        except json.JSONDecodeError as exc:
            raise ModelError("catalog_invalid", f"the model catalog {path} is not JSON: {exc}") from None
        except ValidationError as exc:
            raise ModelError("catalog_invalid", f"the model catalog {path} is invalid: {_describe(exc)}") from None


class Manifest(BaseModel):
    """The expected sha256 of every file of one model."""

    model_config = ConfigDict(extra="forbid")

    files: dict[RelPath, Annotated[str, Field(pattern=_SHA256_HEX.pattern)]]


def _describe(exc: ValidationError) -> str:
    """pydantic's errors as ``models.<id>.path: <what is wrong>``, one per problem, without its URLs."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if p != "[key]")
        if "[key]" in err["loc"]:  # the id itself is at fault, not a field of its entry
            loc += " (id)"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


@dataclass(frozen=True)
class ModelSource:
    """Where to load a model from, checked: a diffusers directory, or a single file plus its config directory."""

    model_id: str
    path: Path  # the diffusers directory, or the .safetensors checkpoint
    single_file: bool
    config: Path | None = None  # single-file checkpoints: the local diffusers config directory
    #: Every file the model consists of, keyed as a manifest keys them (see ``manifest_root``).
    files: dict[str, Path] = field(default_factory=dict, compare=False, repr=False)
    #: What manifest paths are relative to: the model directory, or the models directory for a single file.
    manifest_root: Path | None = None


class ModelStore:
    """Catalog lookups, the tier-1 node cache (when configured) and tier 2: loaded objects kept in memory.

    ``source`` is what loaders use: it says whether a model is a diffusers directory or a single file with a
    config directory. ``path`` stays for callers that only know directories."""

    def __init__(self, models_dir: Path, device: str = "cpu", node_cache: NodeCache | None = None,
                 memory_budget: int = 0) -> None:
        self.models_dir = models_dir.resolve()
        self.device = device
        #: Attention kernel of loaded models: auto, sdpa or xformers (``pipelines.attention``).
        self.attention = "auto"
        #: Tier 2 budget in bytes of parameters and buffers; 0 = keep everything loaded.
        self.memory_budget = memory_budget
        self.hits = self.evictions = 0
        self._sizes: dict[str, int] = {}
        self._model_keys: dict[str, set[str]] = {}
        #: Tier 1: directory models are copied once per node to local disk and loaded from there.
        self.node_cache = node_cache
        self._catalog: Catalog | None = None
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a loader actually ran; tests and metrics read it
        #: Metrics and traces of lookups, loads, copies and evictions (``runtime.observe``); no-op by default.
        self.observer: Observer = NOOP

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog.load(self.models_dir)
        return self._catalog

    def entry(self, model_id: str, kind: str = "base") -> CatalogEntry:
        if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id):
            raise ModelError("invalid_model_id", f"{model_id!r} is not a model id: ids name catalog entries, never "
                             f"paths, and match {MODEL_ID_RE.pattern}")
        entry = self.catalog.models.get(model_id)
        if entry is None:
            known = ", ".join(sorted(m for m, e in self.catalog.models.items() if e.kind == kind))
            raise ModelError("unknown_model", f"unknown {kind} model {model_id!r}; the catalog has: {known}")
        if entry.kind != kind:
            raise ModelError("wrong_model_kind", f"model {model_id!r} is a {entry.kind} model, not a {kind} model")
        return entry

    def path(self, model_id: str, kind: str = "base") -> Path:
        """The model's directory (its ``.safetensors`` file for a single-file checkpoint; load those through
        ``source``, which also gives the config), checked as ``source`` checks it."""
        return self.source(model_id, kind).path

    def source(self, model_id: str, kind: str = "base") -> ModelSource:
        """Where to load ``model_id`` from, after checking that every path stays inside the models directory
        (through symlinks too), that the files exist, and that no pickle weights are among them."""
        entry = self.entry(model_id, kind)
        path = self._inside(model_id, "path", entry.path)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelError("unsafe_weights", f"model {model_id!r}: {entry.path} is a pickle checkpoint; only "
                             f"safetensors are loaded. Convert it to '{SAFETENSORS_SUFFIX}' (a single file with a "
                             "'config' directory in the catalog, or a diffusers directory) and point the catalog at "
                             "that")
        if not entry.single_file:
            if not path.is_dir():
                hint = (f"; a single-file checkpoint must end in '{SAFETENSORS_SUFFIX}'" if path.is_file() else "")
                raise ModelError("model_missing", f"model {model_id!r}: directory {path} does not exist{hint}")
            files = self._scan(model_id, path, exclude=self._manifest_file(entry))
            local = self._from_node_cache(model_id, path, files)
            return ModelSource(model_id, local or path, False, None, files, path)
        if entry.config is None:
            raise ModelError("single_file_needs_config", f"model {model_id!r}: {entry.path} is a single-file "
                             "checkpoint; add \"config\": \"<dir>\" to its catalog entry, naming a local diffusers "
                             "config directory (model_index.json, component configs, tokenizer, scheduler), so that "
                             "it loads without a download")
        if not path.is_file():
            raise ModelError("model_missing", f"model {model_id!r}: checkpoint file {path} does not exist")
        config = self._inside(model_id, "config", entry.config)
        if not config.is_dir():
            raise ModelError("model_missing", f"model {model_id!r}: config directory {config} does not exist")
        config_files = self._scan(model_id, config)
        if not (config / "model_index.json").is_file() and not (config / "config.json").is_file():
            raise ModelError("invalid_model_config", f"model {model_id!r}: config directory {config} has neither "
                             "model_index.json (a pipeline) nor config.json (a ControlNet)")
        weights = [rel for rel in config_files if rel.lower().endswith(WEIGHT_SUFFIXES)]
        if weights:
            raise ModelError("invalid_model_config", f"model {model_id!r}: config directory {config} holds weights "
                             f"({', '.join(weights[:5])}); it must hold configs only, the weights come from "
                             f"{entry.path}")
        files = {entry.path: path, **{f"{entry.config}/{rel}": p for rel, p in config_files.items()}}
        local = self._from_node_cache(model_id, path, files)
        if local is not None:  # the copy keeps the models directory's layout of the checkpoint and its config
            path, config = local / entry.path, local / entry.config
        return ModelSource(model_id, path, True, config, files, self.models_dir)

    def size(self, model_id: str, kind: str | None = None) -> int:
        """Bytes on tier 0 (the models directory) of every file the model consists of."""
        return sum(p.stat().st_size for p in self.source(model_id, kind or self._kind(model_id)).files.values())

    def manifest(self, model_id: str) -> dict[str, str] | None:
        """The entry's manifest, ``{relpath: sha256}``, or None when the catalog names none."""
        entry = self.entry(model_id, self._kind(model_id))
        if entry.manifest is None:
            return None
        path = self._inside(model_id, "manifest", entry.manifest)
        try:
            return Manifest.model_validate(json.loads(path.read_text())).files
        except FileNotFoundError:
            raise ModelError("manifest_missing", f"model {model_id!r}: manifest {path} does not exist; write it "
                             f"with `spotgen models manifest {model_id}`") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError("manifest_invalid", f"model {model_id!r}: cannot read manifest {path}: {exc}") from None
        except ValidationError as exc:
            raise ModelError("manifest_invalid", f"model {model_id!r}: manifest {path} is invalid: "
                             f"{_describe(exc)}") from None

    def get(self, key: str, loader: Callable[[], T], model_id: str | None = None) -> T:
        """Tier 2: load once per process under ``key``; later calls return the same object. With a memory
        budget, the least recently used other objects are dropped when a load goes over it (a job still
        running on one keeps its reference, so nothing is pulled from under it)."""
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                self.hits += 1
                self.observer.cache_lookup("memory", True, model_id or key)
                return self._loaded[key]
            # the node cache must not evict the files between their fetch (inside the loader) and the load
            started = time.perf_counter()
            with self._held(model_id), self.observer.phase("model_load", model=model_id or key):
                value = loader()
            self.observer.cache_lookup("memory", False, model_id or key)
            self.observer.model_loaded(model_id or key, time.perf_counter() - started)
            self.loads += 1
            self._loaded[key] = value
            self._sizes[key] = object_bytes(value)
            if model_id is not None:
                self._model_keys.setdefault(model_id, set()).add(key)
            while self.memory_budget and sum(self._sizes.values()) > self.memory_budget and len(self._loaded) > 1:
                old = next(iter(self._loaded))
                del self._loaded[old]
                self._sizes.pop(old)
                self.evictions += 1
                self.observer.model_evicted("memory", old)
                log.info("model cache: dropped %s from memory (budget %d bytes)", old, self.memory_budget)
            return value

    def resident(self, model_id: str) -> bool:
        """Whether something loaded for ``model_id`` is in memory (the next job skips loading it)."""
        with self._lock:
            return any(key in self._loaded for key in self._model_keys.get(model_id, ()))

    def memory_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    # -- internals -----------------------------------------------------------------------------------------
    def _held(self, model_id: str | None) -> contextlib.AbstractContextManager[None]:
        if self.node_cache is None or model_id is None:
            return contextlib.nullcontext()
        return self.node_cache.hold(model_id)

    def _from_node_cache(self, model_id: str, source: Path, files: dict[str, Path]) -> Path | None:
        """The tier-1 copy of the model's files (copied now if absent or damaged), or None without a node cache.

        The store decides what the model consists of (``files``, keyed as its manifest keys them), so the copy
        follows the same rules as loading from tier 0 and ``spotgen models verify``."""
        if self.node_cache is None:
            return None
        from runtime.nodecache import NodeCacheError

        try:
            with self.observer.phase("node_cache_fetch", model=model_id):
                result = self.node_cache.fetch(model_id, source, self.manifest(model_id), files=files)
        except NodeCacheError as exc:
            raise ModelError("model_cache_error", str(exc)) from None
        except OSError as exc:  # local disk full, say: loading from tier 0 is slower but works
            log.warning("model %s: node cache unavailable (%s); loading from %s", model_id, exc, source)
            return None
        self.observer.cache_lookup("node", not result.copied, model_id)
        if result.copied:
            self.observer.model_copied(model_id, result.bytes_copied, result.seconds)
            log.info("model %s: copied %d bytes to the node cache in %.2f s", model_id, result.bytes_copied,
                     result.seconds)
        return result.path

    def _kind(self, model_id: str) -> str:
        """The entry's own kind, for tools that handle every kind alike (an unknown id gets ``entry``'s error)."""
        entry = self.catalog.models.get(model_id) if isinstance(model_id, str) else None
        return entry.kind if entry is not None else "base"

    def _manifest_file(self, entry: CatalogEntry) -> Path | None:
        return None if entry.manifest is None else (self.models_dir / entry.manifest).resolve()

    def _inside(self, model_id: str, what: str, relative: str) -> Path:
        """``relative`` resolved under the models directory, refused if it (or a symlink on the way) leaves it."""
        path = (self.models_dir / relative).resolve()
        if not path.is_relative_to(self.models_dir):
            raise ModelError("invalid_catalog_path", f"model {model_id!r}: catalog {what} {relative!r} resolves to "
                             f"{path}, outside the models directory {self.models_dir}; catalog paths (and symlinks "
                             "under them) must stay inside it")
        return path

    def _scan(self, model_id: str, root: Path, exclude: Path | None = None) -> dict[str, Path]:
        """Every file under ``root`` as {relative POSIX path: resolved path}.

        Symlinks are followed only while they stay inside the models directory (a model directory may share
        files with another one); one that leads out is refused, as are pickle files, wherever they are."""
        files: dict[str, Path] = {}
        pickles: list[str] = []
        seen: set[Path] = set()

        def walk(directory: Path, prefix: str) -> None:
            real = directory.resolve()
            if real in seen:  # a symlink loop, or the same directory linked twice
                return
            seen.add(real)
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                raise ModelError("model_unreadable", f"model {model_id!r}: cannot read {directory}: {exc}") from None
            for item in entries:
                rel = f"{prefix}{item.name}"
                target = Path(item.path).resolve()
                if not target.is_relative_to(self.models_dir):
                    raise ModelError("invalid_catalog_path", f"model {model_id!r}: {rel} under {root} is a symlink "
                                     f"to {target}, outside the models directory {self.models_dir}; copy the file "
                                     "into the models directory instead")
                if target.is_dir():
                    walk(Path(item.path), f"{rel}/")
                elif target.is_file():
                    if item.name.lower().endswith(PICKLE_SUFFIXES):
                        pickles.append(rel)
                    elif target != exclude:
                        files[rel] = target
                # else: a dangling link or a special file; diffusers never reads those by name

        walk(root, "")
        if pickles:
            raise ModelError("unsafe_weights", f"model {model_id!r} has pickle weight files under {root} "
                             f"({', '.join(pickles)}); only safetensors are loaded. Convert them with diffusers' "
                             "save_pretrained(safe_serialization=True) and remove the pickle files")
        return files


# -- manifests ---------------------------------------------------------------------------------------------
def object_bytes(value: Any) -> int:
    """Bytes of the distinct tensors a loaded model holds (a pipeline's components, or one module)."""
    modules = list(getattr(value, "components", {}).values()) if hasattr(value, "components") else [value]
    seen: set[int] = set()
    total = 0
    for module in modules:
        tensors = [*module.parameters(), *module.buffers()] if hasattr(module, "parameters") else []
        for tensor in tensors:
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


def manifest_path(store: ModelStore, model_id: str) -> tuple[Path, bool]:
    """Where ``model_id``'s manifest lives, and whether the catalog names it (else the default location
    ``manifests/<id>.json``, which the catalog entry still has to name before ``verify`` uses it)."""
    entry = store.entry(model_id, store._kind(model_id))
    if entry.manifest is not None:
        return store._inside(model_id, "manifest", entry.manifest), True
    return store.models_dir / DEFAULT_MANIFEST_DIR / f"{model_id}.json", False


def write_manifest(store: ModelStore, model_id: str) -> tuple[Path, dict[str, str], bool]:
    """Hash every file of ``model_id`` and write its manifest atomically (a reader never sees half of one).

    Returns the manifest's path, its files, and whether the catalog names that path. Nothing else changes:
    the catalog is configuration and stays as its owner wrote it."""
    source = store.source(model_id, store._kind(model_id))
    files = {rel: sha256_file(path) for rel, path in sorted(source.files.items())}
    target, named = manifest_path(store, model_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"files": files}, out, indent=2, sort_keys=True)
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
    """Check ``model_id``'s files against its manifest: every listed file present with its sha256, and no
    weight file present that the manifest does not list (it would be loaded unchecked)."""
    try:
        manifest = store.manifest(model_id)
        if manifest is None:
            return Verification(model_id, "no manifest")
        source = store.source(model_id, store._kind(model_id))
    except ModelError as exc:
        return Verification(model_id, "fail", [f"{exc.code}: {exc}"])
    root = source.manifest_root or source.path
    problems: list[str] = []
    for rel, expected in sorted(manifest.items()):
        path = (root / rel).resolve()
        if not path.is_relative_to(store.models_dir):
            problems.append(f"outside the models directory: {rel}")
        elif not path.is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(path) != expected:
            problems.append(f"sha256 mismatch: {rel}")
    unlisted = sorted(set(source.files) - set(manifest))
    problems += [f"unlisted weight file: {rel}" for rel in unlisted if rel.lower().endswith(WEIGHT_SUFFIXES)]
    others = [rel for rel in unlisted if not rel.lower().endswith(WEIGHT_SUFFIXES)]
    notes = [f"{len(others)} unlisted non-weight file(s): {', '.join(others[:5])}"] if others else []
    return Verification(model_id, "fail" if problems else "ok", problems, notes, len(manifest))


def iter_entries(store: ModelStore) -> Iterator[tuple[str, CatalogEntry]]:
    """The catalog's entries by id."""
    yield from sorted(store.catalog.models.items())

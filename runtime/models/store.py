"""Tier 2 of the model cache: loaded models kept in memory, shared by every pipeline of the process.

The store loads each model once per process and hands the same objects to every pipeline that asks, so
txt2img, img2img and ControlNet share one UNet, one VAE and one text encoder. It resolves catalog ids to
checked sources (``runtime.models.catalog``), copies directory models through the node cache (tier 1,
``runtime.models.nodecache``) when one is configured, and drops the least recently used models past its budget.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from runtime.contract import MODEL_ID_RE
from runtime.models.catalog import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    WEIGHT_SUFFIXES,
    Catalog,
    CatalogEntry,
    Manifest,
    ModelError,
    describe,
)
from runtime.models.prefetch import Prefetcher
from runtime.ops.observe import NOOP, Observer

if TYPE_CHECKING:
    from runtime.models.nodecache import NodeCache

T = TypeVar("T")

log = logging.getLogger("spotgen.models")


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
    """Catalog lookups, the tier-1 node cache (when configured) and tier 2: loaded objects kept in memory. Loaders
    use ``source`` (a diffusers directory, or a single file with a config directory); ``path`` is for the rest."""

    def __init__(self, models_dir: Path, device: str = "cpu", node_cache: NodeCache | None = None,
                 memory_budget: int = 0, lora_budget: int = 0) -> None:
        self.models_dir = models_dir.resolve()
        self.device = device
        #: Attention kernel of loaded models: auto, sdpa or xformers (``pipelines.attention``).
        self.attention = "auto"
        #: Load the convolution-heavy models channels-last (``SPOTGEN_CHANNELS_LAST``).
        self.channels_last = False
        #: ``torch.compile`` mode for the UNets of loaded models, or "off" (``SPOTGEN_COMPILE``).
        self.compile = "off"
        #: Tier 2 budget in bytes of parameters and buffers; 0 = keep everything loaded.
        self.memory_budget = memory_budget
        #: Bytes of LoRA adapters each loaded base model keeps (``pipelines.loras``); 0 = no limit.
        self.lora_budget = lora_budget
        self.hits = self.evictions = 0
        self._sizes: dict[str, int] = {}
        self._model_keys: dict[str, set[str]] = {}
        #: Tier 1: directory models are copied once per node to local disk and loaded from there.
        self.node_cache = node_cache
        #: The S3 client of S3 sources (``runtime.models.s3source.default_client`` when unset, made on first use).
        self.s3_client: Any = None
        self._catalog: Catalog | None = None
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # a lock per key being loaded
        self.loads = 0  # how many times a loader actually ran; tests and metrics read it
        #: Metrics and traces of lookups, loads, copies and evictions (``runtime.ops.observe``); no-op by default.
        self.observer: Observer = NOOP
        self.prefetch = Prefetcher()

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
        """The model's directory (a single file's ``.safetensors``: load those through ``source``), checked."""
        return self.source(model_id, kind).path

    def source(self, model_id: str, kind: str = "base") -> ModelSource:
        """Where to load ``model_id`` from, checked: every path inside the models directory (through symlinks too),
        the files there, no pickle weights. Inside a load (``get``) its files are read ahead (``models.prefetch``)."""
        found = self._source(model_id, kind)
        if self.prefetch.active:
            config = sorted(p for p in found.config.rglob("*") if p.is_file()) if found.config else []
            self.prefetch.files([found.path, *config] if found.single_file else [found.path / r for r in found.files])
        return found

    def _source(self, model_id: str, kind: str) -> ModelSource:
        entry = self.entry(model_id, kind)
        if (url := self.catalog.s3_url(entry)) is not None:
            return self._from_s3(model_id, url)
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
        if entry.kind in ("lora", "upscaler", "ip_adapter", "embedding"):  # one weights file, no config
            if not path.is_file():
                what = {"lora": "LoRA", "upscaler": "upscaler", "ip_adapter": "IP-Adapter",
                        "embedding": "embedding"}[entry.kind]
                raise ModelError("model_missing", f"{what} {model_id!r}: file {path} does not exist")
            return ModelSource(model_id, path, True, None, {entry.path: path}, self.models_dir)
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
        flow = entry.kind == "base" and entry.family in ("flux", "sd3")
        if flow:  # the file may be the transformer alone (flux1-dev.safetensors, a GGUF): the rest are the config's
            weights = [rel for rel in weights if rel.startswith("transformer/") or not rel.endswith(SAFETENSORS_SUFFIX)]
        if weights:
            what = "no transformer weights (it may hold the other components')" if flow else "configs only"
            raise ModelError("invalid_model_config", f"model {model_id!r}: config directory {config} holds weights "
                             f"({', '.join(weights[:5])}); it must hold {what}, the weights come from "
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
        """The entry's manifest, ``{relpath: digest}`` (sha256 hex, or ``xxh3_128:<chunk>:<hex>``:
        ``runtime.models.manifests``), or None when the catalog names none."""
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
                             f"{describe(exc)}") from None

    def get(self, key: str, loader: Callable[[], T], model_id: str | None = None) -> T:
        """Tier 2: load once per process under ``key``; later calls return the same object. With a memory budget,
        the least recently used other objects are dropped when a load goes over it (a job still running on one
        keeps its reference, so nothing is pulled from under it). The store's lock guards its tables only, never a
        load: a load takes seconds to minutes, and ``/metrics`` and ``resident`` must answer meanwhile. Two callers
        of one key wait on that key's own lock, so the model still loads once. Files are read ahead meanwhile."""
        with self._lock:
            if (value := self._hit(key, model_id)) is not None:
                return value
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if (value := self._hit(key, model_id)) is not None:  # loaded by the caller we waited for
                    return value
            # the node cache must not evict the files between their fetch (inside the loader) and the load
            started = time.perf_counter()
            try:
                with (self._held(model_id), self.observer.phase("model_load", model=model_id or key),
                      self.prefetch.loading()):
                    value = loader()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            size = object_bytes(value)
            self.observer.cache_lookup("memory", False, model_id or key)
            self.observer.model_loaded(model_id or key, time.perf_counter() - started)
            with self._lock:
                self.loads += 1
                self._loaded[key] = value
                self._sizes[key] = size
                if model_id is not None:
                    self._model_keys.setdefault(model_id, set()).add(key)
                while self.memory_budget and sum(self._sizes.values()) > self.memory_budget and len(self._loaded) > 1:
                    self._drop(next(iter(self._loaded)), f"budget {self.memory_budget} bytes")
            return value

    def release_idle(self, keep: Iterable[str] = ()) -> int:
        """Drop every loaded object but those of the models in ``keep`` (the running job's); the bytes dropped. The
        answer to an out-of-memory error: the job keeps its own models (dropping them would only make the next lookup
        load a second copy beside the job's), and the retry in this process gets the room the idle models took."""
        kept = {key for model_id in keep for key in self._model_keys.get(model_id, ())}
        with self._lock:
            idle = [key for key in self._loaded if key not in kept]
            freed = sum(self._sizes.get(key, 0) for key in idle)
            for key in idle:
                self._drop(key, "out of memory")
        gc.collect()  # pipelines hold cycles (modules and their hooks): free the tensors now, not at the next GC
        return freed

    def resident(self, model_id: str) -> bool:
        """Whether something loaded for ``model_id`` is in memory (the next job skips loading it)."""
        with self._lock:
            return any(key in self._loaded for key in self._model_keys.get(model_id, ()))

    def memory_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    # -- internals -----------------------------------------------------------------------------------------
    def _hit(self, key: str, model_id: str | None) -> Any:
        """The loaded object of ``key`` (counted as a hit), or None. Called under the lock."""
        if key not in self._loaded:
            return None
        self._loaded.move_to_end(key)
        self.hits += 1
        self.observer.cache_lookup("memory", True, model_id or key)
        return self._loaded[key]

    def _drop(self, key: str, why: str) -> None:
        """Forget ``key``'s object (a job still using it keeps its reference). Called under the lock."""
        del self._loaded[key]
        self._sizes.pop(key, None)
        self.evictions += 1
        self.observer.model_evicted("memory", key)
        log.info("model cache: dropped %s from memory (%s)", key, why)

    def _held(self, model_id: str | None) -> contextlib.AbstractContextManager[None]:
        if self.node_cache is None or model_id is None:
            return contextlib.nullcontext()
        return self.node_cache.hold(model_id)

    def _from_s3(self, model_id: str, url: str) -> ModelSource:
        """An S3 model is loaded from its tier-1 copy only (diffusers reads files): fetched now, or found there."""
        if self.node_cache is None:
            raise ModelError("s3_needs_node_cache", f"model {model_id!r} lives at {url}: S3 models are fetched into "
                             "the node cache and loaded from there; set SPOTGEN_NODE_CACHE_DIR")
        from runtime.models.s3source import S3Tree, default_client

        self.s3_client = self.s3_client or default_client()
        local = self._from_node_cache(model_id, S3Tree(url, self.s3_client), {})
        assert local is not None
        files = {p.relative_to(local).as_posix(): p for p in sorted(local.rglob("*")) if p.is_file()}
        return ModelSource(model_id, local, False, None, files, local)

    def _from_node_cache(self, model_id: str, source: Any, files: dict[str, Path]) -> Path | None:
        """The tier-1 copy of the model's files (copied now if absent or damaged), or None without a node cache. The
        store decides what the model consists of (``files``, keyed as its manifest keys them), so the copy follows
        the same rules as loading from tier 0 and ``spotgen models verify``."""
        if self.node_cache is None:
            return None
        from runtime.models.copying import NodeCacheError

        try:
            with self.observer.phase("node_cache_fetch", model=model_id):
                result = self.node_cache.fetch(model_id, source, self.manifest(model_id), files=files)
        except NodeCacheError as exc:
            raise ModelError("model_cache_error", str(exc)) from None
        except OSError as exc:  # local disk full, say: loading from tier 0 is slower but works (not from S3)
            if not isinstance(source, Path):
                raise ModelError("model_unreadable", exc.strerror or str(exc)) from None
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
        """Every file under ``root`` as {relative POSIX path: resolved path}. Symlinks are followed only while they
        stay inside the models directory (a model directory may share files with another one); one that leads out
        is refused, as are pickle files, wherever they are."""
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


def object_bytes(value: Any) -> int:
    """Bytes of the distinct tensors a loaded model holds (a pipeline's components, or one module)."""
    modules = list(getattr(value, "components", {}).values()) if hasattr(value, "components") else [value]
    seen: set[int] = set()
    total = 0
    for module in modules:
        tensors = [*module.parameters(), *module.buffers()] if hasattr(module, "parameters") else []
        for tensor in (part for whole in tensors for part in stored_tensors(whole)):
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


def stored_tensors(tensor: Any) -> list[Any]:
    """The tensors that hold ``tensor``'s data: itself, or for a tensor subclass (an int8 weight of optimum-quanto's
    with its scales) its inner tensors, whose bytes are what the subclass really keeps."""
    if getattr(type(tensor), "__tensor_flatten__", None) is None:
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [part for name in names for part in stored_tensors(getattr(tensor, name))]


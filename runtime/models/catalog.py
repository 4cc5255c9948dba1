"""The model catalog: which models a worker may load, and where their files are.

A request names a catalog id, never a path: the catalog (``catalog.json`` in the models directory, the EFS
volume in production) maps ids to model files under that directory. The store loads each model once per
A catalog entry names either a diffusers-format directory or a single-file checkpoint (one ``.safetensors``
in the original Stable Diffusion layout, as SD WebUI users keep them) together with a local diffusers config
directory, so that loading it needs no download. Every path in the catalog and in a manifest is relative and
must stay inside the models directory, symlinks included: the catalog is configuration, and a typo or a
hostile edit must not make a worker read arbitrary files. Only safetensors weights are ever loaded (and GGUF
files, data only, for Flux and SD 3.5 transformers); pickle files (``.bin``, ``.ckpt``, ...) run code when
unpickled, so a model that contains one is refused. Flux and SD 3.5 base models also take ``storage_dtype`` and
``t5``: the forms of docs/models.md "Flux and SD 3.5 on 24 GB GPUs" (``pipelines.flowload``).

``catalog.json``::

    {"models": {
      "sd15":  {"path": "stable-diffusion-v1-5", "kind": "base", "family": "sd1",
                "revision": "451f4fe", "manifest": "manifests/sd15.json"},
      "dream": {"path": "checkpoints/dreamshaper_8.safetensors", "config": "configs/sd15", "family": "sd1"},
      "canny": {"path": "sd-controlnet-canny", "kind": "controlnet", "family": "sd1"},
      "xl":    {"path": "checkpoints/sd_xl_base_1.0.safetensors", "config": "configs/sdxl", "family": "sdxl"},
      "schnell": {"path": "FLUX.1-schnell", "family": "flux", "variant": "schnell"},
      "detail": {"path": "loras/add_detail.safetensors", "kind": "lora", "family": "sd1"}}}

A textual-inversion embedding (``kind: embedding``) is one ``.safetensors`` file: WebUI's (``emb_params``; for
SDXL ``clip_l`` and ``clip_g``) or diffusers' (one ``{token: vectors}`` key). A prompt uses it by its id or an
alias, written as a word, on models of its family (``pipelines.embeddings``).

A LoRA (``kind: lora``) is one ``.safetensors`` file, in diffusers' or in kohya's (SD WebUI's) format, without a
config; requests apply it by id (``inputs.loras``) to base models of its family.

An IP-Adapter (``kind: ip_adapter``) is one ``.safetensors`` file in diffusers' layout (``image_proj.*`` and
``ip_adapter.*`` keys) whose ``image_encoder`` names a ``kind: image_encoder`` entry: a diffusers
CLIPVisionModelWithProjection directory. Requests apply it by id (``inputs.ip_adapters``) to models of its family.

A diffusers directory may live on S3 instead (``runtime.models.s3source``): its ``path`` is ``s3://bucket/prefix``,
or the catalog's ``s3_root`` holds every directory entry's relative path. The node cache fetches it, checked
against its manifest, which stays in the models directory like the catalog (docs/models.md "S3 sources").

A manifest (``spotgen models manifest ID`` writes one) is ``{"hash": "xxh3_128", "chunk_bytes": 8388608, "files":
{"relative/path": "<hex digest>", ...}}``; one without ``hash`` is sha256 (docs/models.md "Manifests").
Its paths are relative to the model's directory for a diffusers model (the form the node cache checks copies
against) and relative to the models directory for a single-file model (its checkpoint plus its config files).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from runtime.contract import ModelId, Names
from runtime.models.copying import (
    HASH_KINDS,
    PICKLE_SUFFIXES,
    SHA256,
    XXH3_128,
    check_hash_chunk,
    digest_string,
)
from runtime.models.s3source import parse_s3_url

CATALOG_FILE = "catalog.json"
SAFETENSORS_SUFFIX = ".safetensors"
#: A GGUF file (city96's quantized Flux and SD 3.5 transformers): a Flux or SD 3.5 base model only.
GGUF_SUFFIX = ".gguf"
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, GGUF_SUFFIX, *PICKLE_SUFFIXES)
#: The families whose base models take the forms of ``docs/models.md`` "Flux and SD 3.5 on 24 GB GPUs".
_FLOW_FAMILIES = ("flux", "sd3")
DEFAULT_MANIFEST_DIR = "manifests"
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+@:-]{0,127}$")

log = logging.getLogger("spotgen.models")

#: The families each base-model variant exists in, and what the catalog says of it in another family.
_VARIANT_FAMILIES: dict[str, tuple[frozenset[str], str]] = {
    "refiner": (frozenset({"sdxl"}), "a refiner is an SDXL model: set family to sdxl"),
    "schnell": (frozenset({"flux"}), "'schnell' is FLUX.1 schnell: set family to flux"),
    "turbo": (frozenset({"sd3"}), "'turbo' is SD 3.5 large turbo: set family to sd3 (an SDXL Turbo checkpoint is "
                                  "a plain sdxl model, without a variant)"),
    "inpainting": (frozenset({"sd1", "sd2", "sdxl", "flux"}),
                   "there is no SD 3 inpainting checkpoint: an sd3 model inpaints as it is (leave 'variant' out)"),
}


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


def _model_path(value: str) -> str:
    """A relative path, or an S3 URL (the catalog is the operator's: it is what allows a worker to read a prefix)."""
    if isinstance(value, str) and value.startswith("s3://"):
        parse_s3_url(value)
        return value
    return _relative_path(value)


def _s3_url(value: str) -> str:
    parse_s3_url(value)
    return value


def _alias(value: str) -> str:
    if not 1 <= len(value) <= 200 or any(ord(c) < 32 or c in "\x7f<>" for c in value) or value != value.strip():
        raise ValueError(f"alias {value!r}: 1-200 printable characters, no '<' or '>', no surrounding spaces")
    return value


def _revision(value: str) -> str:
    if not _REVISION.match(value):
        raise ValueError("a revision is 1-128 characters of letters, digits and . _ / + @ : - (a commit, tag or "
                         "version)")
    return value


class CatalogEntry(BaseModel):
    """One model: where its files are, what it is, and optionally how to check them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A diffusers-format directory, or a single-file ``.safetensors`` checkpoint (then ``config`` is required,
    #: except for a LoRA, which is always one file); a diffusers directory may be ``s3://bucket/prefix``.
    path: Annotated[str, AfterValidator(_model_path)]
    kind: Literal["base", "controlnet", "lora", "vae", "upscaler", "ip_adapter", "image_encoder", "embedding"] = "base"
    #: Stable Diffusion 1.x, 2.x, SDXL, Flux.1 (dev, schnell, Fill) or Stable Diffusion 3.x (3.5 large, medium,
    #: large turbo).
    family: Literal["sd1", "sd2", "sdxl", "flux", "sd3"] = "sd1"
    #: A base model made for one task or one way of sampling: ``inpainting`` (its UNet or transformer also takes
    #: the mask and the masked image: the inpaint pipeline only; Flux's is FLUX.1 Fill), ``refiner`` (SDXL's
    #: refiner: a txt2img job's ``refiner`` only), ``schnell`` (FLUX.1 schnell: few steps, no guidance) or
    #: ``turbo`` (SD 3.5 large turbo: few steps, no guidance).
    variant: Literal["inpainting", "refiner", "schnell", "turbo"] | None = None
    #: Which version of the model this is (a Hub commit, a tag); informational, shown by ``spotgen models list``.
    revision: Annotated[str, AfterValidator(_revision)] | None = None
    #: A JSON file ``{"hash": kind, "files": {relpath: digest}}`` that ``spotgen models verify`` checks files against.
    manifest: RelPath | None = None
    #: For a single-file checkpoint: a local diffusers config directory (model_index.json, the component
    #: configs, tokenizer and scheduler; no weights), so that loading it never needs the Hub.
    config: RelPath | None = None
    #: The weights' precision on the device: None is float16 on a GPU and float32 on a CPU. bfloat16 keeps
    #: float32's range (no black images from an SDXL VAE that overflows in float16) on GPUs that have it.
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    #: For a base model: the id of a ``kind: vae`` entry (a diffusers AutoencoderKL directory) to decode with
    #: instead of its own, such as the fp16-safe SDXL VAE.
    vae: ModelId | None = None
    #: For an IP-Adapter: the id of the ``kind: image_encoder`` entry that turns its images into embeddings.
    image_encoder: ModelId | None = None
    #: For a Flux or SD 3.5 base model: keep the transformer's weights in this type and compute each layer in
    #: ``dtype`` (diffusers' layerwise casting), half a bf16 transformer's memory. For ComfyUI's fp8 files
    #: (``flux1-dev-fp8.safetensors``): without it their fp8 weights are widened to ``dtype`` when loaded.
    storage_dtype: Literal["float8_e4m3fn"] | None = None
    #: For a Flux or SD 3.5 base model: its T5 encoder on the CPU (the embeddings move to the device), or in 8 bits
    #: (optimum-quanto's int8 weights) on the device; None: like the other components.
    t5: Literal["cpu", "int8"] | None = None
    #: Other names SD WebUI clients know the entry by (its checkpoint file name, a WebUI title, a LoRA's tag
    #: name), resolved to this id by the compatibility routes (``runtime.contract.webui.Names``).
    aliases: list[Annotated[str, AfterValidator(_alias)]] = Field(default_factory=list, max_length=32)

    @property
    def single_file(self) -> bool:
        return PurePosixPath(self.path).suffix.lower() in (SAFETENSORS_SUFFIX, GGUF_SUFFIX)

    @property
    def s3(self) -> bool:
        return self.path.startswith("s3://")

    @property
    def gguf(self) -> bool:
        return PurePosixPath(self.path).suffix.lower() == GGUF_SUFFIX

    @model_validator(mode="after")
    def _flow_forms(self) -> CatalogEntry:
        """GGUF files, fp8 storage and the T5 options are for Flux and SD 3.5 base models (``pipelines.flowload``)."""
        flow = self.kind == "base" and self.family in _FLOW_FAMILIES
        for field, value in (("storage_dtype", self.storage_dtype), ("t5", self.t5)):
            if value is not None and not flow:
                raise ValueError(f"'{field}' is for Flux and SD 3.5 base models (family flux or sd3); this is a "
                                 f"{self.family} {self.kind}")
        if self.gguf and not flow:
            raise ValueError(f"a '{GGUF_SUFFIX}' file is a quantized Flux or SD 3.5 transformer (family flux or sd3, "
                             f"kind base); this is a {self.family} {self.kind}")
        if self.gguf and self.storage_dtype is not None:
            raise ValueError(f"'storage_dtype' does not apply to a '{GGUF_SUFFIX}' file, which keeps its own "
                             "quantization")
        return self

    @model_validator(mode="after")
    def _config_only_for_single_files(self) -> CatalogEntry:
        if self.s3 and self.single_file:
            raise ValueError(f"an S3 source is a diffusers directory (s3://bucket/prefix); {self.path!r} is one file: "
                             "keep single files in the models directory, or save the model with diffusers")
        if self.image_encoder is not None and self.kind != "ip_adapter":
            raise ValueError(f"'image_encoder' is for IP-Adapters; this is a {self.kind}")
        if self.kind == "lora":
            if not self.single_file:
                raise ValueError(f"a LoRA is one '{SAFETENSORS_SUFFIX}' file; {self.path!r} is not")
            if self.config is not None:
                raise ValueError("a LoRA has no 'config'")
        elif self.kind == "ip_adapter":
            if not self.single_file or self.config is not None:
                raise ValueError(f"an IP-Adapter is one '{SAFETENSORS_SUFFIX}' file (image_proj.* and ip_adapter.* "
                                 f"keys), without a config; {self.path!r} is not")
            if self.image_encoder is None:
                raise ValueError("an IP-Adapter names its 'image_encoder' (the id of a kind: image_encoder entry)")
        elif self.kind == "embedding" and (not self.single_file or self.config is not None):
            raise ValueError(f"a textual-inversion embedding is one '{SAFETENSORS_SUFFIX}' file (WebUI's emb_params, "
                             f"SDXL's clip_l/clip_g, or diffusers' {{token: vectors}}), without a config; "
                             f"{self.path!r} is not")
        elif self.kind == "image_encoder" and (self.single_file or self.config is not None):
            raise ValueError(f"an image encoder is a diffusers CLIPVisionModelWithProjection directory; {self.path!r} "
                             "is not")
        elif self.variant is not None and self.kind != "base":
            raise ValueError(f"'variant' is for base models; this is a {self.kind}")
        elif self.variant is not None and self.family not in _VARIANT_FAMILIES[self.variant][0]:
            hint = _VARIANT_FAMILIES[self.variant][1]
            raise ValueError(f"family {self.family} has no {self.variant!r} variant: {hint}")
        elif self.kind == "upscaler" and (not self.single_file or self.config is not None):
            raise ValueError(f"an upscaler is one '{SAFETENSORS_SUFFIX}' file (ESRGAN, Real-ESRGAN, SwinIR ... weights "
                             f"that spandrel reads), without a config; {self.path!r} is not")
        elif self.kind == "vae" and self.single_file:
            raise ValueError(f"a VAE is a diffusers AutoencoderKL directory; {self.path!r} is one file")
        elif self.config is not None and not self.single_file:
            raise ValueError(f"'config' is only for single-file checkpoints ('{SAFETENSORS_SUFFIX}' paths); "
                             f"{self.path!r} is a diffusers directory, which carries its own configs")
        return self


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[ModelId, CatalogEntry]
    #: ``s3://bucket/prefix`` that holds the directory models: an entry's relative ``path`` is a prefix under it
    #: (single files, configs and manifests stay in the models directory).
    s3_root: Annotated[str, AfterValidator(_s3_url)] | None = None

    def s3_url(self, entry: CatalogEntry) -> str | None:
        """Where a directory entry lives on S3, or None when it is in the models directory."""
        if entry.s3 or entry.single_file or self.s3_root is None:
            return entry.path if entry.s3 else None
        return f"{self.s3_root}/{entry.path}"

    @model_validator(mode="after")
    def _vaes_exist(self) -> Catalog:
        for model_id, entry in self.models.items():
            if entry.vae is None:
                continue
            vae = self.models.get(entry.vae)
            if entry.kind != "base":
                raise ValueError(f"models.{model_id}.vae: only a base model takes a vae")
            if vae is None or vae.kind != "vae":
                raise ValueError(f"models.{model_id}.vae: {entry.vae!r} is not a 'vae' entry of the catalog")
            if vae.family != entry.family:
                raise ValueError(f"models.{model_id}.vae: {entry.vae!r} is a {vae.family} VAE and the model "
                                 f"{entry.family}")
        return self

    @model_validator(mode="after")
    def _image_encoders_exist(self) -> Catalog:
        for model_id, entry in self.models.items():
            encoder = self.models.get(entry.image_encoder) if entry.image_encoder is not None else None
            if entry.image_encoder is not None and (encoder is None or encoder.kind != "image_encoder"):
                raise ValueError(f"models.{model_id}.image_encoder: {entry.image_encoder!r} is not an "
                                 "'image_encoder' entry of the catalog")
        return self

    @model_validator(mode="after")
    def _aliases_are_unique(self) -> Catalog:
        """An alias names one entry: not another entry's id, nor an alias of another entry of the same kind
        (a LoRA and a checkpoint may share a name, as they do in WebUI)."""
        seen: dict[tuple[str, str], str] = {}
        for model_id, entry in self.models.items():
            for alias in entry.aliases:
                other = seen.get((entry.kind, alias)) or (alias if alias in self.models and alias != model_id
                                                          else None)
                if other is not None and other != model_id:
                    raise ValueError(f"models.{model_id}.aliases: {alias!r} already names {other!r}")
                seen[(entry.kind, alias)] = model_id
        return self

    def names(self, default_model: str | None = None) -> Names:
        """The catalog as WebUI clients name it: aliases (and ids) of the base models, LoRAs and ControlNets."""
        by_kind: dict[str, dict[str, str]] = {"base": {}, "lora": {}, "controlnet": {}}
        for model_id, entry in self.models.items():
            if entry.kind in by_kind:
                by_kind[entry.kind].update({model_id: model_id, **dict.fromkeys(entry.aliases, model_id)})
        return Names(models=by_kind["base"], loras=by_kind["lora"], controlnets=by_kind["controlnet"],
                     default_model=default_model)

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
            raise ModelError("catalog_invalid", f"the model catalog {path} is invalid: {describe(exc)}") from None


class Manifest(BaseModel):
    """A model's expected file digests (docs/models.md "Manifests"): ``hash`` names the kind, absent in the
    manifests written before xxh3_128, which are sha256 and keep verifying; ``chunk_bytes`` is xxh3_128's piece
    size. Once validated, ``files`` holds digest strings that carry their kind (``copying.parse_digest``; sha256
    ones stay plain hex): ``ModelStore.manifest`` hands that dict alone to the node cache and to ``verify``."""

    model_config = ConfigDict(extra="forbid")

    hash: str = SHA256
    chunk_bytes: int | None = None
    files: dict[RelPath, str]

    @field_validator("hash")
    @classmethod
    def _known_hash(cls, value: str) -> str:
        if value not in HASH_KINDS:
            raise ValueError(f"unknown hash kind {value!r}: this spotgen checks {' and '.join(HASH_KINDS)} "
                             "(was the manifest written by a newer spotgen?)")
        return value

    @field_validator("chunk_bytes")
    @classmethod
    def _piece_size(cls, value: int | None) -> int | None:
        return None if value is None else check_hash_chunk(value)

    @field_validator("files")
    @classmethod
    def _digests(cls, files: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if "hash" not in info.data or "chunk_bytes" not in info.data:
            return files  # already refused
        kind, chunk = info.data["hash"], info.data["chunk_bytes"]
        if (kind == XXH3_128) != (chunk is not None):
            raise ValueError(f"chunk_bytes is {'required' if chunk is None else 'not allowed'} with hash {kind}")
        tagged = {}
        for rel, value in files.items():
            try:
                tagged[rel] = digest_string(kind, value, chunk or 0)
            except ValueError as exc:
                raise ValueError(f"{rel}: {exc}") from None
        return tagged


def describe(exc: ValidationError) -> str:
    """pydantic's errors as ``models.<id>.path: <what is wrong>``, one per problem, without its URLs."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if p != "[key]")
        if "[key]" in err["loc"]:  # the id itself is at fault, not a field of its entry
            loc += " (id)"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)



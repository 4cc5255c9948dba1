"""Output formats: how a job's images are encoded, on every pipeline, built-in or plugin.

A job picks them with three reserved fields of its ``inputs``: ``format`` (``png``, the default, ``webp`` or
``jpeg``), ``quality`` (1-100, the lossy formats' only) and ``lossless`` (WebP only). They live in ``inputs``
because that is where a client says what it wants of the picture, and where the AWS sample's and WebUI's bodies
put it (``override_settings.samples_format``); the runtime, not the pipeline, reads them and encodes what the
pipeline returns, so a plugin that returns PIL images gets every format without code of its own.

The defaults are what a client of the services it is compared with expects: WebP at quality 80 (Replicate's
default), JPEG at 90 (a level where the codec's error is below what the eye sees in generated images, and
Pillow's 4:2:0 chroma keeps it a third of WebP-lossless' size). ``quality`` 100 in WebP is still lossy (libwebp's
best lossy setting): a client that needs exactly the PNG's pixels asks for ``lossless``.

A request that leaves all three out is dumped without them (``OutputOptions``' serializer), so the jobs of every
existing client keep the inputs, parameters, fingerprints and PNG bytes they had.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

OutputFormat = Literal["png", "webp", "jpeg"]
FORMATS: tuple[str, ...] = get_args(OutputFormat)
#: The quality a lossy format gets when the request gives none.
DEFAULT_QUALITY: dict[str, int] = {"webp": 80, "jpeg": 90}
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
#: The extension of each format's output keys (``jobs/{id}/0.webp``): what a browser or ``aws s3 cp`` expects.
EXTENSIONS: dict[str, str] = {"png": "png", "webp": "webp", "jpeg": "jpg"}
#: The reserved ``inputs`` fields (a plugin's own inputs must not use them for anything else).
OUTPUT_FIELDS = ("format", "quality", "lossless")
#: EXIF's UserComment as SD WebUI writes it (piexif's ``UserComment.dump(text, encoding="unicode")``): an 8-byte
#: character-code prefix, then the text in UTF-16 big-endian. The tags: the Exif IFD pointer, and UserComment in it.
USER_COMMENT_PREFIX = b"UNICODE\x00"
USER_COMMENT_ENCODING = "utf-16-be"
EXIF_IFD_TAG, USER_COMMENT_TAG = 0x8769, 0x9286
_DEFAULTS: dict[str, Any] = {"format": "png", "quality": None, "lossless": False}


class OutputOptions(BaseModel):
    """How the runtime encodes a job's outputs. Built-in inputs inherit it; a plugin's ``Inputs`` subclass it
    (``spotgen.OutputOptions``) to let its clients pick a format, and are refused ``format`` otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: OutputFormat = "png"
    #: Lossy formats only: 1 (smallest) to 100 (best); left out, the format's ``DEFAULT_QUALITY``.
    quality: int | None = Field(None, ge=1, le=100)
    #: WebP only: lossless WebP, which decodes to exactly the PNG's pixels.
    lossless: bool = False

    @field_validator("quality")
    @classmethod
    def _lossy_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        fmt = info.data.get("format")
        if value is not None and fmt == "png":
            raise ValueError("png is lossless and takes no quality; quality applies to webp and jpeg")
        return value

    @field_validator("lossless")
    @classmethod
    def _webp_only(cls, value: bool, info: ValidationInfo) -> bool:
        fmt, quality = info.data.get("format"), info.data.get("quality")
        if value and fmt is not None and fmt != "webp":
            raise ValueError(f"lossless applies to webp only (png is always lossless, {fmt} never is)")
        if value and quality is not None:
            raise ValueError("lossless WebP takes no quality: give one or the other")
        return value

    @model_serializer(mode="wrap")
    def _leave_out_defaults(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """Output fields at their defaults are left out of the dump, so a job that asks for no format has the
        very inputs (and parameters, and PNG bytes) it had before formats existed."""
        data = handler(self)
        if isinstance(data, dict):
            for name, default in _DEFAULTS.items():
                if name in data and data[name] == default:
                    del data[name]
        return data

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    @property
    def effective_quality(self) -> int | None:
        """The quality the encoder gets: the request's, or the format's default (None: png, lossless)."""
        if self.format == "png" or self.lossless:
            return None
        return self.quality if self.quality is not None else DEFAULT_QUALITY[self.format]


def content_type_of(key: str) -> str:
    """An output's content type, from its key's extension (the runtime names every output key with one)."""
    extension = key.rsplit(".", 1)[-1].lower()
    for fmt, ext in EXTENSIONS.items():
        if extension == ext:
            return CONTENT_TYPES[fmt]
    return "application/octet-stream"


__all__ = ["CONTENT_TYPES", "DEFAULT_QUALITY", "EXTENSIONS", "FORMATS", "OUTPUT_FIELDS",
           "OutputFormat", "OutputOptions", "content_type_of"]

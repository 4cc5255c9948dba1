"""One corpus of hostile requests for every route that takes a body: what each must refuse, and the field it
must name.

A ``Route`` says where a value goes in its own body (``place``) and under which field name its errors name it
(``prefix``); a ``Value`` is raw JSON text put at one key, so that what Python's parser takes and JSON does not
(``NaN``, ``1e400``, a lone surrogate's escape, nesting 10,000 deep) can be written. ``Whole`` bodies are sent
as they are. A new route (ComfyUI's ``POST /prompt``) joins by adding one ``Route`` to ``ROUTES``: every case then
runs against it (tests/lambdas/test_hostile.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    path: str
    #: ``place(key, raw_json_value)``: the route's body with that value at that key.
    place: Callable[[str, str], bytes]
    #: The field name of a key ``place`` puts: prefix + key.
    prefix: str
    #: Behind the API key (the compatibility routes).
    keyed: bool
    #: Where a job's ``context`` goes, as (key for ``place``, the field it is named by), if the route has one.
    context: tuple[str, str] | None = None


def _fill(template: str, **slots: str) -> bytes:
    """``template`` with each ``<name>`` replaced by raw JSON text (str.format would take the JSON's braces)."""
    for name, text in slots.items():
        template = template.replace(f"<{name}>", text)
    return template.encode()


def _member(key: str, value: str) -> str:
    return f', "{key}": {value}'


def _native(key: str, value: str) -> bytes:
    template = '{"pipeline": "txt2img", "model": "tiny-sd", "inputs": {"prompt": "a fox"<in>}<out>}'
    if key == "context":
        return _fill(template, **{"in": "", "out": _member(key, value)})
    return _fill(template, **{"in": _member(key, value), "out": ""})


def _v1alpha2(key: str, value: str) -> bytes:
    template = ('{"task": {"metadata": {"id": "hostile", "runtime": "sdruntime", "tasktype": "text-to-image", '
                '"prefix": "output", "context": <context>}, "content": {"prompt": "a fox"<content>}}}')
    if key == "context":
        return _fill(template, context=value, content="")
    return _fill(template, context='""', content=_member(key, value))


def _v1alpha1(key: str, value: str) -> bytes:
    return _fill('{"alwayson_scripts": {"task": "text-to-image", "id_task": "hostile", "save_dir": "outputs"}, '
                 '"prompt": "a fox"<member>}', member=_member(key, value))


def _webui(key: str, value: str) -> bytes:
    return _fill('{"prompt": "a fox"<member>}', member=_member(key, value))


ROUTES = (
    Route("/v1/jobs", _native, "inputs.", keyed=False, context=("context", "context")),
    Route("/v1alpha2", _v1alpha2, "task.content.", keyed=True, context=("context", "task.metadata.context")),
    Route("/v1alpha1", _v1alpha1, "", keyed=True),
    Route("/sdapi/v1/txt2img", _webui, "", keyed=True),
    Route("/sdapi/v1/img2img", _webui, "", keyed=True),
    Route("/sdapi/v1/options", _webui, "", keyed=True),
    Route("/sdapi/v1/extra-single-image", _webui, "", keyed=True),
    Route("/sdapi/v1/extra-batch-images", _webui, "", keyed=True),
    Route("/controlnet/detect", _webui, "", keyed=True),
)


@dataclass(frozen=True)
class Value:
    """Raw JSON text at ``key``: refused with ``code``, naming ``key`` + ``suffix`` under the route's prefix
    (``body`` when ``whole``: the parser itself cannot descend that far)."""

    name: str
    key: str
    value: str
    code: str
    suffix: str = ""
    whole: bool = False

    def field(self, prefix: str) -> str:
        if self.whole:
            return "body"
        field = prefix + self.key + self.suffix
        if self.code == "too_deep":  # named by its first 4 levels: enough to find it
            return ".".join(field.split(".")[:4]) + ".…"
        return field


VALUES = (
    Value("nan", "eta", "NaN", "invalid_number"),
    Value("infinity", "cfg_scale", "Infinity", "invalid_number"),
    Value("minus-infinity", "cfg_scale", "-Infinity", "invalid_number"),
    Value("beyond-float", "cfg_scale", "1e400", "invalid_number"),
    Value("nan-deep-inside", "alwayson_scripts",
          '{"controlnet": {"args": [{"module": "canny", "threshold_a": NaN}]}}', "invalid_number",
          ".controlnet.args.0.threshold_a"),
    Value("integer-of-5000-digits", "seed", "9" * 5000, "invalid_number"),
    Value("lone-surrogate", "prompt", '"a \\ud800 fox"', "invalid_text"),  # the last "prompt" key wins
    Value("lone-surrogate-key", "styles", '{"\\udfff": 1}', "invalid_text"),
    Value("nested-10000-deep", "styles", "[" * 10000 + "]" * 10000, "too_deep", whole=True),
    Value("nested-100-deep", "styles", "[" * 100 + "]" * 100, "too_deep", ".0" * 99),
)

#: A context (the native job's, the sample's metadata one) holding NaN: written as null before, now refused.
CONTEXT_NAN = '{"user": "a", "score": NaN}'


@dataclass(frozen=True)
class Whole:
    name: str
    body: bytes
    code: str


WHOLES = (
    Whole("not-utf8", b'{"prompt": "\xff\xfe"}', "invalid_json"),
    Whole("truncated", b'{"prompt": "a fox", ', "invalid_json"),
    Whole("empty", b"", "invalid_json"),
    Whole("nan-alone", b"NaN", "invalid_number"),
    Whole("deep-alone", b"[" * 10000 + b"]" * 10000, "too_deep"),
)

#: WebUI's synchronous routes: a request whose answer cannot fit Lambda's 6 MB response (8 PNGs of 1536 x 1536,
#: the largest an SD 1.x model makes, are 85 MB in base64 at worst) is refused before it is queued, naming the
#: fields that size it.
TOO_LARGE_AN_ANSWER = {"prompt": "a fox", "batch_size": 8, "width": 1536, "height": 1536,
                       "override_settings": {"sd_model_checkpoint": "tiny-sd"}}


@dataclass(frozen=True)
class Raw:
    """A request as bytes on the wire, for what an HTTP client library will not send (a repeated or malformed
    header): API Gateway's own answer, ``{"message": ...}``, before any handler. ``headers`` replace the API key
    a keyed route is sent (``KEY`` stands for the valid key); ``keyed``: only for routes behind the key."""

    name: str
    headers: tuple[tuple[str, str], ...]
    status: int
    message: str
    method: str = "POST"
    body: bytes = b"{}"
    keyed: bool = False


KEY = "<valid key>"

RAWS = (
    Raw("content-length-minus-one", (("Content-Length", "-1"),), 400, "Bad Request"),
    Raw("content-length-not-a-number", (("Content-Length", "abc"),), 400, "Bad Request"),
    Raw("content-length-twice-differing", (("Content-Length", "2"), ("Content-Length", "3")), 400, "Bad Request"),
    Raw("head", (), 404, "Not Found", method="HEAD", body=b""),
    Raw("options", (), 404, "Not Found", method="OPTIONS", body=b""),
    Raw("body-over-lambdas-6-mb", (), 413, "Request Too Long", body=b" " * (6 * 1024 * 1024)),
    Raw("body-over-10-mb-announced", (("Content-Length", str(10 * 1024 * 1024 + 1)),), 413, "", body=b""),
    Raw("api-key-twice", (("x-api-key", KEY), ("x-api-key", KEY)), 403, "Forbidden", keyed=True),
    Raw("api-key-empty", (("x-api-key", ""),), 401, "Unauthorized", keyed=True),
    Raw("api-key-joined", (("x-api-key", f"{KEY},{KEY}"),), 403, "Forbidden", keyed=True),
)

"""The API's side of the inputs that steer an image (issue 27, item 6): the images nested in ControlNet units and
IP-Adapters are image references like ``image`` (inline ones stored in the input bucket and referenced by
``s3://`` URI in the message, ``https://`` ones fetched where allowed), and a bad request is a 400 naming the
field with nothing stored or queued (over HTTP through the local gateway, the production handler on the real
emulator, no worker)."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from lambdas import submit
from lambdas.common import deployment
from lambdas.fetch import LoopbackForTests, fetch_image
from runtime.contract import validate_inputs
from runtime.contract.imagepaths import get_path, image_paths, set_path
from runtime.local.devstack import DevStack
from tests.harness.tlsserver import tls_server
from tests.lambdas import test_edits_api
from tests.lambdas.test_edits_api import Emulator, encoded, inline, noise, queued, refused
from tests.rest import call

# The editing tests' stack (the submit handler on the real emulator, no worker), one per module.
api, emu = test_edits_api.api, test_edits_api.emu
PICTURE, DEPTH, STYLE = (inline(noise("RGB", (64, 48), seed)) for seed in (1, 2, 3))


def unit(image: str = PICTURE, controlnet: str = "tiny-controlnet", **fields: Any) -> dict[str, Any]:
    return {"id": controlnet, "image": image, **fields}


def adapter(image: str = STYLE, adapter_id: str = "tiny-ip-adapter-sd1") -> dict[str, Any]:
    return {"id": adapter_id, "image": image}


def steered(model: str = "tiny-sd", pipeline: str = "txt2img", **inputs: Any) -> dict[str, Any]:
    fields = {"prompt": "a fox", "steps": 4, "width": 64, "height": 48,
              "controlnets": [unit(preprocessor="canny"), unit(DEPTH, scale=0.5)], "ip_adapters": [adapter()]}
    if pipeline == "img2img":
        fields["image"] = PICTURE
    return {"pipeline": pipeline, "model": model, "inputs": {**fields, **inputs}}


def test_image_paths_lists_the_nested_references() -> None:
    inputs = steered(pipeline="img2img", mask=None)["inputs"]
    assert image_paths(inputs) == [("image",), ("controlnets", 0, "image"), ("controlnets", 1, "image"),
                                   ("ip_adapters", 0, "image")]
    moved = set_path(inputs, ("controlnets", 1, "image"), "s3://b/k.png")
    assert get_path(moved, ("controlnets", 1, "image")) == "s3://b/k.png"
    assert inputs["controlnets"][1]["image"] == DEPTH  # the request as sent is left alone


@pytest.mark.parametrize(("pipeline", "extra"), [("txt2img", {}), ("img2img", {}),
                                                ("txt2img", {"hires": {"scale": 1.5}})], ids=["txt2img", "img2img",
                                                                                             "hires"])
def test_inline_images_of_units_and_adapters_are_stored_and_referenced(api: DevStack, emu: Emulator, pipeline: str,
                                                                        extra: dict[str, Any]) -> None:
    """(Hires fix runs the units in both passes: accepted with them.)"""
    body = steered(pipeline=pipeline, tiling=True, **extra)
    spec = queued(api, emu, body)
    assert spec["inputs"]["tiling"] is True
    inputs, prefix = spec["inputs"], f"s3://{api.settings.input_bucket}/inputs/{spec['id']}/"
    paths = image_paths(body["inputs"])
    assert len(paths) == (4 if pipeline == "img2img" else 3)  # the units', the adapter's (and img2img's image)
    uris = {get_path(inputs, path) for path in paths}
    assert len(uris) == len(paths) and all(uri.startswith(prefix) for uri in uris), inputs
    for path in paths:
        assert emu.stored(get_path(inputs, path)) == base64.b64decode(get_path(body["inputs"], path)), path
    assert inputs["controlnets"][0]["preprocessor"] == "canny" and inputs["controlnets"][1]["scale"] == 0.5
    validate_inputs(spec["pipeline"], inputs, input_bucket=api.settings.input_bucket)  # as the worker reads it


def detect(model: str = "none", **inputs: Any) -> dict[str, Any]:
    return {"pipeline": "controlnet_detect", "model": model,
            "inputs": {"image": PICTURE, "preprocessor": "canny", **inputs}}


def test_a_controlnet_detect_job_is_queued_with_its_image_stored(api: DevStack, emu: Emulator) -> None:
    """``controlnet_detect`` takes no model (``none``): the API accepts it and moves its image like any other."""
    spec = queued(api, emu, detect(threshold_a=50, resolution=64))
    inputs = spec["inputs"]
    assert (spec["model"], inputs["preprocessor"], inputs["threshold_a"]) == ("none", "canny", 50)
    assert inputs["image"].startswith(f"s3://{api.settings.input_bucket}/inputs/{spec['id']}/")
    assert emu.stored(inputs["image"]) == base64.b64decode(PICTURE)
    validate_inputs(spec["pipeline"], inputs, input_bucket=api.settings.input_bucket)


class _Png(http.server.BaseHTTPRequestHandler):
    body = encoded(noise("RGB", (32, 32), 9))

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def images_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A real https server on loopback for ``images.test``, with its own CA."""
    with tls_server(tmp_path_factory.mktemp("steering-tls"), _Png) as served:
        yield served


def test_image_urls_of_units_and_adapters_are_fetched_where_allowed(api: DevStack, emu: Emulator,
                                                                    images_host: tuple[int, Path]) -> None:
    port, ca_file = images_host
    base = deployment()
    settings = base.settings.model_copy(update={"fetch_allowed_hosts": ["images.test"]})
    fields: list[str] = []

    def fetch(url: str, field: str, timeout_s: float) -> bytes:
        fields.append(field)
        parts = urlsplit(url)
        moved = parts._replace(netloc=f"{parts.hostname}:{port}").geturl()
        return fetch_image(moved, settings, field, timeout_s=timeout_s, resolve=lambda host, _port: ["127.0.0.1"],
                           loopback_for_tests=LoopbackForTests(str(ca_file)))

    dep = dataclasses.replace(base, settings=settings, fetcher=fetch)
    body = steered(controlnets=[unit("https://images.test/map.png")], ip_adapters=[adapter("https://images.test/s.png")])
    answer = submit.submit(dep, json.dumps(body).encode())
    assert answer["statusCode"] == 202, answer["body"]
    assert fields == ["inputs.controlnets.0.image", "inputs.ip_adapters.0.image"]
    spec = _taken(api, emu, json.loads(answer["body"])["id"])
    for path in (("controlnets", 0, "image"), ("ip_adapters", 0, "image")):
        assert emu.stored(get_path(spec["inputs"], path)) == _Png.body, path


def _taken(api: DevStack, emu: Emulator, job_id: str) -> dict[str, Any]:
    from runtime.contract.envelope import read_celery_message

    for _ in range(20):
        for message in emu.sqs.receive_message(QueueUrl=api.settings.queue_url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1).get("Messages", []):
            emu.sqs.delete_message(QueueUrl=api.settings.queue_url, ReceiptHandle=message["ReceiptHandle"])
            _headers, [spec], _kwargs = read_celery_message(message["Body"])
            if spec["id"] == job_id:
                return dict(spec)
    raise AssertionError(f"no message for job {job_id}")


NOT_AN_IMAGE = base64.b64encode(b"not an image at all").decode()
REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("a unit of the other family", steered(controlnets=[unit(), unit(controlnet="tiny-sdxl-controlnet")]),
     "incompatible_controlnet", "inputs.controlnets.1.id"),
    ("a unit of the other family, on SDXL", steered("tiny-sdxl", controlnets=[unit()], ip_adapters=[]),
     "incompatible_controlnet", "inputs.controlnets.0.id"),
    ("an unknown ControlNet", steered(controlnets=[unit(controlnet="no-such-controlnet")]), "unknown_model",
     "inputs.controlnets.0.id"),
    ("units with the refiner", steered("tiny-sdxl", controlnets=[unit(controlnet="tiny-sdxl-controlnet")],
                                       ip_adapters=[], refiner="tiny-sdxl-refiner"), "unsupported_combination",
     "inputs.controlnets"),
    ("five units", steered(controlnets=[unit()] * 5), "invalid_field", "inputs.controlnets"),
    ("an unknown preprocessor", steered(controlnets=[unit(), unit(preprocessor="no_such_module")]),
     "invalid_field", "inputs.controlnets.1.preprocessor"),
    ("a unit image that is not an image", steered(controlnets=[unit(NOT_AN_IMAGE)]), "invalid_field",
     "inputs.controlnets.0.image"),
    ("an IP-Adapter image that is not an image", steered(ip_adapters=[adapter(NOT_AN_IMAGE)]), "invalid_field",
     "inputs.ip_adapters.0.image"),
    ("three IP-Adapters", steered(ip_adapters=[adapter()] * 3), "invalid_field", "inputs.ip_adapters"),
    ("unbalanced prompt editing", steered(prompt="a [cat|dog"), "invalid_field", "inputs.prompt"),
    ("unbalanced prompt editing in the negative prompt", steered(negative_prompt="blurry [a|b"), "invalid_field",
     "inputs.negative_prompt"),
    ("controlnet_detect with a model", detect("tiny-sd"), "unknown_model", "model"),
    ("controlnet_detect with an unknown preprocessor", detect(preprocessor="no_such_module"), "invalid_field",
     "inputs.preprocessor"),
    ("controlnet_detect on something not an image", detect(image=NOT_AN_IMAGE), "invalid_field", "inputs.image"),
    ("a unit image URL where none are allowed", steered(controlnets=[unit("https://images.test/map.png")]),
     "invalid_field", "inputs.controlnets.0.image"),
]


@pytest.mark.parametrize(("case", "body", "code", "field"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_bad_steering_input_is_400_naming_the_field_and_nothing_is_stored(
        api: DevStack, emu: Emulator, case: str, body: dict[str, Any], code: str, field: str) -> None:
    refused(api, emu, case, body, code, field)


def test_a_plain_image_is_still_refused_naming_its_field_first(api: DevStack, emu: Emulator) -> None:
    """Refusals of nested images do not hide the top-level ones: each names its own field."""
    before = emu.kept()
    status, answer = call("POST", f"{api.api_url}/v1/jobs", steered(pipeline="img2img", image=NOT_AN_IMAGE))
    assert (status, answer["error"]["field"]) == (400, "inputs.image"), answer
    assert emu.kept() == before

"""The contract kit (``spotgen.testing``) on the ``upscale`` pipeline: a job without a prompt or steps, whose
model is an upscaler (the kit's ``model``), with progress per tile and no checkpoints (the resume check skips)."""

from __future__ import annotations

from pipelines.upscale import Upscale
from tests.pipelines.test_kit import BuiltIn


class TestUpscaleEsrgan(BuiltIn):
    pipeline = Upscale
    model = "tiny-esrgan"
    inputs = {"scale": 2.5}
    images = {"image": "gradient"}


class TestUpscaleCompact(BuiltIn):
    pipeline = Upscale
    model = "tiny-compact"
    inputs = {"scale": 3, "format": "webp"}
    images = {"image": "gradient"}


class TestUpscaleLanczos(BuiltIn):
    pipeline = Upscale
    model = "lanczos"
    inputs = {"scale": 2}
    images = {"image": "gradient"}

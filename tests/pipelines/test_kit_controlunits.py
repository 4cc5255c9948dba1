"""The contract kit (``spotgen.testing``) on pipelines with ControlNet units, as on every built-in (determinism,
progress, cancel, byte-identical resume at every step): txt2img with two units (one shuffled, seeded by the job),
img2img and SDXL inpainting with one. The kit hands images to top-level fields only: img2img's and inpaint's units
take the job's own input image; txt2img has no image field, so its test class adds one (``control``) that only
the units read."""

from __future__ import annotations

from pipelines.img2img import Img2Img
from pipelines.inpaint import Inpaint
from pipelines.txt2img import Txt2Img
from runtime.contract import Txt2ImgInputs
from runtime.contract.inputs import ImageRef
from runtime.kit.local import local_ref
from tests.pipelines.test_kit import COMMON, BuiltIn


class _WithControl(Txt2ImgInputs):
    control: ImageRef


class _Txt2ImgWithControl(Txt2Img):
    """txt2img itself (its ``run``), with an image field for the kit to fill."""

    Inputs = _WithControl
    image_fields = ("control",)


def _unit(net: str, field: str, **settings: object) -> dict[str, object]:
    return {"id": net, "image": local_ref(field), **settings}


class TestTxt2ImgTwoUnits(BuiltIn):
    pipeline = _Txt2ImgWithControl
    inputs = {**COMMON, "scheduler": "euler_a", "controlnets": [
        _unit("tiny-controlnet", "control", preprocessor="canny", threshold_a=50, scale=0.8),
        _unit("tiny-controlnet", "control", preprocessor="shuffle", scale=1.5, start=0.25, end=0.75)]}
    images = {"control": "gradient"}


class TestImg2ImgUnit(BuiltIn):
    pipeline = Img2Img
    inputs = {**COMMON, "strength": 0.8, "scheduler": "dpmpp_2m",
              "controlnets": [_unit("tiny-controlnet", "image", preprocessor="invert", end=0.5)]}
    images = {"image": "gradient"}


class TestInpaintSdxlUnit(BuiltIn):
    pipeline = Inpaint
    model = "tiny-sdxl"
    inputs = {**COMMON, "strength": 0.7, "fill": "latent_noise", "scheduler": "euler_a",
              "controlnets": [_unit("tiny-sdxl-controlnet", "image", preprocessor="lineart_standard", scale=1.2)]}
    images = {"image": "gradient", "mask": "edges"}

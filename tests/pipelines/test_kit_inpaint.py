"""The contract kit (``spotgen.testing``) on the inpaint pipeline, as on every built-in: an ordinary checkpoint with
a latent fill, the inpainting checkpoint on a crop of an outpainted canvas, and SDXL with an RGBA mask. The kit's
``edges`` sample (a white square on black, the ``gradient`` sample's size) serves as the mask."""

from __future__ import annotations

from PIL import Image

from pipelines.inpaint import Inpaint
from tests.pipelines.test_kit import COMMON, BuiltIn


def _alpha_mask() -> Image.Image:
    """Transparent but for an opaque square: the alpha channel is the mask."""
    mask = Image.new("RGBA", (80, 64), (255, 255, 255, 0))
    mask.paste((0, 0, 0, 255), (20, 16, 52, 40))
    return mask


class TestInpaint(BuiltIn):
    pipeline = Inpaint
    inputs = {**COMMON, "strength": 0.8, "fill": "latent_noise", "scheduler": "euler_a"}
    images = {"image": "gradient", "mask": "edges"}


class TestInpaintCheckpointOnACrop(BuiltIn):
    """No width/height: the output is the canvas's own size (the image plus ``extend``)."""

    pipeline = Inpaint
    model = "tiny-sd-inpainting"
    inputs = {"prompt": "a red fox", "steps": 4, "strength": 0.75, "fill": "fill", "only_masked": True,
              "padding": 8, "extend": {"right": 16}, "scheduler": "dpmpp_2m_sde"}
    images = {"image": "gradient", "mask": "edges"}


class TestInpaintSdxl(BuiltIn):
    pipeline = Inpaint
    model = "tiny-sdxl"
    inputs = {**COMMON, "steps": 6, "strength": 0.7, "fill": "latent_nothing", "scheduler": "euler_a"}
    images = {"image": "gradient", "mask": _alpha_mask()}

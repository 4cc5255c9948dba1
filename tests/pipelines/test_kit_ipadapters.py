"""The contract kit (``spotgen.testing``) on pipelines with an IP-Adapter, as on every built-in: SD 1.x img2img and
SDXL inpainting (determinism, progress, cancel, byte-identical resume at every step). The kit hands images to
top-level fields only, so each adapter takes its job's own input image (``s3://local/image``); nested images
travel the same way (``ctx.image``), as test_ipadapters checks with other images."""

from __future__ import annotations

from pipelines.img2img import Img2Img
from pipelines.inpaint import Inpaint
from runtime.kit.local import local_ref
from tests.pipelines.test_kit import COMMON, BuiltIn


def _adapter(adapter_id: str, scale: float) -> list[dict[str, object]]:
    return [{"id": adapter_id, "image": local_ref("image"), "scale": scale}]


class TestImg2ImgIpAdapter(BuiltIn):
    pipeline = Img2Img
    inputs = {**COMMON, "strength": 0.8, "scheduler": "euler_a", "ip_adapters": _adapter("tiny-ip-adapter-sd1", 0.8)}
    images = {"image": "gradient"}


class TestInpaintSdxlIpAdapter(BuiltIn):
    pipeline = Inpaint
    model = "tiny-sdxl"
    inputs = {**COMMON, "strength": 0.7, "fill": "latent_noise", "scheduler": "dpmpp_2m",
              "ip_adapters": _adapter("tiny-ip-adapter-sdxl", 1.2)}
    images = {"image": "gradient", "mask": "edges"}

"""The contract kit (``spotgen.testing``) on seamless tiling, as on any pipeline: resume at several steps gives
the same bytes (the circular padding is put on again for the resumed run), the same seed the same bytes, a cancel
within one step, the output size; on both families, through hires fix's second pass and SDXL's refiner, and with
a ControlNet unit and an IP-Adapter (their image the job's own: the kit fills top-level image fields only)."""

from __future__ import annotations

from pipelines.img2img import Img2Img
from pipelines.txt2img import Txt2Img
from runtime.kit.local import local_ref
from tests.pipelines.test_kit import COMMON, BuiltIn


class TestTxt2ImgTiling(BuiltIn):
    pipeline = Txt2Img
    inputs = {**COMMON, "tiling": True, "scheduler": "euler_a"}
    resume_at = (1, 2, 3)


class TestImg2ImgTilingSdxl(BuiltIn):
    pipeline = Img2Img
    model = "tiny-sdxl"
    inputs = {**COMMON, "tiling": True, "strength": 0.8}
    images = {"image": "gradient"}
    resume_at = (1, 2)


class TestTxt2ImgTilingRefinerHires(BuiltIn):
    pipeline = Txt2Img
    model = "tiny-sdxl"
    inputs = {**COMMON, "tiling": True, "refiner": "tiny-sdxl-refiner", "switch_at": 0.5,
              "hires": {"scale": 1.5, "denoising_strength": 0.5}}
    output_size = (96, 72)
    resume_at = (1, 3, 5)  # 2 base + 2 refiner + 2 hires: each pass


class TestImg2ImgTilingSteered(BuiltIn):
    pipeline = Img2Img
    inputs = {**COMMON, "tiling": True, "strength": 0.8, "scheduler": "euler_a",
              "controlnets": [{"id": "tiny-controlnet", "image": local_ref("image"), "preprocessor": "canny"}],
              "ip_adapters": [{"id": "tiny-ip-adapter-sd1", "image": local_ref("image"), "scale": 0.7}]}
    images = {"image": "gradient"}
    resume_at = (1, 2)

"""The contract kit (``spotgen.testing``) on txt2img with hires fix and with SDXL's refiner, as on any pipeline:
one progress count over the passes, resume in each pass (steps chosen in the first pass, at its last step, and in
the second), the same bytes for the same seed, a cancel within one step, the target size."""

from __future__ import annotations

from pipelines.txt2img import Txt2Img
from tests.pipelines.test_kit import COMMON, BuiltIn


class TestTxt2ImgHires(BuiltIn):
    pipeline = Txt2Img
    inputs = {**COMMON, "steps": 3, "hires": {"scale": 1.5, "steps": 4, "denoising_strength": 0.5}}
    output_size = (96, 72)
    resume_at = (1, 3, 4)  # 3 + 2 steps: the first pass, the switch, the second pass


class TestTxt2ImgHiresPixels(BuiltIn):
    pipeline = Txt2Img
    model = "tiny-sdxl"
    inputs = {**COMMON, "steps": 3, "hires": {"width": 96, "upscaler": "tiny-compact", "steps": 4,
                                              "denoising_strength": 0.5}}
    output_size = (96, 72)
    resume_at = (3, 4)


class TestTxt2ImgRefiner(BuiltIn):
    pipeline = Txt2Img
    model = "tiny-sdxl"
    inputs = {**COMMON, "refiner": "tiny-sdxl-refiner", "switch_at": 0.5,
              "hires": {"scale": 1.5, "denoising_strength": 0.5}}
    output_size = (96, 72)
    resume_at = (1, 2, 3, 4, 5)  # 2 base + 2 refiner + 2 hires: every pass, and each switch

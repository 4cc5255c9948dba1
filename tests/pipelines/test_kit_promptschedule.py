"""The contract kit (``spotgen.testing``) on prompt editing, alternation and textual-inversion embeddings, as on
any pipeline: resume at several steps (before, at and after a switch) gives the same bytes, the same seed the
same bytes, a cancel within one step, the output size; on both families, img2img, and hires fix's second pass
with a scheduled prompt of its own."""

from __future__ import annotations

from pipelines.img2img import Img2Img
from pipelines.txt2img import Txt2Img
from tests.pipelines.test_kit import COMMON, BuiltIn


class TestTxt2ImgPromptEditing(BuiltIn):
    pipeline = Txt2Img
    inputs = {**COMMON, "prompt": "[a red fox:a tiny-emb-sd1 bird:2] [in snow|at sea]",
              "negative_prompt": "[dark::0.5]", "scheduler": "euler_a"}
    resume_at = (1, 2, 3)


class TestImg2ImgAlternationSdxl(BuiltIn):
    pipeline = Img2Img
    model = "tiny-sdxl"
    inputs = {**COMMON, "prompt": "a [fox|bird|tiny-emb-sdxl]", "strength": 0.8}
    images = {"image": "gradient"}
    resume_at = (1, 2)


class TestTxt2ImgHiresPromptEditing(BuiltIn):
    pipeline = Txt2Img
    inputs = {**COMMON, "prompt": "[a fox:a bird:1]",
              "hires": {"scale": 1.5, "denoising_strength": 0.6, "prompt": "[a bird|(a fox:1.2)]"}}
    output_size = (96, 72)
    resume_at = (1, 3, 5)

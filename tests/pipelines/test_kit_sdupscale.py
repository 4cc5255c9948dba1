"""The contract kit (``spotgen.testing``) on ``sd_upscale`` (SD WebUI's "SD upscale" script): one checkpoint
stream over its tiles, so a job interrupted after any step of any tile resumes byte-identical, one progress count
over them all, the same bytes for the same seed, a cancel within one step, and the upscaled size."""

from __future__ import annotations

from pipelines.sdupscale import SdUpscale
from tests.pipelines.test_kit import COMMON, BuiltIn


class TestSdUpscale(BuiltIn):
    pipeline = SdUpscale
    # The kit's 80x64 gradient x 1.25 = 100x80, rounded down to 96x80 (WebUI's multiples of 8): 2 x 2 tiles of
    # 64x48 (x at 0 and 32, y at 0 and 32), each int(3 x 0.67) = 2 steps.
    inputs = {**COMMON, "steps": 3, "strength": 0.67, "upscaler": "lanczos", "scale": 1.25, "overlap": 16}
    images = {"image": "gradient"}
    output_size = (96, 80)
    resume_at = (1, 2, 3, 4, 5, 6, 7)  # after each step of each of the 4 tiles


class TestSdUpscaleModel(BuiltIn):
    pipeline = SdUpscale
    # An upscaler model (x2 then Lanczos down to 96x80) and WebUI's "None"-free path; a resume in the last tile.
    inputs = {**COMMON, "steps": 2, "strength": 0.5, "upscaler": "tiny-compact", "scale": 1.25, "overlap": 8,
              "scheduler": "euler_a"}
    images = {"image": "gradient"}
    output_size = (96, 80)
    resume_at = (2, 3)

"""``spotgen pipeline new NAME``: a plugin package that installs, tests and runs straight away.

What it writes is a working example rather than a stub: an img2img variant on diffusers (upscale, then let the
model redraw the detail) in one short module on ``spotgen.diffusers.run_resumable``, so checkpoints and resume
come with it; a test file that runs the contract kit on it; the entry point that registers it on workers.
"""

from __future__ import annotations

import re
from pathlib import Path

from runtime.contract import PIPELINE_NAME_RE

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "{title}: a spotgen pipeline"
requires-python = ">=3.11"
dependencies = ["spotgen"]

# How workers find the pipeline: every installed package's entry points in this group are registered.
[project.entry-points."spotgen.pipelines"]
{name} = "{package}.pipeline:{cls}"

[tool.setuptools]
packages = ["{package}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

PIPELINE = '''"""{title}: upscale an image, then let Stable Diffusion redraw the detail (img2img at a low strength)."""

from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image
from pydantic import BaseModel, Field

from spotgen import Pipeline, RunContext
from spotgen.diffusers import base_model, run_resumable


class Inputs(BaseModel):
    prompt: str = Field(min_length=1, max_length=2000)
    image: str  # a reference the runtime checked: s3:// in the input bucket; `spotgen run --image PATH` locally
    factor: int = Field(2, ge=1, le=4)
    strength: float = Field(0.3, gt=0.0, le=1.0)
    steps: int = Field(20, ge=1, le=100)


class {cls}(Pipeline):
    name = "{name}"
    Inputs = Inputs
    image_fields = ("image",)
    checkpoints = True  # run_resumable saves and restores the state: no code for it here

    def run(self, inputs: Inputs, ctx: RunContext) -> list[Image.Image]:
        image = ctx.image(inputs.image)
        size = (image.width * inputs.factor // 8 * 8, image.height * inputs.factor // 8 * 8)
        return run_resumable(base_model(ctx), ctx, task=StableDiffusionImg2ImgPipeline, prompt=inputs.prompt,
                             image=image.resize(size, Image.Resampling.LANCZOS), strength=inputs.strength,
                             num_inference_steps=inputs.steps)
'''

TEST = '''"""The spotgen contract kit on {name}: registration, schema, determinism, progress, cancel, resume, sizes."""

from spotgen.testing import PipelineContract

from {package}.pipeline import {cls}


class Test{cls}(PipelineContract):
    pipeline = {cls}
    inputs = {{"prompt": "a red fox in the snow", "factor": 2, "strength": 0.5, "steps": 4}}
    images = {{"image": "gradient"}}  # a generated test image for the input `image`
'''

README = '''# {name}

A spotgen pipeline: {title_lower}. Made with `spotgen pipeline new {name}`.

```sh
pip install -e ./{name}                 # registers it (entry point `spotgen.pipelines`)
pytest {name}                           # the contract kit on the tiny models (built once in ~/.cache/spotgen)
spotgen run {name} --model tiny-sd --image photo.png --input prompt="a red fox" --out out/
spotgen run {name} --model tiny-sd --image photo.png --input prompt="a red fox" --interrupt-at 2 --out out/
spotgen dev --plugin {package}.pipeline:{cls}   # the local stack with it on the workers and the API
```

`{package}/pipeline.py` is the whole pipeline: `Inputs` is its request schema, `run` one job. It is built on
`spotgen.diffusers.run_resumable`, so progress, cancel, checkpoints and byte-identical resume after a spot
interruption need no code. See spotgen's docs/plugins.md.
'''


def package_name(name: str) -> str:
    return name.replace("-", "_")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", name) if part)


def scaffold(name: str, parent: Path) -> Path:
    """Write the package ``parent/name``; ValueError when the name cannot be a pipeline's or the folder exists."""
    if not PIPELINE_NAME_RE.match(name):
        raise ValueError(f"{name!r} cannot name a pipeline: lowercase letters, digits, '-' and '_', starting with a "
                         "letter (e.g. upscale-lite)")
    root = Path(parent) / name
    if root.exists():
        raise ValueError(f"{root} exists already: choose another name or remove it")
    fields = {"name": name, "package": package_name(name), "cls": class_name(name),
              "title": name.replace("-", " ").replace("_", " ").capitalize()}
    fields["title_lower"] = "upscale an image, then let Stable Diffusion redraw the detail"
    files = {"pyproject.toml": PYPROJECT, f"{fields['package']}/__init__.py": '"""{title}: a spotgen pipeline."""\n',
             f"{fields['package']}/pipeline.py": PIPELINE, "tests/test_pipeline.py": TEST, "README.md": README}
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fields))
    return root

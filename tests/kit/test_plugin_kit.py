"""An ML engineer's first hour with the plugin kit, step by step on a fresh package, as the README says it:
``spotgen pipeline new``, ``pip install -e``, ``pytest``, ``spotgen run`` (with ``--interrupt-at``), then the
package's pipeline on ``spotgen dev`` through the API.

The package is installed into a virtual environment of its own that sees this one's packages (a ``.pth`` file),
so that its entry point registers the pipeline there and in no other test's workers.

That journey costs about 40 s of CPU (six fresh Python processes that import torch, a pip build) and is left to
``make test-slow``; ``make test`` runs the same package in this process: written by ``spotgen pipeline new``, its
pipeline registered with ``--plugin``, run and resumed by ``spotgen run --interrupt-at`` (the same code as the
command), its entry point and test file checked as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, start_stack, stop_stack
from tests.rest import call


@pytest.fixture(scope="module")
def engineer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with its own Python (seeing this environment's packages) and a photo."""
    home = tmp_path_factory.mktemp("engineer")
    venv.create(home / "venv", with_pip=False)
    own_site = subprocess.check_output([str(home / "venv/bin/python"), "-c",
                                        "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True)
    Path(own_site.strip(), "spotgen-here.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{ROOT}\n")
    Image.new("RGB", (48, 40), (200, 120, 30)).save(home / "photo.png")
    return home


def sh(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    python = str(home / "venv/bin/python")
    return subprocess.run([python, *args], cwd=home, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow  # six processes that import torch and diffusers, and a pip build: make test-slow
def test_new_install_test_run_then_dev(engineer: Path, tiny_models: Path) -> None:
    new = sh(engineer, "-m", "spotgen.cli", "pipeline", "new", "upscale-lite")
    assert new.returncode == 0, new.stderr
    module = (engineer / "upscale-lite/upscale_lite/pipeline.py").read_text()
    assert len(module.splitlines()) <= 40 and "run_resumable" in module

    install = sh(engineer, "-m", "pip", "install", "-q", "-e", "./upscale-lite")
    assert install.returncode == 0, install.stderr[-3000:]
    # (its entry point registers it there: the package's own tests below and `spotgen dev` run it)
    assert "upscale-lite" not in json.dumps(  # this environment is untouched: other tests' workers lack it
        [e.name for e in __import__("importlib.metadata").metadata.entry_points(group="spotgen.pipelines")])

    tested = sh(engineer, "-m", "pytest", "-q", "-p", "no:cacheprovider", "upscale-lite",
                env={"SPOTGEN_KIT_MODELS": str(tiny_models)})
    assert tested.returncode == 0 and "7 passed" in tested.stdout, tested.stdout[-3000:] + tested.stderr[-2000:]

    ran = sh(engineer, "-m", "spotgen.cli", "run", "upscale-lite", "--model", "tiny-sd", "--image", "photo.png",
             "--input", "prompt=a red fox", "--input", "steps=4", "--input", "strength=0.5", "--interrupt-at", "1",
             "--models", str(tiny_models), "--out", "out", "--quiet")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "the same bytes as the uninterrupted run" in ran.stdout
    png = Image.open(engineer / "out/upscale-lite-0-0.png")
    assert png.size == (96, 80) and json.loads(png.text["parameters"])["prompt"] == "a red fox"

    # a bad --input's exit 2 is checked in-process: tests/pipelines/test_kit.py

    dev_with_the_plugin(engineer, tiny_models)  # one test: the steps build on each other


def test_a_new_package_runs_and_resumes_in_this_process(tmp_path: Path, tiny_models: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "new", "upscale-lite"]) == 0
    package = tmp_path / "upscale-lite"
    project = tomllib.loads((package / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["spotgen.pipelines"] == {
        "upscale-lite": "upscale_lite.pipeline:UpscaleLite"}
    for module in package.rglob("*.py"):  # the package's own tests among them
        compile(module.read_text(), str(module), "exec")
    assert "PipelineContract" in (package / "tests/test_pipeline.py").read_text()

    monkeypatch.syspath_prepend(str(package))
    Image.new("RGB", (48, 40), (200, 120, 30)).save(tmp_path / "photo.png")
    capsys.readouterr()
    ran = main(["run", "upscale-lite", "--plugin", "upscale_lite.pipeline:UpscaleLite", "--model", "tiny-sd",
                "--image", "photo.png", "--input", "prompt=a red fox", "--input", "steps=4", "--input",
                "strength=0.5", "--interrupt-at", "1", "--models", str(tiny_models), "--out", "out", "--quiet"])
    said = capsys.readouterr()
    assert ran == 0, said.err[-3000:]
    assert "the same bytes as the uninterrupted run" in said.out
    png = Image.open(tmp_path / "out/upscale-lite-0-0.png")
    assert png.size == (96, 80) and json.loads(png.text["parameters"])["prompt"] == "a red fox"


def test_a_name_that_cannot_be_a_pipeline_is_refused(engineer: Path) -> None:
    made = sh(engineer, "-m", "spotgen.cli", "pipeline", "new", "Upscale Lite")
    assert made.returncode == 2 and "cannot name a pipeline" in made.stderr
    assert not (engineer / "Upscale Lite").exists()
    assert sys.executable  # the tests' own Python runs the kit's commands as any other


def dev_with_the_plugin(engineer: Path, tiny_models: Path) -> None:
    """``spotgen dev --plugin`` serves the installed pipeline; a bad input for it is a 400 from the API."""
    (engineer / "dev").mkdir()
    stack = start_stack(engineer / "dev", tiny_models, args=("--plugin", "upscale_lite.pipeline:UpscaleLite"),
                        python=str(engineer / "venv/bin/python"), timeout=120)
    try:
        env = {"SPOTGEN_API_URL": stack.api_url}
        submitted = sh(engineer, "-m", "spotgen.cli", "submit", "--pipeline", "upscale-lite", "--model", "tiny-sd",
                       "--image", "photo.png", "--prompt", "a red fox", "--input", "steps=4", "--input",
                       "strength=0.5", "--wait", "--out", "from-dev", env=env)
        assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
        assert Image.open(next((engineer / "from-dev").glob("*.png"))).size == (96, 80)
        status, answer = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": "upscale-lite", "model": "tiny-sd",
                                                                  "inputs": {"prompt": "x", "image": "s3://x/y",
                                                                             "factor": 9}})
        assert status == 400 and answer["error"]["field"] == "inputs.factor", answer
    finally:
        stop_stack(stack)

"""The ``spotgen`` command's client side against a real ``spotgen dev`` stack: submit with --wait, jobs get,
watch and cancel, and the exit codes (0 succeeded, 1 failed or cancelled, 2 bad usage or a 400, 3 unreachable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from spotgen.cli import main
from tests.conftest import ROOT, Stack
from tests.lambdas.test_api import png_bytes
from tests.rest import wait_for


def test_submit_wait_shows_progress_and_writes_the_png(stack: Stack, tmp_path: Path) -> None:
    """The issue's command, as a user runs it: the installed console script against spotgen dev."""
    spotgen = Path(sys.executable).with_name("spotgen")
    result = subprocess.run(
        [str(spotgen), "submit", "--pipeline", "txt2img", "--model", "tiny-sd", "--prompt", "a red fox",
         "--size", "64x64", "--steps", "6", "--wait", "--out", str(tmp_path / "out"), "--api-url", stack.api_url],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert result.returncode == 0, result.stdout + result.stderr
    (png,) = (tmp_path / "out").iterdir()
    assert Image.open(png).size == (64, 64)
    assert "succeeded" in result.stdout and "6/6" in result.stderr  # the bar reached the last step


def test_submit_json_then_jobs_get_and_watch(stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes(64, 64))
    assert main(["submit", "--pipeline", "img2img", "--model", "tiny-sd", "--prompt", "a fox", "--size", "64x64",
                 "--image", str(image), "--input", "strength=0.5", "--input", "steps=4", "--json",
                 "--api-url", stack.api_url]) == 0
    job_id = json.loads(capsys.readouterr().out)["id"]
    assert main(["jobs", "watch", job_id, "--json", "--out", str(tmp_path / "out"), "--api-url", stack.api_url]) == 0
    watched = json.loads(capsys.readouterr().out)
    assert watched["state"] == "succeeded" and len(watched["saved"]) == 1
    assert main(["jobs", "get", job_id, "--api-url", stack.api_url]) == 0
    assert capsys.readouterr().out.startswith(f"{job_id} succeeded")


def test_a_cancelled_job_exits_1(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--pipeline", "slow", "--model", "tiny-sd", "--input", "prompt=x", "--input", "steps=400",
                 "--input", "delay=0.05", "--api-url", stack.api_url]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["jobs", "cancel", job_id, "--api-url", stack.api_url]) == 0
    assert main(["jobs", "watch", job_id, "--json", "--api-url", stack.api_url]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["state"] == "cancelled"


@pytest.mark.parametrize(("args", "message"), [
    (["--size", "64"], "--size '64': give WIDTHxHEIGHT"),
    (["--input", "colour=red"], "--input colour: unknown field"),
    (["--input", "novalue"], "--input 'novalue': give KEY=VALUE"),
    (["--image", "/nonexistent.png"], "--image /nonexistent.png"),
    (["--size", "65x64"], "--size: inputs.width: must be a multiple of 8"),
])
def test_bad_usage_exits_2_naming_the_flag(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--model", "tiny-sd", "--prompt", "x", *args, "--api-url", "http://127.0.0.1:9"]) == 2
    assert message in capsys.readouterr().err


def test_a_400_from_the_api_exits_2_with_the_field(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--model", "nope", "--prompt", "x", "--api-url", stack.api_url]) == 2
    err = capsys.readouterr().err
    assert "400 unknown_model (model)" in err


def test_an_unreachable_api_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "get", "x", "--api-url", "http://127.0.0.1:9", "--retry-s", "0"]) == 3
    assert "cannot reach the API" in capsys.readouterr().err


def test_submit_inpaint_with_image_and_mask_files_and_upscale(stack: Stack, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The files go inline as ``image`` and ``mask``, the API stores both in the input bucket, and the job runs;
    an upscale job names its upscaler as the model and takes no prompt. Each is waited on to its end, so that the
    shared stack's worker is idle again for the next module."""
    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    image.write_bytes(png_bytes(64, 48))
    white = Image.new("L", (64, 48), 0)
    white.paste(255, (8, 8, 24, 24))
    white.save(mask)
    assert main(["submit", "--pipeline", "inpaint", "--model", "tiny-sd-inpainting", "--prompt", "a fox",
                 "--image", str(image), "--mask", str(mask), "--steps", "2", "--wait", "--json",
                 "--out", str(tmp_path / "out"), "--api-url", stack.api_url]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["state"] == "succeeded" and Image.open(done["saved"][0]).size == (64, 48)
    stored = {obj["Key"].rsplit("/", 1)[-1]: obj["Key"] for obj in stack.s3.list_objects_v2(
        Bucket=stack.env["SPOTGEN_INPUT_BUCKET"], Prefix=f"inputs/{done['id']}/").get("Contents", [])}
    assert set(stored) == {"image.png", "mask.png"}, stored
    body = stack.s3.get_object(Bucket=stack.env["SPOTGEN_INPUT_BUCKET"], Key=stored["mask.png"])["Body"].read()
    assert body == mask.read_bytes()
    assert main(["submit", "--pipeline", "upscale", "--model", "lanczos", "--image", str(image), "--input",
                 "scale=2", "--json", "--api-url", stack.api_url]) == 0
    queued = json.loads(capsys.readouterr().out)
    assert queued["status"] == "queued"
    wait_for(stack.api_url, queued["id"], timeout=120)


def test_an_unreadable_mask_is_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--pipeline", "inpaint", "--model", "tiny-sd", "--prompt", "x", "--image",
                 str(tmp_path / "none.png"), "--api-url", "http://127.0.0.1:9"]) == 2
    assert "--image" in capsys.readouterr().err
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes(64, 48))
    assert main(["submit", "--pipeline", "inpaint", "--model", "tiny-sd", "--prompt", "x", "--image", str(image),
                 "--mask", str(tmp_path / "none.png"), "--api-url", "http://127.0.0.1:9"]) == 2
    assert f"--mask {tmp_path / 'none.png'}" in capsys.readouterr().err

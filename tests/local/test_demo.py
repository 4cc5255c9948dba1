"""`make run`: the demo writes its PNGs (SD 1.x jobs of each kind, then SDXL with a LoRA, Flux.1 and SD 3.5) and
leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from runtime.local.demo import FLOW_SIZE, JOBS
from tests.conftest import ROOT


def processes_marked(marker: str) -> list[psutil.Process]:
    """Processes that inherited ``DEMO_TEST_MARKER=marker``: the dev process and every worker it started."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("DEMO_TEST_MARKER") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_demo_writes_a_png_per_job_and_stops_everything(tmp_path: Path, tiny_models: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "dev", "--demo", "--port", "0", "--aws-port", "0",
         "--models", str(tiny_models), "--out", str(out), "--log-dir", str(tmp_path / "logs")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "DEMO_TEST_MARKER": str(tmp_path)},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name in JOBS)
    sizes = {path.stem: Image.open(path).size for path in out.iterdir()}
    assert all(Image.open(path).format == "PNG" for path in out.iterdir())
    assert sizes["hires"] == sizes["upscale"] == (128, 128) and sizes["inpaint"] == sizes["txt2img"] == (64, 64)
    assert sizes["flux"] == sizes["sd3"] == FLOW_SIZE == (96, 64)
    assert all(np.asarray(Image.open(out / f"{name}.png").convert("RGB")).std() > 0 for name in ("flux", "sd3"))
    flux, sd3 = (json.loads(Image.open(out / f"{name}.png").text["parameters"]) for name in ("flux", "sd3"))
    assert (flux["model"], flux["guidance"]) == ("tiny-flux", 4.0) and sd3["skip_layer_guidance"]["layers"] == [7, 8, 9]
    inpainted, first = (np.asarray(Image.open(out / f"{name}.png").convert("RGB")) for name in ("inpaint", "txt2img"))
    assert (inpainted[:4] == first[:4]).all() and not (inpainted[24:40, 24:40] == first[24:40, 24:40]).all()
    lines = result.stdout.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("job "))):]
    assert [line.split()[1:4] for line in table[2:11]] == [
        ["txt2img", "succeeded", "tiny-sd"], ["img2img", "succeeded", "tiny-sd"],
        ["controlnet", "succeeded", "tiny-sd"], ["inpaint", "succeeded", "tiny-sd"],
        ["upscale", "succeeded", "tiny-esrgan"], ["txt2img", "succeeded", "tiny-sd"],
        ["txt2img", "succeeded", "tiny-sdxl"], ["txt2img", "succeeded", "tiny-flux"],
        ["txt2img", "succeeded", "tiny-sd3"]]
    assert any(line.strip().startswith("metrics") and "http://127.0.0.1:" in line for line in lines)
    # the summary ends with each job's phases, taken from its trace
    phases = lines[lines.index("where the time went (ms, from the traces):") + 1:]
    header = phases[0].split()
    assert header[:1] == ["job"] and {"submit", "encode", "denoise", "decode", "notify", "total"} <= set(header)
    for line, name in zip(phases[2:2 + len(JOBS)], JOBS, strict=True):
        row = dict(zip(header, line.split(), strict=True))
        timed = ("submit", "total") if name == "upscale" else ("submit", "encode", "denoise", "decode")
        assert row["job"] == name and all(row[p].isdigit() for p in timed), line
    assert processes_marked(str(tmp_path)) == []

"""`make run`: the demo writes four PNGs (SD 1.x, then SDXL with a LoRA) and leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
from PIL import Image

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


def test_demo_writes_four_pngs_and_stops_everything(tmp_path: Path, tiny_models: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "dev", "--demo", "--port", "0", "--aws-port", "0",
         "--models", str(tiny_models), "--out", str(out), "--log-dir", str(tmp_path / "logs")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "DEMO_TEST_MARKER": str(tmp_path)},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["controlnet.png", "img2img.png", "sdxl-lora.png", "txt2img.png"]
    for path in out.iterdir():
        assert Image.open(path).format == "PNG"
    lines = result.stdout.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("job "))):]
    assert [line.split()[1:4] for line in table[2:6]] == [
        ["txt2img", "succeeded", "tiny-sd"], ["img2img", "succeeded", "tiny-sd"],
        ["controlnet", "succeeded", "tiny-sd"], ["txt2img", "succeeded", "tiny-sdxl"]]
    assert any(line.strip().startswith("metrics") and "http://127.0.0.1:" in line for line in lines)
    # the summary ends with each job's phases, taken from its trace
    phases = lines[lines.index("where the time went (ms, from the traces):") + 1:]
    header = phases[0].split()
    assert header[:1] == ["job"] and {"submit", "encode", "denoise", "decode", "notify", "total"} <= set(header)
    for line, pipeline in zip(phases[2:6], ("txt2img", "img2img", "controlnet", "sdxl-lora"), strict=True):
        row = dict(zip(header, line.split(), strict=True))
        assert row["job"] == pipeline and all(row[p].isdigit() for p in ("submit", "encode", "denoise", "decode"))
    assert processes_marked(str(tmp_path)) == []

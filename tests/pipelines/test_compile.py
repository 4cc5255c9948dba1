"""``SPOTGEN_COMPILE``: the UNet runs compiled (``torch.compile``, Inductor's C++ backend on this CPU), a run
interrupted and resumed compiled gives the bytes of an uninterrupted compiled run, and a second process with
the same node-local cache directory (a second pod of the node) loads the compiled code instead of compiling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.loading import base_pipeline
from runtime.models.nodecache import use_compile_cache
from runtime.models.store import ModelStore
from runtime.worker import checkpoint
from tests.pipelines.harness import Harness, interrupt_at, png

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"steps": 3, "scheduler": "dpmpp_2m", "width": 32, "height": 32}
CACHE_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE",
              "TORCHINDUCTOR_AUTOGRAD_CACHE")

#: A second process: the same model compiled with the same cache directory; prints Inductor's cache counters.
SECOND_POD = """
import json, sys
from pathlib import Path
from torch._dynamo.utils import counters
from runtime.models.nodecache import use_compile_cache
from runtime.models.store import ModelStore
from tests.pipelines.harness import Harness
use_compile_cache(Path(sys.argv[2]))
store = ModelStore(Path(sys.argv[1]), "cpu")
store.compile = "default"
Harness(store).run("txt2img", **json.loads(sys.argv[3]))
print(json.dumps(dict(counters["inductor"])))
"""


@pytest.mark.heavy
@pytest.mark.slow  # Inductor compiles the UNet on the CPU: 4 minutes on a loaded machine (make test-slow)
def test_a_compiled_unet_resumes_byte_identical_and_a_second_process_reuses_its_code(
        tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CACHE_VARS:
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "node" / "compile"
    use_compile_cache(cache)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache / "inductor")
    store = ModelStore(tiny_models, "cpu")
    store.compile = "default"
    pipe = base_pipeline(store, "tiny-sd")
    assert isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)

    harness = Harness(store)
    reference = png(harness.run("txt2img", **SETTINGS))
    state = checkpoint.load(interrupt_at(harness, "txt2img", 2, **SETTINGS), "f" * 64)
    assert png(harness.run("txt2img", resume_from=state, **SETTINGS)) == reference
    assert any((cache / "inductor").rglob("*")), "nothing was written to the node's compile cache"

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    second = subprocess.run([sys.executable, "-c", SECOND_POD, str(tiny_models), str(cache), json.dumps(SETTINGS)],
                            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    counters = json.loads(second.stdout.strip().splitlines()[-1])
    assert counters.get("fxgraph_cache_hit", 0) >= 1 and counters.get("fxgraph_cache_miss", 0) == 0, counters


def test_compile_modes_are_checked_by_the_settings() -> None:
    from pydantic import ValidationError

    from runtime.config import Settings

    assert Settings(compile="max-autotune").compile == "max-autotune"
    with pytest.raises(ValidationError, match="compile"):
        Settings(compile="fast")

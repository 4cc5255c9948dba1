"""The plugin contract: helpful errors at registration, and discovery through entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from runtime.plugins import ENTRY_POINT_GROUP, Pipeline, PluginError, Registry, check_pipeline
from tests.plugins import SolidColor


class Inputs(BaseModel):
    prompt: str


def make(**attrs: object) -> type:
    return type("Plugin", (Pipeline,), {"name": "good", "Inputs": Inputs,
                                        "run": lambda self, inputs, ctx: [], **attrs})


def test_a_valid_plugin_registers() -> None:
    registry = Registry()
    registry.register(SolidColor)
    assert registry.get("solid") is SolidColor and registry.names() == ["solid"]


@pytest.mark.parametrize(("cls", "hint"), [
    (object, "subclasses runtime.plugins.Pipeline"),
    (make(name="Bad Name"), "set the class attribute `name`"),
    (make(Inputs=dict), "`Inputs` to a pydantic BaseModel"),
    (make(run=Pipeline.run), "implement `def run(self, inputs, ctx)"),
    (make(run=lambda self, inputs: []), "`run` must take (self, inputs, ctx)"),
    (make(setup=lambda self: None), "`setup` must take (self, ctx)"),
    (make(load=lambda self, model_id: True), "`load` must take (self, model_id, kind)"),
    (make(image_fields=("picture",)), "image_fields names 'picture'"),
])
def test_contract_violations_say_what_to_fix(cls: type, hint: str) -> None:
    with pytest.raises(PluginError) as info:
        check_pipeline(cls)
    assert hint in str(info.value)


def test_async_run_is_refused() -> None:
    async def run(self: object, inputs: object, ctx: object) -> list:
        return []

    with pytest.raises(PluginError, match="not async"):
        check_pipeline(make(run=run))


def test_duplicate_names_are_refused() -> None:
    registry = Registry()
    registry.register(make())
    with pytest.raises(PluginError, match="is taken by"):
        registry.register(make())


def test_entry_point_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party package installed with an entry point in `spotgen.pipelines` is found."""
    (tmp_path / "thirdparty_upscale.py").write_text(textwrap.dedent("""
        from pydantic import BaseModel
        from runtime.plugins import Pipeline

        class UpInputs(BaseModel):
            factor: int = 2

        class Upscale(Pipeline):
            name = "resize"
            Inputs = UpInputs

            def run(self, inputs, ctx):
                return []
    """))
    dist = tmp_path / "thirdparty_upscale-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-upscale\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nresize = thirdparty_upscale:Upscale\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry.default(["tests.plugins:SolidColor"])
    assert {"txt2img", "img2img", "controlnet", "upscale", "resize", "solid"} <= set(registry.names())
    sys.modules.pop("thirdparty_upscale", None)


def test_a_broken_entry_point_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_plugin.py").write_text("class NotAPipeline:\n    pass\n")
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = broken_plugin:NotAPipeline\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="entry point 'broken'"):
        Registry.default()
    sys.modules.pop("broken_plugin", None)

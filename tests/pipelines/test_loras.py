"""LoRA adapters per request: both file formats, the per-worker cache and its budget, byte-identity without them,
and every refusal, on the tiny models' LoRAs through the real diffusers/peft loading code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from pipelines import loras
from pipelines.common import base_pipeline
from pipelines.txt2img import Txt2Img
from runtime.contract import ContractError, JobSpec
from runtime.models.catalog import CATALOG_FILE
from runtime.models.store import ModelStore
from runtime.models.tinylora import kohya_format
from tests.pipelines.harness import COMMON, Harness, parse, pixels

SD_LORA, SDXL_LORA = "tiny-lora-sd1", "tiny-lora-sdxl"


def lora(lora_id: str, weight: float = 0.8) -> dict[str, Any]:
    return {"id": lora_id, "weight": weight}


@pytest.fixture
def models(tiny_models: Path, tmp_path: Path) -> Path:
    """A copy of the tiny models with more LoRAs: the diffusers-format ones rewritten in kohya's format (same
    weights), a broken file, and an SD 1.x LoRA mislabelled as SDXL."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    catalog = json.loads((models / CATALOG_FILE).read_text())
    for lora_id, sdxl in ((SD_LORA, False), (SDXL_LORA, True)):
        weights = load_file(models / "tiny-loras" / f"{lora_id}.safetensors")
        save_file(kohya_format(weights, sdxl), models / "tiny-loras" / f"{lora_id}-as-kohya.safetensors")
        catalog["models"][f"{lora_id}-as-kohya"] = {**catalog["models"][lora_id],
                                                    "path": f"tiny-loras/{lora_id}-as-kohya.safetensors"}
    (models / "tiny-loras" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    catalog["models"]["broken"] = {"path": "tiny-loras/broken.safetensors", "kind": "lora", "family": "sd1"}
    catalog["models"]["mislabelled"] = {"path": f"tiny-loras/{SD_LORA}.safetensors", "kind": "lora", "family": "sdxl"}
    (models / CATALOG_FILE).write_text(json.dumps(catalog))
    return models


@pytest.fixture
def fresh(models: Path) -> Harness:
    """A harness whose store has loaded nothing yet: a worker that never loaded a LoRA."""
    return Harness(ModelStore(models, "cpu"))


@pytest.mark.parametrize(("model", "lora_id"), [("tiny-sd", SD_LORA), ("tiny-sdxl", SDXL_LORA)])
def test_kohya_format_loads_to_the_same_adapter(fresh: Harness, model: str, lora_id: str) -> None:
    ours = pixels(fresh.run("txt2img", model=model, loras=[lora(lora_id)]))
    kohya = pixels(fresh.run("txt2img", model=model, loras=[lora(f"{lora_id}-as-kohya")]))
    assert np.array_equal(ours, kohya)
    assert not np.array_equal(ours, pixels(fresh.run("txt2img", model=model)))


@pytest.mark.parametrize(("model", "lora_id"), [("tiny-sd", SD_LORA), ("tiny-sdxl", SDXL_LORA)])
def test_without_loras_the_pixels_are_a_fresh_workers(models: Path, fresh: Harness, model: str, lora_id: str) -> None:
    never = pixels(fresh.run("img2img", model=model, strength=0.8))
    used = Harness(ModelStore(models, "cpu"))
    with_lora = pixels(used.run("img2img", model=model, strength=0.8, loras=[lora(lora_id)]))
    after = pixels(used.run("img2img", model=model, strength=0.8))
    assert np.array_equal(after, never) and not np.array_equal(with_lora, never)


def test_switching_between_cached_adapters_does_not_reload(models: Path, fresh: Harness) -> None:
    first = pixels(fresh.run("txt2img", loras=[lora(SD_LORA)]))
    kohya = pixels(fresh.run("txt2img", loras=[lora("tiny-lora-sd1-kohya")]))
    both = pixels(fresh.run("txt2img", loras=[lora(SD_LORA, 0.5), lora("tiny-lora-sd1-kohya", -0.5)]))
    base = base_pipeline(fresh.store, "tiny-sd")
    assert len(loras.loaded(base)) == 2 and fresh.store.loads == 1
    for name in ("tiny-lora-sd1", "tiny-lora-sd1-kohya"):  # from here on, only the loaded adapters can serve
        (models / "tiny-loras" / f"{name}.safetensors").unlink()
    assert np.array_equal(pixels(fresh.run("txt2img", loras=[lora(SD_LORA)])), first)
    assert np.array_equal(pixels(fresh.run("txt2img", loras=[lora("tiny-lora-sd1-kohya")])), kohya)
    assert len({first.tobytes(), kohya.tobytes(), both.tobytes()}) == 3


def test_adapters_past_the_budget_are_dropped_least_recently_used_first(models: Path) -> None:
    weights = load_file(models / "tiny-loras" / f"{SD_LORA}.safetensors")
    one = sum(t.numel() * t.element_size() for t in weights.values())
    h = Harness(ModelStore(models, "cpu", lora_budget=int(one * 1.5)))
    reference = pixels(h.run("txt2img", loras=[lora(SD_LORA)]))
    h.run("txt2img", loras=[lora("tiny-lora-sd1-kohya")])
    base = base_pipeline(h.store, "tiny-sd")
    assert list(loras.loaded(base)) == [loras.adapter_name("tiny-lora-sd1-kohya")]
    assert loras.adapter_name(SD_LORA) not in base.get_list_adapters().get("unet", [])
    assert np.array_equal(pixels(h.run("txt2img", loras=[lora(SD_LORA)])), reference)  # loaded again, same pixels
    # The running job's adapters are never dropped, even when together they pass the budget.
    h.run("txt2img", loras=[lora(SD_LORA), lora("tiny-lora-sd1-kohya")])
    assert len(loras.loaded(base)) == 2


@pytest.mark.parametrize(("model", "lora_id", "code"), [
    ("tiny-sd", "nope", "unknown_model"),
    ("tiny-sd", "tiny-controlnet", "wrong_model_kind"),
    ("tiny-sd", SDXL_LORA, "incompatible_lora"),
    ("tiny-sdxl", SD_LORA, "incompatible_lora"),
])
def test_a_lora_the_model_cannot_take_is_refused_naming_the_field(fresh: Harness, model: str, lora_id: str,
                                                                   code: str) -> None:
    with pytest.raises(ContractError) as caught:
        fresh.run("txt2img", model=model, loras=[lora(SD_LORA if model == "tiny-sd" else SDXL_LORA), lora(lora_id)])
    assert (caught.value.code, caught.value.field) == (code, "inputs.loras.1.id")
    assert fresh.store.loads == 0  # refused before anything was loaded


@pytest.mark.parametrize(("lora_id", "message"), [("broken", "not a readable safetensors"),
                                                  ("mislabelled", "cannot be applied to this model")])
def test_a_broken_lora_fails_clearly_and_leaves_nothing_behind(fresh: Harness, lora_id: str, message: str) -> None:
    model = "tiny-sdxl" if lora_id == "mislabelled" else "tiny-sd"
    never = pixels(fresh.run("txt2img", model=model))
    with pytest.raises(ContractError, match=message) as caught:
        fresh.run("txt2img", model=model, loras=[lora(lora_id)])
    assert (caught.value.code, caught.value.field) == ("invalid_lora", "inputs.loras.0.id")
    base = base_pipeline(fresh.store, model)
    assert not loras.loaded(base) and not any(base.get_list_adapters().values())
    assert np.array_equal(pixels(fresh.run("txt2img", model=model)), never)


@pytest.mark.parametrize(("value", "field"), [
    ([lora(f"l{i}") for i in range(6)], "inputs.loras"),
    ([lora(SD_LORA, 2.5)], "inputs.loras.0.weight"),
    ([lora(SD_LORA), lora(SD_LORA, 0.1)], "inputs.loras"),
    ([{"id": "../x.safetensors"}], "inputs.loras.0.id"),
    ([{"id": SD_LORA, "scale": 1}], "inputs.loras.0.scale"),
])
def test_the_contract_bounds_loras(value: list[dict[str, Any]], field: str) -> None:
    from runtime.contract import validate_inputs

    with pytest.raises(ContractError) as caught:
        validate_inputs("txt2img", {**COMMON, "loras": value}, input_bucket="inputs")
    assert caught.value.field == field


def test_the_checkpoint_fingerprint_covers_the_adapters_and_weights() -> None:
    def spec(loras_: list[dict[str, Any]]) -> JobSpec:
        inputs = parse(Txt2Img.Inputs, {**COMMON, "loras": loras_})
        return JobSpec(id="j", pipeline="txt2img", model="tiny-sd", inputs=inputs.model_dump(mode="json"), seed=1,
                       output_prefix="out", submitted_at="2026-01-01T00:00:00Z", request_hash="0" * 64)

    prints = {spec([]).fingerprint(), spec([lora(SD_LORA, 0.8)]).fingerprint(),
              spec([lora(SD_LORA, 0.7)]).fingerprint(), spec([lora("tiny-lora-sd1-kohya", 0.8)]).fingerprint()}
    assert len(prints) == 4

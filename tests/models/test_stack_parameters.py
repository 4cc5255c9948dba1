"""``spotgen models parameters`` and ``spotgen models aliases`` on a real library's catalog (issue 34, item 10).

The API stack's model lists come from the catalog the workers get, so that the API never accepts a model no worker
has. Only catalog.json is read: no model files are needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.cli import main
from runtime.config import PREFIX, Settings
from runtime.models.parameters import CFN_VALUE_MAX_BYTES

CATALOG = {"models": {
    "sd15": {"path": "stable-diffusion-v1-5", "family": "sd1", "aliases": ["v1-5-pruned-emaonly.safetensors"]},
    "xl": {"path": "xl", "family": "sdxl", "vae": "xl-vae", "aliases": ['SDXL "base" 1.0']},
    "schnell": {"path": "flux1-schnell", "family": "flux", "variant": "schnell"},
    "xl-vae": {"path": "xl-vae", "kind": "vae", "family": "sdxl"},
    "canny": {"path": "canny", "kind": "controlnet", "family": "sd1", "aliases": ["control_canny"]},
    "detail": {"path": "loras/detail.safetensors", "kind": "lora", "family": "sd1", "aliases": ["add_detail"]},
    "esrgan": {"path": "upscalers/esrgan.safetensors", "kind": "upscaler"}}}


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("MODELS", "CONTROLNETS", "LORAS", "MODEL_FAMILIES", "MODEL_VARIANTS", "ALIASES", "MODELS_DIR"):
        monkeypatch.delenv(PREFIX + name, raising=False)
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_parameters_are_the_catalogs_ids_and_make_valid_api_settings(library: Path, capsys) -> None:
    code, out, _ = _run(capsys, "models", "parameters", "--models", str(library))
    assert code == 0
    parameters = json.loads(out)
    assert parameters == {
        # a VAE is named by its model, not a request
        "Models": "sd15,xl,schnell", "ControlNets": "canny", "Loras": "detail",
        "Upscalers": "esrgan", "ModelFamilies": "sd15=sd1,xl=sdxl,schnell=flux,canny=sd1,detail=sd1",  # any family
        "ModelVariants": "schnell=schnell",  # the base models that have one
        "CompatAliases": json.dumps({"v1-5-pruned-emaonly.safetensors": "sd15", 'SDXL "base" 1.0': "xl",
                                     "add_detail": "detail", "control_canny": "canny"}, separators=(",", ":"))}
    env = {"Models": "MODELS", "ControlNets": "CONTROLNETS", "Loras": "LORAS", "Upscalers": "UPSCALERS",
           "ModelFamilies": "MODEL_FAMILIES", "ModelVariants": "MODEL_VARIANTS", "CompatAliases": "ALIASES"}
    settings = Settings.from_env({PREFIX + env[key]: value for key, value in parameters.items()})
    assert settings.models == ["sd15", "xl", "schnell"] and settings.model_families["detail"] == "sd1"
    assert settings.upscalers == ["esrgan"] and settings.model_variants == {"schnell": "schnell"}
    assert settings.aliases['SDXL "base" 1.0'] == "xl"


def test_a_value_cloudformation_would_refuse_is_an_error_here(library: Path, capsys) -> None:
    catalog = json.loads((library / "catalog.json").read_text())
    catalog["models"]["sd15"]["aliases"] = [f"checkpoint-{i:03}-{'x' * 150}.safetensors" for i in range(32)]
    (library / "catalog.json").write_text(json.dumps(catalog))
    code, out, err = _run(capsys, "models", "parameters", "--models", str(library))
    assert code == 1 and not out
    assert "CompatAliases would be" in err and str(CFN_VALUE_MAX_BYTES) in err


def test_aliases_of_a_library_are_printed_without_the_apis_lists_in_the_environment(library: Path, capsys,
                                                                                      monkeypatch) -> None:
    """The settings' default lists are the tiny models': taken as the API's, they left out every alias of a real
    library, and deploy.md's command printed {}."""
    code, out, _ = _run(capsys, "models", "aliases", "--compact", "--models", str(library))
    assert code == 0
    assert json.loads(out) == {"v1-5-pruned-emaonly.safetensors": "sd15", 'SDXL "base" 1.0': "xl",
                               "add_detail": "detail", "control_canny": "canny"}
    monkeypatch.setenv(PREFIX + "MODELS", "sd15")  # where the environment names the API's ids, only theirs
    monkeypatch.setenv(PREFIX + "CONTROLNETS", "")
    monkeypatch.setenv(PREFIX + "LORAS", "")
    code, out, _ = _run(capsys, "models", "aliases", "--compact", "--models", str(library))
    assert code == 0 and json.loads(out) == {"v1-5-pruned-emaonly.safetensors": "sd15"}

"""The listing routes SD WebUI clients call at start-up (issue 29, item 3): each answers 200 in WebUI 1.10's shape
with what spotgen has (the upscalers the API accepts under their WebUI names, the latent modes hires fix takes,
the scripts a body may name), an empty list where spotgen has none; over HTTP through the local gateway to the
routes' Lambda code on the real emulator (no worker: nothing is generated). The real ``webuiapi`` client's calls
for them are in ``test_sdapi_webuiapi.py``."""

from __future__ import annotations

from runtime.contract import LATENT_UPSCALERS
from runtime.local.devstack import DevStack
from tests.lambdas.sdapi_stack import api_fixture  # noqa: F401 - the fixture "api"
from tests.rest import call


def get(api: DevStack, name: str) -> object:
    status, answer = call("GET", f"{api.api_url}/sdapi/v1/{name}")
    assert status == 200, (name, answer)
    return answer


def test_upscalers_are_webuis_three_then_the_catalogs_models(api: DevStack) -> None:
    listed = get(api, "upscalers")
    assert [u["name"] for u in listed] == ["None", "Lanczos", "Nearest", *api.settings.upscalers]
    assert {tuple(sorted(u)) for u in listed} == {("model_name", "model_path", "model_url", "name", "scale")}
    assert [u["model_name"] for u in listed[3:]] == api.settings.upscalers


def test_an_upscaler_is_listed_by_its_alias_as_webui_names_it(api: DevStack) -> None:
    from lambdas import webui_listings

    settings = api.settings.model_copy(update={"aliases": {"R-ESRGAN 4x+": "tiny-esrgan"}})
    listed = {u["name"]: u["model_name"] for u in webui_listings.upscalers(settings)}
    assert listed["R-ESRGAN 4x+"] == "tiny-esrgan" and "tiny-esrgan" not in listed


def test_latent_modes_are_webuis_six_which_hires_fix_takes(api: DevStack) -> None:
    modes = [m["name"] for m in get(api, "latent-upscale-modes")]
    assert modes == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                     "Latent (nearest)", "Latent (nearest-exact)"]
    # each is one of spotgen's latent upscalers, under WebUI's name
    as_spotgen = {m.lower().replace(" (", "_").replace(")", "").replace(" ", "_").replace("-", "_") for m in modes}
    assert as_spotgen == set(LATENT_UPSCALERS)


def test_what_spotgen_has_none_of_is_an_empty_list(api: DevStack) -> None:
    for name in ("face-restorers", "realesrgan-models", "prompt-styles", "hypernetworks", "sd-vae", "sd-modules"):
        assert get(api, name) == [], name


def test_scripts_flags_and_embeddings(api: DevStack) -> None:
    scripts = get(api, "scripts")
    assert set(scripts) == {"txt2img", "img2img"} and "controlnet" in scripts["txt2img"]
    info = get(api, "script-info")
    assert {(s["name"], s["is_img2img"]) for s in info} >= {("controlnet", False), ("controlnet", True)}
    assert all(set(s) == {"name", "is_alwayson", "is_img2img", "args"} for s in info)
    # SD upscale: img2img's one selectable script, its script_args as WebUI's UI declares them
    assert "sd upscale" in scripts["img2img"] and "sd upscale" not in scripts["txt2img"]
    upscale = next(s for s in info if s["name"] == "sd upscale")
    assert (upscale["is_alwayson"], upscale["is_img2img"]) == (False, True)
    assert [a["label"] for a in upscale["args"]] == ["", "Tile overlap", "Upscaler", "Scale Factor"]
    assert upscale["args"][2]["choices"] == [u["name"] for u in get(api, "upscalers")]
    flags = get(api, "cmd-flags")
    assert flags["api"] is True and flags["nowebui"] is True and "lora_dir" in flags
    embeddings = get(api, "embeddings")
    assert set(embeddings["loaded"]) == set(api.settings.embeddings) and embeddings["skipped"] == {}


def test_a_listing_takes_get_only_and_an_unknown_route_names_what_is_served(api: DevStack) -> None:
    status, answer = call("POST", f"{api.api_url}/sdapi/v1/upscalers", {})
    assert status == 405 and answer["error"]["code"] == "method_not_allowed"
    status, answer = call("GET", f"{api.api_url}/sdapi/v1/no-such-listing")
    assert status == 404 and "upscalers" in answer["error"]["message"]

"""WebUI's options per caller (issue 29, item 4): ``GET /sdapi/v1/options`` is WebUI 1.10's whole document, and a
``POST`` keeps the options that change how requests run (``sd_model_checkpoint``, ``sd_vae``,
``CLIP_stop_at_last_layers``, ``eta_noise_seed_delta``, ``samples_format``...) for that caller's later txt2img and
img2img, as the AWS sample's queue agent switches models; the rest is ignored or refused as documented. The
routes' Lambda code runs in this process against ``spotgen dev``'s real emulator with no worker: a generation
answers 504 naming its job at once, and the job is read off the work queue as the API queued it. Each test is its
own caller (its own source address)."""

from __future__ import annotations

import json
import re
from typing import Any

from lambdas import sdapi, webui_options
from runtime.local.devstack import DevStack
from tests.conftest import ROOT
from tests.lambdas.sdapi_stack import api_fixture, queued_spec  # noqa: F401 - the fixture "api"

SD15, SDXL = "v1-5-pruned-emaonly.safetensors", "sd_xl_turbo_1.0.safetensors"


def send(method: str, name: str, who: str, body: Any = None) -> tuple[int, Any]:
    event = {"body": None if body is None else json.dumps(body), "pathParameters": {"name": name},
             "requestContext": {"http": {"method": method, "sourceIp": who}}}
    answer = sdapi.handler(event)
    return answer["statusCode"], json.loads(answer["body"])


def generated(api: DevStack, who: str, task: str = "txt2img", **body: Any) -> dict[str, Any]:
    """The job a generation of ``who`` queued (no worker: the short sync wait answers 504 naming it)."""
    status, answer = send("POST", task, who, {"prompt": "a fox", "width": 64, "height": 64, "steps": 4, **body})
    assert status == 504, answer
    return queued_spec(api, answer["id"])


def test_the_options_are_webuis_whole_document_describing_spotgen(api: DevStack) -> None:
    status, options = send("GET", "options", "10.0.1.1")
    assert status == 200 and len(options) > 200
    assert {key: options[key] for key in ("send_seed", "CLIP_stop_at_last_layers", "sd_vae", "samples_format",
                                          "eta_noise_seed_delta", "sd_model_checkpoint", "face_restoration")} == {
        "send_seed": True, "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "samples_format": "png",
        "eta_noise_seed_delta": 0, "sd_model_checkpoint": SD15, "face_restoration": False}


def test_a_caller_switches_models_as_the_samples_queue_agent_does(api: DevStack) -> None:
    who, other = "10.0.1.2", "10.0.1.3"
    assert generated(api, who)["model"] == "tiny-sd"
    assert send("POST", "options", who, {"sd_model_checkpoint": SDXL}) == (200, None)
    assert send("GET", "options", who)[1]["sd_model_checkpoint"] == SDXL
    assert generated(api, who)["model"] == "tiny-sdxl"
    assert generated(api, who, "img2img", init_images=[_png()])["model"] == "tiny-sdxl"
    # the body's own override_settings win, as over WebUI's options; another caller is unaffected
    assert generated(api, who, override_settings={"sd_model_checkpoint": SD15})["model"] == "tiny-sd"
    assert generated(api, other)["model"] == "tiny-sd"
    assert send("GET", "options", other)[1]["sd_model_checkpoint"] == SD15


def test_clip_skip_and_samples_format_apply_to_the_callers_later_requests(api: DevStack) -> None:
    who = "10.0.1.4"
    kept = {"CLIP_stop_at_last_layers": 2, "samples_format": "webp", "jpeg_quality": 90, "eta_noise_seed_delta": 0,
            "sd_vae": "Automatic"}
    assert send("POST", "options", who, kept) == (200, None)
    inputs = generated(api, who)["inputs"]
    assert (inputs["clip_skip"], inputs["format"], inputs["quality"]) == (2, "webp", 90)
    options = send("GET", "options", who)[1]
    assert {key: options[key] for key in kept} == kept


def test_other_options_are_ignored_or_refused_naming_the_option(api: DevStack) -> None:
    who = "10.0.1.5"
    assert send("POST", "options", who, {"outdir_samples": "/tmp/x", "send_seed": False}) == (200, None)
    assert send("GET", "options", who)[1]["outdir_samples"] == ""  # ignored: nothing kept
    for body, field in (({"face_restoration": True}, "options.face_restoration"),
                        ({"bogus_option": 1}, "options.bogus_option"),
                        ({"sd_model_checkpoint": "no-such-model.safetensors"}, "options.sd_model_checkpoint"),
                        ({"CLIP_stop_at_last_layers": "two"}, "options.CLIP_stop_at_last_layers"),
                        ({"eta_noise_seed_delta": 31337}, "options.eta_noise_seed_delta"),
                        ([1, 2], "body")):
        status, answer = send("POST", "options", who, body)
        assert status == 400 and answer["error"]["field"] == field, (body, answer)
    assert send("POST", "options", who, {"face_restoration": False}) == (200, None)  # the document's value
    assert generated(api, who)["model"] == "tiny-sd"  # nothing refused was kept
    assert set(webui_options.APPLIED) <= set(webui_options.DEFAULTS)


def test_the_document_is_of_webui_1_10_and_the_docs_list_each_choice() -> None:
    # keys of 1.8-1.10 that clients and scripts read, present; keys that 1.8 removed, absent
    assert {"emphasis", "sdxl_clip_l_skip", "sd3_enable_t5", "interrupt_after_current", "dat_enabled_models",
            "sd_lora", "beta_dist_alpha"} <= set(webui_options.DEFAULTS)
    assert not {"enable_emphasis", "k_sched_type", "img2img_editor_height"} & set(webui_options.DEFAULTS)
    assert set(webui_options.REFUSED) <= set(webui_options.DEFAULTS)
    doc = (ROOT / "docs/migrating.md").read_text()
    for choice, names in (("applied", webui_options.APPLIED), ("refused", webui_options.REFUSED)):
        listed = re.search(rf"\*\*{choice}\*\*.*?naming `options.<name>`: (.*?)(?:;|\. )", doc, re.S)
        assert listed and re.findall(r"`(\w+)`", listed.group(1)) == list(names), choice


def _png() -> str:
    from tests.lambdas.compat_stack import PNG_B64

    return PNG_B64

"""ComfyUI's websocket events from spotgen's status documents (``lambdas/comfy_events.py``), one document after
another as the socket reads them: each message once, in ComfyUI's order, for every way a prompt ends."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lambdas.comfy_events import Watch, node_of
from runtime.contract import JobErrorInfo, JobState, StatusDoc
from runtime.contract.comfy.graph import check_graph
from runtime.contract.status import Progress

WORKFLOWS = Path(__file__).resolve().parent.parent / "comfy" / "workflows"
KEPT = {"graph": check_graph(json.loads((WORKFLOWS / "hires_two_samplers.json").read_text()))}
SAMPLERS = sorted(key for key, node in KEPT["graph"].items() if node["class_type"] == "KSampler")


def doc(state: JobState, step: int = 0, total: int = 0, phase: str | None = None, **more: Any) -> StatusDoc:
    now = datetime.now(UTC)
    return StatusDoc(id="p1", state=state, pipeline="comfyui", model="tiny-sd", seed=1, created_at=now,
                     updated_at=now, progress=Progress(step=step, total=total, phase=phase), **more)


def kinds(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(m["type"], m["data"].get("node", m["data"].get("value"))) for m in messages]


def test_a_two_sampler_prompt_runs_node_by_node_and_ends_with_its_images() -> None:
    first, second = (f"ksampler-{key}" for key in SAMPLERS)
    assert node_of(KEPT["graph"], first) == SAMPLERS[0]
    watch = Watch()
    assert watch.messages(KEPT, doc(JobState.queued)) == []
    got = watch.messages(KEPT, doc(JobState.running, 1, 8, first))
    assert kinds(got) == [("execution_start", None), ("execution_cached", None), ("executing", SAMPLERS[0]),
                          ("progress", SAMPLERS[0])]
    assert got[-1]["data"]["value"] == 1 and got[-1]["data"]["max"] == 8
    assert watch.messages(KEPT, doc(JobState.running, 1, 8, first)) == []  # nothing new: nothing sent
    assert kinds(watch.messages(KEPT, doc(JobState.running, 5, 8, second))) == [
        ("executing", SAMPLERS[1]), ("progress", SAMPLERS[1])]
    outputs = ["outputs/p1/0.png", "outputs/p1/1.png"]  # the first pass's image (node 9), then the second's (13)
    end = watch.messages(KEPT, doc(JobState.succeeded, 8, 8, None, outputs=outputs))
    assert kinds(end) == [("progress", SAMPLERS[1]), ("executing", "9"), ("executed", "9"), ("executing", "13"),
                          ("executed", "13"), ("execution_success", None), ("executing", None)]
    assert end[4]["data"]["output"] == {"images": [{"filename": "1.png", "subfolder": "outputs/p1",
                                                    "type": "output"}]}
    assert watch.messages(KEPT, doc(JobState.succeeded, 8, 8, outputs=outputs)) == []  # said once


def test_a_prompt_done_before_any_step_was_written_reports_its_samplers_steps() -> None:
    quick = Watch().messages(KEPT, doc(JobState.succeeded, outputs=["outputs/p1/0.png", "outputs/p1/1.png"]))
    progress = [m["data"] for m in quick if m["type"] == "progress"]
    last = max(SAMPLERS, key=int)  # the second pass, which the first's latents feed
    steps = KEPT["graph"][last]["inputs"]["steps"]
    assert progress == [{"value": steps, "max": steps, "prompt_id": "p1", "node": last}]


def test_a_failed_or_cancelled_prompt_ends_as_comfyui_says_so() -> None:
    failed = Watch().messages(KEPT, doc(JobState.failed, error=JobErrorInfo(code="pipeline_error", message="boom")))
    assert kinds(failed)[-2:] == [("execution_error", None), ("executing", None)]
    assert failed[-2]["data"]["exception_message"] == "boom"
    cancelled = Watch().messages(KEPT, doc(JobState.cancelled))
    assert kinds(cancelled)[-2:] == [("execution_interrupted", None), ("executing", None)]
    watch = Watch()
    watch.skip("p1")  # ended before the client watched
    assert watch.messages(KEPT, doc(JobState.succeeded)) == []

"""WebUI's prompt editing and alternation (runtime/contract/promptsyntax.py, pipelines/promptschedule.py).

The schedules are held to WebUI's documented examples; the runs to what the schedule says: a step conditioned
by text A has the latents a run of A alone has there, until the switch. Resume across a switch is
byte-identical, and a prompt without the syntax runs exactly as the encoder alone makes it run.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pipelines import prompts
from pipelines.promptschedule import encode, pairs_by_step
from pipelines.resume import run_resumable
from runtime.contract import ContractError
from runtime.contract.promptsyntax import PromptSyntaxError, schedule
from runtime.worker import checkpoint
from tests.pipelines.harness import Harness, interrupt_at, parse, png

LANDSCAPE = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
             "[: in background:0.25] [shoddy:masterful:0.5]")


@pytest.mark.parametrize(("prompt", "steps", "expected"), [
    # WebUI's own example (prompt_parser.py and the wiki's "Prompt editing"), 100 steps.
    (LANDSCAPE, 100, [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful")]),
    ("a [fantasy:cyberpunk:16] landscape", 30, [(16, "a fantasy landscape"), (30, "a cyberpunk landscape")]),
    ("[to:2]", 4, [(2, ""), (4, "to")]),
    ("[from::2]", 4, [(2, "from"), (4, "")]),
    ("[a: b :0.5]", 10, [(5, "a"), (10, " b ")]),
    ("[a:b: 3 ]", 10, [(3, "a"), (10, "b")]),
    ("[a:b:1.0]", 4, [(4, "a")]),  # a decimal point: a fraction of the steps (WebUI since 1.6)
    ("[a:b:1]", 4, [(1, "a"), (4, "b")]),  # none: a step number
    ("[a:b:0]", 4, [(4, "b")]),
    ("[a:b:99]", 4, [(4, "a")]),
    ("[cow|horse] in a field", 3, [(1, "cow in a field"), (2, "horse in a field"), (3, "cow in a field")]),
    ("[a|b|]", 3, [(1, "a"), (2, "b"), (3, "")]),
    # Nested, and inside attention brackets, which stay for the attention parser.
    ("(a [b|c]:1.2)", 2, [(1, "(a b:1.2)"), (2, "(a c:1.2)")]),
    ("[a:[b:c:3]:1]", 4, [(1, "a"), (3, "b"), (4, "c")]),
    ("[[a|b]:c:2]", 3, [(1, "a"), (2, "b"), (3, "c")]),
    # No editing: the text as it is, whatever WebUI's grammar leaves literal.
    ("a (b:1.2) [c] \\[d\\] BREAK e", 5, [(5, "a (b:1.2) [c] \\[d\\] BREAK e")]),
    ("[a:b]", 5, [(5, "[a:b]")]),
    ("[a:b:0.5", 5, [(5, "[a:b:0.5")]),
    ("[a:b:c:0.5]", 5, [(5, "[a:b:c:0.5]")]),
    ("a | b, c:d", 5, [(5, "a | b, c:d")]),
])
def test_schedule_matches_webui(prompt: str, steps: int, expected: list[tuple[int, str]]) -> None:
    assert schedule(prompt, steps) == expected


@pytest.mark.parametrize("prompt", ["[cat|dog", "cat|dog]", "[a] | b", "[a:b:0.5] \\"])
def test_what_the_grammar_cannot_read_is_refused_with_a_bracket(prompt: str) -> None:
    with pytest.raises(PromptSyntaxError):
        schedule(prompt, 4)


def test_steps_as_webui_samples_them() -> None:
    """WebUI's sampler counts steps from 0 and takes the first entry whose end is not below the step: [a:b:1]
    conditions steps 0 and 1 with a; alternation gives a twice first (its entries end at 1, 2, 3...)."""
    assert pairs_by_step("[a:b:1]", "", 4)[:4] == [("a", ""), ("a", ""), ("b", ""), ("b", "")]
    assert [p for p, _ in pairs_by_step("[a|b]", "", 4)[:4]] == ["a", "a", "b", "a"]
    assert [n for _, n in pairs_by_step("p", "[x::0.5]", 4)[:4]] == ["x", "x", "x", ""]
    with pytest.raises(ContractError) as caught:
        pairs_by_step("p", "[x|y", 4)
    assert caught.value.field == "inputs.negative_prompt"


def latents_by_step(harness: Harness, model: str, **fields: Any) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    harness.run("txt2img", model=model, on_step=lambda step, state: seen.append(state().tensors["latents"].clone()),
                **fields)
    return seen


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_each_step_is_conditioned_by_its_text(harness: Harness, model: str) -> None:
    """Latents after each step: the same as a run of the text that conditioned every step so far, and no
    longer the same after the first step of another text."""
    a, b = "a red fox", "a blue bird over the sea"
    plain = latents_by_step(harness, model, prompt=a, steps=4)
    for prompt, same_until in ((f"[{a}:{b}:1]", 2), (f"[{a}|{b}]", 2), (f"[{b}:{a}:0.25]", 0)):
        scheduled = latents_by_step(harness, model, prompt=prompt, steps=4)
        for step in range(4):
            assert torch.equal(scheduled[step], plain[step]) == (step < same_until), (prompt, step)
    negative = latents_by_step(harness, model, prompt=a, negative_prompt="[ugly::0.5]", steps=4)
    unscheduled = latents_by_step(harness, model, prompt=a, negative_prompt="ugly", steps=4)
    assert [torch.equal(x, y) for x, y in zip(negative, unscheduled, strict=True)] == [True, True, True, False]


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_resume_across_a_switch_is_byte_identical(harness: Harness, model: str) -> None:
    fields = {"prompt": "[a red fox:a blue bird:2] [in snow|at sea]", "negative_prompt": "[dark::1]", "steps": 4,
              "num_images": 2, "model": model}
    whole = png(harness.run("txt2img", **fields))
    for stop in (1, 2, 3):  # before, at and after the switch
        state = checkpoint.load(interrupt_at(harness, "txt2img", stop, **fields), "f" * 64)
        assert png(harness.run("txt2img", resume_from=state, **fields)) == whole, stop


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_prompts_without_the_syntax_run_as_before(harness: Harness, model: str) -> None:
    """The pipeline's run against diffusers called with ``prompts.encode``'s embeddings and no step callback
    of the schedule's: the path before prompt editing existed."""
    from pipelines.txt2img import Txt2Img

    for prompt, negative in (("a red fox", ""), ("a (red:1.3) [fox], snow BREAK night", "blurry"),
                             ("fox " * 90, "(dark:0.7)"), ("a:b (c) \\[d\\] e | f", "")):
        fields = {"prompt": prompt, "negative_prompt": negative, "steps": 3}
        ours = png(harness.run("txt2img", model=model, **fields))
        inputs = parse(Txt2Img.Inputs, {"width": 64, "height": 48, **fields})
        job = Txt2Img().prepare(inputs, ctx := harness.context(model=model))
        view = Txt2Img().view(job)
        with torch.inference_mode():
            embeds = prompts.encode(view, prompt, negative, clip_skip=1, guidance=True)
            again, conditioning = encode(view, prompt, negative, steps=3)
        assert conditioning is None and all(torch.equal(embeds[k], again[k]) for k in embeds)
        direct = run_resumable(view, ctx, **embeds, num_inference_steps=3, guidance_scale=job.inputs.guidance_scale,
                               width=64, height=48)
        assert png(direct) == ours, prompt

"""The contract refuses prompt-editing syntax that WebUI's grammar cannot read (runtime/contract/promptsyntax.py),
naming the field, on every pipeline that takes a prompt, so the API refuses what the worker would: the same
stdlib function decides for both, and the worker's own check (``pipelines.promptschedule``) is the same parse."""

from __future__ import annotations

import pytest

from runtime.contract import ContractError, validate_inputs

BAD = ("[cat|dog", "a cat|dog] b", "[a] | b", "[a:b:0.5] ends in \\")
#: Accepted: editing, alternation, and what WebUI reads as plain text (no square bracket, or escaped ones).
GOOD = ("[cat:dog:0.5]", "[cat|dog|]", "[to:3]", "[from::0.2] (x:1.2)", "a | b", "a \\[b\\] | c", "[a:b:0.5",
        "((a [b|c]:1.3))", "]")


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("pipeline", ["txt2img", "img2img", "inpaint", "controlnet"])
@pytest.mark.parametrize("text", BAD)
def test_unreadable_editing_is_refused_naming_the_field(pipeline: str, field: str, text: str) -> None:
    inputs = {"prompt": "x", field: text}
    with pytest.raises(ContractError) as info:
        validate_inputs(pipeline, inputs, input_bucket="in")
    assert info.value.field == f"inputs.{field}"
    assert "[a|b]" in str(info.value)


@pytest.mark.parametrize("text", BAD)
def test_the_hires_pass_prompts_too(text: str) -> None:
    with pytest.raises(ContractError) as info:
        validate_inputs("txt2img", {"prompt": "x", "hires": {"negative_prompt": text}}, input_bucket="in")
    assert info.value.field == "inputs.hires.negative_prompt"


@pytest.mark.parametrize("text", GOOD)
def test_readable_prompts_pass_unchanged(text: str) -> None:
    out = validate_inputs("txt2img", {"prompt": text, "negative_prompt": text}, input_bucket="in")
    assert out.prompt == text and out.negative_prompt == text

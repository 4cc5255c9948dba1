"""WebUI prompt syntax and encoding (pipelines/prompts.py), against WebUI's own examples and diffusers' encoder.

SD 1.x runs on the tiny-sd model; SDXL on a StableDiffusionXLPipeline built here from two tiny text encoders
(no UNet or VAE: only the text path is under test). Once tiny-sdxl exists, ``sdxl`` can load it instead.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pipelines.common import base_pipeline, generators
from pipelines.prompts import BREAK, CHUNK_TOKENS, MAX_CHUNKS, encode, pack, parse
from runtime.contract import ContractError
from runtime.models.store import ModelStore
from runtime.models.tiny import _tokenizer

# Letters that take part in none of the tiny tokenizer's merges: one token per letter, so counts are exact.
LETTERS = "abcgjklmpqsuvwyz"


def words(n: int, seed: int = 0, size: int = 5) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(LETTERS) for _ in range(size)) for _ in range(n)]


@pytest.fixture(scope="module")
def sd(tiny_models: Path) -> Any:
    return base_pipeline(ModelStore(tiny_models, "cpu"), "tiny-sd")


def _tiny_sdxl(force_zeros: bool = True, encoders: tuple[Any, Any] | None = None) -> StableDiffusionXLPipeline:
    """SDXL's text side: CLIPTextModel + CLIPTextModelWithProjection (hidden 32, 2 layers, projection 32), the
    tiny tokenizer twice, the second padding with "!" as SDXL's does."""
    tokenizer, tokenizer_2 = _tokenizer(), _tokenizer()
    tokenizer_2.pad_token = "!"
    if encoders is None:
        config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        encoders = (CLIPTextModel(config).eval(), CLIPTextModelWithProjection(config).eval())
    return StableDiffusionXLPipeline(vae=None, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=None, scheduler=None,
                                     force_zeros_for_empty_prompt=force_zeros)


@pytest.fixture(scope="module")
def sdxl() -> StableDiffusionXLPipeline:
    """To use tiny-sdxl instead: load it as ``sd`` loads tiny-sd; the tests read widths from the encoders."""
    return _tiny_sdxl()


def widths(pipe: Any) -> tuple[int, int | None]:
    """The width of prompt_embeds (SDXL: both encoders') and of the pooled embedding (None on SD 1.x)."""
    second = getattr(pipe, "text_encoder_2", None)
    if second is None:
        return pipe.text_encoder.config.hidden_size, None
    return pipe.text_encoder.config.hidden_size + second.config.hidden_size, second.config.projection_dim


# parse_prompt_attention's docstring in AUTOMATIC1111's modules/prompt_parser.py, and BREAK.
WEBUI_CASES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("unbalanced[[", [("unbalanced", 1.0)]),
    ("[less] (more:1.3) [[much less]]", [("less", 1 / 1.1), (" ", 1.0), ("more", 1.3), (" ", 1.0),
                                         ("much less", 1 / 1.1 / 1.1)]),
    ("a\\\\b \\x", [("a\\b x", 1.0)]),
    ("cat BREAK dog", [("cat", 1.0), BREAK, ("dog", 1.0)]),
    ("BREAK", [BREAK]),
    ("a BREAKING Break BREAK, b", [("a BREAKING Break", 1.0), BREAK, (", b", 1.0)]),
    ("(cat BREAK dog:1.2)", [("cat", 1.2), BREAK, ("dog", 1.2)]),
    ("", []),
]

LENIENT_CASES = [
    ("a) b] c", [("a) b] c", 1.0)]),
    ("time: 5 (x:1.2.3)", [("time: 5 ", 1.0), ("x:1.2.3)", 1.1)]),
    ("x:1.5)", [("x:1.5)", 1.0)]),
    ("((a) b", [("a", 1.1 * 1.1), (" b", 1.1)]),  # weights multiply in the order WebUI multiplies
    ("[a (b] c)", [("a ", 1 / 1.1), ("b", 1 / 1.1 * 1.1), (" c", 1.1)]),
]


@pytest.mark.parametrize(("prompt", "expected"), WEBUI_CASES + LENIENT_CASES)
def test_parse_matches_webui(prompt: str, expected: list[Any]) -> None:
    assert parse(prompt) == expected


def test_malformed_prompts_never_raise(sd: Any, sdxl: Any) -> None:
    rng = random.Random(1)
    for _ in range(100):
        prompt = "".join(rng.choice("()[]:\\ ,.1a BREAK") for _ in range(rng.randint(0, 40)))
        for part in parse(prompt):
            assert part is BREAK or part.text
        assert pack(parse(prompt), sd.tokenizer)
    for prompt in ["((((", "]]]])))", "(a:", "(:1.2)", "\\", "(a:1.2.3)", "[a:0.5]", "BREAK BREAK"]:
        assert encode(sd, prompt, prompt)["prompt_embeds"].shape[1] % 77 == 0
        assert encode(sdxl, prompt, prompt)["prompt_embeds"].shape[1] % 77 == 0


def _diffusers_sd(pipe: Any, prompt: str, negative: str | None, clip_skip: int) -> tuple[torch.Tensor, ...]:
    """diffusers' encode_prompt; for clip_skip > 1 its own computation written out, because diffusers 0.42.1
    looks for ``text_encoder.text_model.final_layer_norm``, which transformers 5's CLIPTextModel lacks."""
    with torch.inference_mode():
        embeds = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
        if clip_skip == 1:
            return embeds
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        diffusers_skip = clip_skip - 1
        hidden = pipe.text_encoder(ids.input_ids, output_hidden_states=True).hidden_states[-(diffusers_skip + 1)]
        return pipe.text_encoder.final_layer_norm(hidden), embeds[1]


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sd_short_prompt_is_diffusers_encoding(sd: Any, clip_skip: int) -> None:
    with torch.inference_mode():
        ours = encode(sd, "a red fox, in the snow", "blurry", clip_skip=clip_skip)
        empty_negative = encode(sd, "a red fox, in the snow", "", clip_skip=clip_skip)
    positive, _ = _diffusers_sd(sd, "a red fox, in the snow", "blurry", clip_skip)
    # diffusers encodes the negative prompt without clip_skip; WebUI (and this module) skip on both
    negative, _ = _diffusers_sd(sd, "blurry", None, clip_skip)
    empty, _ = _diffusers_sd(sd, "", None, clip_skip)
    assert set(ours) == {"prompt_embeds", "negative_prompt_embeds"}
    assert ours["prompt_embeds"].shape == (1, 77, widths(sd)[0])
    assert torch.equal(ours["prompt_embeds"], positive)
    assert torch.equal(ours["negative_prompt_embeds"], negative)
    assert torch.equal(empty_negative["negative_prompt_embeds"], empty)
    if clip_skip == 1:
        assert torch.equal(ours["negative_prompt_embeds"], _diffusers_sd(sd, "x", "blurry", 1)[1])


def _diffusers_xl(pipe: Any, prompt: str, negative: str | None, clip_skip: int) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return pipe.encode_prompt(prompt, device="cpu", negative_prompt=negative, clip_skip=clip_skip - 1 or None)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sdxl_short_prompt_is_diffusers_encoding(sdxl: Any, clip_skip: int) -> None:
    ours = encode(sdxl, "a red fox, in the snow", "blurry", clip_skip=clip_skip)
    positive, _, pooled, _ = _diffusers_xl(sdxl, "a red fox, in the snow", "blurry", clip_skip)
    negative, _, negative_pooled, _ = _diffusers_xl(sdxl, "blurry", None, clip_skip)
    assert set(ours) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                         "negative_pooled_prompt_embeds"}
    hidden, pooled_width = widths(sdxl)
    assert ours["prompt_embeds"].shape == (1, 77, hidden) and ours["pooled_prompt_embeds"].shape == (1, pooled_width)
    assert torch.equal(ours["prompt_embeds"], positive)
    assert torch.equal(ours["pooled_prompt_embeds"], pooled)
    assert torch.equal(ours["negative_prompt_embeds"], negative)
    assert torch.equal(ours["negative_pooled_prompt_embeds"], negative_pooled)
    if clip_skip == 1:
        _, diffusers_negative, _, diffusers_negative_pooled = _diffusers_xl(sdxl, "x", "blurry", 1)
        assert torch.equal(ours["negative_prompt_embeds"], diffusers_negative)
        assert torch.equal(ours["negative_pooled_prompt_embeds"], diffusers_negative_pooled)


def test_sdxl_empty_negative_follows_force_zeros(sdxl: Any) -> None:
    zeroed = encode(sdxl, "a red fox", "")
    _, negative, _, negative_pooled = _diffusers_xl(sdxl, "a red fox", None, 1)
    assert torch.equal(zeroed["negative_prompt_embeds"], negative) and not negative.any()
    assert torch.equal(zeroed["negative_pooled_prompt_embeds"], negative_pooled) and not negative_pooled.any()
    encoded = _tiny_sdxl(force_zeros=False, encoders=(sdxl.text_encoder, sdxl.text_encoder_2))
    ours = encode(encoded, "a red fox", "")
    _, negative, _, negative_pooled = _diffusers_xl(encoded, "a red fox", None, 1)
    assert negative.any() and torch.equal(ours["negative_prompt_embeds"], negative)
    assert torch.equal(ours["negative_pooled_prompt_embeds"], negative_pooled)
    long = encode(sdxl, " ".join(words(20)), "")  # zeros for every chunk
    assert long["negative_prompt_embeds"].shape == (1, 154, widths(sdxl)[0])
    assert not long["negative_prompt_embeds"].any()


def test_no_guidance_no_negative(sd: Any, sdxl: Any) -> None:
    assert set(encode(sd, "a fox", "blurry", guidance=False)) == {"prompt_embeds"}
    assert set(encode(sdxl, "a fox", "blurry", guidance=False)) == {"prompt_embeds", "pooled_prompt_embeds"}


@pytest.mark.parametrize("model", ["sd", "sdxl"])
def test_long_prompt_is_its_chunks_encoded_apart(model: str, request: pytest.FixtureRequest) -> None:
    pipe = request.getfixturevalue(model)
    text = words(20)  # 100 tokens: the first 15 words fill chunk 1 exactly, the other 5 go to chunk 2
    long = encode(pipe, " ".join(text), "blurry")
    first, second = encode(pipe, " ".join(text[:15]), ""), encode(pipe, " ".join(text[15:]), "")
    assert long["prompt_embeds"].shape == long["negative_prompt_embeds"].shape == (1, 154, widths(pipe)[0])
    assert torch.equal(long["prompt_embeds"], torch.cat([first["prompt_embeds"], second["prompt_embeds"]], 1))
    chunks = pack(parse(" ".join(text)), pipe.tokenizer)
    assert [c.tokens for c in chunks] == [75, 25]
    assert [t for c in chunks for t in c.ids[1:1 + c.tokens]] == pipe.tokenizer(" ".join(text),
                                                                                 add_special_tokens=False).input_ids
    # the short negative is padded with an empty prompt's chunk
    assert torch.equal(long["negative_prompt_embeds"][:, 77:], encode(pipe, "", "")["prompt_embeds"])
    if model == "sdxl":  # pooled: the first chunk's, as in WebUI
        assert torch.equal(long["pooled_prompt_embeds"], first["pooled_prompt_embeds"])
        assert torch.equal(long["negative_pooled_prompt_embeds"], encode(pipe, "blurry", "x")["pooled_prompt_embeds"])


@pytest.mark.parametrize("model", ["sd", "sdxl"])
def test_weight_scales_its_tokens_then_mean_is_restored(model: str, request: pytest.FixtureRequest) -> None:
    pipe = request.getfixturevalue(model)
    plain = encode(pipe, "aa bbb cc", "")["prompt_embeds"]
    weighted = encode(pipe, "aa (bbb:1.5) cc", "")["prompt_embeds"]
    positions = [3, 4, 5]  # BOS a a b b b: one token per letter
    others = [i for i in range(77) if i not in positions]
    weights = torch.ones(77)
    weights[positions] = 1.5
    # SDXL: each encoder's half is weighted and rescaled on its own, as WebUI's two embedders do
    first, total = pipe.text_encoder.config.hidden_size, widths(pipe)[0]
    for half in [slice(0, first)] if model == "sd" else [slice(0, first), slice(first, total)]:
        p, w = plain[..., half], weighted[..., half]
        scaled = p * weights[None, :, None]
        assert torch.allclose(w, scaled * (p.mean() / scaled.mean()), rtol=1e-5, atol=1e-5)
        # Two different sums (of w and of p) agree up to float32 rounding on the scale of the values summed, |w|
        # (a bound of about eps * log2(77 * width) = 1.4e-6 relative to it), not on the scale of the mean. SD 1.x's
        # last_hidden_state leaves the tiny encoder's LayerNorm, whose bias is zero, so every token averages 0 and
        # both means are rounding noise near 1e-8 whose sign and bits follow the CPU's summation order: a relative
        # tolerance on them fails by chance. An unrestored mean misses by 3e-3 |w| on SDXL, far beyond 1e-5 |w|.
        assert torch.allclose(w.mean(), p.mean(), rtol=0, atol=1e-5 * w.abs().mean().item())
        ratio = w / p  # one rescale factor s for the chunk: 1.5 s on the word's tokens, s elsewhere
        s = ratio[0, 0, 0]
        assert torch.allclose(ratio[0, others], s.expand(len(others), half.stop - half.start), rtol=1e-4)
        assert torch.allclose(ratio[0, positions], (1.5 * s).expand(3, half.stop - half.start), rtol=1e-4)
    down = encode(pipe, "aa [bbb] cc", "")["prompt_embeds"]
    # as above: the means of two different tensors, equal up to rounding on the scale of the values summed
    assert not torch.equal(down, plain) and torch.allclose(down.mean(), plain.mean(), rtol=0,
                                                           atol=1e-5 * down.abs().mean().item())
    assert torch.equal(encode(pipe, "aa (bbb:1) cc", "")["prompt_embeds"], plain)


def test_break_starts_a_new_chunk(sd: Any) -> None:
    tok = sd.tokenizer
    chunks = pack(parse("aa BREAK bb"), tok)
    for chunk, text in zip(chunks, ["aa", "bb"], strict=True):  # BOS a a EOS pad..., then BOS b b EOS pad...
        assert chunk.ids[:4] == [tok.bos_token_id, *tok(text, add_special_tokens=False).input_ids, tok.eos_token_id]
    assert all(len(c.ids) == len(c.weights) == 77 for c in chunks)
    broken = encode(sd, "aa BREAK bb", "")["prompt_embeds"]
    assert torch.equal(broken, torch.cat([encode(sd, "aa", "")["prompt_embeds"],
                                          encode(sd, "bb", "")["prompt_embeds"]], 1))
    assert [c.tokens for c in pack(parse("BREAK aa BREAK BREAK bb BREAK"), tok)] == [0, 2, 0, 2]


def test_comma_backtracking(sd: Any) -> None:
    tail = words(2, seed=1)
    near = pack(parse(" ".join(words(14)) + ", " + " ".join(tail)), sd.tokenizer)  # comma is token 70
    comma = sd.tokenizer.get_vocab()[",</w>"]
    assert [c.tokens for c in near] == [71, 10]  # the 4 tokens after the comma move with the rest
    assert near[0].ids[71:73] == [comma, sd.tokenizer.eos_token_id]
    assert near[1].ids[1:11] == sd.tokenizer(" ".join(tail), add_special_tokens=False).input_ids
    far = pack(parse(" ".join(words(10)) + ", " + " ".join(words(6, seed=1))), sd.tokenizer)  # 25 tokens back
    assert [c.tokens for c in far] == [75, 6]


def test_prompt_cap(sd: Any, sdxl: Any) -> None:
    limit = MAX_CHUNKS * CHUNK_TOKENS
    at_limit = " ".join(words(limit // 5))
    assert encode(sd, at_limit, "")["prompt_embeds"].shape == (1, 77 * MAX_CHUNKS, widths(sd)[0])
    for pipe in (sd, sdxl):
        with pytest.raises(ContractError) as err:
            encode(pipe, at_limit + " b", "")
        assert (err.value.code, err.value.field) == ("prompt_too_long", "inputs.prompt")
        assert f"{limit + 1} tokens" in err.value.message and str(limit) in err.value.message
        with pytest.raises(ContractError) as err:
            encode(pipe, "a fox", at_limit + " b")
        assert (err.value.code, err.value.field) == ("prompt_too_long", "inputs.negative_prompt")
    encode(sd, "a fox", at_limit + " b", guidance=False)  # a negative that is not used is not encoded


def test_clip_skip_deeper_than_the_encoder(sd: Any, sdxl: Any) -> None:
    # clip_skip k skips k - 1 layers on SD 1.x, k on SDXL (which starts from the penultimate); both have 2 layers
    for pipe, deepest in ((sd, sd.text_encoder.config.num_hidden_layers + 1),
                          (sdxl, sdxl.text_encoder.config.num_hidden_layers)):
        encode(pipe, "a fox", "", clip_skip=deepest)
        for clip_skip in (0, deepest + 1):
            with pytest.raises(ContractError) as err:
                encode(pipe, "a fox", "", clip_skip=clip_skip)
            assert (err.value.code, err.value.field) == ("invalid_field", "inputs.clip_skip")


def test_sd_pipeline_takes_the_embeddings(sd: Any) -> None:
    """Passed to the pipeline with num_images_per_prompt unchanged, the embeddings give diffusers' own images."""
    common: dict[str, Any] = {"num_inference_steps": 1, "num_images_per_prompt": 2, "height": 32, "width": 32,
                              "output_type": "np"}
    with torch.inference_mode():
        theirs = sd(prompt="a red fox", negative_prompt="blurry", generator=generators(3, 2), **common).images
        ours = sd(**encode(sd, "a red fox", "blurry"), generator=generators(3, 2), **common).images
        long = sd(**encode(sd, " ".join(words(20)), "blurry"), generator=generators(3, 2), **common).images
    assert ours.shape == (2, 32, 32, 3) and np.array_equal(ours, theirs)
    assert long.shape == (2, 32, 32, 3)

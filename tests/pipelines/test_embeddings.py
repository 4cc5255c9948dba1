"""Textual-inversion embeddings (pipelines/embeddings.py, pipelines/prompts.py): named in a prompt as in WebUI,
read in WebUI's and diffusers' formats, injected for the one job that names them.

The check of the vectors is against diffusers' own ``load_textual_inversion`` on a copy of the pipeline (which
adds tokens to the tokenizer and rows to the text encoder: what spotgen does not do to the shared modules)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from pipelines import embeddings
from pipelines.common import base_pipeline
from pipelines.prompts import CHUNK_TOKENS, encode, pack, parse
from runtime.models.store import ModelStore
from tests.pipelines.harness import Harness, png


@pytest.fixture(scope="module")
def store(tiny_models: Path) -> ModelStore:
    return ModelStore(tiny_models, "cpu")


def test_every_format_is_read(store: ModelStore) -> None:
    sd1, sdxl = embeddings.for_family(store, "sd1"), embeddings.for_family(store, "sdxl")
    assert sorted(sd1) == ["tiny-emb-sd1", "tiny-emb-sd1-diffusers"] and sorted(sdxl) == ["tiny-emb-sdxl"]
    assert sd1["tiny-emb-sd1"].count == 2 and sd1["tiny-emb-sd1-diffusers"].count == 3  # emb_params; {token: ...}
    assert {k: tuple(v.shape) for k, v in sdxl["tiny-emb-sdxl"].vectors.items()} == {"clip_l": (2, 32),
                                                                                     "clip_g": (2, 48)}
    assert embeddings.for_family(store, "sd1")["tiny-emb-sd1"] is sd1["tiny-emb-sd1"]  # read once
    assert embeddings.for_family(store, "sd1", ["a fox", "TINY-EMB-SD1-diffusers"]) == {
        "tiny-emb-sd1": sd1["tiny-emb-sd1"], "tiny-emb-sd1-diffusers": sd1["tiny-emb-sd1-diffusers"]}
    assert embeddings.for_family(store, "sd1", ["a fox"]) == {}  # a job naming none reads no file


def test_a_name_takes_its_vectors_positions(store: ModelStore) -> None:
    sd = base_pipeline(store, "tiny-sd")
    found = embeddings.for_family(store, "sd1")
    chunk = pack(parse("a tiny-emb-sd1-diffusers b"), sd.tokenizer, found)[0]
    assert chunk.tokens == 2 + 3  # a, b and three vectors: the longer name wins over tiny-emb-sd1
    assert [slot[1] for slot in chunk.slots if slot is not None] == [0, 1, 2]
    assert chunk.ids[2:5] == [0, 0, 0]
    # Vectors that would overflow a chunk start the next one, whole.
    chunks = pack(parse("x " * (CHUNK_TOKENS - 1) + "tiny-emb-sd1"), sd.tokenizer, found)
    assert [c.tokens for c in chunks] == [CHUNK_TOKENS - 1, 2]
    assert pack(parse("tinyemb sd1"), sd.tokenizer, found)[0].slots == ()  # another word


def test_the_vectors_are_those_diffusers_puts_in(store: ModelStore) -> None:
    sd = base_pipeline(store, "tiny-sd")
    ours = encode(sd, "a fox tiny-emb-sd1 in snow", guidance=False,
                  embeddings=embeddings.for_family(store, "sd1"))["prompt_embeds"]
    theirs = copy.deepcopy(sd)  # diffusers changes the tokenizer and the text encoder: a copy of them
    theirs.load_textual_inversion(str(store.path("tiny-emb-sd1", "embedding")), token="<e>",
                                  tokenizer=theirs.tokenizer, text_encoder=theirs.text_encoder)
    prompt = theirs.maybe_convert_prompt("a fox <e> in snow", theirs.tokenizer)  # "<e> <e>_1": one per vector
    ids = theirs.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = theirs.text_encoder(ids).last_hidden_state
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_other_jobs_are_untouched(harness: Harness, model: str) -> None:
    name = "tiny-emb-sd1" if model == "tiny-sd" else "tiny-emb-sdxl"
    pipe = base_pipeline(harness.store, model)
    sizes = [(len(t), e.get_input_embeddings().weight.shape) for t, e in
             ((pipe.tokenizer, pipe.text_encoder), (getattr(pipe, "tokenizer_2", None), pipe.text_encoder_2)
              if hasattr(pipe, "text_encoder_2") else (pipe.tokenizer, pipe.text_encoder))]
    before = png(harness.run("txt2img", model=model, prompt="a red fox"))
    named = png(harness.run("txt2img", model=model, prompt=f"a red fox {name}"))
    after = png(harness.run("txt2img", model=model, prompt="a red fox"))
    assert before == after != named
    assert sizes == [(len(t), e.get_input_embeddings().weight.shape) for t, e in
                     ((pipe.tokenizer, pipe.text_encoder), (getattr(pipe, "tokenizer_2", None), pipe.text_encoder_2)
                      if hasattr(pipe, "text_encoder_2") else (pipe.tokenizer, pipe.text_encoder))]


def test_an_embedding_of_the_other_family_is_a_word(harness: Harness, store: ModelStore) -> None:
    """tiny-emb-sdxl on an SD 1.x model is text, as an unknown name is in WebUI: the same pixels as with the
    embeddings left out of the encoder."""
    sd = base_pipeline(store, "tiny-sd")
    text = "a fox tiny-emb-sdxl"
    with_family: Any = encode(sd, text, embeddings=embeddings.for_family(store, "sd1"))
    assert all(torch.equal(with_family[k], v) for k, v in encode(sd, text).items())


def test_resume_with_an_embedding_is_byte_identical(harness: Harness) -> None:
    from runtime.worker import checkpoint
    from tests.pipelines.harness import interrupt_at

    fields = {"prompt": "[a fox tiny-emb-sdxl:a bird:1]", "steps": 3, "model": "tiny-sdxl"}
    whole = png(harness.run("txt2img", **fields))
    for stop in (1, 2):
        state = checkpoint.load(interrupt_at(harness, "txt2img", stop, **fields), "f" * 64)
        assert png(harness.run("txt2img", resume_from=state, **fields)) == whole, stop


def test_the_catalog_takes_one_file_without_config() -> None:
    from runtime.models.catalog import CatalogEntry

    assert CatalogEntry(path="embeddings/style.safetensors", kind="embedding", family="sdxl").single_file
    for bad in ({"path": "embeddings/style"}, {"path": "e.safetensors", "config": "configs/sd15"},
                {"path": "embeddings/style.pt"}):
        with pytest.raises(ValueError, match="textual-inversion embedding is one"):
            CatalogEntry(kind="embedding", **bad)

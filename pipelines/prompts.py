"""Prompts as SD WebUI (AUTOMATIC1111) users write them: attention weights, BREAK, and no 77-token limit.

People bring prompts from WebUI and expect the same picture. diffusers truncates at 77 tokens and reads
``(word:1.3)`` as plain text; WebUI weights it and encodes long prompts in 75-token chunks. This module does
what WebUI's ``prompt_parser.parse_prompt_attention`` and ``sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase``
do ("Original" emphasis) and hands the result to diffusers as ``prompt_embeds`` and friends.

Why not a library: compel (the one diffusers documents) has InvokeAI's syntax, ``word++`` and ``(word)1.1``;
``(word:1.3)`` and ``[word]`` are plain text to it, it downweights by blending with the prompt with the word
masked out rather than by scaling, and it neither rescales to the original mean nor knows BREAK or WebUI's
comma backtracking. diffusers' "lpw" long-prompt pipeline is a community script, not an installable module.
The grammar is small, so it is written here, where tests can hold it to WebUI's own examples.

Where this departs from WebUI, on purpose:

- Malformed input never raises. WebUI's lenient rules are kept: an unclosed ``(`` or ``[`` weights the rest
  of the prompt; a stray ``)`` or ``]`` is literal text, as is a ``:`` that starts no weight; a backslash
  before any other character is dropped. A weight that is no number, ``(a:1.2.3)``, is literal text here
  (WebUI raises ``ValueError``).
- ``BREAK`` inside brackets still breaks (WebUI multiplies its marker's weight and then encodes the word).
- SDXL: clip_skip applies to both text encoders, as diffusers' ``clip_skip`` does (WebUI skips only CLIP-L
  and only with an option set).
- An empty negative prompt on SDXL follows the pipeline's ``config.force_zeros_for_empty_prompt`` (True for
  SDXL base) as diffusers does: zeros for the negative embeddings and pooled embedding. WebUI also zeros an
  empty negative. Zeros for every chunk, padding included, attend exactly like one zero chunk (all keys and
  values are equal, so their number does not matter), i.e. like WebUI's unpadded negative.
- Textual-inversion embeddings (``pipelines.embeddings``) are found by their names' tokens, as WebUI finds them,
  and take as many token positions as they have vectors (a chunk they would overflow closes first). Their
  vectors go in place of those positions' token embeddings through a hook on the encoder's token embedding,
  for that encoder call only: the shared tokenizer and text encoders are never changed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from runtime.contract import ContractError

#: Prompt tokens per chunk; with BOS and EOS a chunk fills CLIP's 77 positions.
CHUNK_TOKENS = 75
#: At most this many chunks (600 tokens) per prompt: a bound on text-encoder work and UNet attention length.
MAX_CHUNKS = 8
#: A chunk that fills up moves the words after its last comma to the next chunk, if they are this few or fewer
#: (WebUI's ``comma_padding_backtrack`` default), so a phrase is not cut in two.
COMMA_BACKTRACK = 20
ROUND, SQUARE = 1.1, 1 / 1.1

_ATTENTION = re.compile(r"""
      \\[()\[\]\\]              # \( \) \[ \] \\ : the character itself
    | \\                        # any other backslash: dropped
    | [(\[]                     # opening brackets
    | :\s*([+-]?[.\d]+)\s*\)    # an explicit weight and the round bracket it closes
    | [)\]]                     # closing brackets
    | [^\\()\[\]:]+             # text
    | :                         # a colon that starts no weight
""", re.X)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*", re.S)


class Fragment(NamedTuple):
    """A run of prompt text and the weight its tokens' embeddings are multiplied by."""

    text: str
    weight: float


@dataclass(frozen=True)
class Break:
    """``BREAK``: the current chunk ends here, padded, and the text after it starts a new one."""


BREAK = Break()


class Chunk(NamedTuple):
    """One text-encoder input: 77 token ids (BOS, up to 75 prompt tokens, EOS, padding) and their weights."""

    ids: list[int]
    weights: list[float]
    tokens: int  # prompt tokens in it, BOS, EOS and padding not counted
    #: Per position, None or (embedding, which of its vectors); empty when no embedding is in the chunk.
    slots: tuple[Any, ...] = ()


def parse(prompt: str) -> list[Fragment | Break]:
    """WebUI's attention syntax: ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1, ``(x:1.3)`` multiplies by
    1.3, nesting multiplies, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal, ``BREAK`` (a whole uppercase word)
    ends a chunk. Adjacent fragments of equal weight merge, as in WebUI: the tokenizer then sees the same
    strings WebUI's does, which matters to BPE. Never raises (see the module docstring)."""
    parts: list[list[Any] | Break] = []  # [text, weight] pairs, weighted in place as brackets close
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for part in parts[start:]:
            if isinstance(part, list):
                part[1] *= factor

    for match in _ATTENTION.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(parts))
        elif token == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open and (factor := _number(weight)) is not None:
            multiply(round_open.pop(), factor)
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for i, piece in enumerate(_BREAK_WORD.split(token)):
                if i:
                    parts.append(BREAK)
                parts.append([piece, 1.0])
    for start in round_open:  # unclosed brackets weight the rest of the prompt
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)

    merged: list[list[Any] | Break] = []
    for part in parts:
        last = merged[-1] if merged else None
        if isinstance(part, list) and isinstance(last, list) and last[1] == part[1]:
            last[0] += part[0]
        else:
            merged.append(part)
    # Empty texts (around BREAK, from a lone backslash) have no tokens; they are dropped only after merging.
    return [part if isinstance(part, Break) else Fragment(part[0], part[1])
            for part in merged if isinstance(part, Break) or part[0]]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "1.2.3", "." and the like match the weight pattern
        return None


def pack(fragments: list[Fragment | Break], tokenizer: Any, embeddings: Mapping[str, Any] | None = None) -> list[Chunk]:
    """The chunks WebUI's ``tokenize_line`` makes: each fragment tokenized alone (no BOS/EOS, no truncation),
    tokens packed 75 to a chunk with their fragment's weight; a full chunk moves a tail of up to 20 tokens
    after its last comma to the next; BREAK closes the chunk even when empty. An empty prompt is one chunk.
    ``embeddings`` (name -> an object with ``count`` vectors): where a name's tokens occur, the longest name
    first, its vectors take that many positions (token id 0, as in WebUI), in a chunk they fit in whole."""
    texts = [f.text for f in fragments if isinstance(f, Fragment)]
    tokenized = iter(tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids
                     if texts else [])
    names = _name_tokens(tokenizer, embeddings or {})
    comma = tokenizer.get_vocab().get(",</w>")
    closed: list[tuple[list[int], list[float], list[Any]]] = []
    tokens: list[int] = []
    weights: list[float] = []
    slots: list[Any] = []
    last_comma = -1
    for fragment in fragments:
        if isinstance(fragment, Break):
            closed.append((tokens, weights, slots))
            tokens, weights, slots, last_comma = [], [], [], -1
            continue
        ids = next(tokenized)
        j = 0
        while j < len(ids):
            token = ids[j]
            found = next(((seq, emb) for seq, emb in names if tuple(ids[j:j + len(seq)]) == seq), None)
            if found is not None:
                seq, emb = found
                if len(tokens) + emb.count > CHUNK_TOKENS:
                    closed.append((tokens, weights, slots))
                    tokens, weights, slots, last_comma = [], [], [], -1
                tokens += [0] * emb.count
                weights += [fragment.weight] * emb.count
                slots += [(emb, k) for k in range(emb.count)]
                j += len(seq)
                continue
            j += 1
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK_TOKENS and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                closed.append((tokens[:cut], weights[:cut], slots[:cut]))
                tokens, weights, slots, last_comma = tokens[cut:], weights[cut:], slots[cut:], -1
            if len(tokens) == CHUNK_TOKENS:
                closed.append((tokens, weights, slots))
                tokens, weights, slots, last_comma = [], [], [], -1
            tokens.append(token)
            weights.append(fragment.weight)
            slots.append(None)
    if tokens or not closed:
        closed.append((tokens, weights, slots))
    return [_chunk(tokenizer, t, w, s) for t, w, s in closed]


def _name_tokens(tokenizer: Any, embeddings: Mapping[str, Any]) -> list[tuple[tuple[int, ...], Any]]:
    """Each embedding's name as the tokenizer splits it, longest first (WebUI's order)."""
    if not embeddings:
        return []
    ids = tokenizer(list(embeddings), add_special_tokens=False, truncation=False, verbose=False).input_ids
    pairs = [(tuple(seq), emb) for seq, emb in zip(ids, embeddings.values(), strict=True) if seq]
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def _chunk(tokenizer: Any, tokens: list[int], weights: list[float], slots: list[Any] | None = None) -> Chunk:
    """BOS + tokens + EOS, then the tokenizer's pad token to 77: what the tokenizer itself gives a short
    prompt (so one unweighted chunk is diffusers' own input), and WebUI's ``id_pad`` for SD 1.x, SD 2 and SDXL."""
    eos = tokenizer.eos_token_id
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    fill = CHUNK_TOKENS - len(tokens)
    with_embeddings = tuple([None, *slots] + [None] * (fill + 1)) if slots and any(slots) else ()
    return Chunk([tokenizer.bos_token_id, *tokens, eos] + [pad] * fill, [1.0, *weights] + [1.0] * (fill + 1),
                 len(tokens), with_embeddings)


def encode(pipe: Any, prompt: str, negative_prompt: str = "", *, clip_skip: int = 1, guidance: bool = True,
           embeddings: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The keyword arguments that replace ``prompt``/``negative_prompt`` in a diffusers SD 1.x/2 or SDXL call.

    Keys: ``prompt_embeds``, ``negative_prompt_embeds`` (only with ``guidance``, i.e. guidance_scale > 1), and
    for SDXL (a pipeline with ``text_encoder_2``) ``pooled_prompt_embeds``, ``negative_pooled_prompt_embeds``.
    Shapes: (1, 77 * chunks, hidden) with prompt and negative padded to the same number of chunks with empty
    chunks (diffusers needs equal shapes; WebUI's ``pad_cond_uncond`` does the same), hidden being the two
    encoders' widths added for SDXL; pooled (1, projection_dim) from encoder 2's first chunk, as in WebUI.
    The batch is 1: diffusers repeats given embeddings itself, so the caller passes
    ``num_images_per_prompt`` unchanged. ``clip_skip`` 1 is the model's own layer (the last for SD 1.x, the
    penultimate for SDXL); k is diffusers' ``clip_skip=k-1``, applied to the negative prompt too (diffusers
    ignores it there, WebUI does not). Gradient-free; callable inside ``torch.inference_mode``.
    """
    return encode_pairs(pipe, [(prompt, negative_prompt)], clip_skip=clip_skip, guidance=guidance,
                        embeddings=embeddings)[0]


def encode_pairs(pipe: Any, pairs: list[tuple[str, str]], *, clip_skip: int = 1, guidance: bool = True,
                 embeddings: Mapping[str, Any] | None = None) -> list[dict[str, torch.Tensor]]:
    """``encode`` for each (prompt, negative) pair, each distinct text through the encoders once: the texts of
    a scheduled prompt (``pipelines.promptschedule``) recur across its steps. A pair's result has the same
    bytes as ``encode`` of it alone (chunks are encoded one by one, so sharing them changes nothing)."""
    second = getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)
    xl = second[1] is not None
    pairs_ = ((pipe.tokenizer, pipe.text_encoder), second)
    encoders = [(tok, enc) for tok, enc in pairs_ if enc is not None]  # an SDXL refiner has text_encoder_2 only
    for _, enc in encoders:
        _check_clip_skip(enc, clip_skip, xl)
    force_zeros = xl and bool(pipe.config.force_zeros_for_empty_prompt)
    wanted = [{"prompt": prompt} | ({"negative_prompt": negative} if guidance and not (force_zeros and not negative)
                                     else {}) for prompt, negative in pairs]
    layouts = {(name, text): [_layout(text, tok, name, embeddings) for tok, _ in encoders]
               for texts in wanted for name, text in texts.items()}  # every text checked before any is encoded
    roles = [_role(pipe, enc, xl) for _, enc in encoders]
    encoded = {key: [_encode_chunks(enc, chunks, clip_skip, xl, role)
                     for (_, enc), chunks, role in zip(encoders, per, roles, strict=True)]
               for key, per in layouts.items()}
    empty = [_encode_chunks(enc, [_chunk(tok, [], [])], clip_skip, xl)[0][0] for tok, enc in encoders]
    last = encoders[-1][1]  # diffusers gives the embeddings text_encoder_2's dtype on SDXL
    results = []
    for texts in wanted:
        count = max(len(chunks) for key in texts.items() for chunks in layouts[key])
        out: dict[str, torch.Tensor] = {}
        for name, text in texts.items():
            hidden, pooled = [], None
            for pad, (states, chunk_pooled) in zip(empty, encoded[(name, text)], strict=True):
                hidden.append(torch.cat(states + [pad] * (count - len(states)), dim=1).to(last.device))
                pooled = chunk_pooled if chunk_pooled is not None else pooled  # only encoder 2 has a projection
            out[f"{name}_embeds"] = torch.cat(hidden, dim=-1).to(last.dtype)
            if xl:
                key = "pooled_prompt_embeds" if name == "prompt" else "negative_pooled_prompt_embeds"
                out[key] = pooled.to(last.device, last.dtype)
        if guidance and "negative_prompt" not in texts:
            out["negative_prompt_embeds"] = torch.zeros_like(out["prompt_embeds"])
            out["negative_pooled_prompt_embeds"] = torch.zeros_like(out["pooled_prompt_embeds"])
        results.append(out)
    return results


def _role(pipe: Any, encoder: Any, xl: bool) -> str:
    """Which of an embedding's vectors an encoder takes: WebUI's keys, ``clip_l``/``clip_g`` on SDXL."""
    if not xl:
        return "clip"
    return "clip_l" if encoder is pipe.text_encoder else "clip_g"


def _layout(text: str, tokenizer: Any, name: str, embeddings: Mapping[str, Any] | None = None) -> list[Chunk]:
    chunks = pack(parse(text), tokenizer, embeddings)
    if len(chunks) > MAX_CHUNKS:
        tokens = sum(c.tokens for c in chunks)
        raise ContractError("prompt_too_long", f"inputs.{name}: {tokens} tokens make {len(chunks)} chunks of "
                            f"{CHUNK_TOKENS} (BREAK and commas may start one early); at most {MAX_CHUNKS} chunks "
                            f"({MAX_CHUNKS * CHUNK_TOKENS} tokens) fit", f"inputs.{name}")
    return chunks


def _check_clip_skip(encoder: Any, clip_skip: int, xl: bool) -> None:
    """clip_skip k skips k - 1 layers (k on SDXL, which starts from the penultimate); the encoder must have
    them. Skipping every layer is allowed, as in diffusers, though it leaves only the token embeddings."""
    layers = encoder.config.num_hidden_layers
    deepest = layers if xl else layers + 1
    if not 1 <= clip_skip <= deepest:
        raise ContractError("invalid_field", f"inputs.clip_skip: must be between 1 and {deepest} for this "
                            f"model (its text encoder has {layers} layers)", "inputs.clip_skip")


@torch.no_grad()
def _encode_chunks(encoder: Any, chunks: list[Chunk], clip_skip: int, xl: bool,
                   role: str = "clip") -> tuple[list[torch.Tensor], Any]:
    """Each chunk through the encoder on its own, as WebUI does, weighted: (1, 77, hidden) each, to be
    concatenated along the tokens; and the first chunk's pooled projection (``text_embeds``), if any."""
    states, pooled = [], None
    for i, chunk in enumerate(chunks):
        ids = torch.tensor([chunk.ids], device=encoder.device)
        with _vectors_in_place(encoder, chunk.slots, role):
            output = encoder(ids, output_hidden_states=xl or clip_skip > 1)
        if xl:
            z = output.hidden_states[-(clip_skip + 1)]
        elif clip_skip > 1:
            z = _final_norm(encoder)(output.hidden_states[-clip_skip])
        else:
            z = output.last_hidden_state
        if i == 0:
            pooled = getattr(output, "text_embeds", None)
        states.append(_emphasis(z, torch.tensor(chunk.weights, device=z.device)))
    return states, pooled


@contextlib.contextmanager
def _vectors_in_place(encoder: Any, slots: tuple[Any, ...], role: str) -> Iterator[None]:
    """While the encoder runs on one chunk: its token embedding's output with the chunk's embedding vectors at
    their positions (WebUI's ``EmbeddingsWithFixes``). A forward hook, removed at once: the module, shared by
    every job, is not changed."""
    if not slots:
        yield
        return
    table = encoder.get_input_embeddings()
    rows = [(position, slot[0].vector(role, slot[1], table.embedding_dim)) for position, slot in enumerate(slots)
            if slot is not None]

    def replace(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for position, vector in rows:
            output[0, position] = vector.to(output.device, output.dtype)
        return output

    handle = table.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def _final_norm(encoder: Any) -> Any:
    """The layer norm ``last_hidden_state`` goes through: ``final_layer_norm`` of transformers 5's CLIPTextModel,
    ``text_model.final_layer_norm`` of transformers 4's (where diffusers 0.42 looks, and fails on 5)."""
    norm = getattr(encoder, "final_layer_norm", None)
    return norm if norm is not None else encoder.text_model.final_layer_norm


def _emphasis(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """WebUI's "Original" emphasis: each token's embedding times its weight, then the whole chunk rescaled so
    its mean is the unweighted mean (the weights shift tokens against each other, not the overall level).
    In float32, as WebUI's float multipliers promote it; all weights 1 gives ``z`` unchanged, bit for bit."""
    original = z.float()
    weighted = original * weights[None, :, None]
    mean = weighted.mean()
    scale = torch.where(mean == 0, 1.0, original.mean() / mean)  # an all-zero chunk stays as it is
    return (weighted * scale).to(z.dtype)

"""WebUI's prompt editing and alternation, read as WebUI reads them: which text conditions which step.

SD WebUI (AUTOMATIC1111) lets a prompt change while it samples: ``[from:to:when]`` swaps ``from`` for ``to``
after step ``when``, ``[to:when]`` adds ``to`` then, ``[from::when]`` removes ``from`` then, and ``[a|b|c]``
changes every step. They nest, and sit inside attention brackets, ``(a [b:c:0.5]:1.2)``. WebUI turns a prompt
into a *schedule* (``prompt_parser.get_learned_conditioning_prompt_schedules``): a list of ``(end_step, text)``
whose texts then go through the attention parser. This module builds the same schedule, in the standard
library only, so the API refuses what the worker would refuse without importing torch. It is written from
WebUI's grammar and documentation, not from its code:

- ``when`` with a decimal point is a fraction of the steps (``0.5``, ``1.0``), without one a step number
  (``10``), as in WebUI since 1.6 (its default; the older rule "below 1 is a fraction" is an option there).
  It is truncated to a whole step and capped at the steps; a switch before step 1 never shows its ``from``.
- Anything the grammar does not read as editing stays as written: ``(a:1.2)``, a stray ``]``, ``[a:b]``
  (no number), an unclosed ``[a:b:0.5`` (WebUI's grammar reads those brackets as literal text too).
- WebUI's grammar has no reading for a ``|`` outside ``[...]``, nor for a lone backslash at the end; WebUI
  then silently uses the whole prompt as plain text. Here such a prompt is plain text as well when it has no
  square bracket (``a | b`` is written as a separator), and refused when it has one: ``[cat|dog`` is an
  alternation whose bracket is missing, which WebUI would quietly turn into another picture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?))\s*")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)


class PromptSyntaxError(ValueError):
    """The grammar has no reading for the prompt (see the module docstring for when that is refused)."""


@dataclass(frozen=True)
class _Edit:
    before: tuple[object, ...]
    after: tuple[object, ...]
    when: str  # the number as written: a decimal point makes it a fraction


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[object, ...], ...]


class _Fail(Exception):
    pass


class _Parser:
    """Recursive descent over WebUI's grammar: a prompt is plain text, ``(p)``, ``(p:p)``, ``[p]``,
    ``[p:p:N]``, ``[p:N]`` and ``[p|p|...]``; at the top level only, brackets and colons that start none
    of these are literal text. Nodes are strings (verbatim text), ``_Edit`` and ``_Alternate``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def top(self) -> tuple[object, ...]:
        nodes: list[object] = []
        i = 0
        while i < len(self.text):
            if match := _PLAIN.match(self.text, i):
                nodes.append(match.group(0))
                i = match.end()
                continue
            char = self.text[i]
            if char in "([":
                try:
                    group, i = self.group(i)
                    nodes.extend(group)
                    continue
                except _Fail:
                    pass
            if char in "[]():":
                nodes.append(char)  # literal, as WebUI's start rule allows
                i += 1
                continue
            what = "'|' outside [...]" if char == "|" else "a backslash that escapes nothing"
            raise PromptSyntaxError(f"{what} at character {i + 1}")
        return tuple(nodes)

    def prompt(self, i: int) -> tuple[tuple[object, ...], int]:
        """Plain text and groups up to a ``:``, ``|``, ``)``, ``]`` or the end."""
        nodes: list[object] = []
        while i < len(self.text):
            match = _PLAIN.match(self.text, i)
            if match:
                nodes.append(match.group(0))
                i = match.end()
            elif self.text[i] in "([":
                node, i = self.group(i)
                nodes.extend(node)
            else:
                break
        return tuple(nodes), i

    def expect(self, i: int, chars: str) -> str:
        if i >= len(self.text) or self.text[i] not in chars:
            raise _Fail
        return self.text[i]

    def group(self, i: int) -> tuple[tuple[object, ...], int]:
        if self.text[i] == "(":
            first, i = self.prompt(i + 1)
            if self.expect(i, "):") == ")":
                return ("(", *first, ")"), i + 1
            second, i = self.prompt(i + 1)
            self.expect(i, ")")
            return ("(", *first, ":", *second, ")"), i + 1
        first, i = self.prompt(i + 1)
        char = self.expect(i, "]:|")
        if char == "]":
            return ("[", *first, "]"), i + 1
        if char == "|":
            options = [first]
            while self.expect(i, "]|") == "|":
                option, i = self.prompt(i + 1)
                options.append(option)
            return (_Alternate(tuple(options)),), i + 1
        second, i = self.prompt(i + 1)
        if self.expect(i, "]:") == "]":  # [to:when]
            when = _number(second)
            return (_Edit((), first, when),), i + 1
        end = self.text.find("]", i + 1)
        if end < 0:
            raise _Fail
        return (_Edit(first, second, _number((self.text[i + 1:end],))),), end + 1


def _number(nodes: tuple[object, ...]) -> str:
    if len(nodes) != 1 or not isinstance(nodes[0], str) or not (match := _NUMBER.fullmatch(nodes[0])):
        raise _Fail
    return match.group(1)


def _visit(nodes: tuple[object, ...], steps: int, ends: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Edit):
            when = _when(node.when, steps)
            if when >= 1:
                ends.add(when)
            _visit(node.before, steps, ends)
            _visit(node.after, steps, ends)
        elif isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
            for option in node.options:
                _visit(option, steps, ends)


def _when(text: str, steps: int) -> int:
    value = float(text)
    return min(steps, int(value * steps if "." in text else value))


def _text(nodes: tuple[object, ...], step: int, steps: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, _Edit):
            out.append(_text(node.before if step <= _when(node.when, steps) else node.after, step, steps))
        elif isinstance(node, _Alternate):
            out.append(_text(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            out.append(str(node))
    return "".join(out)


def schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """WebUI's schedule of ``prompt`` over ``steps`` steps: ``(end_step, text)`` pairs, ends ascending, the
    last one ``steps``. A prompt with no editing or alternation is ``[(steps, prompt)]``, the text unchanged.
    Raises ``PromptSyntaxError`` where the grammar fails and the prompt has a square bracket (module docstring)."""
    try:
        tree = _Parser(prompt).top()
    except PromptSyntaxError:
        if set("[]") & set(re.sub(r"\\.", "", prompt)):  # an unescaped square bracket
            raise
        return [(steps, prompt)]
    if not any(isinstance(node, _Edit | _Alternate) for node in tree):  # groups are flattened into the tree
        return [(steps, prompt)]
    ends = {steps}
    _visit(tree, steps, ends)
    return [(end, _text(tree, end, steps)) for end in sorted(ends)]


def at(entries: list[tuple[int, str]], index: int) -> int:
    """Which entry conditions sampling step ``index`` (0-based, as WebUI's denoiser counts and diffusers' loop
    numbers its steps): the first whose end is at least ``index``. WebUI falls back to the first entry past the
    last end (a sampler of two model calls a step, Heun, gets there); here it is the last entry."""
    for position, (end, _) in enumerate(entries):
        if index <= end:
            return position
    return len(entries) - 1


def check(prompt: str | None) -> str:
    """``prompt`` itself, or ``ValueError`` (for a pydantic validator: it names the field) where ``schedule``
    refuses it."""
    if prompt:
        try:
            schedule(prompt, 1)
        except PromptSyntaxError as error:
            raise ValueError(f"{error}: WebUI's prompt editing has no reading for it (alternation is [a|b], editing "
                             f"[from:to:when]; write \\| \\[ \\] for the characters themselves)") from None
    return prompt  # type: ignore[return-value]

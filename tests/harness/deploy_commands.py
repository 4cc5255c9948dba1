"""docs/deploy.md's command lines as the shell reads them, for tests/infra/test_deploy_commands.py.

Each fenced ``sh`` block, and each inline code span that starts with a command the tests check, is parsed with
bashlex (the shell's grammar: line continuations, quotes, ``$(...)``, pipelines, loops and functions), and every
simple command in it is kept as its words with the quotes removed and nothing expanded: ``"$STACK"`` stays
``$STACK``, as the tools would see a value without spaces. Here-documents are kept with the command they feed, so
that the files the page writes (the model catalog, parameter files) can be written again by the tests.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import bashlex

REPO = Path(__file__).resolve().parents[2]
SAMCLI_PYTHON = REPO / ".venv/samcli/bin/python"
SAM_PARSE = Path(__file__).with_name("sam_parse.py")

_FENCE = re.compile(r"^\s*```(\S*)\s*$")  # a fence may be indented, in a list
_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
#: bashlex reads ``<<EOF`` bodies but not a quoted delimiter (``<<'EOF'``), which only turns expansion off.
_QUOTED_HEREDOC = re.compile(r"<<-?\s*'(\w+)'")


@dataclass(frozen=True)
class Command:
    """One simple command of the page."""

    words: tuple[str, ...]
    line: int
    #: ``(operator, target)`` of its redirections other than here-documents, e.g. ``(">", "build/models.yaml")``.
    redirects: tuple[tuple[str, str], ...] = ()
    heredoc: str | None = None

    @property
    def program(self) -> str:
        """The command's name without its directory: ``.venv/bin/spotgen`` is ``spotgen``."""
        return PurePosixPath(self.words[0]).name if self.words else ""

    def output(self) -> str | None:
        return next((target for op, target in self.redirects if op == ">"), None)

    def __str__(self) -> str:
        return f"docs/deploy.md:{self.line}: {shlex.join(self.words)}"


class _Collector(bashlex.ast.nodevisitor):
    def __init__(self, text: str, first_line: int) -> None:
        self.text, self.first_line, self.found = text, first_line, []

    def word(self, node: bashlex.ast.node) -> str:
        """The word as the shell hands it over, from its source text: shlex removes its quotes and escapes as the
        shell does (bashlex's own ``word`` drops the double quotes inside ``KEY='{"a": 1}'``). A word that shlex
        splits (an unquoted ``$(...)``, ``${VAR:+...}``) is kept as written, since only its expansion would say."""
        raw = self.text[node.pos[0]:node.pos[1]].replace("\\\n", "")
        try:
            tokens = shlex.split(raw)
        except ValueError:
            return raw
        return tokens[0] if len(tokens) == 1 else raw

    def visitcommand(self, node: bashlex.ast.node, parts: list[bashlex.ast.node]) -> None:
        words = tuple(self.word(part) for part in parts if part.kind == "word")
        redirects, heredoc = [], None
        for part in parts:
            if part.kind != "redirect":
                continue
            if getattr(part, "heredoc", None) is not None:
                body = part.heredoc.value
                heredoc = body[:body.rfind("\n") + 1] if "\n" in body else ""  # its last line is the delimiter
            elif not isinstance(part.output, int):
                redirects.append((part.type, self.word(part.output)))
        if words:
            line = self.first_line + self.text.count("\n", 0, node.pos[0])
            self.found.append(Command(words, line, tuple(redirects), heredoc))


def parse_shell(text: str, first_line: int = 1) -> list[Command]:
    """The simple commands of ``text`` (nested ones included: ``$(...)``, loops, function bodies), in order."""
    text = _QUOTED_HEREDOC.sub(r"<<\1", text)
    collector = _Collector(text, first_line)
    for tree in bashlex.parse(text):
        collector.visit(tree)
    return collector.found


def shell_blocks(page: str) -> list[tuple[int, str]]:
    """The fenced ``sh`` blocks of a Markdown page, each with the line number of its first line."""
    blocks, language, start, body = [], None, 0, []
    for number, line in enumerate(page.splitlines(), 1):
        fence = _FENCE.match(line)
        if fence and language is None:
            language, start, body = fence.group(1), number + 1, []
        elif line.strip() == "```" and language is not None:
            if language in ("sh", "bash", "shell"):
                blocks.append((start, textwrap.dedent("\n".join(body) + "\n")))
            language = None
        elif language is not None:
            body.append(line)
    return blocks


def inline_commands(page: str, programs: set[str]) -> list[Command]:
    """Commands with options in inline code spans of the prose (a span may wrap onto the next line) whose program
    is one of ``programs``; a span that is not shell (a JSON fragment, a name) is no command."""
    found, prose, in_fence = [], [], False
    for line in page.splitlines():
        if _FENCE.match(line) or line.strip() == "```":
            in_fence = not in_fence
            prose.append("")
            continue
        prose.append("" if in_fence else line)
    text = "\n".join(prose)
    for span in _INLINE.finditer(text):
        line = text.count("\n", 0, span.start()) + 1
        try:
            commands = parse_shell(span.group(1).replace("\n", " "), line)
        except (bashlex.errors.ParsingError, NotImplementedError, IndexError, AttributeError):
            continue
        # `sam deploy` or `spotgen models list` in a sentence names a command; one with options is one to run
        found += [command for command in commands if command.program in programs
                  and any(word.startswith("-") for word in command.words[1:])]
    return found


def page_commands(page: str, programs: set[str]) -> list[Command]:
    """Every command of the page's ``sh`` blocks, then those of its inline code spans that run ``programs``."""
    commands = [command for start, body in shell_blocks(page) for command in parse_shell(body, start)]
    return commands + inline_commands(page, programs)


def sam_parse(argvs: list[list[str]], cwd: Path) -> list[dict]:
    """``sam ARGV`` parsed by the SAM CLI's own commands (tests/harness/sam_parse.py, in .venv/samcli)."""
    import json

    import pytest

    if not SAMCLI_PYTHON.exists():
        pytest.fail(f"the AWS SAM CLI is not installed at {SAMCLI_PYTHON.parent.parent}: run `make install` (its "
                    "parser is what reads docs/deploy.md's sam commands)")
    out = subprocess.run([str(SAMCLI_PYTHON), str(SAM_PARSE)], input=json.dumps(argvs), capture_output=True,
                         text=True, cwd=cwd, timeout=120, check=False,
                         env={"SAM_CLI_TELEMETRY": "0", "HOME": str(cwd), "PATH": "/usr/bin:/bin",
                              "PYTHONDONTWRITEBYTECODE": "1"})
    if out.returncode != 0:
        pytest.fail(f"tests/harness/sam_parse.py failed ({sys.executable} is not its python):\n{out.stderr}")
    return json.loads(out.stdout)

"""The documentation against the code: README.md and docs/*.md, without any server.

What can drift when code moves or grows: a setting or metric added without a line in the docs, a page or
heading renamed under a link, a module moved out from under a path or a ``python -m`` command. Each check
reads the Markdown as text (fenced code blocks and inline code told apart from prose) and names the page,
the line and what is wrong.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.config import PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
OPERATIONS = DOCS / "operations.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 200

#: ``SPOTGEN_*`` names the docs may use that are not fields of ``Settings``, with why. None so far: every
#: ``SPOTGEN_*`` variable is a setting, so a name outside ``Settings`` is a typo or a setting that was removed.
NON_SETTINGS: dict[str, str] = {
    "SPOTGEN_API_URL": "read by the client (spotgen/client.py) on a client machine, not a worker or Lambda setting",
}
#: Repository paths the docs name that exist only after ``make install``, with why.
GENERATED_PATHS = {
    "tests/schemas/node_modules": "installed by `npm ci` in `make install` (ignored by git)",
}
#: Top-level folders whose paths the docs name; a path under one of them must exist.
REPO_DIRS = ("runtime", "pipelines", "lambdas", "infra", "tests", "docs")
PACKAGES = ("runtime", "pipelines", "lambdas", "tests")

SETTING_RE = re.compile(r"(?<![A-Za-z0-9_])SPOTGEN_[A-Z0-9]+(?:_[A-Z0-9]+)*(?![A-Za-z0-9_])")
METRIC_RE = re.compile(r"(?<![\w.])spotgen_[a-z0-9_]*[a-z0-9](?![\w])")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE_RE = re.compile(r"(`+)(.+?)\1")
_DIRS, _PACKAGES = "|".join(REPO_DIRS), "|".join(PACKAGES)
PATH_RE = re.compile(r"(?<![\w./$~-])((?:" + _DIRS + r")/[\w./-]*[\w/-])(?![\w$*{<])")
MODULE_RUN_RE = re.compile(r"-m\s+((?:" + _PACKAGES + r")(?:\.\w+)+)")
DOTTED_RE = re.compile(r"^((?:" + _PACKAGES + r")(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?$")
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE_RE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Line:
    page: Path
    number: int
    text: str
    in_fence: bool

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.number}"


@functools.cache
def lines(page: Path) -> tuple[Line, ...]:
    """The page's lines, each marked as inside a fenced code block (fence lines included) or not."""
    out, fenced = [], False
    for number, text in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE_RE.match(text):
            out.append(Line(page, number, text, True))
            fenced = not fenced
            continue
        out.append(Line(page, number, text, fenced))
    return tuple(out)


def inline_code(text: str) -> list[str]:
    return [match.group(2).strip() for match in INLINE_CODE_RE.finditer(text)]


def prose(text: str) -> str:
    """A prose line without its inline code, where links are written."""
    return INLINE_CODE_RE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation other than '-' and '_' dropped, lowercase,
    spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


@functools.cache
def anchors(page: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in lines(page):
        match = HEADING_RE.match(line.text)
        if line.in_fence or match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return frozenset(result)


def links(page: Path) -> list[tuple[Line, str]]:
    return [(line, match.group(1)) for line in lines(page) if not line.in_fence
            for match in LINK_RE.finditer(prose(line.text))]


def code_texts(page: Path) -> list[tuple[Line, str]]:
    """Everything written as code: inline code spans, and whole lines of fenced blocks."""
    out = []
    for line in lines(page):
        if line.in_fence:
            if not FENCE_RE.match(line.text):
                out.append((line, line.text))
        else:
            out.extend((line, span) for span in inline_code(line.text))
    return out


def setting_names() -> set[str]:
    return {PREFIX + name.upper() for name in Settings.model_fields}


def exported_metrics() -> set[str]:
    """The ``spotgen_*`` metric names a worker exports, as Prometheus shows them (counters end in _total)."""
    from prometheus_client import CollectorRegistry

    from runtime.ops.metrics import Metrics, QueueDepth

    registry = CollectorRegistry(auto_describe=True)
    Metrics(registry, process_metrics=False)
    registry.register(QueueDepth(sqs=None, queues={}))  # attached by runtime.ops.telemetry in a worker
    names = set()
    for family in registry.collect():
        if family.name.startswith("spotgen_"):
            names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


# == settings ==============================================================================================
def test_every_setting_is_documented() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    documented = set(SETTING_RE.findall(text))
    missing = sorted(setting_names() - documented)
    assert not missing, (f"{CONFIGURATION.relative_to(ROOT)} does not document {', '.join(missing)} "
                         f"(fields of runtime.config.Settings): add a row with its default and meaning")


def test_every_documented_setting_exists() -> None:
    known = setting_names() | NON_SETTINGS.keys()
    unknown = [f"{line.where()}: {name}" for page in PAGES for line in lines(page)
               for name in SETTING_RE.findall(line.text) if name not in known]
    assert not unknown, ("the docs name SPOTGEN_* variables that are not fields of runtime.config.Settings "
                         "(a typo, or a setting that was renamed or removed; a real non-Settings variable goes in "
                         "NON_SETTINGS with why):\n" + "\n".join(unknown))


def test_settings_table_rows_are_unique() -> None:
    rows = [name for line in lines(CONFIGURATION) if line.text.startswith("| `SPOTGEN_")
            for name in SETTING_RE.findall(line.text.split("|")[1])]
    doubled = sorted({name for name in rows if rows.count(name) > 1})
    assert not doubled, f"{CONFIGURATION.relative_to(ROOT)} has more than one row for {', '.join(doubled)}"


# == metrics ===============================================================================================
def test_every_metric_is_documented() -> None:
    exported = exported_metrics()
    assert len(exported) >= 20, f"found only {sorted(exported)} in runtime.ops.metrics: is the collection right?"
    documented = set(METRIC_RE.findall(OPERATIONS.read_text(encoding="utf-8")))
    missing = sorted(exported - documented)
    assert not missing, (f"{OPERATIONS.relative_to(ROOT)} does not name the exported metrics {', '.join(missing)}: "
                         f"add them to the metrics table, with their full names")


def test_every_documented_metric_exists() -> None:
    exported = exported_metrics()
    known = exported | {name + suffix for name in exported for suffix in HISTOGRAM_SUFFIXES}
    unknown = [f"{line.where()}: {name}" for page in PAGES for line in lines(page)
               for name in METRIC_RE.findall(line.text) if name not in known]
    assert not unknown, "the docs name metrics a worker does not export:\n" + "\n".join(unknown)


# == links =================================================================================================
def test_relative_links_resolve() -> None:
    problems = []
    for page in PAGES:
        for line, target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                problems.append(f"{line.where()}: link to {target}: {path_part} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{line.where()}: link to {target}: {dest.relative_to(ROOT)} has no heading "
                                f"with anchor #{anchor} (it has {', '.join(sorted(anchors(dest)))})")
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_slug_rules() -> None:
    assert slug("Sizing `terminationGracePeriodSeconds`") == "sizing-terminationgraceperiodseconds"
    assert slug("8. The first image") == "8-the-first-image"
    assert slug("`POST /v1/jobs/{id}/cancel`") == "post-v1jobsidcancel"
    assert slug("Start-up: setup and preload") == "start-up-setup-and-preload"


# == paths and modules =====================================================================================
def test_repository_paths_exist() -> None:
    problems = []
    for page in PAGES:
        for line, code in code_texts(page):
            for path in PATH_RE.findall(code):
                path = path.rstrip("/")
                if path in GENERATED_PATHS or (ROOT / path).exists():
                    continue
                problems.append(f"{line.where()}: {path} does not exist")
    assert not problems, "the docs name repository paths that do not exist:\n" + "\n".join(problems)


def _module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _top_level_names(path: Path) -> dict[str, ast.AST]:
    names: dict[str, ast.AST] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update({target.id: node for target in node.targets if isinstance(target, ast.Name)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update({(alias.asname or alias.name).split(".")[0]: node for alias in node.names})
    return names


def resolve(dotted: str) -> str | None:
    """None if ``dotted`` names a module of this repository or something defined in one, else why not."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = _module_file(".".join(parts[:cut]))
        if module is None:
            continue
        rest = parts[cut:]
        if not rest:
            return None
        node = _top_level_names(module).get(rest[0])
        if node is None:
            return f"{'.'.join(parts[:cut])} ({module.relative_to(ROOT)}) defines no {rest[0]!r}"
        if len(rest) > 1 and isinstance(node, ast.ClassDef):
            members = {getattr(n, "name", None) for n in node.body} | {
                t.id for n in node.body if isinstance(n, ast.Assign | ast.AnnAssign)
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
            if rest[1] not in members:
                return f"class {'.'.join(parts[:cut + 1])} has no member {rest[1]!r}"
        return None
    return f"no module {parts[0]}.{parts[1] if len(parts) > 1 else ''}... in this repository"


def test_python_names_exist() -> None:
    """``python -m X`` commands and dotted names such as ``runtime.plugins.StepState`` point at real code."""
    problems = []
    for page in PAGES:
        for line, code in code_texts(page):
            for module in MODULE_RUN_RE.findall(code):
                if _module_file(module) is None:
                    problems.append(f"{line.where()}: `python -m {module}`: no such module")
            match = DOTTED_RE.match(code) if not line.in_fence else None
            if match and (why := resolve(match.group(1))) is not None:
                problems.append(f"{line.where()}: `{match.group(1)}`: {why}")
    assert not problems, "the docs name Python code that does not exist:\n" + "\n".join(problems)


# == the README ============================================================================================
def test_readme_is_short() -> None:
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count < README_MAX_LINES, (f"README.md has {count} lines, the limit is {README_MAX_LINES}: it is the "
                                      "newcomer's page; move reference material into docs/")


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_readme_links_every_page(page: Path) -> None:
    targets = {(README.parent / target.partition("#")[0]).resolve() for _, target in links(README)}
    assert page.resolve() in targets, f"README.md does not link to {page.relative_to(ROOT)}"

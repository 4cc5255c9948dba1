"""The rules between the rooms of the code (docs/architecture.md), checked by reading imports.

Every import is read with ``ast``, including imports inside functions (a lazy import is still a dependency);
imports under ``if TYPE_CHECKING:`` are annotations only and are left out. A broken rule names the file, the
line, the import and the rule it breaks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runtime", "pipelines", "lambdas", "spotgen")
MAX_LINES = 400


@dataclass(frozen=True)
class Rule:
    """Modules under ``room`` may import, of the project, only modules under one of ``allowed``."""

    room: str
    allowed: tuple[str, ...]
    why: str
    #: The rule covers ``room`` itself only, not the modules under it.
    exact: bool = False


RULES = (
    Rule("runtime", (), "the package itself imports nothing (importing it must stay cheap)", exact=True),
    Rule("runtime.contract", ("runtime.contract",),
         "the contract imports nothing of the rest (the Lambdas and every room import it)"),
    Rule("runtime.config", (), "settings import nothing of the rest"),
    Rule("runtime.storage", ("runtime.storage", "runtime.contract", "runtime.config"),
         "storage is shared with the Lambdas: contract and config only"),
    Rule("lambdas", ("lambdas", "runtime.contract", "runtime.config", "runtime.storage"),
         "the Lambdas import only the contract, config and storage, never worker, models or ops code"),
    Rule("runtime.ops", ("runtime.ops", "runtime.contract", "runtime.config"),
         "ops knows the worker only through the observer hooks"),
    Rule("runtime.models", ("runtime.models", "runtime.contract", "runtime.config", "runtime.ops.observe"),
         "the model cache reports through the observer hooks and knows nothing of jobs or pipelines"),
    Rule("runtime.plugins", ("runtime.plugins", "runtime.contract"),
         "the plugin contract stands on the job contract alone"),
    Rule("runtime.worker", ("runtime.worker", "runtime.contract", "runtime.config", "runtime.storage",
                            "runtime.models", "runtime.ops", "runtime.plugins"),
         "the worker never imports the local stack, the CLI or pipelines/ (built-ins are plugins)"),
    Rule("runtime.local", ("runtime.local", "runtime.contract", "runtime.config", "runtime.storage",
                           "runtime.models", "runtime.ops", "runtime.worker", "runtime.plugins", "lambdas",
                           "spotgen.client", "spotgen.errors", "spotgen.progress"),
         "the local stack is development tooling; it never imports pipelines/, and its demo is a client of the API "
         "like any other (spotgen.Client)"),
    Rule("runtime.kit", ("runtime.kit", "runtime.contract", "runtime.config", "runtime.models", "runtime.plugins",
                         "runtime.worker.checkpoint", "runtime.worker.images"),
         "the plugin kit runs a pipeline as a worker does (its registry, model store, checkpoints and PNGs), without "
         "the queue; like all of runtime/ it never imports pipelines/"),
    Rule("runtime.cli", ("runtime",), "nothing in runtime/ imports pipelines/"),
    Rule("pipelines", ("pipelines", "runtime.contract", "runtime.plugins", "runtime.models"),
         "a pipeline sees the runtime through the plugin contract, the job contract and the model store"),
    Rule("spotgen", ("spotgen", "runtime.contract", "runtime.plugins"),
         "the public package (the client, the plugin contract) stands on the job and plugin contracts alone: importing "
         "it stays light"),
    Rule("spotgen.cli", ("spotgen", "runtime.contract", "runtime.cli"),
         "the command adds the client's commands to the runtime's"),
    Rule("spotgen.diffusers", ("spotgen", "runtime.plugins", "pipelines.loading", "pipelines.resume",
                               "pipelines.phases"),
         "resume for free: the built-ins' own mechanism, public, imported by path (it imports torch)"),
    Rule("spotgen.testing", ("spotgen", "runtime.contract", "runtime.plugins", "runtime.kit", "runtime.models"),
         "the contract kit for plugin authors checks a pipeline through the plugin kit's local run"),
)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def rule_for(module: str) -> Rule:
    matches = [rule for rule in RULES if module == rule.room or (not rule.exact and _within(module, rule.room))]
    if not matches:
        raise AssertionError(f"{module} belongs to no room: add it to a room, or a rule for it to RULES")
    return max(matches, key=lambda rule: len(rule.room))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:``."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return skipped


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every project import in ``source``; ``from X import name`` counts as an
    import of ``X.name`` when that is a module of the project, else of ``X``."""
    tree = ast.parse(source)
    skipped = _type_checking_only(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.append((node.lineno, candidate if _is_module(candidate) else base))
    return [(line, name) for line, name in out if name.split(".")[0] in PACKAGES]


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    rule = rule_for(module)
    problems = []
    for line, imported in imports(source, module, is_package):
        if not any(_within(imported, allowed) for allowed in rule.allowed):
            problems.append(f"{module.replace('.', '/')}.py:{line} imports {imported}: {rule.why}")
    return problems


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def test_every_import_follows_the_rules_between_rooms() -> None:
    problems = []
    for module, path in project_modules().items():
        problems += violations(module, path.read_text(), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


def test_there_is_no_import_cycle() -> None:
    modules = project_modules()
    graph = {module: {name for _, name in imports(path.read_text(), module, path.name == "__init__.py")
                      if name in modules and name != module}
             for module, path in modules.items()}
    cycles = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_modules_stay_small() -> None:
    big = [f"{path.relative_to(ROOT)}: {n} lines" for path in project_modules().values()
           if (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines (split them by concept): " + ", ".join(big)


def test_every_room_says_what_it_is_for() -> None:
    missing = [str(init.relative_to(ROOT)) for init in sorted((ROOT / "runtime").glob("*/__init__.py"))
               if not ast.get_docstring(ast.parse(init.read_text()))]
    assert not missing, f"rooms without a docstring saying what they are for and what they may import: {missing}"


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("runtime.worker.runner", "def f():\n    from pipelines.common import base_pipeline\n",
     "runtime/worker/runner.py:2 imports pipelines.common: the worker never imports"),
    ("runtime.ops.metrics", "from runtime.worker.errors import PermanentError\n",
     "imports runtime.worker.errors: ops knows the worker only through the observer hooks"),
    ("lambdas.submit", "import runtime.models.store\n", "imports runtime.models.store: the Lambdas import only"),
    ("runtime.contract.jobs", "from runtime.config import Settings\n", "the contract imports nothing of the rest"),
    ("runtime.models.store", "from ..worker import errors\n", "imports runtime.worker.errors"),
])
def test_the_checker_names_the_import_and_the_rule(module: str, source: str, expected: str) -> None:
    found = violations(module, source)
    assert len(found) == 1 and expected in found[0], found


def test_annotations_only_imports_are_not_dependencies() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from runtime.worker.runner import JobRunner\n"
    assert violations("runtime.ops.metrics", source) == []


def test_a_module_outside_every_room_is_reported() -> None:
    with pytest.raises(AssertionError, match="belongs to no room"):
        rule_for("spotgen_extra.thing")


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph is small, but recursion limits are not worth thinking about)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    out.append(component)
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out

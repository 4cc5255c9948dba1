"""Every third-party package the shipped code imports is declared in pyproject.toml.

A package that arrives only as another's dependency works until that other package drops it: ``lambdas/fetch.py``
imported httpcore and certifi, which came with httpx, and the Lambda bundle's packaging step names what
pyproject declares. The check reads the imports from the source (as the layout test does) and maps each top-level
module to its distribution with the installed metadata."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("spotgen", "runtime", "lambdas", "pipelines")
FIRST_PARTY = {*SHIPPED, "tests"}
#: Imported only when present, and installed by something other than pyproject: the image's ``XFORMERS`` build
#: argument (docs/deploy.md), because its wheel must match the image's torch exactly.
OPTIONAL = {"xformers"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared() -> set[str]:
    """Normalised names of every requirement: the base dependencies and every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(requirement for extra in extras for requirement in extra)]
    return {normalise(re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]) for requirement in requirements}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def undeclared(modules: set[str], known: set[str]) -> dict[str, list[str]]:
    """Each third-party module whose distributions are all missing from ``known``, with those distributions."""
    owners = packages_distributions()
    missing: dict[str, list[str]] = {}
    for module in sorted(modules - FIRST_PARTY - OPTIONAL - set(sys.stdlib_module_names)):
        distributions = owners.get(module, [module])
        if not any(normalise(name) in known for name in distributions):
            missing[module] = distributions
    return missing


def test_every_imported_package_is_declared() -> None:
    modules = {name for room in SHIPPED for path in (ROOT / room).rglob("*.py") for name in imported_modules(path)}
    assert "httpcore" in modules and "certifi" in modules  # the check reads what fetch.py imports
    assert undeclared(modules, declared()) == {}


def test_the_check_names_an_undeclared_package() -> None:
    assert undeclared({"httpcore", "certifi", "json"}, declared() - {"httpcore"}) == {"httpcore": ["httpcore"]}

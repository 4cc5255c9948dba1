"""Model families: everything about running a job that depends on which kind of model it names.

Each module of this package is one family (``sd``: SD 1.x and 2.x; ``sdxl``; ``flux``; ``sd3``) and defines
``FAMILY``, a ``pipelines.families.base.Family``: the catalog family names it serves, how its base models and
ControlNets load, the diffusers class of each task, how prompts are encoded, its samplers and the arguments of
a call. The tasks (``pipelines.txt2img`` ...) and the loader ask the family; none of them names one. Adding a
family is adding a module here (docs/plugins.md "A new model family"), plus its line of rules in
``runtime.contract.families`` for the API, which cannot import the worker's code.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from pipelines.families.base import Family
from runtime.models.catalog import ModelError

__all__ = ["Family", "families", "family_of"]


@functools.cache
def families() -> dict[str, Family]:
    """Every family module's ``FAMILY`` by the catalog family names it serves; found once, at first use."""
    found: dict[str, Family] = {}
    for info in pkgutil.iter_modules(__path__):
        family = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if isinstance(family, Family):
            for name in family.names:
                if name in found:
                    raise RuntimeError(f"model family {name!r} is served by two modules of pipelines.families")
                found[name] = family
    return found


def family_of(name: str, model_id: str = "") -> Family:
    """The family that runs catalog family ``name``; refused when no module serves it."""
    try:
        return families()[name]
    except KeyError:
        what = f"model {model_id!r} is a {name} model" if model_id else f"model family {name!r}"
        raise ModelError("unsupported_model_family", f"{what}; the built-in pipelines run "
                         f"{', '.join(sorted(families()))} models") from None

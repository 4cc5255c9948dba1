"""Importing spandrel (the upscaler architectures) without torchvision.

spandrel declares torchvision, and two of its architectures import it (LaMa, an inpainter, and RestoreFormer, a
face restorer: neither an upscaler). torchvision's PyPI wheel for Linux is a CUDA 13 build; next to this
project's CPU torch, or the image's CUDA 12 torch, its import fails, and transformers, which imports torchvision
whenever it is installed, fails with it: every pipeline would. So spandrel is installed without its dependencies
(``make install``, the Dockerfile; ``docs/models.md``), and, when torchvision is absent, its three names that
spandrel imports are given it, for its import only, as functions that refuse to run. No upscaler calls them;
the stand-ins are removed from ``sys.modules`` at once, so that nothing else sees a torchvision.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import threading
import types
from typing import Any

_IMPORT = threading.Lock()


def spandrel() -> Any:
    """The spandrel module, imported once per process."""
    with _IMPORT:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        if importlib.util.find_spec("torchvision") is not None:
            import spandrel as module

            return module
        stand_ins = _torchvision_stand_ins()
        sys.modules.update(stand_ins)
        try:
            import spandrel as module
        finally:
            for name in stand_ins:
                sys.modules.pop(name, None)
        return module


def _torchvision_stand_ins() -> dict[str, types.ModuleType]:
    def refuse(*_: Any, **__: Any) -> Any:
        raise RuntimeError("this spandrel architecture needs torchvision, which is not installed (only the "
                           "upscaler architectures are supported: docs/models.md)")

    class InterpolationMode(enum.Enum):  # the members LaMa names; values as torchvision's
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    functional.rotate = functional.normalize = refuse  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    root = types.ModuleType("torchvision")
    root.transforms = transforms  # type: ignore[attr-defined]
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}

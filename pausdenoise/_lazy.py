"""Lazy package faces: a package lists its public names and the sub-module of each.

A face imports nothing until a name is asked for (the pattern of the Scientific Python
SPEC 1, "lazy loading of submodules and functions"), so ``import pausdenoise.denoise.config``
does not import torch through ``pausdenoise/denoise/__init__.py``, while users can still
write ``from pausdenoise.denoise import denoise_to_store``. Code inside the package imports
from the sub-modules themselves, so that its dependencies are visible in its import lines.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_face"]


def lazy_face(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Build ``__getattr__``, ``__dir__`` and ``__all__`` for a package's public face.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : mapping of str to str
        Public name → sub-module name relative to the package (``"writer"`` for
        ``package + ".writer"``).

    Returns
    -------
    tuple
        ``(__getattr__, __dir__, __all__)`` to assign at the package's top level.

    Raises
    ------
    AttributeError
        From the returned ``__getattr__``, for a name that is neither exported nor a
        sub-module.
    """
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            try:  # a sub-module asked for as an attribute (``pausdenoise.denoise.tiling``)
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, list(names)

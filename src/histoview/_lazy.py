"""Lazy package exports (PEP 562), as Scientific Python's SPEC 1 ``lazy_loader.attach`` does.

``histoview.explain.explain_array`` imports ``histoview.explain.run`` on first use, so
``import histoview.explain`` stays as light as before (no torch), and a package's
``__init__`` never imports its own submodules at import time (no import cycles through it).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping


def lazy_exports(
    package: str, names_by_module: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``.

    Args:
        package: the package's ``__name__``.
        names_by_module: a submodule, written as a relative import (``".run"``), -> the
            public names it defines.

    A public name must not be the name of a submodule (the import system would set the
    module over it).
    """
    where = {name: module for module, names in names_by_module.items() for name in names}
    clash = sorted(set(where) & {module.lstrip(".") for module in names_by_module})
    if clash:
        raise ValueError(f"{package}: exported names that are also submodules: {clash}")

    def __getattr__(name: str):
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)

"""Package exports loaded on first use (PEP 562), so importing a package does not import everything it offers.

`import ood_lightning` stays light for the command-line help, and `python -m <package>.<converter>` does not import
the converter before running it as the main module (Python warns when a package's __init__ already imported it).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, resolving each name of `exports` (name -> the module that defines
    it) when first asked for."""
    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted([*import_module(package).__dict__, *exports])

    return __getattr__, __dir__

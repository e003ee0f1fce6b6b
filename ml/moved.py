"""Names that moved but must keep resolving at their old address: state pickled by earlier code (Ray Tune's
experiment state) and code stored with registered model versions import them from there."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def moved_names(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that resolves each name of `table` (name -> its module today) lazily,
    so that importing the package stays cheap."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

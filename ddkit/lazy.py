"""Package re-exports resolved on first use (PEP 562), so that importing a package does not import
torch through modules the caller does not need (`ddkit info` reads headers; `ddkit.store` also
offers `DistilledDataset`, a torch dataset)."""

from __future__ import annotations

import importlib


def lazy_exports(namespace: dict, names: dict[str, str]):
    """`__getattr__` and `__dir__` for the package whose globals are `namespace`: each name in `names`
    is looked up in the module `names[name]` (relative to the package) when first used, then kept."""
    package = namespace["__name__"]

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__

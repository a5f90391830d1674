"""The method registry: every module in ``unlearnkit.methods`` defining a Method subclass is found."""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from ..errors import UserInputError
from .base import Method

_NOT_METHODS = {"base", "registry"}


@lru_cache(maxsize=1)
def _all() -> dict[str, type[Method]]:
    from .. import methods as package

    found: dict[str, type[Method]] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        if module_info.name.startswith("_") or module_info.name in _NOT_METHODS:
            continue
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Method) and value.name and value.__module__ == module.__name__:
                found[value.name] = value
    return dict(sorted(found.items()))


def methods() -> dict[str, type[Method]]:
    """All registered methods by name."""
    return _all()


def get_method(name: str) -> Method:
    """An instance of the method called ``name``; a clear error lists the valid names."""
    registry = _all()
    if name not in registry:
        raise UserInputError(f"Unknown method {name!r}; valid methods: {', '.join(registry)}.")
    return registry[name]()

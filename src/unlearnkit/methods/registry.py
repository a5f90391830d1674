"""The method registry: every module in ``unlearnkit.methods`` defining a Method subclass is found."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from functools import lru_cache
from typing import Any, Mapping

from ..errors import UserInputError
from ..train.config import build_config
from .base import Method

_NOT_METHODS = {"base", "registry", "saved"}


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
    """All registered methods by name (a copy: editing it leaves the registry as it is)."""
    return dict(_all())


def get_method(name: str) -> Method:
    """An instance of the method called ``name``; a clear error lists the valid names."""
    registry = _all()
    if not isinstance(name, str) or name not in registry:  # a list is unhashable: a TypeError
        raise UserInputError(f"Unknown method {name!r}; valid methods: {', '.join(registry)}.")
    return registry[name]()


#: Plug-in settings only some methods take, and what a method needs to take them.
PLUGIN_SETTINGS = {
    "project": "--project gu: it needs a gradient-based method",
    "sampling": "--sampling: it needs a method that pairs forget and retain batches",
}


def _takes(config_cls: type, setting: str) -> bool:
    return setting in {f.name for f in dataclasses.fields(config_cls)}


def method_config(name: str, overrides: Mapping[str, Any], kind: str | None = None) -> Any:
    """Method ``name``'s config for a model of ``kind`` (its defaults for that kind, see
    ``Method.kind_defaults``) with ``overrides``, checked; a plug-in setting (``project``, ``sampling``)
    the method does not take is refused with the list of methods that do."""
    method = get_method(name)
    config_cls = method.Config
    for setting, requirement in PLUGIN_SETTINGS.items():
        if setting in overrides and not _takes(config_cls, setting):
            takers = [n for n, cls in methods().items() if _takes(cls.Config, setting)]
            raise UserInputError(f"Method {name!r} does not support {requirement} "
                                 f"({', '.join(takers[:-1])} or {takers[-1]}).")
    return build_config(config_cls, {**method.kind_defaults.get(kind or "", {}), **overrides}, owner=f"Method {name!r}")

"""unlearnkit: machine unlearning with one API, one CLI and one evaluation protocol.

>>> import unlearnkit
>>> bench = unlearnkit.load_benchmark("digits")                     # doctest: +SKIP
>>> request = unlearnkit.forget_request(bench, "class")              # doctest: +SKIP
>>> model, record = unlearnkit.unlearn(target, request, method="ssd") # doctest: +SKIP

Heavy modules (torch, transformers) load on first use, so importing the package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports each name on first use
    from .api import evaluate, unlearn
    from .benchmarks.catalogue import forget_request, load_benchmark
    from .errors import UserInputError
    from .methods.registry import methods as list_methods
    from .request import ForgetRequest

__version__ = "0.1.0"
__all__ = ["unlearn", "evaluate", "ForgetRequest", "load_benchmark", "forget_request", "list_methods",
           "UserInputError"]


def __getattr__(name: str) -> Any:
    if name == "unlearn":
        from .api import unlearn

        return unlearn
    if name == "evaluate":
        from .api import evaluate

        return evaluate
    if name == "ForgetRequest":
        from .request import ForgetRequest

        return ForgetRequest
    if name in ("load_benchmark", "forget_request"):
        from .benchmarks import catalogue

        return getattr(catalogue, name)
    if name == "list_methods":  # not ``methods``: that name is the subpackage
        from .methods.registry import methods

        return methods
    if name == "UserInputError":
        from .errors import UserInputError

        return UserInputError
    if name == "api":  # the README calls ``unlearnkit.api.warm_up`` right after ``import unlearnkit``
        import importlib

        return importlib.import_module(".api", __name__)  # ``from . import api`` would recurse into this hook
    raise AttributeError(f"module 'unlearnkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazily loaded names too (for tab completion and ``dir``)."""
    return sorted(set(globals()) | set(__all__))

"""Model adapters: the only code that knows a model kind."""

from typing import Any

from .base import ModelAdapter
from .classifier import ClassifierAdapter

__all__ = ["ModelAdapter", "ClassifierAdapter", "CausalLMAdapter"]


def __getattr__(name: str) -> Any:
    # CausalLMAdapter is loaded on first use so that importing the package stays fast.
    if name == "CausalLMAdapter":
        from .causal_lm import CausalLMAdapter

        return CausalLMAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Model adapters: the only code that knows a model kind."""

from .base import ModelAdapter
from .classifier import ClassifierAdapter

__all__ = ["ModelAdapter", "ClassifierAdapter"]

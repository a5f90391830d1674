"""Naive fine-tuning: train each task with plain cross-entropy, nothing against forgetting (the lower bound)."""

from __future__ import annotations

from .base import GradientLearner


class Naive(GradientLearner):
    """Sequential fine-tuning; the base every plug-in composes on."""

    name = "naive"

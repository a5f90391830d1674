"""Gradient ascent on the forget set.

The classic baseline, e.g. Thudi et al., "Unrolling SGD: Understanding Factors Influencing Machine
Unlearning" (2022) and Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language
Models" (2023). Update rule: θ ← θ + η ∇_θ L̄(D_f), i.e. minimise −L̄(D_f).
Works on any model kind whose adapter gives a per-item loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..train import TrainConfig, optimise
from .base import Method, Outcome, item_stream


@dataclass
class GradientAscentConfig(TrainConfig):
    """Few epochs and a small step: ascent diverges quickly."""

    epochs: int = 1
    lr: float = 1e-4


class GradientAscent(Method):
    """Maximise the loss on the forget set."""

    name = "gradient_ascent"
    kinds = ("classifier", "causal_lm")
    needs = frozenset()
    paper = "Jang et al., Knowledge Unlearning for Mitigating Privacy Risks in Language Models, 2023"
    Config = GradientAscentConfig

    def unlearn(self, adapter: Any, request, config: GradientAscentConfig) -> Outcome:
        stream, steps = item_stream(adapter, request.forget_items(), config)
        loss = lambda model, batch: -adapter.per_item_loss(model, batch).mean()
        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="gradient ascent")
        return Outcome(adapter.model, record)

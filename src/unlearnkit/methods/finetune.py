"""Fine-tuning on the retain set ("catastrophic forgetting" baseline).

A standard baseline since Golatkar, Achille & Soatto, "Eternal Sunshine of the Spotless Net:
Selective Forgetting in Deep Networks" (CVPR 2020). Update rule:
θ ← θ − η ∇_θ L̄(D_r), starting from the trained weights, for a few epochs; the forget set is never
used and is forgotten only as far as training on the rest overwrites it.
Works on any model kind whose adapter gives a per-item loss; on a classifier that loss is the
cross-entropy against the items' labels (a causal LM's targets are its own tokens).

Choices: 2 epochs of Adam at 5e-3, where the SSD repository's baseline runs 5 epochs at lr 0.02 (a
rate for SGD on ResNet-18). On the digits bench (forget / test accuracy; retraining forgets a class
to 0.00) that recipe with SGD (momentum 0.9) leaves a forgotten class at 1.00 / 0.972, with Adam it
reaches 0.00 but costs test accuracy (0.957); the defaults give 0.014 / 0.978 in 2/5 of the steps.
On causal LMs lr defaults to 1e-5, OpenUnlearning's rate for pretrained models: at 5e-3, Adam wrecked
SmolLM2-135M on the facts smollm2 bench (its model utility fell to zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..train import TrainConfig, optimise
from .base import Method, Outcome, item_stream


@dataclass
class FinetuneConfig(TrainConfig):
    """A few epochs at a moderately high learning rate so that training on D_r overwrites D_f."""

    epochs: int = 2
    lr: float = 5e-3
    batch_size: int = 64


class Finetune(Method):
    """Keep training on the retain set only."""

    name = "finetune"
    kinds = ("classifier", "causal_lm")
    needs = frozenset({"retain", "labels"})
    kind_defaults = {"causal_lm": {"lr": 1e-5}}
    paper = "Golatkar et al., Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep Networks, 2020"
    use_when = "A cheap baseline when plenty of retain data exists and the forget set's influence may fade with further training; weak guarantees."
    Config = FinetuneConfig

    def unlearn(self, adapter: Any, request, config: FinetuneConfig) -> Outcome:
        stream, steps = item_stream(adapter, request.retain_items(), config)
        loss = lambda model, batch: adapter.per_item_loss(model, batch).mean()
        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="finetune")
        return Outcome(adapter.model, record)

"""NegGrad+: gradient ascent on the forget set balanced by descent on the retain set.

Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards Unbounded Machine Unlearning" (NeurIPS
2023). Update rule: θ ← θ − η ∇_θ [α·L̄(D_r) − (1−α)·L̄(D_f)].

Choices: an epoch is one pass over the forget set, each forget batch paired with the next batch of
a cycling pass over the retain set (``retain_pairing``, as the ``sampling`` setting says, standard
by default); the authors' code (meghdadk/SCRUB, ``train_negrad``) takes one pass over the retain set
per epoch with the forget set cycled, so with a 10 % forget set each of its epochs is about 9 of
ours (``sampling=cyclic`` pairs the sets that way). The paper tunes α and the number of epochs per setting; the defaults (α = 0.99,
5 epochs, Adam 2e-3) were chosen on the digits CNN, where the unbounded ascent term needs a small
weight to spare the kept classes. On causal LMs only lr changes: it defaults to 1e-5, OpenUnlearning's rate
for pretrained models (at 2e-3, Adam cost SmolLM2-135M most of its model utility on the facts smollm2 bench).
Works on any model kind whose adapter gives a per-item loss; on a classifier that loss is the
cross-entropy against the items' labels (a causal LM's targets are its own tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserInputError
from ..train import optimise
from ._sampling import SamplingConfig, retain_pairing
from .base import Method, Outcome


@dataclass
class NegGradPlusConfig(SamplingConfig):
    """``alpha`` weighs the retain loss, ``1 - alpha`` the (negated) forget loss."""

    alpha: float = 0.99
    epochs: int = 5
    lr: float = 2e-3
    batch_size: int = 32

    def check(self) -> None:
        """Also require 0 ≤ alpha ≤ 1."""
        super().check()
        if not 0.0 <= self.alpha <= 1.0:
            raise UserInputError(f"NegGrad+ alpha must lie in [0, 1], got alpha={self.alpha}.")


class NegGradPlus(Method):
    """Descend on the retain loss while ascending on the forget loss."""

    name = "neggrad_plus"
    kinds = ("classifier", "causal_lm")
    needs = frozenset({"retain", "labels"})
    kind_defaults = {"causal_lm": {"lr": 1e-5}}
    paper = "Kurmanji et al., Towards Unbounded Machine Unlearning, 2023"
    use_when = 'A balanced ascent/descent baseline for classifiers and LMs; sensitive to α and the step count.'
    Config = NegGradPlusConfig

    def unlearn(self, adapter: Any, request, config: NegGradPlusConfig) -> Outcome:
        stream, steps = retain_pairing(adapter, request, config)

        def loss(model, batch: dict):
            retain = adapter.per_item_loss(model, batch["retain"]).mean()
            forget = adapter.per_item_loss(model, batch["forget"]).mean()
            return config.alpha * retain - (1.0 - config.alpha) * forget

        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="neggrad+")
        return Outcome(adapter.model, record)

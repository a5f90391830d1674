"""UNDIAL: self-distillation towards a teacher with the memorised token suppressed.

Dong, Lin, Belkin, Huerta & Vulić, "UNDIAL: Self-Distillation with Adjusted Logits for Robust
Unlearning in Large Language Models" (NAACL 2025; arXiv 2402.10052, 2024). At every answer
position t with target token y_t and frozen original logits z_ref,t, minimise

    CE(p_θ,t, softmax(z_ref,t − β·onehot(y_t)))   (+ α·NLL̄(D_r), off by default).

Choices: β = 10 and α = 0 as in OpenUnlearning. The loss is averaged over each item's answer tokens
only (EOS included), then over the items, so a batch split across processes gives the one-process
loss. OpenUnlearning also writes the one-hot at the −100 prompt/pad labels, where the
index wraps to token V − 100, and averages over those positions: that bug is not reproduced.

Optional early stop (off by default): ``early_stop="holdout_nll"`` or ``"holdout_truth_ratio"`` ends the
run once the forget set looks like the request's never-trained holdout items (``train/stopping.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.causal_lm import IGNORE, item_mean
from ..errors import UserInputError
from ..train import optimise
from ..train.stopping import StopConfig, stop_for
from ._sampling import SamplingConfig, retain_pairing
from .base import Method, Outcome, item_stream
from .graddiff import frozen_reference


def adjusted_targets(reference_logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """softmax(z_ref − β·onehot(y)) over the vocabulary, for logits ``(N, V)`` and targets ``(N,)``."""
    adjusted = reference_logits.float().clone()
    adjusted.scatter_add_(1, targets[:, None], torch.full_like(adjusted[:, :1], -beta))
    return adjusted.softmax(dim=-1)


def undial_loss(adapter: Any, model: nn.Module, reference: nn.Module, batch: dict, beta: float) -> torch.Tensor:
    """Cross-entropy to the adjusted teacher, averaged over each item's answer tokens, then the items."""
    targets = batch["labels"][:, 1:]
    answer = targets != IGNORE
    logits = adapter.logits(model, batch)[:, :-1][answer]
    with torch.no_grad():
        teacher = adjusted_targets(adapter.logits(reference, batch)[:, :-1][answer], targets[answer], beta)
    per_position = torch.zeros(answer.shape, dtype=torch.float32, device=logits.device)
    per_position[answer] = -(teacher * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    return item_mean(per_position, answer)


@dataclass
class UndialConfig(SamplingConfig, StopConfig):
    """β (how far the memorised token is pushed down in the teacher) and α (optional retain NLL weight)."""

    beta: float = 10.0
    alpha: float = 0.0
    epochs: int = 10
    lr: float = 1e-4

    def check(self) -> None:
        """Also require β > 0 and α ≥ 0."""
        super().check()
        if not self.beta > 0:
            raise UserInputError(f"UNDIAL beta must be positive, got beta={self.beta}.")
        if not self.alpha >= 0:
            raise UserInputError(f"UNDIAL alpha must be non-negative, got alpha={self.alpha}.")
        if self.alpha == 0 and self.sampling != "standard":
            raise UserInputError(f"UNDIAL pairs forget with retain items only with alpha > 0; sampling={self.sampling} "
                                 "needs a retain weight alpha above 0.")


class Undial(Method):
    """Distil the model towards its own logits with each memorised answer token pushed down by β."""

    name = "undial"
    kinds = ("causal_lm",)
    needs = frozenset({"reference_model"})
    paper = "Dong et al., UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in LLMs, 2024"
    use_when = 'Gentle LM forgetting by self-distillation that lowers only the memorised tokens; slow but stable.'
    Config = UndialConfig

    def needs_for(self, config: UndialConfig) -> frozenset[str]:
        """Retain data only when its NLL term counts (α > 0)."""
        return super().needs_for(config) | ({"retain"} if config.alpha > 0 else set())

    def check_request(self, request, config: UndialConfig) -> None:
        """Name α as what needs retain data (before the generic refusal of a missing need)."""
        if config.alpha > 0 and not request.retain:
            raise UserInputError("undial with alpha > 0 needs retain data, but the request has none.")

    def unlearn(self, adapter: Any, request, config: UndialConfig) -> Outcome:
        reference = frozen_reference(adapter.model)
        if config.alpha > 0:
            stream, steps = retain_pairing(adapter, request, config)
        else:
            stream, steps = item_stream(adapter, request.forget_items(), config)

        def loss(model: nn.Module, batch: dict) -> torch.Tensor:
            if config.alpha == 0:
                return undial_loss(adapter, model, reference, batch, config.beta)
            retain = adapter.per_item_loss(model, batch["retain"]).mean()
            return undial_loss(adapter, model, reference, batch["forget"], config.beta) + config.alpha * retain

        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="undial",
                          stop=stop_for(config, adapter, request, steps))
        return Outcome(adapter.model, record)

"""SimNPO: NPO without a reference model, on the length-normalised likelihood.

Fan, Liu, Lin, Jia, Zhang, Mei & Liu, "Simplicity Prevails: Rethinking Negative Preference
Optimization for LLM Unlearning" (arXiv 2410.07163, 2024). Update rule: minimise

    γ·E_{D_f}[−(2/β)·log σ(β·(NLL(y|x)/|y| − δ))] + α·NLL̄(D_r),

with NLL summed over the answer tokens and |y| the answer length, both counting EOS. This is the
paper's −(2/β)·log σ(−(β/|y|)·log π_θ − γ_m) with margin γ_m = β·δ, written as OpenUnlearning does.

Choices: β = 4.5, δ = 0, γ = 0.125, α = 1, lr 1e-5 (OpenUnlearning's defaults). Supports GU
(``project="gu"``) on the forget term.
With ``sam_rho`` > 0 the forget term's gradient is taken SAM-style at the worst nearby weights
(``train/sam.py``; Fan et al., ICML 2025), which makes the forgetting harder to relearn.

Optional early stop (off by default): ``early_stop="holdout_nll"`` or ``"holdout_truth_ratio"`` ends the
run once the forget set looks like the request's never-trained holdout items (``train/stopping.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from ..train import optimise
from ..train.gu import LossParts, ProjectionConfig, projector_for
from ..train.sam import SharpnessConfig
from ..train.stopping import StopConfig, stop_for
from ._sampling import SamplingConfig, retain_pairing
from .base import Method, Outcome


def simnpo_loss(nll: torch.Tensor, lengths: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """Mean of −(2/β)·log σ(β·(NLL/|y| − δ)) over the items."""
    per_token = nll / lengths.clamp_min(1).to(nll.dtype)
    return -(2.0 / beta) * F.logsigmoid(beta * (per_token - delta)).mean()


@dataclass
class SimNPOConfig(ProjectionConfig, SharpnessConfig, SamplingConfig, StopConfig):
    """β, δ (margin per token), γ (forget weight), α (retain weight)."""

    beta: float = 4.5
    delta: float = 0.0
    gamma: float = 0.125
    alpha: float = 1.0
    epochs: int = 10
    lr: float = 1e-5  # OpenUnlearning's, for pretrained LMs (the facts bench sets its own)

    def check(self) -> None:
        """Also require β > 0."""
        super().check()
        if not self.beta > 0:
            raise UserInputError(f"SimNPO beta must be positive, got beta={self.beta}.")


class SimNPO(Method):
    """Raise the forget answers' per-token NLL through a bounded, reference-free NPO loss."""

    name = "simnpo"
    kinds = ("causal_lm",)
    needs = frozenset({"retain"})
    paper = "Fan et al., Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning, 2024"
    use_when = 'NPO without a reference model, when memory for a second model copy is short.'
    Config = SimNPOConfig

    def unlearn(self, adapter: Any, request, config: SimNPOConfig) -> Outcome:
        stream, steps = retain_pairing(adapter, request, config)

        def loss(model: nn.Module, batch: dict) -> LossParts:
            forget = batch["forget"]
            nll = adapter.per_item_sum_nll(model, forget)
            simnpo = simnpo_loss(nll, adapter.answer_lengths(forget), config.beta, config.delta)
            retain = adapter.per_item_loss(model, batch["retain"]).mean()
            return LossParts(config.gamma * simnpo, config.alpha * retain)

        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="simnpo",
                          projector=projector_for(config), stop=stop_for(config, adapter, request, steps))
        return Outcome(adapter.model, record)

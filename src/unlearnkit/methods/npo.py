"""NPO: Negative Preference Optimization.

Zhang, Lin, Bai & Mei, "Negative Preference Optimization: From Catastrophic Collapse to Effective
Unlearning" (COLM 2024; arXiv 2404.05868). Update rule: minimise

    γ·(2/β)·E_{D_f} log(1 + (π_θ(y|x)/π_ref(y|x))^β) + α·R(D_r),

i.e. γ·E[−(2/β)·log σ(β·(NLL_θ − NLL_ref))] with NLL summed over the answer tokens (EOS included),
π_ref a frozen copy of the model taken before unlearning. As β → 0 it becomes gradient ascent.

Choices: β = 0.1, γ = α = 1, lr 1e-5 (OpenUnlearning); R is the retain NLL̄ (or the KL to π_ref with
``retain_loss="kl"``). Supports GU (``project="gu"``) on the forget term.
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
from .graddiff import check_retain_loss, frozen_reference, retain_term


def npo_loss(nll: torch.Tensor, nll_reference: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean of −(2/β)·log σ(β·(NLL_θ − NLL_ref)) over the items (summed answer NLLs)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - nll_reference)).mean()


@dataclass
class NPOConfig(ProjectionConfig, SharpnessConfig, SamplingConfig, StopConfig):
    """β (inverse temperature), γ (forget weight), α (retain weight), the retain term."""

    beta: float = 0.1
    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss: str = "nll"
    epochs: int = 10
    lr: float = 1e-5  # OpenUnlearning's, for pretrained LMs (the facts bench sets its own)

    def check(self) -> None:
        """Also require β > 0 and a known retain term."""
        super().check()
        if not self.beta > 0:
            raise UserInputError(f"NPO beta must be positive, got beta={self.beta}.")
        check_retain_loss(self.retain_loss)


class NPO(Method):
    """Push the forget answers' likelihood below the frozen reference's, with a bounded loss."""

    name = "npo"
    kinds = ("causal_lm",)
    needs = frozenset({"retain", "reference_model"})
    paper = "Zhang et al., Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning, 2024"
    use_when = "The usual strong LM baseline: bounded ascent that avoids GA's collapse; needs a frozen copy of the model."
    Config = NPOConfig

    def unlearn(self, adapter: Any, request, config: NPOConfig) -> Outcome:
        reference = frozen_reference(adapter.model)
        stream, steps = retain_pairing(adapter, request, config)

        def loss(model: nn.Module, batch: dict) -> LossParts:
            forget = batch["forget"]
            with torch.no_grad():
                nll_reference = adapter.per_item_sum_nll(reference, forget)
            npo = npo_loss(adapter.per_item_sum_nll(model, forget), nll_reference, config.beta)
            retain = retain_term(adapter, model, batch["retain"], config.retain_loss, reference)
            return LossParts(config.gamma * npo, config.alpha * retain)

        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="npo",
                          projector=projector_for(config), stop=stop_for(config, adapter, request, steps))
        return Outcome(adapter.model, record)

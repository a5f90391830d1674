"""GradDiff: gradient ascent on the forget set plus descent on a retain term.

Liu, Liu & Stone, "Continual Learning and Private Unlearning" (CoLLAs 2022), as the
"GradDiff" baseline of Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs" (2024) and
OpenUnlearning. Update rule: θ ← θ − η ∇_θ [γ·(−NLL̄(D_f)) + α·R(D_r)], with
R = NLL̄ (``retain_loss="nll"``) or R = KL(π_ref ‖ π_θ) to the frozen original model (``"kl"``).

Choices: γ = α = 1 and lr 1e-5 as in OpenUnlearning (a pretrained LM's scale: the facts bench's small
scratch models run at lr 1e-3, ``FACTS_SCALE_SETTINGS`` in benchmarks/lm_bench.py). NLL̄ here (and in
the relatives below) is the mean over the batch's items of each item's token-mean answer NLL, so every
item weighs the same; OpenUnlearning's HF ``loss`` pools the tokens of the whole batch, so long answers
weigh more. The two agree when a batch's answers have equal lengths. The KL is averaged over each retain
item's real (non-padding) positions, prompt included, then over the items; OpenUnlearning averages over
all B·T positions, padding included. Supports GU (``project="gu"``): the forget term is projected off the retain
gradients.
With ``sam_rho`` > 0 the forget term's gradient is taken SAM-style at the worst nearby weights
(``train/sam.py``; Fan et al., ICML 2025), which makes the forgetting harder to relearn.
This module also holds the helpers its relatives (NPO, SimNPO, IdkDPO, UNDIAL, RMU) share.

Optional early stop (off by default): ``early_stop="holdout_nll"`` or ``"holdout_truth_ratio"`` ends the
run once the forget set looks like the request's never-trained holdout items (``train/stopping.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.base import frozen_copy
from ..adapters.causal_lm import item_mean
from ..errors import UserInputError
from ..train import optimise
from ..train.gu import LossParts, ProjectionConfig, projector_for
from ..train.lora import lora_reference
from ..train.sam import SharpnessConfig
from ..train.stopping import StopConfig, stop_for
from ._sampling import SamplingConfig, retain_pairing
from .base import Method, Outcome

RETAIN_LOSSES = ("nll", "kl")


def frozen_reference(model: nn.Module) -> Any:
    """π_ref, the model before unlearning, frozen: under ``--lora`` the model itself with its adapters off (no
    second copy of its weights; ``train/lora.py``'s ``lora_reference`` says when), else a frozen deep copy."""
    reference = lora_reference(model)
    return reference if reference is not None else frozen_copy(model)


def check_retain_loss(name: str) -> None:
    """Raise unless ``name`` is a known retain term."""
    if name not in RETAIN_LOSSES:
        raise UserInputError(f"Unknown retain_loss {name!r}; valid: {', '.join(RETAIN_LOSSES)}.")


def reference_kl(adapter: Any, model: nn.Module, reference: nn.Module, batch: dict) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) between next-token distributions, averaged over each item's real (non-padding)
    positions, then the items (OpenUnlearning averages over all B·T positions, padding included)."""
    log_p = F.log_softmax(adapter.logits(model, batch).float(), dim=-1)
    with torch.no_grad():
        log_ref = F.log_softmax(adapter.logits(reference, batch).float(), dim=-1)
    return item_mean((log_ref.exp() * (log_ref - log_p)).sum(-1), batch["attention_mask"])


def retain_term(adapter: Any, model: nn.Module, batch: dict, kind: str, reference: nn.Module | None) -> torch.Tensor:
    """R(D_r): the mean answer NLL, or the KL to the reference model."""
    if kind == "kl":
        return reference_kl(adapter, model, reference, batch)
    return adapter.per_item_loss(model, batch).mean()


@dataclass
class GradDiffConfig(ProjectionConfig, SharpnessConfig, SamplingConfig, StopConfig):
    """γ (forget weight), α (retain weight), the retain term."""

    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss: str = "nll"
    epochs: int = 10
    lr: float = 1e-5  # OpenUnlearning's, for pretrained LMs (the facts bench sets its own)

    def check(self) -> None:
        """Also validate the retain term."""
        super().check()
        check_retain_loss(self.retain_loss)


class GradDiff(Method):
    """Ascend on the forget NLL while descending on a retain NLL or KL."""

    name = "graddiff"
    kinds = ("causal_lm",)
    needs = frozenset({"retain"})
    paper = "Liu et al., Continual Learning and Private Unlearning, 2022 (TOFU's GradDiff)"
    use_when = 'The standard LM baseline when retain data is available: simple, but tune the step count, as long runs collapse utility.'
    Config = GradDiffConfig

    def unlearn(self, adapter: Any, request, config: GradDiffConfig) -> Outcome:
        reference = frozen_reference(adapter.model) if config.retain_loss == "kl" else None
        stream, steps = retain_pairing(adapter, request, config)

        def loss(model: nn.Module, batch: dict) -> LossParts:
            forget = -adapter.per_item_loss(model, batch["forget"]).mean()
            retain = retain_term(adapter, model, batch["retain"], config.retain_loss, reference)
            return LossParts(config.gamma * forget, config.alpha * retain)

        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="graddiff",
                          projector=projector_for(config), stop=stop_for(config, adapter, request, steps))
        return Outcome(adapter.model, record)

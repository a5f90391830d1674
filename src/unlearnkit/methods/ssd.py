"""Selective Synaptic Dampening.

Foster, Schoepf & Brintrup, "Fast Machine Unlearning Without Retraining Through Selective Synaptic
Dampening" (AAAI 2024; arXiv 2308.07707, 2023).

Importance of a set D: imp_D[p] = (1/#batches) Σ_b (∂ L̄_b / ∂p)², the squared gradient of each
batch-mean loss, model in eval mode. With forget importance f = imp_{D_f} and full-data importance
o = imp_{D} (D = retain ∪ forget), every parameter entry with f > α·o is scaled by
β = min(λ·o / f, 1). Biases and normalisation affine parameters are dampened too; buffers are not.

Choices where the paper is silent: batches are taken in the data's order (no shuffle), the
last partial batch counts as one batch, and an entry with o = 0 and f > 0 is set to zero (β = 0),
as in the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..adapters.base import batches
from ..train import TrainConfig
from .base import Method, Outcome


@dataclass
class SSDConfig(TrainConfig):
    """α (selection threshold) and λ (dampening strength); ``batch_size`` sets the importance batches."""

    alpha: float = 10.0
    lam: float = 1.0
    batch_size: int = 64


def importance(adapter: Any, items: Sequence[Any], batch_size: int) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared gradient of the batch-mean loss, per parameter."""
    model = adapter.model
    model.eval()
    totals = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    count = 0
    for chunk in batches(items, batch_size, shuffle=False, seed=0):
        model.zero_grad(set_to_none=True)
        adapter.per_item_loss(model, adapter.collate(chunk)).mean().backward()
        for name, param in model.named_parameters():
            if param.grad is not None:
                totals[name] += param.grad.detach() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    return {n: t / max(count, 1) for n, t in totals.items()}


@torch.no_grad()
def dampen(model: torch.nn.Module, forget_imp: dict, full_imp: dict, alpha: float, lam: float) -> float:
    """Scale the selected parameter entries in place; return the fraction of entries changed."""
    changed = total = 0
    for name, param in model.named_parameters():
        if name not in forget_imp:
            continue
        f, o = forget_imp[name], full_imp[name]
        selected = f > alpha * o
        beta = torch.clamp(lam * o / f.clamp_min(torch.finfo(f.dtype).tiny), max=1.0)
        param[selected] = param[selected] * beta[selected]
        changed += int(selected.sum())
        total += selected.numel()
    return changed / max(total, 1)


class SSD(Method):
    """Selective Synaptic Dampening: one pass, no training."""

    name = "ssd"
    kinds = ("classifier", "causal_lm")
    needs = frozenset({"retain", "original_training_data"})
    paper = "Foster et al., Fast Machine Unlearning Without Retraining Through Selective Synaptic Dampening, 2023"
    use_when = 'One-pass, training-free classifier forgetting when the full training data is at hand; tune α/λ per model.'
    Config = SSDConfig

    def unlearn(self, adapter: Any, request, config: SSDConfig) -> Outcome:
        forget = request.forget_items()
        full = request.retain_items() + forget
        forget_imp = importance(adapter, forget, config.batch_size)
        full_imp = importance(adapter, full, config.batch_size)
        fraction = dampen(adapter.model, forget_imp, full_imp, config.alpha, config.lam)
        return Outcome(adapter.model, info={"dampened_fraction": fraction})

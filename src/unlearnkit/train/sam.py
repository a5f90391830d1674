"""Sharpness-aware unlearning: the forget term's gradient taken at the worst nearby weights.

Fan et al., "Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization
Perspective and Beyond" (ICML 2025; arXiv 2502.05374). Relearning attacks succeed when the forget
loss sits in a sharp basin that a few fine-tuning steps climb out of; SAM smooths it. With forget
loss ℓ_f, retain loss ℓ_r and radius ρ, each step uses

    ε = ρ·∇ℓ_f(θ) / ‖∇ℓ_f(θ)‖,   g = ∇ℓ_f(θ + ε) + ∇ℓ_r(θ),

i.e. SAM on the forget term only (the retain term keeps its plain gradient), as the authors' code does.

Choices: ε spans every trainable parameter (one global norm, not per layer); the weights are copied
before the perturbation and copied back after, so they return bit for bit. The wrapped loss keeps the
value at θ (what the progress bar and the divergence guard read) and carries the gradients above, so
it composes with GU's projection and with gradient clipping. One process only: under
``accelerate launch`` the two extra gradient passes would bypass the wrapper's gradient averaging.
With bf16 weights (``--bf16`` without LoRA) most of a small ε rounds away when added to the weights, so
SAM there is close to the plain step at twice its cost; LoRA keeps its adapters in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import UserInputError
from .config import TrainConfig, finite_number
from .gu import LossParts


@dataclass
class SharpnessConfig(TrainConfig):
    """Adds ``sam_rho``: SAM's radius ρ on the forget term (0 = plain gradients)."""

    sam_rho: float = 0.0

    def check(self) -> None:
        """Also require a finite ρ ≥ 0 (ρ = inf would move the weights to ±inf and end the run as diverged)."""
        super().check()
        if not (finite_number(self.sam_rho) and self.sam_rho >= 0):
            raise UserInputError(f"sam_rho must be a non-negative number, got sam_rho={self.sam_rho}.")


def sharpness_aware(loss_fn: Callable[[nn.Module, Any], Any], rho: float) -> Callable[[nn.Module, Any], Any]:
    """``loss_fn`` with its forget part's gradient taken at θ + ε (see the module docstring); ρ = 0 returns it
    as is. A loss_fn that returns one tensor, not :class:`LossParts`, is all forget term."""
    if not rho:
        return loss_fn

    def smoothed(model: nn.Module, batch: Any) -> LossParts:
        parts = _as_parts(loss_fn(model, batch))
        params = [p for p in model.parameters() if p.requires_grad]
        retain_grads = _gradients(parts.retain, params, keep_graph=True)  # the two parts may share one forward
        forget_grads = _gradients(parts.forget, params)
        norm = torch.sqrt(sum(g.square().sum() for g in forget_grads))
        if norm > 0:
            saved = [p.detach().clone() for p in params]
            # buffers too: the perturbed pass must not move BatchNorm's running statistics a second time
            buffers = [(b, b.detach().clone()) for b in model.buffers()]
            with torch.no_grad():
                for p, g in zip(params, forget_grads):
                    p.add_(g, alpha=rho / float(norm))
            try:
                forget_grads = _gradients(_as_parts(loss_fn(model, batch)).forget, params)
            finally:
                with torch.no_grad():
                    for p, value in zip(params, saved):
                        p.copy_(value)
                    for buffer, value in buffers:
                        buffer.copy_(value)
        return LossParts(_carrying(parts.forget, params, forget_grads), _carrying(parts.retain, params, retain_grads))

    return smoothed


def _as_parts(loss: Any) -> LossParts:
    """The loss as (forget, retain); a single tensor (gradient ascent) is all forget term."""
    return loss if isinstance(loss, LossParts) else LossParts(loss, torch.zeros(()))


def _gradients(loss: Any, params: Sequence[nn.Parameter], keep_graph: bool = False) -> list[torch.Tensor]:
    """∂loss/∂p for each parameter (zeros where the loss does not depend on it); ``keep_graph`` keeps the graph for
    another gradient through it."""
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=keep_graph)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _carrying(value: Any, params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient with respect to ``params`` is ``grads``."""
    linear = sum((p * g.detach()).sum() for p, g in zip(params, grads))
    return linear - linear.detach() + torch.as_tensor(value).detach()

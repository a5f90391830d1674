"""ℓ1-sparse unlearning: fine-tune on the retain set under a decaying ℓ1 penalty.

Jia, Liu, Ram, Yao, Liu, Liu, Sharma & Liu, "Model Sparsity Can Simplify Machine Unlearning"
(NeurIPS 2023). Update rule at epoch t of T = epochs − no_l1_epochs:
θ ← θ − η ∇_θ [ L̄_CE(D_r) + γ_t‖θ‖₁ ],  γ_t = α(1 − t/T) for t < T, and γ_t = 0 afterwards.

Choices: γ_t changes once per epoch and ‖θ‖₁ sums over every trainable parameter (biases
included), both as in the authors' code. The default α = 1e-3 suits a ~50k-parameter CNN
(‖θ‖₁ ≈ 3·10³ for the digits target); ‖θ‖₁ grows with the parameter count, so larger models
need a smaller α. The optimizer is the toolkit's default, Adam (lr 5e-3, 2 epochs), not the authors'
SGD with momentum: on the digits benchmark two epochs of SGD (momentum 0.9, lr 0.01 or 0.05) leave a
forgotten class at 1.00 / 0.95 accuracy (retraining: 0.00), Adam at 0.00. Adam's step does not
change when the whole loss is scaled, so what matters is γ_t against the size of the CE gradient,
and the paper's α values (tuned for SGD) do not carry over; ``optimizer=sgd`` with ``momentum=0.9``,
``weight_decay=5e-4`` and ``grad_clip=none`` trains as the authors do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import UserInputError
from ..train import TrainConfig, finite_number, optimise
from .base import Method, Outcome, item_stream


@dataclass
class L1SparseConfig(TrainConfig):
    """``alpha``: initial ℓ1 weight; ``no_l1_epochs``: final epochs trained without the penalty."""

    alpha: float = 1e-3
    no_l1_epochs: int = 0
    epochs: int = 2
    lr: float = 5e-3
    batch_size: int = 64

    def check(self) -> None:
        """Also require a finite alpha ≥ 0 (NaN would switch the penalty off unnoticed) and fewer penalty-free
        epochs than epochs."""
        super().check()
        if not (finite_number(self.alpha) and self.alpha >= 0):
            raise UserInputError(f"l1_sparse alpha must be a finite non-negative number, got alpha={self.alpha}.")
        if not 0 <= self.no_l1_epochs < self.epochs:
            raise UserInputError(
                f"no_l1_epochs must be in 0..epochs-1 (epochs={self.epochs}), got no_l1_epochs={self.no_l1_epochs}."
            )


def l1_weight(alpha: float, epoch: int, epochs: int, no_l1_epochs: int) -> float:
    """γ_t = α(1 − t/T) with T = epochs − no_l1_epochs, and 0 from epoch T on."""
    penalised = epochs - no_l1_epochs
    return alpha * (1.0 - epoch / penalised) if epoch < penalised else 0.0


def l1_norm(model: nn.Module) -> torch.Tensor:
    """‖θ‖₁ over the trainable parameters."""
    return sum(p.abs().sum() for p in model.parameters() if p.requires_grad)


def tracking_epoch(stream: Callable[[int], Iterator[dict]], state: dict) -> Callable[[int], Iterator[dict]]:
    """Wrap an epoch stream so that ``state["epoch"]`` holds the epoch being iterated."""

    def epoch_batches(epoch: int) -> Iterator[dict]:
        state["epoch"] = epoch
        yield from stream(epoch)

    return epoch_batches


class L1Sparse(Method):
    """Retain-set fine-tuning with an ℓ1 penalty that decays linearly to zero."""

    name = "l1_sparse"
    kinds = ("classifier",)
    needs = frozenset({"retain", "labels"})
    paper = "Jia et al., Model Sparsity Can Simplify Machine Unlearning, 2023"
    use_when = 'Classifier unlearning by sparsity-regularised fine-tuning when retain data is plentiful and a few epochs are affordable.'
    Config = L1SparseConfig

    def unlearn(self, adapter: Any, request, config: L1SparseConfig) -> Outcome:
        state = {"epoch": 0}
        stream, steps = item_stream(adapter, request.retain_items(), config)

        def loss(model, batch: dict) -> torch.Tensor:
            gamma = l1_weight(config.alpha, state["epoch"], config.epochs, config.no_l1_epochs)
            task = adapter.per_item_loss(model, batch).mean()
            return task + gamma * l1_norm(model) if gamma > 0 else task

        record = optimise(adapter.model, tracking_epoch(stream, state), loss, config, steps_per_epoch=steps,
                          description="l1-sparse")
        return Outcome(adapter.model, record)

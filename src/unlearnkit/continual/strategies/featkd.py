"""Feature distillation.

Smith et al., "A Closer Look at Rehearsal-Free Continual Learning" (CVPR-W 2023, arXiv 2203.17269)
study feature knowledge distillation as a rehearsal-free regulariser: while learning a task, keep
the penultimate features of the current batch close to those of the model from before the task,
L = L_task + w · mean over the batch and feature entries of (h(x) − h*(x))² (the co-author code's
``MSELoss``). Compose it with ``lwf`` (``lwf+featkd``) for their
prediction + feature variant.

Our choice: the teacher h* is copied when the task starts (so after an unlearning request it is the
unlearned model) and dropped on unlearning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import UserInputError
from .base import Plugin, PluginConfig, non_negative
from ...adapters.base import frozen_copy


@dataclass
class FeatKDConfig(PluginConfig):
    """w, the weight of the feature MSE."""

    featkd_weight: float = 1.0

    def check(self) -> None:
        """Finite w ≥ 0."""
        if not non_negative(self.featkd_weight):
            raise UserInputError(f"Feature distillation needs a finite featkd_weight ≥ 0, got {self.featkd_weight}.")


class FeatKD(Plugin):
    """MSE between the penultimate features of the model and its pre-task copy."""

    name = "featkd"
    paper = "Smith et al., A Closer Look at Rehearsal-Free Continual Learning, 2022"
    Config = FeatKDConfig

    def __init__(self, config: FeatKDConfig) -> None:
        super().__init__(config)
        self.teacher = None

    def before_task(self, learner, task, ids) -> None:
        """Snapshot the teacher when a task learned before (and not unlearned since) remains."""
        self.teacher = frozen_copy(learner.model) if learner.learned_tasks else None

    def penalty(self, learner, model, batch):
        """w · MSE(h(x), h*(x))."""
        if self.teacher is None:
            return None
        with torch.no_grad():
            _, target = self.teacher(batch["x"], return_features=True)
        _, features = model(batch["x"], return_features=True)
        return self.config.featkd_weight * F.mse_loss(features, target)

    def forget(self, learner, ids, task) -> None:
        """The teacher holds what was forgotten: drop it."""
        self.teacher = None

"""Learning without Forgetting / prediction distillation.

Li & Hoiem, "Learning without Forgetting" (ECCV 2016; TPAMI 2017): while learning a new task,
keep the old classes' outputs close to those of the model before the task:
L = CE(f(x), y) + α T² KL(softmax(f*(x)_old / T) ‖ softmax(f(x)_old / T)), on the current batch only.

Our choices: "old" outputs are the classes seen before the task (all classes in domain-IL); T = 2
as in the paper. The teacher f* is a copy taken when the task starts, so after an unlearning request
it is the unlearned model; it is dropped on unlearning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...adapters.base import frozen_copy
from ...errors import UserInputError
from .base import Plugin, PluginConfig


@dataclass
class LwFConfig(PluginConfig):
    """α (distillation weight) and T (temperature)."""

    lwf_alpha: float = 1.0
    temperature: float = 2.0

    def check(self) -> None:
        """α ≥ 0 and T > 0."""
        if self.lwf_alpha < 0 or self.temperature <= 0:
            raise UserInputError(f"LwF needs lwf_alpha ≥ 0 and temperature > 0, got {self.lwf_alpha} and {self.temperature}.")

class LwF(Plugin):
    """Distil the old classes' predictions of the model from before the task."""

    name = "lwf"
    paper = "Li & Hoiem, Learning without Forgetting, 2016"
    Config = LwFConfig

    def __init__(self, config: LwFConfig) -> None:
        super().__init__(config)
        self.teacher = None
        self.old_classes: list[int] = []

    def before_task(self, learner, task, ids) -> None:
        """Snapshot the teacher when something was learned before."""
        self.teacher = frozen_copy(learner.model) if learner.tasks_learned else None
        if learner.scenario.setting == "domain-il":
            self.old_classes = list(range(learner.scenario.num_classes))
        else:
            self.old_classes = sorted(learner.seen_classes)

    def penalty(self, learner, model, batch):
        """α T² KL(teacher ‖ student) over the old classes."""
        if self.teacher is None or not self.old_classes:
            return None
        t = self.config.temperature
        with torch.no_grad():
            target = F.softmax(self.teacher(batch["x"])[:, self.old_classes] / t, dim=1)
        student = F.log_softmax(model(batch["x"])[:, self.old_classes] / t, dim=1)
        return self.config.lwf_alpha * t * t * F.kl_div(student, target, reduction="batchmean")

    def forget(self, learner, ids, task) -> None:
        """The teacher holds what was forgotten: drop it."""
        self.teacher = None

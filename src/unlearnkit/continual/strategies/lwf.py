"""Learning without Forgetting / prediction distillation.

Li & Hoiem, "Learning without Forgetting" (ECCV 2016; TPAMI 2017): while learning a new task,
keep the old classes' outputs close to those of the model before the task:
L = CE(f(x), y) + α KL(softmax(f*(x)_old / T) ‖ softmax(f(x)_old / T)), on the current batch only.
No T² factor (Hinton et al.'s distillation has one; the paper, Avalanche's and Mammoth's LwF do not).

In task-incremental scenarios each old task has its own head (its classes), and, as in the paper,
each head is distilled with its own softmax and the terms are summed. Our choices: in class- and
domain-incremental scenarios the old outputs are one head, the classes of the tasks learned before
the task (all classes in domain-IL); T = 2 as in the paper. A task unlearned in between no longer
counts: its classes (task-IL: its head) are not distilled, as in a run that never learned it. The
teacher f* is a copy taken when the task starts, so after an unlearning request it is the unlearned
model; it is dropped on unlearning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...adapters.base import frozen_copy
from ...errors import UserInputError
from .base import Plugin, PluginConfig, non_negative, positive


@dataclass
class LwFConfig(PluginConfig):
    """α (distillation weight) and T (temperature)."""

    lwf_alpha: float = 1.0
    temperature: float = 2.0

    def check(self) -> None:
        """Finite α ≥ 0 and T > 0."""
        if not non_negative(self.lwf_alpha) or not positive(self.temperature):
            raise UserInputError(f"LwF needs a finite lwf_alpha ≥ 0 and temperature > 0, got {self.lwf_alpha} and {self.temperature}.")

class LwF(Plugin):
    """Distil the old classes' predictions of the model from before the task."""

    name = "lwf"
    paper = "Li & Hoiem, Learning without Forgetting, 2016"
    Config = LwFConfig

    def __init__(self, config: LwFConfig) -> None:
        super().__init__(config)
        self.teacher = None
        self.heads: list[list[int]] = []  # the old outputs, one softmax each

    def before_task(self, learner, task, ids) -> None:
        """Snapshot the teacher when a task learned before (and not unlearned since) remains."""
        self.teacher = frozen_copy(learner.model) if learner.learned_tasks else None
        scenario = learner.scenario
        if scenario.setting == "domain-il":
            self.heads = [list(range(scenario.num_classes))]
        elif scenario.setting == "task-il":
            heads = {tuple(sorted(t.classes)) for t in scenario.tasks if set(t.classes) <= learner.seen_classes}
            self.heads = [list(h) for h in sorted(heads)]
        else:
            self.heads = [sorted(learner.seen_classes)] if learner.seen_classes else []

    def penalty(self, learner, model, batch):
        """α Σ_heads KL(teacher ‖ student), each old head with its own softmax at temperature T."""
        if self.teacher is None or not self.heads:
            return None
        t = self.config.temperature
        with torch.no_grad():
            teacher = self.teacher(batch["x"])
        student = model(batch["x"])
        kl = sum(F.kl_div(F.log_softmax(student[:, head] / t, dim=1), F.softmax(teacher[:, head] / t, dim=1),
                          reduction="batchmean") for head in self.heads)
        return self.config.lwf_alpha * kl

    def forget(self, learner, ids, task) -> None:
        """The teacher holds what was forgotten: drop it."""
        self.teacher = None

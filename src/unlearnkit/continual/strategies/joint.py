"""Joint training: the upper bound that is allowed to see every learned sample at once.

After each learn request the model is re-initialised (same seed) and trained on every sample learned so far
(minus forgotten ones) for the usual number of epochs per task. The store keeps one row per learn: a task
learned twice counts twice per epoch, as the retrained reference, which replays the same requests, does too. Its natural
unlearner is exact retraining. It stores all learned samples, so unlearning purges that store.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import torch

from ...train import optimise
from ..nets import build_mlp
from ..scenarios import Task
from .base import GradientLearner, check_trained


class Joint(GradientLearner):
    """Retrain from scratch on everything learned so far."""

    name = "joint"
    default_unlearner = "retrain"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.store_ids = torch.empty(0, dtype=torch.long)
        self.store_task = torch.empty(0, dtype=torch.long)

    def learn(self, task: Task, ids: torch.Tensor) -> None:
        """Add the task's samples to the store and retrain a fresh model on the whole store."""
        self.store_ids = torch.cat([self.store_ids, ids])
        self.store_task = torch.cat([self.store_task, torch.full((len(ids),), task.index)])
        self.learned_tasks.add(task.index)
        self.tasks_learned += 1
        self._retrain()

    def _retrain(self) -> None:
        self.model = build_mlp(self.scenario.input_shape, self.scenario.num_classes, self.config.hidden, self.seed)
        if not len(self.store_ids):
            return
        size = self.config.batch_size

        def epoch_batches(epoch: int) -> Iterator[dict]:
            order = torch.randperm(len(self.store_ids), generator=torch.Generator().manual_seed(self.seed + 7919 * epoch))
            for start in range(0, len(order), size):
                pick = order[start : start + size]
                yield self.batch_of(self.store_ids[pick], self.store_task[pick])

        config = dataclasses.replace(self.config, seed=self.seed)  # the run's seed, not the recipe's default
        record = optimise(self.model, epoch_batches, self.task_loss, config,
                          steps_per_epoch=-(-len(self.store_ids) // size), description="joint", cpu=True)
        check_trained(record, "the joint retraining")
        self.model.eval()

    def purge(self, ids: set[int], task: int | None) -> None:
        """Remove the forgotten samples from the store (a forgotten task no longer counts as learned)."""
        if task is not None:
            self.learned_tasks.discard(task)
        keep = ~torch.isin(self.store_ids, torch.tensor(sorted(ids), dtype=torch.long))
        self.store_ids, self.store_task = self.store_ids[keep], self.store_task[keep]

    def held_ids(self) -> set[int]:
        """Every stored sample id."""
        return set(self.store_ids.tolist())

"""Experience replay with a reservoir buffer.

Chaudhry et al., "On Tiny Episodic Memories in Continual Learning" (2019); reservoir sampling as in
Vitter (1985) and Mammoth's ``er``. Each step minimises CE(B) + CE(M) for the current batch B and a
batch M drawn uniformly from the buffer; then B is offered to the reservoir (the n-th sample seen
replaces a random slot with probability |buffer| / n).

Our choices: a sample is offered once per task, on its first pass (not once per epoch); the two
terms are batch means added with equal weight. Unlearning removes every forgotten sample from the
buffer and keeps n: each remaining sample is still held with probability |buffer| / n, so later
samples fill the freed slots with that same probability (n unchanged: nobody is evicted) until the
buffer is full again, and the buffer stays a uniform reservoir over the remaining stream. (Refilling
freed slots with certainty, or restarting n at the remaining count, over-represents the samples
that follow a purge.) When no learned task is left, nothing remains for n to count and it restarts
at 0, as in a run that never learned anything (kept, it admitted each later sample with probability
|buffer| / n only, so a task shorter than the forgotten stream left the buffer part-empty).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import UserInputError
from .base import Plugin, PluginConfig


@dataclass
class ERConfig(PluginConfig):
    """Buffer size and replay batch size (0: the training batch size)."""

    buffer_size: int = 200
    replay_batch_size: int = 0

    def check(self) -> None:
        """A positive buffer and a non-negative replay batch size."""
        if self.buffer_size < 1 or self.replay_batch_size < 0:
            raise UserInputError(f"Replay needs buffer_size ≥ 1 and replay_batch_size ≥ 0, got {self.buffer_size} and {self.replay_batch_size}.")


class ReservoirBuffer:
    """Stored samples (inputs, labels, sample ids, task ids) filled by reservoir sampling.

    Invariant: every sample offered and not removed is held with probability min(1, capacity / ``seen``).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity, self.seen = capacity, 0
        self.x = self.y = self.ids = self.task = None

    def __len__(self) -> int:
        return 0 if self.ids is None else len(self.ids)

    def add(self, batch: dict, generator: torch.Generator) -> None:
        """Offer each sample of ``batch``. Full buffer: the n-th sample replaces a random slot with probability
        capacity / n. Free slot: the sample is admitted with the held samples' probability min(1, capacity / n),
        where n counts the offers only up to capacity (beyond, admitting evicts nobody, so n stays)."""
        for n in range(len(batch["ids"])):
            row = {k: batch[k][n : n + 1] for k in ("x", "y", "ids", "task")}
            if len(self) < self.capacity:
                if self.seen < self.capacity:
                    self.seen += 1
                    self._append(row)
                elif int(torch.randint(self.seen, (1,), generator=generator)) < self.capacity:
                    self._append(row)
                continue
            self.seen += 1
            slot = int(torch.randint(self.seen, (1,), generator=generator))
            if slot < self.capacity:
                for key in row:
                    getattr(self, key)[slot] = row[key][0]

    def _append(self, row: dict) -> None:
        for key, value in row.items():
            old = getattr(self, key)
            setattr(self, key, value.clone() if old is None else torch.cat([old, value]))

    def sample(self, size: int, generator: torch.Generator) -> dict:
        """A uniform batch without replacement (the whole buffer when it is smaller)."""
        pick = torch.randperm(len(self), generator=generator)[:size]
        return {"x": self.x[pick], "y": self.y[pick], "ids": self.ids[pick], "task": self.task[pick]}

    def remove(self, ids: set[int]) -> int:
        """Delete every stored sample whose id is in ``ids``; return how many went (``seen`` is kept, see the class)."""
        if not len(self):
            return 0
        keep = ~torch.isin(self.ids, torch.tensor(sorted(ids), dtype=self.ids.dtype))
        removed = int((~keep).sum())
        for key in ("x", "y", "ids", "task"):
            setattr(self, key, getattr(self, key)[keep])
        return removed

    def held_ids(self) -> set[int]:
        """The sample ids in the buffer."""
        return set() if self.ids is None else set(self.ids.tolist())


class ER(Plugin):
    """Replay a buffer batch with every current batch."""

    name = "er"
    paper = "Chaudhry et al., On Tiny Episodic Memories in Continual Learning, 2019"
    Config = ERConfig

    def __init__(self, config: ERConfig) -> None:
        super().__init__(config)
        self.buffer = ReservoirBuffer(config.buffer_size)
        self.offered: set[int] = set()

    def before_task(self, learner, task, ids) -> None:
        """A new task: its samples have not been offered yet."""
        self.offered = set()

    def replay_loss(self, learner, model, replay: dict) -> torch.Tensor:
        """Cross-entropy of the replayed samples on the full (dot-product) logits."""
        return F.cross_entropy(learner.mask(model(replay["x"]), replay["task"]), replay["y"])

    def penalty(self, learner, model, batch):
        """Replay a buffer batch, then offer the current batch to the reservoir."""
        loss = None
        if len(self.buffer):
            size = self.config.replay_batch_size or learner.config.batch_size
            loss = self.replay_loss(learner, model, self.buffer.sample(size, learner.generator))
        fresh = torch.tensor([i not in self.offered for i in batch["ids"].tolist()], dtype=torch.bool)
        if fresh.any():
            self.buffer.add({k: batch[k][fresh] for k in ("x", "y", "ids", "task")}, learner.generator)
            self.offered.update(batch["ids"][fresh].tolist())
        return loss

    def forget(self, learner, ids, task) -> None:
        """Purge the forgotten samples from the buffer; with no learned task left, n restarts at 0."""
        self.buffer.remove(ids)
        if not learner.learned_tasks and not len(self.buffer):  # nothing remains for n to count
            self.buffer.seen = 0

    def held_ids(self) -> set[int]:
        """The buffer's sample ids."""
        return self.buffer.held_ids()

"""Experience replay with a reservoir buffer.

Chaudhry et al., "On Tiny Episodic Memories in Continual Learning" (2019); reservoir sampling as in
Vitter (1985) and Mammoth's ``er``. Each step minimises CE(B) + CE(M) for the current batch B and a
batch M drawn uniformly from the buffer; then B is offered to the reservoir (the n-th sample seen
replaces a random slot with probability |buffer| / n).

Our choices: a sample is offered once per task, on its first pass (not once per epoch); the two
terms are batch means added with equal weight. Unlearning removes every forgotten sample from the
buffer, and the buffer stays a uniform sample of the offers that remain by random pairing (Gemulla,
Lehner and Haas, "A Dip in the Reservoir", VLDB 2006): each deletion, from inside the buffer or
outside it, waits to be paired with a later offer, which takes the freed slot only if its randomly
chosen partner was deleted from inside. (Refilling freed slots with certainty, or continuing
reservoir sampling over the remaining count, over-represents the samples that follow a purge.)
Until every deletion is paired the buffer may hold fewer samples than it could; when no offer
remains, it starts afresh.
"""

from __future__ import annotations

from collections import Counter
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
    """Stored samples (inputs, labels, sample ids, task ids) filled by reservoir sampling and kept uniform
    under deletions by random pairing.

    Invariant: every live offer (offered and not removed) is held with the same probability.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity, self.seen = capacity, 0  # seen: live offers
        self.offers: Counter[int] = Counter()  # live offers of each sample id (a sample is offered once per task)
        self.unpaired_inside = self.unpaired_outside = 0  # deletions from the buffer / from outside it, not yet paired
        self.x = self.y = self.ids = self.task = None

    def __len__(self) -> int:
        return 0 if self.ids is None else len(self.ids)

    def add(self, batch: dict, generator: torch.Generator) -> None:
        """Offer each sample of ``batch``. With every deletion paired: reservoir sampling (a free slot takes the
        sample; a full buffer replaces a random slot with probability capacity / n, n the live offers). Otherwise
        the offer is paired with an unpaired deletion drawn at random and enters the buffer if that deletion came
        from inside it."""
        for n in range(len(batch["ids"])):
            row = {k: batch[k][n : n + 1] for k in ("x", "y", "ids", "task")}
            self.seen += 1
            self.offers[int(row["ids"][0])] += 1
            unpaired = self.unpaired_inside + self.unpaired_outside
            if unpaired:
                if int(torch.randint(unpaired, (1,), generator=generator)) < self.unpaired_inside:
                    self.unpaired_inside -= 1
                    self._append(row)
                else:
                    self.unpaired_outside -= 1
            elif len(self) < self.capacity:
                self._append(row)
            else:
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
        """Delete every stored sample whose id is in ``ids`` and every offer of them; return how many stored rows
        went. Each deleted offer waits to be paired with a later one (see the class); with no offer left, the
        buffer starts afresh."""
        removed = 0
        if len(self):
            keep = ~torch.isin(self.ids, torch.tensor(sorted(ids), dtype=self.ids.dtype))
            removed = int((~keep).sum())
            for key in ("x", "y", "ids", "task"):
                setattr(self, key, getattr(self, key)[keep])
        deleted = sum(self.offers.pop(i, 0) for i in ids)
        self.seen -= deleted
        self.unpaired_inside += removed
        self.unpaired_outside += deleted - removed
        if not self.seen:
            self.unpaired_inside = self.unpaired_outside = 0
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
        """Purge the forgotten samples from the buffer."""
        self.buffer.remove(ids)

    def held_ids(self) -> set[int]:
        """The buffer's sample ids."""
        return self.buffer.held_ids()

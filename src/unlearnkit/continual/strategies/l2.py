"""L2 regularisation towards the weights after the first task (or, optionally, after the previous one).

From Smith et al., "A Closer Look at Rehearsal-Free Continual Learning" (CVPR-W 2023, arXiv
2203.17269), where plain L2 to an anchor θ* is a strong rehearsal-free baseline: minimise
L_t(θ) + λ Σ_k (θ_k − θ*_k)² over the backbone's weights k. As in their set-up, the classifier head
is not anchored: pulling it to θ* would drag the output units of tasks learned after the anchor back
to their untrained values.

Which θ*: by default (``l2_anchor=first``) the weights after the first learned task, fixed from then
on, as this project's issue asks. The co-author code (``learners/kd.py`` of
shaunak27/data-free-continual-learning) anchors task 1 to the pre-trained weights and then moves θ*
to the weights at the end of every task; ``l2_anchor=previous`` does that (with no pre-training here,
task 1 has no anchor). The moving anchor held the network back less on our scenarios.

Our choice for unlearning: the anchor's weights were trained on every sample learned before it was set
(under either rule), so when a request removes any of those samples the anchor moves to the unlearned
weights, and the penalty cannot pull the forgotten samples back; when no learned task is left, the
anchor goes and the next task learned sets it again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import UserInputError
from .base import Plugin, PluginConfig, non_negative


@dataclass
class L2Config(PluginConfig):
    """λ, the penalty strength."""

    l2_lambda: float = 0.01
    l2_anchor: str = "first"  # first: the weights after the first task; previous: after each task (authors' code)

    def check(self) -> None:
        """Finite λ ≥ 0 and a known anchor rule."""
        if not non_negative(self.l2_lambda):
            raise UserInputError(f"L2 needs a finite l2_lambda ≥ 0, got {self.l2_lambda}.")
        if self.l2_anchor not in ("first", "previous"):
            raise UserInputError(f"L2's l2_anchor must be 'first' or 'previous', got {self.l2_anchor!r}.")


class L2(Plugin):
    """Penalise the backbone's squared distance to its weights after the first (or the previous) task."""

    name = "l2"
    paper = "Smith et al., A Closer Look at Rehearsal-Free Continual Learning, 2022"
    Config = L2Config

    def __init__(self, config: L2Config) -> None:
        super().__init__(config)
        self.anchor: dict[str, torch.Tensor] | None = None
        self.learned_ids: set[int] = set()  # samples learned and not forgotten
        self.anchor_ids: set[int] = set()  # those the anchor's weights were trained on

    def penalty(self, learner, model, batch):
        """λ Σ (θ − θ*)² over the backbone."""
        if self.anchor is None:
            return None
        params = dict(learner.model.body.named_parameters())
        return self.config.l2_lambda * sum(((params[k] - a) ** 2).sum() for k, a in self.anchor.items())

    def _set_anchor(self, learner) -> None:
        """θ* ← the backbone as it is now, trained on every sample learned so far."""
        self.anchor = {k: v.detach().clone() for k, v in learner.model.body.named_parameters()}
        self.anchor_ids = set(self.learned_ids)

    def after_task(self, learner, task, ids) -> None:
        """The first task's end sets the anchor; with ``l2_anchor=previous`` every task's end moves it."""
        self.learned_ids |= set(ids.tolist())
        if self.anchor is None or self.config.l2_anchor == "previous":
            self._set_anchor(learner)

    def forget(self, learner, ids, task) -> None:
        """Re-anchor at the unlearned weights when the anchor's weights were trained on a forgotten sample; with
        no learned task left, drop the anchor, so the next task learned is the first one again (as in a run that
        never learned any)."""
        self.learned_ids -= ids
        if not learner.learned_tasks:
            self.anchor, self.anchor_ids = None, set()
        elif self.anchor is not None and self.anchor_ids & ids:
            self._set_anchor(learner)

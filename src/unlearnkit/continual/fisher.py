"""Diagonal empirical Fisher information, and the per-task Fisher terms EWC and refresh learning keep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..adapters.base import eval_mode
from .records import trim_forgotten


def diagonal_fisher(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk: int = 256,
    params: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """F = mean_n p(y_n|x_n) · (∇_θ log p(y_n|x_n))², per parameter (as Mammoth's ``ewc_on``).

    Per-sample gradients come from ``torch.func.vmap``; ``mask`` may hide logits (task-IL); ``params``
    (trainable parameters by name) evaluates F at other weights than the model's own.
    """
    if params is None:
        params = trainable_weights(model)

    def nll(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, p, (xi.unsqueeze(0),))
        if mask is not None:
            logits = mask(logits)
        return F.cross_entropy(logits, yi.unsqueeze(0))

    per_sample_grad = vmap(grad(nll), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    with eval_mode(model):
        for start in range(0, len(y), chunk):
            xs, ys = x[start : start + chunk], y[start : start + chunk]
            grads = per_sample_grad(params, xs, ys)
            with torch.no_grad():
                logits = functional_call(model, params, (xs,))
                if mask is not None:
                    logits = mask(logits)
                weight = torch.exp(-F.cross_entropy(logits, ys, reduction="none"))
            for k, g in grads.items():
                total[k] += torch.einsum("n,n...->...", weight, g.pow(2))
    return {k: v / max(len(y), 1) for k, v in total.items()}


def trainable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the model's trainable parameters, by name."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


@dataclass(eq=False)
class FisherTerm:
    """One task's diagonal Fisher and what recomputing it takes: the samples and the weights it was taken at."""

    task: int
    ids: torch.Tensor
    weights: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]


class TaskFishers:
    """Per-task diagonal Fisher terms F_t, combined as F = Σ_t decay^(age of t) · F_t (the running F ← decay·F + F_t).

    After an unlearning request no term is computed on a forgotten sample: a forgotten task's term goes, and a
    term that held forgotten samples is recomputed without them at the weights it was first taken at (a term
    left with no sample goes). Those weights, like the model's own, were trained on the forgotten samples, and
    later tasks' terms were taken at weights that were: what remains of them there is the unlearner's to remove,
    not this store's. The cost is one copy of the trainable weights per task.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.terms: list[FisherTerm] = []
        self.total: dict[str, torch.Tensor] | None = None

    def add(self, learner: Any, task: int, ids: torch.Tensor) -> None:
        """Take task ``task``'s Fisher on the samples ``ids`` at the learner's current weights."""
        weights = trainable_weights(learner.model)
        self.terms.append(FisherTerm(task, ids.clone(), weights, _task_fisher(learner, task, ids, weights)))
        self._combine()

    def forget(self, learner: Any, ids: set[int], task: int | None) -> None:
        """Drop the forgotten ``task``'s term, and recompute every term that holds a forgotten sample."""
        self.terms, trimmed = trim_forgotten(self.terms, ids, task)
        for term in trimmed:
            term.fisher = _task_fisher(learner, term.task, term.ids, term.weights)
        self._combine()

    def _combine(self) -> None:
        self.total = None
        for term in self.terms:
            self.total = dict(term.fisher) if self.total is None else {
                k: self.decay * self.total[k] + v for k, v in term.fisher.items()}


def _task_fisher(learner: Any, task: int, ids: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Fisher of task ``task``'s samples ``ids`` at ``weights``, with the task's logit mask."""
    mask = lambda logits: learner.mask(logits, torch.full((len(logits),), task))
    return diagonal_fisher(learner.model, learner.scenario.train_x[ids], learner.scenario.train_y[ids], mask,
                           params=weights)

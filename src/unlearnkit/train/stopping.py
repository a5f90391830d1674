"""A retain-model-free early stop: end forgetting once the forget set looks like never-seen data.

A model that never saw the forget items treats them like any other unseen items of the same kind.
TOFU ships a ``holdout`` split for exactly this comparison (people the model was never trained
on). The criterion compares a statistic of the forget set with the same statistic of the holdout
set, both under the *current* model, and stops the shared loop once the forget set has reached the
holdout's level:

- ``"holdout_nll"``: mean answer NLL̄ of the forget items ≥ that of the holdout items − margin.
- ``"holdout_truth_ratio"``: median log truth ratio (log P_wrong − log P_correct, "correct" being
  the paraphrased answer) of the forget items ≥ that of the holdout items − margin. Needs
  ``paraphrased_answer`` and ``perturbed_answer`` on both sets (TOFU's ``*_perturbed`` files).

Only the request's forget and holdout items are read; no retain (gold) model is involved, so a
user can apply it to a real request. On the facts bench the request's holdout is also the holdout
the membership attacks and privleak compare the forget set with, so an early-stopped run's MIA
numbers are in-sample for its stopping rule: read them with that in mind. Each check costs one no-grad pass over both sets (six for the
truth ratio), so it runs every ``stop_every`` optimizer steps (0: once per epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..adapters.base import device_of, eval_mode
from ..errors import UserInputError
from .config import TrainConfig

STOP_CRITERIA = ("none", "holdout_nll", "holdout_truth_ratio")


@dataclass
class StopConfig(TrainConfig):
    """Adds the holdout early stop (see :mod:`unlearnkit.train.stopping`).

    ``early_stop``: ``"none"`` (default: run every epoch), ``"holdout_nll"`` or
    ``"holdout_truth_ratio"``; ``stop_every``: optimizer steps between checks (0: at each epoch's
    end); ``stop_margin``: how far below the holdout's level the forget set may stop (in nats).
    """

    early_stop: str = "none"
    stop_every: int = 0
    stop_margin: float = 0.0

    def check(self) -> None:
        """Also validate the stop settings."""
        super().check()
        if self.early_stop not in STOP_CRITERIA:
            raise UserInputError(f"Unknown early_stop {self.early_stop!r}; valid: {', '.join(STOP_CRITERIA)}.")
        if not (isinstance(self.stop_every, int) and self.stop_every >= 0):
            raise UserInputError(f"stop_every must be a non-negative integer, got stop_every={self.stop_every}.")
        if not math.isfinite(self.stop_margin):
            raise UserInputError(f"stop_margin must be a finite number of nats, got stop_margin={self.stop_margin}.")
        if self.early_stop == "none" and (self.stop_every != 0 or self.stop_margin != 0):
            given = "stop_every" if self.stop_every != 0 else "stop_margin"
            raise UserInputError(f"{given} applies to an early stop, but early_stop is 'none'; set early_stop="
                                 f"{' or '.join(STOP_CRITERIA[1:])}, or leave {given} out.")
        if self.early_stop != "none" and self.max_steps is not None and self.stop_every > self.max_steps:
            raise UserInputError(f"early_stop={self.early_stop!r} is checked every {self.stop_every} optimizer steps, "
                                 f"but max_steps={self.max_steps} ends the run first, so it would never be checked; "
                                 "give a smaller stop_every.")


class HoldoutStop:
    """Decides, every ``every`` steps, whether the forget set has reached the holdout's level.

    ``trace`` keeps ``(step, forget statistic, holdout statistic)`` of every check.
    """

    def __init__(self, adapter: Any, forget: Sequence[Any], holdout: Sequence[Any], statistic: str, *,
                 every: int, margin: float = 0.0, batch_size: int = 128) -> None:
        self.adapter, self.forget, self.holdout = adapter, list(forget), list(holdout)
        self.statistic, self.every, self.margin, self.batch_size = statistic, max(1, every), margin, batch_size
        self.trace: list[tuple[int, float, float]] = []

    def due(self, step: int) -> bool:
        """Whether a check runs after optimizer step ``step`` (1-based)."""
        return step % self.every == 0

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, step: int) -> str | None:
        """A sentence saying why training stops now, or None to go on."""
        with eval_mode(model):
            forget, holdout = self._level(model, self.forget), self._level(model, self.holdout)
        self.trace.append((step, forget, holdout))
        if forget >= holdout - self.margin:
            return (f"stopped at step {step}: forget {self._label()} {forget:.4g} reached the holdout's "
                    f"{holdout:.4g} (margin {self.margin:g})")
        return None

    def _label(self) -> str:
        return "mean answer NLL" if self.statistic == "holdout_nll" else "median log truth ratio"

    def _level(self, model: torch.nn.Module, items: list[Any]) -> float:
        if self.statistic == "holdout_nll":
            return float(self._losses(model, items).mean())
        correct = self._losses(model, [{**it, "answer": it["paraphrased_answer"]} for it in items])
        owner = np.array([i for i, it in enumerate(items) for _ in it["perturbed_answer"]])
        wrong = self._losses(model, [{**it, "answer": a} for it in items for a in it["perturbed_answer"]])
        wrong_mean = np.bincount(owner, weights=wrong, minlength=len(items)) / np.bincount(owner, minlength=len(items))
        return float(np.median(correct - wrong_mean))  # log(P_wrong / P_correct) per item

    def _losses(self, model: torch.nn.Module, items: list[Any]) -> np.ndarray:
        device = device_of(model)
        out = []
        for start in range(0, len(items), self.batch_size):
            batch = {k: v.to(device) for k, v in self.adapter.collate(items[start:start + self.batch_size]).items()}
            out.append(self.adapter.per_item_loss(model, batch).detach().float().cpu().numpy())
        return np.concatenate(out)


def stop_for(config: Any, adapter: Any, request: Any, steps_per_epoch: int,
             forget: Sequence[Any] | None = None) -> HoldoutStop | None:
    """The early stop ``config`` asks for (None for ``"none"``); clear errors when the request cannot serve it.

    ``forget`` defaults to the request's forget items (a method that trains on other items, such as
    ULD's assistant, still stops on the forget set).
    """
    criterion = getattr(config, "early_stop", "none")
    if criterion == "none":
        return None
    forget = list(forget if forget is not None else request.forget_items())
    check_stop_request(config, request, forget)
    every = config.stop_every or steps_per_epoch
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    if every > total:
        when = f"every {every} optimizer steps" if config.stop_every else f"at each epoch's end ({every} steps)"
        raise UserInputError(f"early_stop={criterion!r} is checked {when}, but this run takes {total}, so it would "
                             "never be checked; give a smaller stop_every.")
    return HoldoutStop(adapter, forget, list(request.holdout), criterion, every=every, margin=config.stop_margin)


def check_stop_request(config: Any, request: Any, forget: Sequence[Any] | None = None) -> None:
    """Raise :class:`UserInputError` when ``request`` cannot serve ``config``'s early stop: it has no holdout items,
    or (``holdout_truth_ratio``) its forget (``forget``, default the request's) or holdout items lack the truth
    ratio's fields. Checked before any work (``check_needs``) and again by :func:`stop_for`."""
    criterion = getattr(config, "early_stop", "none")
    if criterion == "none":
        return
    holdout = list(getattr(request, "holdout", ()) or ())
    if not holdout:
        raise UserInputError(f"early_stop={criterion!r} needs holdout items (never trained on) in the request, "
                             "but it has none.")
    if criterion == "holdout_truth_ratio":
        _require_truth_ratio_fields(forget if forget is not None else request.forget_items(), "forget")
        _require_truth_ratio_fields(holdout, "holdout")


def _require_truth_ratio_fields(items: Sequence[Any], name: str) -> None:
    for item in items:
        wrong = item.get("perturbed_answer") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("paraphrased_answer"), str) \
                or not isinstance(wrong, (list, tuple)) or not wrong or not all(isinstance(a, str) for a in wrong):
            raise UserInputError(f"early_stop='holdout_truth_ratio' needs paraphrased_answer (a string) and "
                                 f"perturbed_answer (a non-empty list of strings) on every {name} item.")

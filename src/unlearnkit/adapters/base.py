"""The ModelAdapter protocol: what methods and evaluators may ask of a model kind."""

from __future__ import annotations

import copy
import itertools
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class ModelAdapter(Protocol):
    """How to batch a model kind's items and read losses, logits and hidden states from its model.

    Methods talk to an adapter, never to a model class, so one method file serves every kind that
    offers what the method needs. ``kind`` is one of ``classifier``, ``causal_lm``, ``recommender``,
    ``graph``.
    """

    kind: str
    model: nn.Module

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Turn a list of items into one batch (a dict of tensors)."""

    def per_item_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of each item in the batch, shape ``(B,)``, differentiable."""

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw model outputs for the batch."""


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, so that input models are never modified in place."""
    return copy.deepcopy(model)


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first weight or buffer (the CPU for a module that holds none)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode (dropout off), then give every submodule back its own mode:
    ``model.train(was_training)`` would also switch a submodule the caller froze (e.g. batch-norm) back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with gradients off: a teacher or reference (π_ref)."""
    frozen = clone_model(model).eval()
    frozen.requires_grad_(False)
    return frozen


def batches(items: Sequence[Any], batch_size: int, *, shuffle: bool, seed: int) -> Iterable[list[Any]]:
    """Yield lists of items, in a seeded order when ``shuffle`` is true."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist() if shuffle else range(len(items))
    order = list(order)
    for start in range(0, len(order), batch_size):
        yield [items[i] for i in order[start : start + batch_size]]


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

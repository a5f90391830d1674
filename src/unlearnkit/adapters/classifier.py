"""ClassifierAdapter: any ``nn.Module`` that maps an input batch to class logits."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError


class ClassifierAdapter:
    """Adapter for classifiers whose items are ``(input_tensor, label)`` pairs.

    The model must map a float tensor of shape ``(B, ...)`` to logits of shape ``(B, num_classes)``.
    """

    kind = "classifier"

    def __init__(self, model: nn.Module, num_classes: int | None = None) -> None:
        self.model = model
        self.num_classes = num_classes

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Stack ``(x, y)`` items into ``{"inputs": X, "labels": y}``."""
        inputs = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x, _ in items])
        labels = torch.as_tensor([_label(y) for _, y in items], dtype=torch.long)
        return {"inputs": inputs, "labels": labels}

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``(B, C)``, on the model's device and in its floating dtype (a collated batch is moved there)."""
        weight = next((p for p in model.parameters() if p.is_floating_point()), None)
        inputs = batch["inputs"]
        return model(inputs if weight is None else inputs.to(device=weight.device, dtype=weight.dtype))

    def per_item_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of each item against its label."""
        logits = self.logits(model, batch)
        labels = batch["labels"]
        if logits.ndim != 2:
            raise UserInputError(f"A classifier must return logits of shape (batch, classes); got shape {tuple(logits.shape)}.")
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < logits.shape[1]:
            raise UserInputError(f"Labels must lie in 0..{logits.shape[1] - 1} (the model's classes); "
                                 f"got {int(labels.min())}..{int(labels.max())}.")
        return F.cross_entropy(logits, labels.to(logits.device), reduction="none")

    def classes(self, items: Sequence[Any]) -> int:
        """Number of classes: the declared one, else one more than the largest label seen."""
        if self.num_classes is not None:
            return self.num_classes
        return int(max(int(y) for _, y in items)) + 1

    def with_model(self, model: nn.Module) -> "ClassifierAdapter":
        """The same adapter around another model (for example a copy being unlearned)."""
        return ClassifierAdapter(model, self.num_classes)


def _label(value: Any) -> int:
    """An integer class label; 1.9 or True is a mistake, not class 1."""
    if isinstance(value, bool) or int(value) != value:
        raise UserInputError(f"A class label must be an integer, got {value!r}.")
    return int(value)


"""ClassifierAdapter: any ``nn.Module`` that maps an input batch to class logits."""

from __future__ import annotations

import contextlib
import numbers
import operator
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from .base import eval_mode


class ClassifierAdapter:
    """Adapter for classifiers whose items are ``(input_tensor, label)`` pairs.

    The model must map a float tensor of shape ``(B, ...)`` to logits of shape ``(B, num_classes)``.
    """

    kind = "classifier"

    def __init__(self, model: nn.Module, num_classes: int | None = None) -> None:
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
                raise UserInputError(f"num_classes must be a whole number of at least 2, got {num_classes!r}.")
            num_classes = operator.index(num_classes)
        self.model = model
        self.num_classes = num_classes

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Stack ``(x, y)`` items into ``{"inputs": X, "labels": y}``; inputs must share one shape and be finite."""
        pairs = [_pair(item) for item in items]
        inputs = [_input(x) for x, _ in pairs]
        labels = torch.as_tensor([_label(y) for _, y in pairs], dtype=torch.long)
        try:
            stacked = torch.stack(inputs)
        except RuntimeError:
            shapes = list(dict.fromkeys(tuple(x.shape) for x in inputs))
            raise UserInputError(f"Classifier inputs must all have one shape; got {shapes[0]} and {shapes[1]}.") from None
        if not bool(torch.isfinite(stacked).all()):
            raise UserInputError("A classifier input holds NaN or an infinite value; inputs must be finite numbers.")
        return {"inputs": stacked, "labels": labels}

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``(B, C)``, on the model's device and in its floating dtype (a collated batch is moved there).

        Every forward is checked against the batch (see :meth:`check_output`), so no method or metric reads
        logits of another shape, another class count than ``num_classes``, or labels past the model's classes.
        A training BatchNorm layer that would see one value per channel (a batch of one item with no spatial
        dimensions) uses its running statistics for it and leaves them unchanged, as in evaluation: a one-record
        request, or one item left over after the last full batch, crashed every training method on such a model.
        """
        weight = next((p for p in model.parameters() if p.is_floating_point()), None)
        inputs = batch["inputs"]
        with _running_statistics(model) if len(inputs) == 1 and model.training else contextlib.nullcontext():
            logits = model(inputs if weight is None else inputs.to(device=weight.device, dtype=weight.dtype))
        self.check_output(logits, batch)
        return logits

    def check_output(self, logits: Any, batch: dict[str, torch.Tensor]) -> None:
        """Refuse, in one sentence, model outputs that are not ``(batch, classes)`` logits with at least two
        classes, a class count other than the declared ``num_classes``, and labels outside the model's classes
        (cross-entropy and the metrics' gathers would otherwise fail with a raw index error, or a method that
        reads only the logits' width would train on wrapped-around classes)."""
        rows = len(batch["inputs"])
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != rows:
            got = f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else f"a value of type {type(logits).__name__}"
            raise UserInputError(f"A classifier must return logits of shape (batch, classes); for a batch of {rows} "
                                 f"inputs it returned {got}.")
        width = logits.shape[1]
        if width < 2:
            raise UserInputError(f"A classifier must return a score for each of at least 2 classes; this model returns "
                                 f"{width} per item (with one class every cross-entropy is 0).")
        if self.num_classes is not None and width != self.num_classes:
            raise UserInputError(f"num_classes is {self.num_classes} but the model returns {width} class scores per "
                                 f"item; give the model's own number of classes.")
        labels = batch.get("labels")
        if isinstance(labels, torch.Tensor) and labels.ndim == 1 and not labels.is_floating_point() and len(labels):
            low, high = torch.stack(torch.aminmax(labels)).tolist()  # one device sync
            if not 0 <= low <= high < width:
                raise UserInputError(f"Labels must lie in 0..{width - 1} (the model's classes); got {low}..{high}.")

    def check_items(self, items: Sequence[Any], where: str) -> None:
        """Refuse, before any work, an item whose label the model has no class for, naming it (``where``: e.g.
        "the forget set"): one forward on the first item gives the model's width (checked as every forward is,
        see :meth:`check_output`), so a bad label late in the data does not stop a run halfway. Without a model
        (a bench validating its runs before building one) the declared ``num_classes`` stands in, if any."""
        if not len(items) or (self.model is None and self.num_classes is None):
            return
        if self.model is None:
            width = self.num_classes
        else:
            # two items where there are: a BatchNorm layer keeping no running statistics normalises with the batch's
            # own even in evaluation, so it cannot take one item
            inputs = self.collate([items[i] for i in range(min(2, len(items)))])["inputs"]  # a Dataset slices otherwise
            try:
                with torch.no_grad(), eval_mode(self.model):
                    width = self.logits(self.model, {"inputs": inputs}).shape[1]
            except UserInputError:  # check_output's own sentence (a ValueError too)
                raise
            except (RuntimeError, ValueError) as error:  # e.g. inputs of another width than the model's first layer
                if isinstance(error, (torch.OutOfMemoryError, NotImplementedError)):  # the machine's or the model's
                    raise
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise UserInputError(f"The model cannot take the items of {where} (input shape "
                                     f"{tuple(inputs.shape[1:])}): {reason}") from None
        for index, item in enumerate(items):
            label = _label(_pair(item)[1])
            if not 0 <= label < width:
                raise UserInputError(f"Item {index} of {where} has label {label}, but the model's classes are "
                                     f"0..{width - 1}.")

    def per_item_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of each item against its label (checked by :meth:`logits`)."""
        logits = self.logits(model, batch)
        return F.cross_entropy(logits, batch["labels"].to(logits.device), reduction="none")

    def allowed_classes(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        """Which of the ``width`` classes each item (by its label) may be scored as: all of them."""
        return torch.ones(len(labels), width, dtype=torch.bool)

    def with_model(self, model: nn.Module) -> "ClassifierAdapter":
        """The same adapter around another model (for example a copy being unlearned)."""
        return ClassifierAdapter(model, self.num_classes)


@contextlib.contextmanager
def _running_statistics(model: nn.Module) -> Iterator[None]:
    """Each training BatchNorm layer of ``model`` whose input holds one value per channel switched to its running
    statistics for the forward, then back (a BatchNorm2d over one image's pixels still has batch statistics)."""
    switched: list[nn.Module] = []

    def one_value_per_channel(module: nn.Module, args: tuple) -> None:
        if module.training and args[0].numel() == args[0].shape[1]:
            if module.running_mean is None:
                raise UserInputError(f"A {type(module).__name__} layer that keeps no running statistics "
                                     "(track_running_stats=False) cannot normalise a batch of one item; give a "
                                     "batch_size that leaves no single item over, or data with more items.")
            module.eval()
            switched.append(module)

    handles = [m.register_forward_pre_hook(one_value_per_channel) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in switched:
            module.train()


def _pair(item: Any) -> tuple[Any, Any]:
    """An item as its ``(input, label)`` pair."""
    if isinstance(item, (Mapping, str, bytes, bytearray)):  # unpacking would take a dict's keys or two characters
        raise UserInputError(f"A classifier item must be an (input, label) pair, got a {type(item).__name__}.")
    try:
        x, y = item
    except (TypeError, ValueError):
        raise UserInputError(f"A classifier item must be an (input, label) pair, got a {type(item).__name__}.") from None
    return x, y


def _input(value: Any) -> torch.Tensor:
    """An input as a float32 tensor."""
    try:
        return torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise UserInputError(f"A classifier input must be numbers (a tensor, an array or nested lists of one shape), "
                             f"got a {type(value).__name__}.") from None


def _label(value: Any) -> int:
    """An integer class label; 1.9 or True is a mistake, not class 1."""
    boolean = isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool)
    try:
        whole = not boolean and not isinstance(value, (str, bytes)) and int(value) == value
    except (TypeError, ValueError, OverflowError, RuntimeError):  # None, NaN, inf, a tensor of several numbers
        whole = False
    if not whole:
        raise UserInputError(f"A class label must be an integer, got {value!r}.")
    if not -2 ** 63 <= int(value) < 2 ** 63:  # past a 64-bit integer, stacking the labels overflowed
        raise UserInputError(f"The class label {value!r} is beyond any model's classes.")
    return int(value)


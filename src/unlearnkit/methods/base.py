"""What a method is: a name, the model kinds it serves, what it needs, its paper, its config."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Sequence

from torch import nn

from ..adapters.base import batches
from ..request import ForgetRequest
from ..train import TrainConfig, TrainRecord

#: Everything a method may declare that it needs.
NEEDS = ("retain", "labels", "reference_model", "hidden_states", "original_training_data", "gradients")


@dataclass
class Outcome:
    """A method's result: the unlearned model (possibly a wrapper) and what the training did."""

    model: nn.Module
    train: TrainRecord | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class for unlearning methods. Subclasses set the class attributes and ``unlearn``.

    ``unlearn`` receives an adapter whose model is already a private copy: it may change it freely.
    """

    name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ("classifier",)
    needs: ClassVar[frozenset[str]] = frozenset()
    paper: ClassVar[str] = ""
    use_when: ClassVar[str] = ""
    Config: ClassVar[type] = TrainConfig
    #: Defaults that depend on the model kind, over ``Config``'s (which serve the first kind in ``kinds``):
    #: kind → setting → value, e.g. a far smaller learning rate for pretrained language models.
    kind_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: False for methods that do not train the model's own weights by gradient steps (they edit weights in
    #: closed form, train something else, or wrap the model), so LoRA adapters cannot stand in for them.
    lora: ClassVar[bool] = True
    #: False for methods that take no gradient through the model's blocks in training mode (they run forward
    #: passes only, or take their gradients in eval mode), the only passes gradient checkpointing recomputes:
    #: for them it would save no memory, so it is refused.
    gradient_checkpointing: ClassVar[bool] = True
    #: False for methods that leave the model's own weights as they are (they wrap it, or train parts of
    #: their own): they can serve a model whose every parameter is frozen.
    edits_weights: ClassVar[bool] = True
    #: Tensors a method leaves on the returned model for later use, saved beside it by ``unlearnkit forget``:
    #: model attribute (a mapping of names to tensors) → safetensors file name in the output folder.
    saves: ClassVar[dict[str, str]] = {}

    def needs_for(self, config: Any) -> frozenset[str]:
        """What a run with ``config`` needs: ``needs``, plus retain data when the forget update is projected
        off retain gradients (``project``); a method may also drop needs a setting makes unnecessary."""
        return self.needs | ({"retain"} if getattr(config, "project", None) else frozenset())

    def check_request(self, request: ForgetRequest, config: Any) -> None:
        """Raise :class:`UserInputError` when ``request`` lacks data a run with ``config`` needs that ``needs_for``
        cannot express (default: the declared needs suffice); checked before the declared needs, so a method can
        name the setting behind a need."""

    def check_model(self, adapter: Any, config: Any) -> None:
        """Raise :class:`UserInputError` when this model cannot serve a run with ``config`` (default: any
        model of a served kind can)."""

    def unlearn(self, adapter: Any, request: ForgetRequest, config: Any) -> Outcome:  # pragma: no cover
        """Remove ``request``'s forget items from ``adapter.model`` (a private copy) by the method's update rule
        (its module docstring), with ``config``'s settings; the needs were checked before the call."""
        raise NotImplementedError


def item_stream(adapter: Any, items: Sequence[Any], config: TrainConfig, *, salt: int = 0):
    """Epoch-indexed batches of ``items`` (reshuffled each epoch, seeded) and the steps per epoch."""

    def epoch_batches(epoch: int) -> Iterator[dict]:
        for chunk in batches(items, config.batch_size, shuffle=True, seed=config.seed + 7919 * epoch + salt):
            yield adapter.collate(chunk)

    return epoch_batches, -(-len(items) // config.batch_size)


def paired_stream(
    adapter: Any,
    forget_items: Sequence[Any],
    retain_items: Sequence[Any],
    config: TrainConfig,
    *,
    retain_batch_size: int | None = None,
) -> tuple[Callable[[int], Iterator[dict]], int]:
    """Batches ``{"forget": ..., "retain": ...}``: one pass over the forget set per epoch, each forget
    batch paired with the next batch of a cycling, reshuffled pass over the retain set."""
    retain_bs = retain_batch_size or config.batch_size

    def retain_cycle() -> Iterator[list[Any]]:
        for round_ in itertools.count():
            yield from batches(retain_items, retain_bs, shuffle=True, seed=config.seed + 104729 * (round_ + 1))

    cycle = retain_cycle()

    def epoch_batches(epoch: int) -> Iterator[dict]:
        for chunk in batches(forget_items, config.batch_size, shuffle=True, seed=config.seed + 7919 * epoch):
            yield {"forget": adapter.collate(chunk), "retain": adapter.collate(next(cycle))}

    return epoch_batches, -(-len(forget_items) // config.batch_size)

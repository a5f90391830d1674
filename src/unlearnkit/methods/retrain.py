"""Retraining from scratch on the retain set: the gold standard every other method is measured against.

The exact-unlearning baseline named, for example, by Bourtoule et al., "Machine Unlearning"
(IEEE S&P 2021), whose SISA training exists to make it cheaper. Update rule: θ₀ ← a fresh
seeded initialisation, then θ ← θ − η ∇_θ L̄(D_r) for the configured epochs. Exact by
construction (the forget set is never seen), at the full cost of training.

Choices: the weights are re-initialised by calling ``reset_parameters()`` (or PyTorch's private
``_reset_parameters()``, as ``nn.MultiheadAttention`` has) on every submodule that has one, children
before their parent (the order a constructor runs them in: a parent's reset, such as the attention
layer's zeroing of its output bias, comes last), from the CPU generator seeded with ``seed``; for a
model built the same way under the same seed on the CPU whose constructor uses the layers' default
initialisation, this reproduces it. A constructor that
re-draws weights its own way (torchvision's ResNet, say, with Kaiming-normal convolutions) is not reproduced:
retraining starts from the layers' defaults. The draw is on the CPU whatever device the model
is on (it is moved there and back), since a GPU's generator gives other numbers for the same seed
(docs/scale.md, "Checked on one GPU"). A parameter held by a module without a reset (e.g. a bare
``nn.Parameter`` such as a ViT's class token) is refused with one sentence rather than
kept trained, which would leak the forget set into the "exact" baseline. Buffers without a reset
(none in plain CNNs) keep their values. Modules whose parameters are all frozen (a pretrained
backbone the training never fits) keep their weights; only what the training updates is redrawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..adapters.base import device_of
from ..errors import UserInputError
from ..train import TrainConfig, optimise
from .base import Method, Outcome, item_stream


@dataclass
class RetrainConfig(TrainConfig):
    """A from-scratch recipe for small CNNs (the digits benchmark's: 15 epochs of Adam at 2e-3)."""

    epochs: int = 15
    lr: float = 2e-3
    batch_size: int = 64
    grad_clip: float | None = None


def reinitialise(model: nn.Module, seed: int, *, keep_frozen: bool = True, purpose: str = "retrain from scratch") -> int:
    """Re-draw ``model``'s weights in place from ``seed``; return how many submodules were reset. ``purpose`` ends
    the refusal of a parameter no reset can re-draw ("give it one to <purpose>").

    With ``keep_frozen`` (for retraining) a module whose own parameters are all frozen
    (``requires_grad=False``, e.g. a pretrained backbone) keeps them: training would not fit them
    again, so resetting would leave them random; a module mixing frozen and trainable parameters is
    refused. The global random state is restored afterwards, so the caller's randomness is undisturbed.
    """
    if keep_frozen and not any(p.requires_grad for p in model.parameters()):
        raise UserInputError("Retraining needs trainable parameters, but every parameter of the model is frozen.")
    resets = [(name, module, _reset_of(module)) for name, module in _children_first(model)
              if not keep_frozen or _trainable(name, module)]
    for name, module, reset in resets:
        if reset is None:
            for param_name, _ in module.named_parameters(recurse=False):
                full = f"{name}.{param_name}" if name else param_name
                raise UserInputError(f"Cannot re-initialise parameter {full!r}: its module ({type(module).__name__}) "
                                     f"has no reset_parameters(); give it one to {purpose}.")
    home = device_of(model)
    model.to("cpu")
    with torch.random.fork_rng(devices=[]):  # the draw is on the CPU: its generator alone is seeded and restored
        torch.default_generator.manual_seed(seed)
        for _, _, reset in resets:
            if reset is not None:
                reset()
    model.to(home)
    return sum(reset is not None for _, _, reset in resets)


def _children_first(model: nn.Module, prefix: str = "", seen: set[int] | None = None):
    """``(name, module)`` of every submodule once, each after its children (post-order), as constructors run."""
    seen = set() if seen is None else seen
    for name, child in model.named_children():
        if id(child) not in seen:
            yield from _children_first(child, f"{prefix}.{name}" if prefix else name, seen)
    if id(model) not in seen:
        seen.add(id(model))
        yield prefix, model


def _trainable(name: str, module: nn.Module) -> bool:
    """Whether retraining re-draws this module: it has trainable parameters of its own, or none at all."""
    own = [p.requires_grad for p in module.parameters(recurse=False)]
    if any(own) and not all(own):
        raise UserInputError(f"Cannot retrain module {name or type(module).__name__!r}: some of its parameters are "
                             "frozen and some are not; freeze or unfreeze it whole.")
    return all(own)


def _reset_of(module: nn.Module):
    """The module's own re-initialisation method, or None."""
    for name in ("reset_parameters", "_reset_parameters"):
        if callable(getattr(module, name, None)):
            return getattr(module, name)
    return None


class Retrain(Method):
    """Re-initialise the model and train it on the retain set only."""

    name = "retrain"
    kinds = ("classifier",)
    needs = frozenset({"retain", "labels"})
    paper = "Bourtoule et al., Machine Unlearning, 2021 (retraining from scratch, the exact baseline)"
    use_when = 'The exact answer whenever training is affordable; every other method is measured against it.'
    Config = RetrainConfig

    def unlearn(self, adapter: Any, request, config: RetrainConfig) -> Outcome:
        reset = reinitialise(adapter.model, config.seed)
        stream, steps = item_stream(adapter, request.retain_items(), config)
        loss = lambda model, batch: adapter.per_item_loss(model, batch).mean()
        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="retraining")
        return Outcome(adapter.model, record, {"reset_modules": reset})

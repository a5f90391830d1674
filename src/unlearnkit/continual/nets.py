"""The small network the gradient strategies train: an MLP whose layer inputs and features are reachable."""

from __future__ import annotations

import math

import torch
from torch import nn


class ContinualMLP(nn.Module):
    """Flatten → (Linear → ReLU) × ``depth`` → Linear head; ``forward(x, return_features=True)`` also gives the
    penultimate features (feature distillation, UER's cosine head)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 100, depth: int = 2) -> None:
        super().__init__()
        sizes = [in_features] + [hidden] * depth
        self.body = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, hidden)``."""
        h = x.flatten(1)
        for layer in self.body:
            h = torch.relu(layer(h))
        return h

    def forward(self, x: torch.Tensor, return_features: bool = False):
        h = self.features(x)
        logits = self.head(h)
        return (logits, h) if return_features else logits

    def linear_layers(self) -> list[nn.Linear]:
        """Every linear layer, input side first (the layers gradient projection works on)."""
        return [*self.body, self.head]

    @torch.no_grad()
    def layer_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input each linear layer sees for ``x``, in :meth:`linear_layers` order."""
        inputs, h = [], x.flatten(1)
        for layer in self.body:
            inputs.append(h)
            h = torch.relu(layer(h))
        inputs.append(h)
        return inputs


def build_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int, seed: int) -> ContinualMLP:
    """A seeded :class:`ContinualMLP` for inputs of ``input_shape`` (the caller's random state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ContinualMLP(math.prod(input_shape), num_classes, hidden)

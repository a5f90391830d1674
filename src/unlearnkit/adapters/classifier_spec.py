"""Classifiers a user can hand over as a folder: ``unlearnkit.json`` (the spec) + ``model.safetensors``.

Spec examples::

    {"kind": "classifier", "architecture": "mlp", "input_dim": 64, "hidden": [64], "num_classes": 10}
    {"kind": "classifier", "architecture": "small_cnn", "image_size": 28, "num_classes": 10, "width": 32}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserInputError

SPEC_FILE = "unlearnkit.json"
ARCHITECTURES = ("mlp", "small_cnn")


class SmallCNN(nn.Module):
    """Two 3×3 conv blocks (ReLU, 2×2 max-pool) and a two-layer head, for 1-channel square images."""

    def __init__(self, image_size: int, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """A multi-layer perceptron with ReLU between layers."""

    def __init__(self, input_dim: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        sizes = [input_dim, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def input_shape(spec: dict[str, Any]) -> tuple[int, ...]:
    """The shape of one input the spec's model expects."""
    if spec["architecture"] == "mlp":
        return (int(spec["input_dim"]),)
    return (1, int(spec["image_size"]), int(spec["image_size"]))


def _size(spec: dict[str, Any], name: str, default: Any = None) -> int:
    """A positive whole-number field of the spec, or one sentence saying what is wrong with it."""
    value = spec.get(name, default)
    if value is None:
        raise UserInputError(f"The model spec for {spec.get('architecture')!r} has no field {name!r}.")
    return _positive(value, name)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserInputError(f"The model spec field {name!r} must be a positive whole number, got {value!r}.")
    return value


def build_classifier(spec: dict[str, Any]) -> nn.Module:
    """An untrained model of the spec's architecture (its sizes checked first)."""
    arch = spec.get("architecture")
    if arch == "mlp":
        hidden = spec.get("hidden", [])
        if not isinstance(hidden, list):
            raise UserInputError(f"The model spec field 'hidden' must be a list of layer widths, got {hidden!r}.")
        widths = [_positive(width, "hidden") for width in hidden]
        return MLP(_size(spec, "input_dim"), widths, _size(spec, "num_classes"))
    if arch == "small_cnn":
        return SmallCNN(_size(spec, "image_size"), _size(spec, "num_classes"), _size(spec, "width", 32))
    raise UserInputError(f"Unknown classifier architecture {arch!r} in {SPEC_FILE}; valid: {', '.join(ARCHITECTURES)}.")


def read_spec(directory: Path) -> dict[str, Any] | None:
    """The folder's classifier spec, or None when it has none."""
    path = directory / SPEC_FILE
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path} is not valid JSON (line {error.lineno}: {error.msg}).") from None
    if not isinstance(spec, dict) or spec.get("kind") != "classifier":
        raise UserInputError(f"{path} must be a JSON object with \"kind\": \"classifier\".")
    return spec


def save_classifier(model: nn.Module, spec: dict[str, Any], directory: Path) -> None:
    """Write the spec and the weights (safetensors) into ``directory``."""
    from ..io import save_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    save_state_dict(model.state_dict(), directory / "model.safetensors")

"""Classifiers a user can hand over as a folder: ``unlearnkit.json`` (the spec) + ``model.safetensors``.

Spec examples::

    {"kind": "classifier", "architecture": "mlp", "input_dim": 64, "hidden": [64], "num_classes": 10}
    {"kind": "classifier", "architecture": "small_cnn", "image_size": 28, "num_classes": 10, "width": 32}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import UserInputError

SPEC_FILE = "unlearnkit.json"
ARCHITECTURES = ("mlp", "small_cnn")
#: The most parameters a spec may describe (4 GiB of float32 weights): a mistyped size (a few zeros too many)
#: is refused in one sentence instead of exhausting the memory while the model is built.
MAX_PARAMETERS = 2**30


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
    if spec.get("architecture") == "mlp":
        return (_size(spec, "input_dim"),)
    side = _size(spec, "image_size")
    return (1, side, side)


def _size(spec: dict[str, Any], name: str, default: Any = None) -> int:
    """A positive whole-number field of the spec, or one sentence saying what is wrong with it."""
    if name not in spec and default is None:
        raise UserInputError(f"The model spec for {spec.get('architecture')!r} has no field {name!r}.")
    return _positive(spec.get(name, default), name)


def _positive(value: Any, name: str) -> int:
    """``value`` when it is a whole number of at least 1, else one sentence naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserInputError(f"The model spec field {name!r} must be a positive whole number, got {value!r}.")
    return value


def build_classifier(spec: dict[str, Any]) -> nn.Module:
    """An untrained model of the spec's architecture (its sizes checked first, its parameter count too)."""
    make = _constructor(spec)
    try:  # counted on the meta device: shapes only, so a mistyped size allocates nothing
        with torch.device("meta"):
            count: int | None = sum(p.numel() for p in make().parameters())
    except (RuntimeError, OverflowError, TypeError):  # a size beyond what a tensor can have (torch: TypeError)
        count = None
    if count is None or count > MAX_PARAMETERS:
        described = "a model too large to count" if count is None else f"a model of {count:,} parameters"
        raise UserInputError(f"The model spec describes {described}, more than the {MAX_PARAMETERS:,} parameters a "
                             "classifier spec may have; check its sizes.")
    return make()


def _constructor(spec: dict[str, Any]):
    """A function building the spec's model, after checking the spec's sizes."""
    arch = spec.get("architecture") if isinstance(spec, dict) else None
    if arch == "mlp":
        sizes = _mlp_sizes(spec)
        return lambda: MLP(sizes[0], sizes[1:-1], sizes[-1])
    if arch == "small_cnn":
        side, classes, width = _size(spec, "image_size"), _classes(spec), _size(spec, "width", 32)
        if side < 4:  # two 2×2 poolings need at least 4 pixels a side
            raise UserInputError(f"The model spec field 'image_size' must be at least 4 for small_cnn, got {side}.")
        return lambda: SmallCNN(side, classes, width)
    raise UserInputError(f"Unknown classifier architecture {arch!r} in {SPEC_FILE}; valid: {', '.join(ARCHITECTURES)}.")


def _mlp_sizes(spec: dict[str, Any]) -> list[int]:
    """Input width, hidden widths and class count of an ``mlp`` spec, each checked."""
    hidden = spec.get("hidden", [])
    if not isinstance(hidden, (list, tuple)):
        raise UserInputError(f"The model spec field 'hidden' must be a list of layer widths, got {hidden!r}.")
    return [_size(spec, "input_dim"), *(_positive(width, "hidden") for width in hidden), _classes(spec)]


def _classes(spec: dict[str, Any]) -> int:
    """The spec's class count: a classifier needs two classes at least (with one, every loss is 0)."""
    classes = _size(spec, "num_classes")
    if classes < 2:
        raise UserInputError(f"The model spec field 'num_classes' must be at least 2, got {classes}.")
    return classes


def read_spec(directory: Path) -> dict[str, Any] | None:
    """The folder's classifier spec, or None when it has none."""
    from ..userdata import parse_json

    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte order mark (Windows editors write one) is no JSON
    except UnicodeDecodeError:
        raise UserInputError(f"{path} is not text in UTF-8; expected JSON.") from None
    except OSError as error:
        raise UserInputError(f"{path} cannot be read ({error.strerror or type(error).__name__}).") from None
    try:
        spec = parse_json(text, str(path))
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path} is not valid JSON (line {error.lineno}: {error.msg}).") from None
    _check_kind(spec, str(path))
    return spec


def _check_kind(spec: Any, where: str) -> None:
    if not isinstance(spec, dict) or spec.get("kind") != "classifier":
        raise UserInputError(f"{where} must be a JSON object with \"kind\": \"classifier\".")


def save_classifier(model: nn.Module, spec: dict[str, Any], directory: Path) -> None:
    """Write the spec and the weights (safetensors) into ``directory``, each file atomically; a spec that
    :func:`read_spec` and :func:`build_classifier` would refuse, or that ``model``'s weights do not fit, is
    refused before anything is written."""
    from ..io import save_state_dict, write_text_atomic

    _check_kind(spec, "The spec to save")
    state = model.state_dict()
    check_fits(spec, state, "The model's weights")
    try:
        text = json.dumps(spec, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:  # a field that JSON cannot hold, or NaN
        raise UserInputError(f"The spec to save cannot be written as JSON ({error}).") from None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # the weights first: a folder is a classifier folder once its spec is there
    save_state_dict(state, directory / "model.safetensors")
    write_text_atomic(directory / SPEC_FILE, text)


def check_fits(spec: dict[str, Any], state: Mapping[str, torch.Tensor], weights: str) -> None:
    """Refuse ``weights`` (named in the sentence) whose names or shapes differ from the spec's architecture."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        expected = {name: tuple(tensor.shape) for name, tensor in build_classifier(spec).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        problems = [f"{label} {', '.join(names[:4])}{' …' if len(names) > 4 else ''}" for label, names in
                    (("missing", missing), ("unexpected", unexpected), ("other shapes for", wrong)) if names]
        raise UserInputError(f"{weights} do not fit the {spec['architecture']} architecture of {SPEC_FILE} "
                             f"({'; '.join(problems)}; it expects {', '.join(list(expected)[:6])}).")

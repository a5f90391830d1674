"""TrainConfig: the optimisation settings shared by every training-based method."""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from ..errors import UserInputError

#: The largest float32: torch's optimizers hold lr and weight_decay as float32 scalars.
FLOAT32_MAX = float(np.finfo(np.float32).max)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "linear", "cosine")
#: The settings only the shared optimisation loop reads: a method that takes no optimizer steps declares them
#: ``unused`` (see :attr:`TrainConfig.unused`).
OPTIMISER_SETTINGS = ("epochs", "max_steps", "lr", "optimizer", "momentum", "weight_decay", "schedule",
                      "warmup_steps", "grad_clip", "guard_every")


def finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (a bool is not a number here)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


@dataclass
class TrainConfig:
    """Optimisation settings. Method configs subclass this and add their own hyper-parameters.

    ``epochs`` counts passes over the method's driving set; ``max_steps`` (when set) stops earlier.
    ``unused`` names the inherited settings a method never reads: giving one is refused (it would
    silently do nothing), and results, the ledger and method cards leave them out.
    """

    unused: ClassVar[tuple[str, ...]] = ()

    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = 5.0
    seed: int = 0
    guard_every: int = 10

    def check(self) -> None:
        """Raise :class:`UserInputError` when a setting cannot work."""
        for name in ("epochs", "batch_size", "warmup_steps", "guard_every", "max_steps"):
            value = getattr(self, name)
            if not (value is None and name == "max_steps") and (isinstance(value, bool) or not isinstance(value, int)):
                raise UserInputError(f"{name} must be an integer, got {name}={value!r}.")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserInputError(f"{name} must be a number, got {name}={value!r}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserInputError(f"The learning rate must be a positive number, got lr={self.lr}.")
        for name in ("lr", "weight_decay"):  # torch's optimizers turn them into float32 scalars: a traceback beyond
            if abs(getattr(self, name)) > FLOAT32_MAX:
                raise UserInputError(f"{name} must be at most {FLOAT32_MAX:.3g} (the largest float32), got "
                                     f"{name}={getattr(self, name)}.")
        if self.epochs <= 0:
            raise UserInputError(f"The epoch count must be a positive integer, got epochs={self.epochs}.")
        if self.max_steps is not None and self.max_steps <= 0:
            raise UserInputError(f"max_steps must be a positive integer, got max_steps={self.max_steps}.")
        if self.batch_size <= 0:
            raise UserInputError(f"The batch size must be a positive integer, got batch_size={self.batch_size}.")
        if self.optimizer not in OPTIMIZERS:
            raise UserInputError(f"Unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise UserInputError(f"Unknown lr schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}.")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise UserInputError(f"grad_clip must be a non-negative number (0 or none: no clipping), got {self.grad_clip}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserInputError(f"weight_decay must be a non-negative number, got weight_decay={self.weight_decay}.")
        if self.guard_every <= 0:  # the loop would copy the weights at every step, its most expensive setting
            raise UserInputError(f"guard_every must be a positive integer, got guard_every={self.guard_every}.")
        if self.warmup_steps < 0:
            raise UserInputError(f"warmup_steps must be a non-negative integer, got warmup_steps={self.warmup_steps}.")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise UserInputError(f"momentum must lie in [0, 1), got momentum={self.momentum}.")
        check_seed(self.seed, "seed")

    def to_dict(self) -> dict[str, Any]:
        """The settings the method reads, as a plain dict (for results and the ledger)."""
        return {name: value for name, value in dataclasses.asdict(self).items() if name not in self.unused}


#: Seeds must fit the 32-bit range every generator in the pipeline (torch, numpy, scikit-learn) accepts.
SEED_LIMIT = 2**32


def check_seed(seed: Any, name: str = "--seed") -> None:
    """Raise :class:`UserInputError` unless ``seed`` is an integer (numpy's too) in [0, 2³²)."""
    integer = not isinstance(seed, bool) and hasattr(type(seed), "__index__")
    if not (integer and 0 <= operator.index(seed) < SEED_LIMIT):
        raise UserInputError(f"{name} must be an integer from 0 to {SEED_LIMIT - 1}, got {seed!r}.")


def settings_of(config_cls: type) -> dict[str, dataclasses.Field]:
    """The settings a config class's method reads: its fields less those it declares ``unused``."""
    unused = getattr(config_cls, "unused", ())
    return {f.name: f for f in dataclasses.fields(config_cls) if f.name not in unused}


def build_config(config_cls: type, overrides: Mapping[str, Any], *, owner: str) -> Any:
    """Instantiate ``config_cls`` with ``overrides``, rejecting unknown or unused names with a clear sentence."""
    valid = settings_of(config_cls)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        ignored = unknown[0] in getattr(config_cls, "unused", ())
        reason = "does not use" if ignored else "has no"
        why = " (it takes no optimizer steps)" if ignored and unknown[0] in OPTIMISER_SETTINGS else ""
        raise UserInputError(
            f"{owner} {reason} hyper-parameter {unknown[0]!r}{why}; valid: {', '.join(sorted(valid))}."
        )
    values = {k: _coerce(valid[k], v) for k, v in overrides.items()}
    for name, value in values.items():
        _check_type(valid[name], value, owner)
    # numpy scalars as Python's own: the methods' checks, and torch's generators, take int and float only
    values = {name: value.item() if isinstance(value, np.generic) else value for name, value in values.items()}
    config = config_cls(**values)
    config.check()  # the method's own rules first: their messages say more than the checks below
    for name, value in values.items():
        if isinstance(value, numbers.Real) and not math.isfinite(value):  # no setting means anything by NaN or inf
            raise UserInputError(f"{owner}: hyper-parameter {name} must be a finite number, got {value!r}.")
    return config


#: Numeric setting types, what a value of each may be, and its name: True is no count and no rate, 2.5 no count.
#: (numpy's bool is no Integral, so no int either.) Text settings are not checked: some take a layer index too.
_ACCEPTS = {"int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer"),
            "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
            "bool": (lambda v: isinstance(v, (bool, np.bool_)), "true or false")}


def _check_type(field: dataclasses.Field, value: Any, owner: str) -> None:
    """Refuse a value (from the Python API; the CLI's text is converted first) that is not of the setting's
    declared numeric type: ``hidden=True`` built a layer of width 1, ``buffer_size=True`` a buffer of one sample."""
    kinds = str(field.type).split(" | ")
    checked = [_ACCEPTS[kind] for kind in kinds if kind in _ACCEPTS]
    if len(checked) + ("None" in kinds) < len(kinds) or (value is None and "None" in kinds):
        return  # a type with a part checked nowhere (text, a layer name or index), or None where allowed
    if any(accepts(value) for accepts, _ in checked):
        return
    wanted = " or ".join([description for _, description in checked] + (["None"] if "None" in kinds else []))
    raise UserInputError(f"{owner}: hyper-parameter {field.name} must be {wanted}, got {value!r}.")


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """Convert CLI strings to the field's declared type (int, float, bool, or optional numbers)."""
    if not isinstance(value, str):
        return value
    declared = str(field.type)
    try:
        if value.lower() in ("none", "null") and "None" in declared:
            return None
        if declared.startswith("bool"):
            return _boolean(value)
        if declared.startswith("int"):
            return int(value)
        if declared.startswith("float") or "float" in declared:
            return float(value)
        if "int" in declared:
            return int(value)
    except ValueError:
        raise UserInputError(f"Hyper-parameter {field.name}={value!r} is not a valid {declared}.") from None
    return value


def _boolean(value: str) -> bool:
    """true/false spelled as the CLI accepts them; anything else is a typo, not False."""
    spelled = value.strip().lower()
    if spelled in ("1", "true", "yes", "on"):
        return True
    if spelled in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)

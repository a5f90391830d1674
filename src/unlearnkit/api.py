"""The public Python API: ``unlearn`` and ``evaluate``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from torch import nn

from .adapters.base import clone_model
from .errors import UserInputError
from .methods.registry import get_method
from .request import ForgetRequest
from .train.config import build_config
from .train.measure import measure


@dataclass
class RunRecord:
    """What one unlearning run did: method, settings, cost and outcome."""

    method: str
    params: dict[str, Any]
    seconds: float
    peak_mem_mb: float
    status: str = "ok"
    message: str = ""
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready data."""
        return asdict(self)


def _adapter_for(model: Any, adapter: Any | None) -> Any:
    if adapter is not None:
        return adapter
    if hasattr(model, "kind") and hasattr(model, "per_item_loss"):
        return model
    if isinstance(model, nn.Module):
        from .adapters.classifier import ClassifierAdapter

        return ClassifierAdapter(model)
    raise UserInputError(f"Cannot unlearn a {type(model).__name__}: pass a torch nn.Module or a model adapter.")


def check_needs(method: Any, adapter: Any, request: ForgetRequest) -> None:
    """Raise when the method does not serve this model kind or lacks data it needs."""
    if adapter.kind not in method.kinds:
        raise UserInputError(
            f"Method {method.name!r} works on {', '.join(method.kinds)} models, not on a {adapter.kind} model."
        )
    if "retain" in method.needs and not request.retain:
        raise UserInputError(f"Method {method.name!r} needs retain data, but the request has none.")


def validate_runs(names: Sequence[str], params: Mapping[str, Mapping[str, Any]], adapter: Any, request: Any,
                     defaults: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Check every method name, kind, need and hyper-parameter before any work; return the settings."""
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise UserInputError(f"Settings were given for method {unknown[0]!r}, which is not in --methods.")
    settings = {name: {**(defaults or {}).get(name, {}), **params.get(name, {})} for name in names}
    for name in names:
        method = get_method(name)
        check_needs(method, adapter, request)
        build_config(method.Config, settings[name], owner=f"Method {name!r}")
    return settings


def unlearn(model: Any, request: ForgetRequest, method: str = "ssd", *, adapter: Any | None = None, **hparams: Any):
    """Remove ``request.forget`` from ``model`` with ``method``; return ``(unlearned_model, RunRecord)``.

    ``model`` is an ``nn.Module`` (a classifier) or an adapter; it is never modified: the method
    works on a copy. ``hparams`` override the method's default config (unknown names are errors).
    """
    adapter = _adapter_for(model, adapter)
    chosen = get_method(method)
    check_needs(chosen, adapter, request)
    config = build_config(chosen.Config, hparams, owner=f"Method {method!r}")
    working = adapter.with_model(clone_model(adapter.model))
    with measure() as cost:
        outcome = chosen.unlearn(working, request, config)
    outcome.model.eval()
    train = outcome.train
    record = RunRecord(
        method=method,
        params=config.to_dict(),
        seconds=cost.seconds,
        peak_mem_mb=cost.peak_mem_mb,
        status=train.status if train else "ok",
        message=train.message if train else "",
        steps=train.steps if train else 0,
        losses=train.losses if train else [],
        info=outcome.info,
    )
    return outcome.model, record


def evaluate(model: Any, splits: dict[str, Any], *, reference: dict[str, float] | None = None,
             adapter: Any | None = None, seed: int = 0):
    """Evaluate a classifier on named splits (``forget``, ``retain``, ``test``, optional ``forget_test``).

    Returns an ``Evaluation`` with aggregate ``metrics`` and the per-item ``stats`` behind them;
    pass the retrained model's metrics as ``reference`` to get ``avg_gap``.
    """
    adapter = _adapter_for(model, adapter)
    if adapter.kind != "classifier":
        raise UserInputError("unlearnkit.evaluate handles classifiers; use the causal-LM evaluator for language models.")
    from .eval.classification import evaluate_classifier

    return evaluate_classifier(adapter, splits, reference, seed)

"""Unlearning inside a stream: amnesiac deltas, a strategy's own method, or any core unlearning method.

- ``amnesiac`` (Graves et al., "Amnesiac Machine Learning", AAAI 2021; CLArena's continual form):
  each learn request records its weight change Δθ^(t); unlearning task t sets θ ← θ − Δθ^(t).
  Whole tasks only. Only task t's own change goes: where tasks share samples (``scole``), what other
  tasks' changes learned from them stays, while the retrained reference drops those samples from
  every task, so part of the retrain gap there is this rule's, not the strategy's. Graves et al. keep one
  change per batch and subtract every batch that held a forgotten sample; per task, the changes of later
  tasks' replay batches (``er``, ``uer``) that held samples of task t stay too.
- ``acu`` / ``uncle``: the strategy's own closed-form or data-free unlearning.
- ``retrain``: replace the model by one retrained on the remaining data (done by the runner).
- any core method of :mod:`unlearnkit.methods` that serves classifiers (``gradient_ascent``, ``ssd``, ...):
  applied to the current model through :func:`unlearnkit.api.unlearn` with a :class:`~unlearnkit.ForgetRequest`
  whose forget set is the request's samples and whose retain set is every other learned sample (a method that
  needs retain data is refused before any work for a request that leaves none); its seed is the run's unless
  ``--unlearner-param seed=N`` sets one.

After any of them the strategy purges the forgotten samples from its buffers and stores.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..adapters.classifier import ClassifierAdapter
from ..errors import UserInputError
from ..request import ForgetRequest
from .scenarios import Scenario
from .stream import Request
from .strategies import GradientLearner, Strategy, strategy_class
from .strategies.base import MASK_VALUE, check_trained

NATIVE = {"acu": "acu", "uncle": "uncle"}  # unlearner -> the strategy it belongs to
BUILTIN = ("amnesiac", "retrain", *NATIVE)


def core_methods() -> list[str]:
    """Names of the core unlearning methods."""
    from ..methods.registry import methods

    return list(methods())


def core_kinds(name: str) -> tuple[str, ...]:
    """The model kinds the core method ``name`` serves (the continual strategies' models are classifiers)."""
    from ..methods.registry import methods

    return tuple(methods()[name].kinds)


def unlearner_names() -> list[str]:
    """Every valid unlearner name, once (``retrain`` is both built in and a core method)."""
    return list(dict.fromkeys([*BUILTIN, *core_methods()]))


def resolve_unlearner(spec: str, unlearner: str | None, requests: Sequence[Request], *, in_sweep: bool = False) -> str:
    """The unlearner to use (the strategy's default when None); raise when it cannot serve the stream, with advice
    that can be followed where the call comes from (``continual-sweep`` has no ``--unlearner``)."""
    cls = strategy_class(spec)
    name = cls.default_unlearner if unlearner is None else unlearner
    if name not in BUILTIN and name not in core_methods():
        raise UserInputError(f"Unknown unlearner {name!r}; valid: {', '.join(unlearner_names())}.")
    if name not in BUILTIN and "classifier" not in core_kinds(name):
        valid = [n for n in unlearner_names() if n in BUILTIN or "classifier" in core_kinds(n)]
        raise UserInputError(f"Unlearner {name!r} works on {', '.join(core_kinds(name))} models, not on the classifiers "
                             f"of a continual stream; valid: {', '.join(valid)}.")
    native = NATIVE.get(name)
    if native is not None and cls.name != native:
        raise UserInputError(f"Unlearner {name!r} works only with strategy {native!r}, not {spec!r}.")
    if cls.name in NATIVE and name not in (cls.name, "retrain"):
        raise UserInputError(f"Strategy {cls.name!r} unlearns with {cls.name!r} or 'retrain' only, not {name!r}.")
    if name == "amnesiac" and cls.default_unlearner != "amnesiac":
        raise UserInputError(f"Strategy {cls.name!r} keeps no per-task weight changes, so 'amnesiac' cannot unlearn it; use 'retrain'.")
    sample_requests = [r for r in requests if r.action == "unlearn" and r.task is None]
    if name in ("amnesiac", "uncle") and sample_requests:
        # a strategy with its own unlearner accepts only that one or retrain (above)
        others = "'retrain'" if cls.name in NATIVE else "'retrain' or a core method such as gradient_ascent"
        how = (f"leave {cls.name!r} out of the sweep's --strategies, or run it with `unlearnkit continual` and --unlearner "
               if in_sweep else "give --unlearner ")
        raise UserInputError(f"Unlearner {name!r} removes whole tasks only, but {sample_requests[0].describe()} names "
                             f"samples; {how}{others}.")
    return name


def check_unlearner_params(name: str, params: Mapping[str, Any] | None) -> None:
    """Validate a core method's hyper-parameters before any work; the built-in unlearners take none."""
    if not params:
        return
    if name in BUILTIN:
        raise UserInputError(f"Unlearner {name!r} takes no hyper-parameters, got {', '.join(sorted(params))}.")
    from ..methods.registry import method_config

    method_config(name, params)


def check_retain(name: str, params: Mapping[str, Any] | None, requests: Sequence[Request], remaining: Sequence[int]) -> None:
    """Refuse, before any work, a core method that needs retain data for a request that leaves no learned
    sample (``remaining``: learned samples left after each request, from :func:`..stream.check_stream`)."""
    if name in BUILTIN:
        return
    from ..methods.registry import get_method, method_config

    if "retain" not in get_method(name).needs_for(method_config(name, params or {})):
        return
    for request, left in zip(requests, remaining):
        if request.action == "unlearn" and not left:
            raise UserInputError(f"Unlearner {name!r} needs retain data, but the {request.describe()} leaves no learned "
                                 "sample; use 'retrain' or a method that needs none, such as gradient_ascent.")


def amnesiac(learner: GradientLearner, task: int) -> dict[str, Any]:
    """θ ← θ − Δθ^(task), then forget the stored delta."""
    delta = learner.task_deltas.pop(task)
    state = learner.model.state_dict()
    learner.model.load_state_dict({k: v - delta[k] for k, v in state.items()})
    return {"delta_norm": float(torch.sqrt(sum(d.pow(2).sum() for d in delta.values())))}


class TaskMaskedAdapter(ClassifierAdapter):
    """Task-incremental scenarios: each item's logits limited to the classes of the task that owns its
    label, as the learners train and evaluate (a class shared by several tasks allows all of their classes)."""

    def __init__(self, model: torch.nn.Module, scenario: Scenario) -> None:
        super().__init__(model, scenario.num_classes)
        self.scenario = scenario
        self.allowed = torch.zeros(scenario.num_classes, scenario.num_classes, dtype=torch.bool)
        for task in scenario.tasks:
            for label in task.classes:
                self.allowed[label, list(task.classes)] = True

    def logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits with every class outside the item's task at the masked value; unmasked for a batch without
        labels (the API's check of the model's width), whose items' tasks are unknown."""
        logits = super().logits(model, batch)
        if "labels" not in batch:
            return logits
        keep = self.allowed_classes(batch["labels"], logits.shape[-1]).to(logits.device)
        return logits.masked_fill(~keep, MASK_VALUE)

    def allowed_classes(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        """The classes of the task (or tasks) that own each item's label."""
        return self.allowed[labels.cpu()]

    def with_model(self, model: torch.nn.Module) -> "TaskMaskedAdapter":
        """The same masking around another model."""
        return TaskMaskedAdapter(model, self.scenario)


def core_unlearn(learner: GradientLearner, scenario: Scenario, method: str, forget: set[int], retain: set[int],
                 params: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a core method to the learner's model, through the public API, and adopt the result (its
    losses masked per task in task-incremental scenarios, like the learner's own). The method's seed is
    the learner's (the run's) unless ``params`` set one; a diverged run is refused."""
    from ..api import seeded_defaults, unlearn

    request = ForgetRequest(scenario.items(), sorted(forget), sorted(retain - forget) or None, reason="continual stream")
    adapter = (TaskMaskedAdapter(learner.model, scenario) if scenario.setting == "task-il"
               else ClassifierAdapter(learner.model, scenario.num_classes))
    settings = {**seeded_defaults([method], learner.seed, {})[method], **params}
    model, record = unlearn(learner.model, request, method, adapter=adapter, **settings)
    # a diverged run's model is the loop's restored weights: adopting it would forget nothing
    check_trained(record, f"the {method} unlearning", "--unlearner-param")
    learner.model.load_state_dict(model.state_dict())
    return {"method": method, "status": record.status, "steps": record.steps}


def apply_unlearner(strategy: Strategy, name: str, scenario: Scenario, task: int | None, forget: set[int],
                    retain: set[int], params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Unlearn ``forget`` (the whole ``task`` when given) from ``strategy`` in place, then purge it."""
    if name in NATIVE:
        info = strategy.unlearn(task, forget)
    elif name == "amnesiac":
        info = amnesiac(strategy, task)
    else:
        if not isinstance(strategy, GradientLearner):
            raise UserInputError(f"Unlearner {name!r} needs a gradient-trained strategy, not {strategy.name!r}.")
        info = core_unlearn(strategy, scenario, name, forget, retain, params or {})
    strategy.purge(forget, task)
    return info

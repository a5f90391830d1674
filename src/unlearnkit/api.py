"""The public Python API: ``unlearn`` and ``evaluate``."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, ParamSpec, Sequence, TypeVar

import torch
from torch import nn

from .adapters.base import clone_model, device_of
from .errors import UserInputError
from .eval.classification import GAP_METRICS, Evaluation, evaluate_classifier
from .methods.registry import get_method, method_config
from .request import ForgetRequest
from .train.config import settings_of
from .train.distributed import check_config_launch
from .train.loop import TrainRecord
from .train.measure import measure
from .train.stopping import check_stop_request

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass
class RunRecord:
    """What one unlearning run did: method, settings, cost and outcome."""

    method: str
    params: dict[str, Any]
    seconds: float
    peak_mem_mb: float
    added_mem_mb: float = 0.0
    status: str = "ok"
    message: str = ""
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready data."""
        return asdict(self)


def keeps_caller_random_state(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``function`` with the caller's global random state kept: Python's ``random``, NumPy's global generator
    and torch's CPU generator are as they were afterwards. The methods draw from their own seeded generators,
    but a library imported lazily on the way can draw from the global ones (rich, which scikit-learn and nltk
    import, takes ``random.getrandbits(24)`` at import), and so would a dependency called without a seed."""
    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        import random

        import numpy as np

        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                return function(*args, **kwargs)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
    return wrapper


def _adapter_for(model: Any, adapter: Any | None) -> Any:
    if adapter is not None:
        if model is not adapter and model is not adapter.model:  # another model or adapter would be ignored
            raise UserInputError("The model and adapter.model differ; pass the adapter's own model (or only the adapter).")
        return adapter
    if hasattr(model, "kind") and hasattr(model, "per_item_loss"):
        return model
    if hasattr(model, "generate") and hasattr(model, "config"):  # a Hugging Face language model, not a classifier
        raise UserInputError(f"A {type(model).__name__} is a language model: wrap it with its tokenizer in "
                             "unlearnkit.adapters.CausalLMAdapter(model, tokenizer) and pass that.")
    if isinstance(model, nn.Module):
        from .adapters.classifier import ClassifierAdapter

        return ClassifierAdapter(model)
    raise UserInputError(f"Cannot unlearn a {type(model).__name__}: pass a torch nn.Module or a model adapter.")


def check_needs(method: Any, adapter: Any, request: ForgetRequest, config: Any) -> None:
    """Raise when the method does not serve this model kind or lacks data a run with ``config`` needs."""
    if adapter.kind not in method.kinds:
        raise UserInputError(
            f"Method {method.name!r} works on {', '.join(method.kinds)} models, not on a {adapter.kind} model."
        )
    if getattr(config, "sampling", None) == "modular" and not any(getattr(request, "neighbours", {}).values()):
        raise UserInputError(f"Method {method.name!r} with sampling=modular needs a request with 'direct' or 'indirect' "
                             "neighbour sets (the facts bench's requests have them); use standard or cyclic sampling.")
    method.check_request(request, config)
    if hasattr(adapter, "check_items"):  # e.g. a classifier's labels against its classes, before any work
        adapter.check_items(request.forget_items(), "the forget set")
        if "retain" in method.needs_for(config):
            adapter.check_items(request.retain_items(), "the retain set")
    check_config_launch(config)
    check_stop_request(config, request)
    if "retain" in method.needs_for(config) and not request.retain:
        projected = "retain" not in method.needs and getattr(config, "project", None)
        setting = f" with project={config.project}" if projected else ""
        raise UserInputError(f"Method {method.name!r}{setting} needs retain data, but the request has none.")
    method.check_model(adapter, config)


def check_lora(method: Any, memory: Any | None) -> None:
    """Raise when ``memory`` asks for an option the method cannot use: LoRA when the method does not train the
    model's own weights by gradient steps, gradient checkpointing when it computes no training-mode gradients
    through the model (``Method.gradient_checkpointing``)."""
    if memory is not None and memory.lora is not None and not method.lora:
        raise UserInputError(f"Method {method.name!r} does not train the model's own weights by gradient steps, "
                             "so --lora cannot apply; drop --lora.")
    if memory is not None and memory.gradient_checkpointing and not method.gradient_checkpointing:
        raise UserInputError(f"Method {method.name!r} computes no training-mode gradients through the model, so "
                             "--gradient-checkpointing would save no memory; drop --gradient-checkpointing.")


def seeded_defaults(names: Sequence[str], seed: int, chosen: Mapping[str, Mapping[str, Any]]
                    ) -> dict[str, dict[str, Any]]:
    """Each method's bench defaults: ``seed`` for the methods with randomness of their own (batch order, labels,
    teachers; not SSD), under the bench's ``chosen`` settings."""
    return {name: {**({"seed": seed} if "seed" in settings_of(get_method(name).Config) else {}),
                   **chosen.get(name, {})} for name in names}


def validate_runs(names: Sequence[str], params: Mapping[str, Mapping[str, Any]], adapter: Any, request: Any,
                     defaults: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Check every method name, kind, need and hyper-parameter before any work; return the settings."""
    if isinstance(names, str):  # iterating would read "ssd" as the methods s, s, d
        raise UserInputError(f"The methods are a list of names, such as [{names!r}], not a single string.")
    if not isinstance(params, Mapping) or not all(isinstance(v, Mapping) for v in params.values()):
        raise UserInputError("The settings are a mapping of method names to mappings of settings, such as "
                             "{'ssd': {'alpha': 10.0}}.")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise UserInputError(f"Method {repeated[0]!r} is named twice in --methods; name each method once.")
    unknown = sorted(set(params) - set(names))
    if unknown:
        method = get_method(unknown[0])  # an unknown name is refused as such
        if adapter.kind not in method.kinds:  # the bench's default methods leave it out for this reason
            raise UserInputError(f"Settings were given for method {unknown[0]!r}, which works on "
                                 f"{', '.join(method.kinds)} models, not on this {adapter.kind} model.")
        raise UserInputError(f"Settings were given for method {unknown[0]!r}, which is not in --methods.")
    settings = {name: {**(defaults or {}).get(name, {}), **params.get(name, {})} for name in names}
    for name in names:
        method = get_method(name)
        check_needs(method, adapter, request, method_config(name, settings[name], adapter.kind))
    return settings


@keeps_caller_random_state
def unlearn(model: Any, request: ForgetRequest, method: str = "ssd", *, adapter: Any | None = None,
            memory: Any | None = None, **hparams: Any) -> tuple[nn.Module, RunRecord]:
    """Remove ``request.forget`` from ``model`` with ``method``; return ``(unlearned_model, RunRecord)``.

    ``model`` is an ``nn.Module`` (a classifier) or an adapter; it is never modified: the method
    works on a copy. ``hparams`` override the method's default config (unknown names are errors).
    ``memory`` (a :class:`unlearnkit.train.lora.MemoryOptions`) applies LoRA, bf16 weights or
    gradient checkpointing to that copy (causal LMs). The copy is placed on this process's training
    device (its GPU when it has one) before the method runs, so the frozen references that methods copy
    from it live there too; the unlearned model is returned on the device the input model is on, so it
    can be used where the input was. The record's seconds (and memory) cover the method and turning its
    result into the returned model (LoRA's merge, bf16's restore), not making the working copy (the deep
    copy, the LoRA wrapping or bf16 cast) or moving the result back. The first call in a process also pays torch's
    one-off set-up of its first backward pass and optimizer step; :func:`warm_up` pays it untimed.
    """
    adapter = _adapter_for(model, adapter)
    home = device_of(adapter.model)
    result, record = unlearn_on_training_device(adapter.model, request, method, adapter=adapter, memory=memory,
                                                **hparams)
    if device_of(result) != home:
        result.to(home)
    return result, record


@keeps_caller_random_state
def unlearn_on_training_device(model: Any, request: ForgetRequest, method: str = "ssd", *,
                               adapter: Any | None = None, memory: Any | None = None,
                               **hparams: Any) -> tuple[nn.Module, RunRecord]:
    """:func:`unlearn`, with the unlearned model left on the training device: for a caller that goes on
    using it there (``forget`` scores it), which saves two copies of the whole model between devices."""
    from .train import distributed

    from .train.lora import MemoryOptions

    adapter = _adapter_for(model, adapter)
    if not isinstance(request, ForgetRequest):  # an AttributeError deep in the method otherwise
        raise UserInputError(f"unlearn needs a ForgetRequest (items and the ids to forget), got a {type(request).__name__}.")
    if memory is not None and not isinstance(memory, MemoryOptions):
        raise UserInputError(f"memory must be a MemoryOptions (e.g. MemoryOptions.from_cli('r=8', bf16=True)), got a "
                             f"{type(memory).__name__}.")
    chosen = get_method(method)
    config = method_config(method, hparams, adapter.kind)
    if memory is not None:  # an option for another model kind is named as such, before what a method makes of it
        memory.check(adapter)
    check_lora(chosen, memory)
    check_needs(chosen, adapter, request, config)
    if chosen.edits_weights and not any(p.requires_grad for p in adapter.model.parameters()):
        raise UserInputError("Every parameter of the model is frozen (requires_grad=False); unfreeze the ones "
                             f"{method!r} may change.")
    distributed.check_launch()
    working_model, prepared = _working_copy(adapter.model, memory, config.seed)
    with measure() as cost:  # LoRA's merge (or bf16's restore) is part of making the unlearned model: timed too
        outcome = chosen.unlearn(adapter.with_model(working_model), request, config)
        result, info = outcome.model, dict(outcome.info)
        if prepared is not None:
            from .train.lora import finish_model

            diverged = outcome.train is not None and outcome.train.status == "diverged"
            idle = outcome.train is not None and outcome.train.steps == 0
            result = finish_model(prepared, result, method, diverged, idle)
            info.update({"lora": prepared.info} if prepared.info else {})
    info.update({"launch": distributed.describe_launch()} if distributed.describe_launch() else {})
    result.eval()
    train = outcome.train
    if train is None or train.status == "ok":  # the loop's guard sees the losses before each step, not after the last
        train = _usable(result, adapter, request, train)
    if train is not None and train.stopped_at is not None:  # an early stop (train/stopping.py) ended the run
        info["stopped_at"] = train.stopped_at
    record = RunRecord(
        method=method,
        params=config.to_dict() | (memory.to_dict() if memory is not None else {}),
        seconds=cost.seconds,
        peak_mem_mb=cost.peak_mem_mb,
        added_mem_mb=cost.added_mem_mb,
        status=train.status if train else "ok",
        message=train.message if train else "",
        steps=train.steps if train else 0,
        losses=train.losses if train else [],
        info=info,
    )
    return result, record


def _finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter of ``model`` is finite (not its buffers: some hold −inf by design,
    such as an attention mask)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point())


def _usable(result: nn.Module, adapter: Any, request: ForgetRequest, train: TrainRecord | None) -> TrainRecord | None:
    """``train``, or a ``diverged`` record when the result's weights, or its losses on the forget items, are NaN or
    infinite: a closed-form or hand-stepped method never passes the loop's guard, and a last step can leave finite
    weights so large that the forward overflows."""
    if not _finite(result):
        problem = "the method's weights became NaN or infinite"
    elif not _finite_losses(adapter.with_model(result), request):
        problem = ("the method's weights stayed finite but its losses are NaN or infinite (weights so large that the "
                   "forward overflows)")
    else:
        return train
    message = f"{problem} (a smaller step may help); the result is not a usable model"
    return dataclasses.replace(train or TrainRecord(), status="diverged", message=message)


@torch.no_grad()
def _finite_losses(adapter: Any, request: ForgetRequest, items: int = 8) -> bool:
    """Whether the model's losses on (up to ``items`` of) the forget items are finite: weights can stay finite yet
    be so large that the forward overflows."""
    forget = request.forget_items()[:items]
    batch = {k: v.to(device_of(adapter.model)) if isinstance(v, torch.Tensor) else v
             for k, v in adapter.collate(forget).items()}
    try:
        losses = adapter.per_item_loss(adapter.model, batch)
    except RuntimeError:  # a forward that fails (as the input's own did, e.g. mixed dtypes) is not an overflow:
        return True  # the caller's evaluation meets it
    return bool(torch.isfinite(losses).all())


def _working_copy(model: nn.Module, memory: Any | None, seed: int) -> tuple[nn.Module, Any]:
    """The private copy a method works on, on this process's device, with the memory options applied."""
    from .train.distributed import training_device

    working = clone_model(model)
    device = training_device()
    if device.type != "cpu":
        working.to(device)
    if memory is None or not memory.active:
        return working, None
    from .train.lora import prepare_model

    return working, prepare_model(working, memory, seed)


@keeps_caller_random_state
def evaluate(model: Any, splits: dict[str, Any], *, reference: dict[str, float] | None = None,
             adapter: Any | None = None, seed: int = 0) -> Evaluation:
    """Evaluate a classifier on named splits (``forget``, ``retain``, ``test``, optional ``forget_test``).

    Returns an ``Evaluation`` with aggregate ``metrics`` and the per-item ``stats`` behind them;
    pass the retrained model's metrics as ``reference`` to get ``avg_gap``.
    """
    adapter = _adapter_for(model, adapter)
    if adapter.kind != "classifier":
        raise UserInputError("unlearnkit.evaluate handles classifiers; use the causal-LM evaluator for language models.")
    if isinstance(splits, Mapping):  # a DataLoader or a generator has no items to index: a raw TypeError followed
        loose = next((name for name, items in splits.items()
                      if not (hasattr(items, "__len__") and hasattr(items, "__getitem__"))), None)
        if loose is not None:
            raise UserInputError(f"evaluate's {loose!r} split is a {type(splits[loose]).__name__}; give a list or a "
                                 "Dataset of (input, label) items, which can be indexed.")
    if not isinstance(splits, Mapping) or any(name not in splits or len(splits[name]) == 0
                                              for name in ("forget", "retain", "test")):
        raise UserInputError("evaluate needs splits as a dict with non-empty 'forget', 'retain' and 'test' item lists "
                             "(and optionally 'forget_test').")
    from .train.config import check_seed, finite_number

    unknown = sorted(set(splits) - {"forget", "retain", "test", "forget_test"})
    if unknown:  # a misspelt forget_test would be ignored, and the MIA scored against test instead
        raise UserInputError(f"evaluate knows no split {unknown[0]!r}; the splits are forget, retain, test and forget_test.")
    if "forget_test" in splits and len(splits["forget_test"]) == 0:
        raise UserInputError("evaluate's 'forget_test' split is empty; give its items or leave it out.")
    if reference is not None and not (isinstance(reference, Mapping) and all(
            finite_number(reference.get(k)) for k in GAP_METRICS)):
        raise UserInputError(f"evaluate's reference must map each of {', '.join(GAP_METRICS)} to a finite number "
                             "(the retrained model's metrics).")
    check_seed(seed, "evaluate's seed")
    for name, items in splits.items():
        adapter.check_items(items, f"the {name!r} split")
    return evaluate_classifier(adapter, splits, reference, seed)


def warm_up(model: Any, request: ForgetRequest, adapter: Any | None = None, memory: Any | None = None) -> None:
    """One untimed training step on a copy of ``model`` (fine-tuning on the retain set), before a bench
    times its methods: a process's first backward pass and optimizer step pay one-off set-up costs that
    would otherwise land in the time of whichever method runs first (on the digits bench the first method,
    bad_teacher, took 1.07 s unwarmed against 0.08 s)."""
    unlearn(model, request, "finetune", adapter=adapter, memory=memory, max_steps=1)

"""Fitting bigger language models: LoRA through PEFT, bf16 weights and gradient checkpointing.

These are settings of a *run*, not of a method: :func:`unlearnkit.api.unlearn` applies them to its
private copy of the model before the method starts and undoes them after, so every method that
trains a causal LM through the shared loop works with them unchanged.

- ``--lora r=8,alpha=16,targets=c_attn,c_proj`` (Hu et al., "LoRA: Low-Rank Adaptation of Large
  Language Models", 2021): each target weight W becomes W + (α/r)·B·A with A (r × d_in), B (d_out × r),
  B = 0 at the start, and only A and B train. Optional keys: ``dropout=0.05`` and ``save=merged``
  (the default: B·A is folded into W and a plain model is returned) or ``save=adapter`` (the PEFT
  model is returned, its adapter merged into the weights it wraps as a reload of the saved folder
  merges it, so both compute the same; saving it writes only the adapter). Without ``targets``
  PEFT's default for the architecture is used (e.g. ``c_attn`` for GPT-2, ``q_proj,v_proj`` for Llama).
- ``bf16``: weights (and so the frozen reference copies methods take) are stored and trained in
  bfloat16, halving weights, gradients and Adam state; they are cast back to the input's dtype after.
  This is pure bf16 training (no fp32 master copy); accelerate's ``mixed_precision: bf16`` is the
  autocast alternative that keeps fp32 weights. Without an fp32 copy, an update smaller than about
  2⁻⁸ of a weight rounds away: at small learning rates (1e-5) most full-model updates vanish, so
  pair ``bf16`` with LoRA or use autocast. With LoRA the input's weights that the cast rounds (those
  not already bfloat16) are kept (on the CPU) and restored under the adapters at the end, which merge
  in the input's precision: every weight LoRA did not adapt comes back bit-identical, not rounded to
  bf16. A bfloat16 input loses nothing to the cast, so nothing is kept for it. LoRA's own ``A`` and
  ``B`` (a few percent of the weights) are kept in float32 by PEFT, so they train with float32
  gradients and Adam state. Every tensor comes back in its own input dtype (a bfloat16 model's
  float32 tensors stay float32), and the constant buffers a model rebuilds when it loads (not
  saved, e.g. a rotary embedding's ``inv_freq``) come back exactly, unrounded: the returned model
  computes what its saved folder reloads to.
- ``gradient_checkpointing``: activations inside each block are recomputed in the backward pass
  (non-reentrant, so it works under DDP). Hugging Face checkpoints a block only in training mode with
  gradients on, so a method that takes its gradients in eval mode or takes none (SSD, K-FADE,
  first-epoch GA, GUARD, GUARD-IT: ``Method.gradient_checkpointing = False``) refuses it. The
  recomputation replays the dropout masks, so the other methods return the unchecked run's model up to
  float rounding (tests/test_gradient_checkpointing_methods.py).

The frozen reference that NPO, GradDiff(KL), IdK-DPO, RMU, UNDIAL and ICU take is a deep copy of the
prepared model: it keeps the (zero) LoRA branch and the bf16 dtype, so LoRA saves the optimiser
state and gradients of the base weights, not the reference's memory.

transformers and peft are imported lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ..adapters.base import eval_mode
from ..errors import UserInputError

LORA_SAVES = ("merged", "adapter")
_LORA_KEYS = ("r", "alpha", "targets", "dropout", "save")


@dataclass(frozen=True)
class LoraSpec:
    """Rank ``r``, scale ``alpha``, target module names (None: PEFT's default), dropout, how to save."""

    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] | None = None
    dropout: float = 0.0
    save: str = "merged"

    def check(self) -> None:
        """Raise :class:`UserInputError` for values LoRA cannot use."""
        if self.r < 1:
            raise UserInputError(f"--lora r must be a positive integer, got r={self.r}.")
        if not 0 < self.alpha < float("inf"):
            raise UserInputError(f"--lora alpha must be a positive finite number, got alpha={self.alpha}.")
        if not 0.0 <= self.dropout < 1.0:
            raise UserInputError(f"--lora dropout must lie in [0, 1), got dropout={self.dropout}.")
        if self.save not in LORA_SAVES:
            raise UserInputError(f"--lora save must be one of {', '.join(LORA_SAVES)}, got save={self.save!r}.")


def parse_lora(text: str) -> LoraSpec:
    """Parse ``r=8,alpha=16,targets=c_attn,c_proj[,dropout=0.05][,save=adapter]``.

    A comma-separated piece without ``=`` continues the list of the key before it (``targets``).
    """
    if not text.strip():
        raise UserInputError("--lora is empty; give its settings, e.g. r=8,alpha=16, or leave --lora out.")
    values: dict[str, list[str]] = {}
    key = None
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        name, sep, value = piece.partition("=")
        if sep:
            key = name.strip()
            if key not in _LORA_KEYS:
                raise UserInputError(f"--lora has no setting {key!r}; valid: {', '.join(_LORA_KEYS)} "
                                     "(e.g. r=8,alpha=16,targets=c_attn,c_proj).")
            if key in values:
                raise UserInputError(f"--lora gives {key} twice; give each setting once.")
            values[key] = [value.strip()]
        elif key == "targets":
            values[key].append(piece)
        else:
            raise UserInputError(f"--lora piece {piece!r} is not NAME=VALUE (e.g. r=8,alpha=16,targets=c_attn,c_proj).")
    if "targets" in values and not any(values["targets"]):
        raise UserInputError("--lora targets= names no module; name some (e.g. targets=c_attn,c_proj) or leave it out.")
    targets = tuple(t for t in values.get("targets", []) if t) or None
    try:
        spec = LoraSpec(
            r=int(values.get("r", ["8"])[0]),
            alpha=float(values.get("alpha", ["16"])[0]),
            targets=targets,
            dropout=float(values.get("dropout", ["0"])[0]),
            save=values.get("save", ["merged"])[0],
        )
    except ValueError:
        raise UserInputError(f"--lora {text!r}: r must be an integer and alpha, dropout numbers.") from None
    spec.check()
    return spec


def _lora_capable(module: nn.Module) -> bool:
    """A layer LoRA can adapt and unlearnkit can merge back: linear and convolutional layers (PEFT's embedding
    adapters are named differently and are not offered)."""
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or type(module).__name__ == "Conv1D"


def _tied(model: nn.Module) -> set[str]:
    """Names of modules whose weight is shared with another module (e.g. GPT-2's lm_head and wte): merging a
    LoRA update into one would change the other too."""
    seen: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if name and isinstance(weight, torch.Tensor):
            seen.setdefault(id(weight), []).append(name)
    return {name for names in seen.values() if len(names) > 1 for name in names}


def lora_targets(model: nn.Module) -> list[str]:
    """The module names LoRA can target in ``model`` (last name components, sorted; tied modules left out)."""
    tied = _tied(model)
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name and _lora_capable(module) and name not in tied})


def _check_targets(model: nn.Module, targets: tuple[str, ...]) -> None:
    names = [name for name, module in model.named_modules() if name and _lora_capable(module)]
    tied = _tied(model)
    for target in targets:
        matched = [name for name in names if name == target or name.endswith(f".{target}")]
        if not matched:
            raise UserInputError(f"--lora target {target!r} is not a LoRA-capable module of this model; "
                                 f"valid: {', '.join(lora_targets(model))}.")
        if any(name in tied for name in matched):
            raise UserInputError(f"--lora target {target!r} shares its weight with another module (tied embeddings), "
                                 "so merging its update would change that module too; choose other targets.")


@dataclass
class MemoryOptions:
    """How a run fits the model in memory: LoRA, bf16 weights, gradient checkpointing (LM only)."""

    lora: LoraSpec | None = None
    bf16: bool = False
    gradient_checkpointing: bool = False

    @classmethod
    def from_cli(cls, lora: str | None = None, bf16: bool = False, gradient_checkpointing: bool = False) -> "MemoryOptions":
        """Build from the CLI options (``--lora TEXT``, ``--bf16``, ``--gradient-checkpointing``)."""
        return cls(parse_lora(lora) if lora is not None else None, bool(bf16), bool(gradient_checkpointing))

    @property
    def active(self) -> bool:
        """True when any option is set."""
        return self.lora is not None or self.bf16 or self.gradient_checkpointing

    def to_dict(self) -> dict[str, Any]:
        """The options that are set, for results and the ledger."""
        out: dict[str, Any] = {}
        if self.lora is not None:
            out["lora"] = asdict(self.lora) | {"targets": list(self.lora.targets) if self.lora.targets else None}
        if self.bf16:
            out["bf16"] = True
        if self.gradient_checkpointing:
            out["gradient_checkpointing"] = True
        return out

    def check(self, adapter: Any) -> None:
        """Raise :class:`UserInputError` unless every set option applies to this model (before any work)."""
        if not self.active:
            return
        asked = [f"--{k.replace('_', '-')}" for k in self.to_dict()]
        if getattr(adapter, "kind", None) != "causal_lm":
            verb = "applies" if len(asked) == 1 else "apply"
            raise UserInputError(f"{', '.join(asked)} {verb} to causal language models, but this is a {adapter.kind} model.")
        model = adapter.model
        if self.gradient_checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
            raise UserInputError(f"The model {type(model).__name__} does not support gradient checkpointing.")
        if self.lora is not None:
            self.lora.check()
            if self.lora.targets:
                _check_targets(model, self.lora.targets)


@dataclass
class Prepared:
    """A model made ready by :func:`prepare_model`, and what :func:`finish_model` needs to undo it."""

    model: nn.Module
    options: MemoryOptions
    dtype: torch.dtype
    peft: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    use_cache: Any = None
    #: With LoRA and bf16: the input's weights that the bf16 cast rounds (on the CPU), restored under the
    #: adapters before they merge; empty for a bfloat16 input.
    base_weights: dict[str, torch.Tensor] | None = None
    #: With LoRA: which of the input's parameters required gradients (PEFT freezes them all), given back on merge.
    trainable: dict[str, bool] = field(default_factory=dict)
    #: With bf16: the input's dtype of each floating-point parameter and buffer, by name, given back at the end.
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    #: With bf16: CPU copies of the input's floating-point buffers that are not saved (constants a model rebuilds
    #: when it loads, e.g. a rotary embedding's ``inv_freq``), given back unrounded at the end.
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    #: The forward hooks the input's embeddings already had: those that checkpointing and PEFT add to make the
    #: embeddings' outputs require grad are removed at the end, these are kept.
    embedding_hooks: set[int] = field(default_factory=set)


def prepare_model(model: nn.Module, options: MemoryOptions, seed: int = 0) -> Prepared:
    """Apply bf16, gradient checkpointing and LoRA to ``model`` (a private copy) in place.

    The returned ``Prepared.model`` is the same object as ``model`` (PEFT injects its layers in
    place), so methods see the names and helpers of the original architecture. The random LoRA
    ``A`` matrices are drawn from ``seed`` (the run's seed), so a run is repeatable.
    """
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    prepared = Prepared(model, options, dtype, embedding_hooks=_embedding_hooks(model))
    if options.bf16 and options.lora is not None:  # LoRA leaves the other weights alone: keep them unrounded
        prepared.base_weights = _rounded_by_bf16(model)
    if options.bf16:
        prepared.dtypes = _floating_dtypes(model)
        prepared.constants = _unsaved_buffers(model)
        model.to(torch.bfloat16)
    if options.gradient_checkpointing:
        _checkpointing(model, on=True)
        if hasattr(getattr(model, "config", None), "use_cache"):  # else transformers warns at every step
            prepared.use_cache, model.config.use_cache = model.config.use_cache, False
    if options.lora is not None:
        prepared.trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            prepared.peft = _inject_lora(model, options.lora)
        prepared.info = {"trainable_parameters": count(model, trainable=True), "total_parameters": count(model)}
    return prepared


def _rounded_by_bf16(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the weights that casting ``model`` to bfloat16 would round: its floating-point
    tensors of another dtype (none for a bfloat16 model; integer buffers are not cast)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()
            if value.is_floating_point() and value.dtype != torch.bfloat16}


def _floating_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """The dtype of each floating-point parameter and buffer of ``model``, by name (tied names included)."""
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {name: tensor.dtype for name, tensor in tensors if tensor.is_floating_point()}


def _unsaved_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the floating-point buffers of ``model`` that its state dict leaves out (non-persistent)."""
    saved = set(model.state_dict())
    return {name: buffer.detach().to("cpu", copy=True) for name, buffer in model.named_buffers(remove_duplicate=False)
            if buffer.is_floating_point() and name not in saved}


def _input_embeddings(model: nn.Module) -> nn.Module | None:
    """``model``'s input embeddings (None when it names none)."""
    try:
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:
        return None
    return embeddings if isinstance(embeddings, nn.Module) else None


def _embedding_hooks(model: nn.Module) -> set[int]:
    """The ids of the forward hooks on ``model``'s input embeddings."""
    embeddings = _input_embeddings(model)
    return set(embeddings._forward_hooks) if embeddings is not None else set()


def _remove_input_grad_hooks(model: nn.Module, keep: set[int]) -> None:
    """Remove the hooks that make the embeddings' outputs require grad, which transformers' checkpointing and PEFT
    add (``enable_input_require_grads``) and do not all remove again: left on, every output of the returned model
    requires grad, even a frozen model's. Hooks the input had (``keep``) stay."""
    embeddings = _input_embeddings(model)
    if embeddings is None:
        return
    for key, hook in list(embeddings._forward_hooks.items()):
        if key not in keep and "make_inputs_require_grad" in getattr(hook, "__qualname__", ""):
            for hooks in (embeddings._forward_hooks, embeddings._forward_hooks_with_kwargs,
                          embeddings._forward_hooks_always_called):
                hooks.pop(key, None)


def _input_name(name: str) -> str:
    """The input model's name of a tensor of the prepared model (PEFT moves a target's tensors to ``base_layer``)."""
    return name.replace(".base_layer.", ".")


@torch.no_grad()
def _cast_back(model: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Give each floating-point tensor of ``model`` its input dtype from ``dtypes``; one the input did not have
    (LoRA's A and B, a method's own) keeps its dtype. Parameters keep their identity, so tied weights stay tied."""
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, parameter in module.named_parameters(recurse=False):
            dtype = dtypes.get(_input_name(prefix + name))
            if parameter.is_floating_point() and dtype not in (None, parameter.dtype):
                parameter.data = parameter.data.to(dtype)
        for name, buffer in list(module.named_buffers(recurse=False)):
            dtype = dtypes.get(_input_name(prefix + name))
            if buffer.is_floating_point() and dtype not in (None, buffer.dtype):
                module._buffers[name] = buffer.to(dtype)


def _restore_constants(model: nn.Module, constants: dict[str, torch.Tensor]) -> None:
    """Put the input's unsaved buffers back, value and dtype (bf16 rounded them; a reload rebuilds them exactly)."""
    for name, value in constants.items():
        path, _, leaf = name.rpartition(".")
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        current = module._buffers.get(leaf)
        if current is not None and current.shape == value.shape:
            module._buffers[leaf] = value.to(current.device)


def _checkpointing(model: nn.Module, *, on: bool) -> None:
    """Switch activation (gradient) checkpointing on, non-reentrant so DDP accepts it, or off."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.x names
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _checkpointing_off(prepared: Prepared, model: nn.Module) -> None:
    """Switch checkpointing off on ``model`` and give back its ``use_cache``."""
    _checkpointing(model, on=False)
    if prepared.use_cache is not None:
        model.config.use_cache = prepared.use_cache


def _copies_inside(root: nn.Module, model: nn.Module) -> list[nn.Module]:
    """Models of ``model``'s class inside ``root`` other than ``model``: copies a method made of the prepared model
    (ULD's assistant), whose tensors carry the input's names from their own root."""
    return [module for module in root.modules() if type(module) is type(model) and module is not model]


def _checkpointed_models(root: nn.Module) -> Iterator[nn.Module]:
    """The Hugging Face models inside ``root`` that still have checkpointing on, outermost first: copies a method
    made of the prepared model after checkpointing was switched on (ULD's assistant), which would come back with
    it on. Lazy, so a model the caller switches off is not found again inside."""
    for module in root.modules():
        if getattr(module, "supports_gradient_checkpointing", False) and any(
                getattr(inner, "gradient_checkpointing", False) is True for inner in module.modules()):
            yield module


def _inject_lora(model: nn.Module, spec: LoraSpec) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = list(spec.targets) if spec.targets else None
    conv1d = any(type(m).__name__ == "Conv1D" for name, m in model.named_modules()
                 if targets is None or any(name == t or name.endswith(f".{t}") for t in targets))
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                        bias="none", fan_in_fan_out=conv1d)
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # e.g. no default targets for this architecture
        raise UserInputError(f"--lora cannot be applied ({str(error).splitlines()[0]}); name targets among: "
                             f"{', '.join(lora_targets(model))}.") from None


def count(model: nn.Module, trainable: bool = False) -> int:
    """Number of parameters (only those that train when ``trainable``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights ``merge_and_unload`` would leave, computed without merging or copying the model: each
    LoRA layer's base weight plus the delta of each adapter not merged into it yet (vanilla LoRA, as ``--lora``
    trains), rounded to the base weight's dtype as PEFT's merge rounds it, under the plain model's names. A
    model without adapters gives its own state dict. Fingerprints taken on it match the model that an adapter
    folder reloads to."""
    if not getattr(model, "peft_config", None):
        return model.state_dict()
    inner = model.get_base_model()
    state = {_input_name(name): value for name, value in inner.state_dict().items() if ".lora_" not in name}
    with torch.no_grad():
        for name, module in inner.named_modules():
            if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                weight = module.get_base_layer().weight
                merged = set(getattr(module, "merged_adapters", ()))  # already in the base weight
                for adapter in module.active_adapters:
                    if adapter not in merged:  # as PEFT's merge adds it: in place, in the weight's dtype
                        weight = (weight + module.get_delta_weight(adapter)).to(weight.dtype)
                state[f"{name}.weight"] = weight
    return state


def lora_trained(model: nn.Module) -> bool:
    """True when some LoRA ``B`` matrix left zero, i.e. the adapter was trained."""
    return any(bool(p.detach().abs().sum() > 0) for name, p in model.named_parameters() if ".lora_B." in name)


def lora_reference(model: nn.Module) -> "AdaptersOff | None":
    """π_ref (the model before unlearning, frozen) without a copy of ``model``: the model itself with its LoRA
    adapters off, when that is exactly π_ref and safe to run: only adapters train (every other weight stays as it
    is), none has left zero yet, and one process runs (FSDP or ZeRO-3 would shard the weights outside their
    wrapper). None otherwise, and the caller copies the model."""
    from .distributed import launched_processes

    training = [name for name, p in model.named_parameters() if p.requires_grad]
    if not training or not all(".lora_" in name for name in training) or lora_trained(model):
        return None
    return AdaptersOff(model) if launched_processes() == 1 else None


class AdaptersOff:
    """A model carrying LoRA adapters, seen without them and frozen: calling it runs the model in eval mode,
    without gradients and with every adapter switched off; any other attribute is the model's own."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [module for module in self._model.modules() if isinstance(module, BaseTunerLayer)]
        # enable_adapters(True) makes every active adapter trainable, also those a method froze (RMU's
        # train_modules): each parameter gets its own flag back
        flags = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]
        with torch.no_grad(), eval_mode(self._model):
            for layer in layers:
                layer.enable_adapters(False)
            try:
                return self._model(*args, **kwargs)
            finally:
                for layer in layers:
                    layer.enable_adapters(True)
                for parameter, flag in flags:
                    parameter.requires_grad_(flag)

    def __getattr__(self, name: str) -> Any:
        if name == "_model":  # not set yet (a copy being made): no lookup through itself
            raise AttributeError(name)
        return getattr(self._model, name)


@torch.no_grad()
def _restore_base(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy the input's weights back under PEFT's wrappers (``a.b.weight`` is ``a.b.base_layer.weight`` there)."""
    current = model.state_dict()
    for name, value in weights.items():
        path, _, leaf = name.rpartition(".")
        target = current.get(name, current.get(f"{path}.base_layer.{leaf}"))
        if target is not None:
            target.copy_(value)


def finish_model(prepared: Prepared, result: nn.Module, method: str, diverged: bool = False,
                 idle: bool = False) -> nn.Module:
    """Undo :func:`prepare_model` on the method's result: merge or keep LoRA, drop checkpointing, restore dtype.

    A ``diverged`` run may have been restored to its untrained LoRA weights, and an ``idle`` one took no step
    (ICU when every item already counts as forgotten); neither is an error here.
    """
    options, model = prepared.options, result
    if options.lora is not None:
        if result is not prepared.model:
            raise UserInputError(f"Method {method!r} returns a new model rather than training the one it was given, "
                                 "so --lora cannot apply; drop --lora.")
        if not diverged and not idle and not lora_trained(result):
            raise UserInputError(f"Method {method!r} trained no LoRA weights (it does not train the model's weights "
                                 "through the shared loop), so --lora cannot apply; drop --lora.")
        if options.bf16:  # merge in the original precision onto the input's unrounded weights
            _cast_back(prepared.model, prepared.dtypes)  # A and B keep PEFT's float32
            _restore_base(prepared.model, prepared.base_weights or {})
            _restore_constants(prepared.model, prepared.constants)
        if options.lora.save == "merged":  # a plain model again, trainable where the input was
            model = prepared.peft.merge_and_unload()
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(prepared.trainable.get(name, True))
        else:  # merged in place as a reload of the saved adapter merges it: the model computes what reloads
            model = prepared.peft
            model.merge_adapter()
    if options.gradient_checkpointing:
        _checkpointing_off(prepared, prepared.model)
        for inner in _checkpointed_models(model):  # copies of it the result holds (ULD's assistant)
            _checkpointing_off(prepared, inner)
            _remove_input_grad_hooks(inner, prepared.embedding_hooks)  # the prepared model's go below
    if options.bf16 and options.lora is None:
        models = [prepared.model, *_copies_inside(model, prepared.model)]
        # the input's tensors, and those of its copies, in their own input dtypes; a tensor the input did not have
        # (MRP's basis, a wrapper's detector) keeps the method's dtype: rounded to a bfloat16 input's dtype, the
        # method's own float32 statistics changed its decisions, and MRP's QR has no bfloat16 kernel on the CPU
        for inner in models:
            _cast_back(inner, prepared.dtypes)
            _restore_constants(inner, prepared.constants)
    if options.gradient_checkpointing or options.lora is not None:
        _remove_input_grad_hooks(prepared.model, prepared.embedding_hooks)
    return model

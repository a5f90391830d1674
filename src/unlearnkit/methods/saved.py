"""Saving and loading what LM unlearning returns, so that an output folder loads back as the model that was measured.

Two kinds of result need more than ``save_pretrained`` / ``from_pretrained``:

- **Inference-time wrappers** (``uld``, ``guard``, ``guard_it``) serve an unchanged base model through state of
  their own. :func:`save_wrapper` writes ``base/`` (the base model and its tokenizer, a Hugging Face folder),
  ``unlearnkit_wrapper.json`` (the method and its settings) and ``wrapper.safetensors`` (the wrapper's own
  tensors). The folder has no ``config.json`` of its own on purpose: a plain ``from_pretrained`` of it fails
  instead of silently loading the model as it was before unlearning.
- **MRP's projections** are buffers of child modules that a plain ``from_pretrained`` drops (with a warning
  about unexpected keys); :func:`load_causal_lm` installs them again from the saved weights.

:func:`load_causal_lm` reads every LM folder ``unlearnkit forget`` writes; ``evaluate`` and ``forget`` load
with it.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UserInputError

WRAPPER_FILE = "unlearnkit_wrapper.json"
WRAPPER_TENSORS = "wrapper.safetensors"
BASE_FOLDER = "base"
FORMAT = 1


class InferenceWrapper(nn.Module):
    """A causal LM served through an unchanged base model (``self.base``) and state of the method's own.

    A subclass names its ``method``, returns the JSON-able part of its state from :meth:`settings` and rebuilds
    itself from a base model, its own tensors and those settings in :meth:`restore`.
    """

    method: ClassVar[str] = ""
    base: nn.Module

    @property
    def config(self) -> Any:
        """The base model's configuration (vocabulary, layer count)."""
        return self.base.config

    def settings(self) -> dict[str, Any]:
        """The wrapper's state that is not a tensor, as JSON-able values."""
        raise NotImplementedError

    @classmethod
    def restore(cls, base: nn.Module, tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> "InferenceWrapper":
        """The wrapper around ``base`` whose own tensors and settings were saved."""
        raise NotImplementedError

    def own_tensors(self) -> dict[str, torch.Tensor]:
        """The state dict without the base model's entries."""
        return {key: value for key, value in self.state_dict().items() if not key.startswith("base.")}

    def load_own(self, tensors: dict[str, torch.Tensor]) -> "InferenceWrapper":
        """Load saved own tensors, refusing any set that does not match this wrapper key for key."""
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        missing = [key for key in missing if not key.startswith("base.")]
        if missing or unexpected:
            raise UserInputError(f"The saved {self.method} tensors do not fit this model (missing: "
                                 f"{', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'}).")
        return self


def _wrapper_classes() -> dict[str, type[InferenceWrapper]]:
    from .guard import GuardedModel
    from .guard_it import GatedRedirectModel
    from .uld import LogitDifferenceLM

    return {cls.method: cls for cls in (LogitDifferenceLM, GuardedModel, GatedRedirectModel)}


def save_wrapper(model: InferenceWrapper, tokenizer: Any, directory: Path) -> None:
    """Write ``model`` into ``directory`` as ``base/`` + ``unlearnkit_wrapper.json`` + ``wrapper.safetensors``."""
    from ..io import save_state_dict

    model.base.save_pretrained(directory / BASE_FOLDER)
    tokenizer.save_pretrained(directory / BASE_FOLDER)
    save_state_dict(model.own_tensors(), directory / WRAPPER_TENSORS)
    meta = {"format": FORMAT, "method": model.method, "settings": model.settings()}
    (directory / WRAPPER_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def wrapper_meta(folder: Path) -> dict[str, Any] | None:
    """The checked description (format, method, settings) of the wrapper saved in ``folder``, or None when it
    holds none."""
    path = Path(folder) / WRAPPER_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        method = meta["method"]
        if not isinstance(method, str):  # a list or an object: no method name, and unhashable below
            raise TypeError(method)
    except (ValueError, KeyError, TypeError):
        raise UserInputError(f"{path} is not a valid unlearnkit wrapper description (JSON with a method).") from None
    if meta.get("format") != FORMAT or method not in _wrapper_classes():
        raise UserInputError(f"{path} describes a {method!r} wrapper in format {meta.get('format')!r}; this version "
                             f"reads format {FORMAT} wrappers of {', '.join(sorted(_wrapper_classes()))}.")
    return meta


def wrapper_method(folder: Path) -> str | None:
    """The method of the inference-time wrapper saved in ``folder``, or None when it holds none."""
    meta = wrapper_meta(folder)
    return None if meta is None else meta["method"]


def load_causal_lm(folder: Path, **adapter_settings: Any) -> Any:
    """A :class:`CausalLMAdapter` for any LM folder ``unlearnkit forget`` writes (or a plain Hugging Face one):
    a saved wrapper is rebuilt around its ``base/`` model, and saved MRP projections are installed again (for a
    PEFT adapter folder, those of the full model under it, on which the adapter was trained)."""
    from ..adapters.causal_lm import CausalLMAdapter, adapter_chain, quiet_transformers
    from ..io import load_state_dict
    from .mrp import install_projections, saved_projections

    folder = Path(folder)
    meta = wrapper_meta(folder)
    if meta is None:
        bases = saved_projections(adapter_chain(folder)[0])
        with quiet_transformers() if bases else nullcontext():  # its report of the bases' keys as unexpected misleads
            adapter = CausalLMAdapter.from_pretrained(folder, **adapter_settings)
        install_projections(adapter.model, bases)
        return adapter
    adapter = CausalLMAdapter.from_pretrained(folder / BASE_FOLDER, **adapter_settings)
    method, settings = meta["method"], meta.get("settings", {})
    tensors = load_state_dict(folder / WRAPPER_TENSORS)
    try:
        wrapper = _wrapper_classes()[method].restore(adapter.model, tensors, settings)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserInputError(f"The {method} wrapper in {folder} is incomplete or damaged ({type(error).__name__}: "
                             f"{error}).") from None
    return adapter.with_model(wrapper.load_own(tensors).eval())

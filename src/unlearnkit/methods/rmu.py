"""RMU: Representation Misdirection for Unlearning.

Li et al., "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning" (ICML 2024;
arXiv 2403.03218). With h_ℓ the output of decoder block ℓ, u a fixed random unit vector and
π_ref a frozen copy of the model, minimise

    mean‖h_ℓ^θ(x_f) − c·u‖² + α·mean‖h_ℓ^θ(x_r) − h_ℓ^ref(x_r)‖²,

training only the parameters whose names match ``train_modules``.

Choices: u is drawn uniform on [0, 1)^d (``torch.rand``, as the authors do) with the run's seed and
normalised. The squared errors are averaged over the hidden dimensions and each item's answer-token
positions (EOS included), then over the items, as OpenUnlearning does (the original averages over
all tokens of the batch). Every item weighs the same, and a batch split across processes gives
exactly the one-process loss, which a mean over the batch's tokens would not.
``layer`` is a block index (negative counts from the end) or a block name; by default block
⌊(n−1)/2⌋, which is OpenUnlearning's layer 7 on a 16-block model (both references hook block 7 of
32-block 7B models too: pass ``layer=7`` to compare with them there). ``train_modules="all"`` trains
every parameter (OpenUnlearning's TOFU setting); the WMDP recipe trains only the ``mlp.down_proj``
weights of blocks ℓ−2..ℓ, e.g. ``train_modules="h\\.(3|4|5)\\.mlp\\.c_proj\\.weight"`` on 12-block
GPT-2 (default ℓ = 5); a chosen parameter that is frozen (a base weight under LoRA) is not trained.
c = 6.5 is the WMDP paper's value (OpenUnlearning's TOFU setting is 2): c·u must dominate the block's
own activations, whose norm is about 2–3 per token in the tiny test GPT-2. α = 1 as in OpenUnlearning
(the WMDP recipe on Zephyr-7B uses 1200, matched to that model's activation scale). lr 1e-5 is
OpenUnlearning's (the WMDP recipe uses 5e-5). Batches, epochs, Adam and the loop's gradient clipping at 5 are the toolkit's defaults
(the authors: batch 4, one pass of 150 batches, AdamW without weight decay, no clipping; one u per
forget corpus, alternating corpora, where here one u serves the request).

Optional early stop (off by default): ``early_stop="holdout_nll"`` or ``"holdout_truth_ratio"`` ends the
run once the forget set looks like the request's never-trained holdout items (``train/stopping.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..adapters.causal_lm import IGNORE, item_mean
from ..errors import UserInputError
from ..train import optimise
from ..train.stopping import StopConfig, stop_for
from ._sampling import SamplingConfig, retain_pairing
from .base import Method, Outcome
from .graddiff import frozen_reference


def resolve_layer(adapter: Any, layer: int | str | None) -> str:
    """The block name ``layer`` refers to (index, index as text, name, or ``None`` for the default)."""
    names = adapter.layer_names()
    if not names:
        raise UserInputError("RMU needs a model with decoder blocks, but none were found.")
    if layer is None:
        return names[(len(names) - 1) // 2]
    text = str(layer).strip()
    if re.fullmatch(r"-?\d+", text):
        index = int(text)
        if -len(names) <= index < len(names):
            return names[index]
    elif text in names:
        return text
    raise UserInputError(
        f"Unknown RMU layer {layer!r}; valid: a block index 0..{len(names) - 1} or a name: {', '.join(names)}."
    )


def trainable_parameters(model: nn.Module, pattern: str) -> list[nn.Parameter]:
    """Parameters whose names match the regex ``pattern`` (searched anywhere), or all for ``"all"``."""
    if pattern == "all":
        return list(model.parameters())
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise UserInputError(f"train_modules={pattern!r} is not a valid regular expression ({error}).") from None
    chosen = [p for name, p in model.named_parameters() if regex.search(name)]
    if not chosen:
        example = next(iter(dict(model.named_parameters())), "")
        raise UserInputError(f"train_modules={pattern!r} matches no parameter name (e.g. {example!r}); use 'all' or a regex.")
    return chosen


def control_vector(width: int, seed: int) -> torch.Tensor:
    """u: uniform on [0, 1)^width (seeded), scaled to unit norm."""
    u = torch.rand(width, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def answer_mse(hidden: torch.Tensor, target: torch.Tensor, batch: dict) -> torch.Tensor:
    """Squared error averaged over the hidden dimensions, each item's answer-token positions
    (labels ≠ −100), then the items."""
    per_position = (hidden - target.expand_as(hidden)).square().mean(-1)
    return item_mean(per_position, batch["labels"] != IGNORE)


@dataclass
class RMUConfig(SamplingConfig, StopConfig):
    """Block ``layer``, steering coefficient ``steering``, retain weight ``alpha``, ``train_modules`` regex."""

    layer: str | None = None
    steering: float = 6.5
    alpha: float = 1.0
    train_modules: str = "all"
    epochs: int = 10
    lr: float = 1e-5  # OpenUnlearning's, for pretrained LMs (the facts bench sets its own)

    def check(self) -> None:
        """Also require c > 0 and α ≥ 0."""
        super().check()
        if not self.steering > 0:
            raise UserInputError(f"RMU steering must be positive, got steering={self.steering}.")
        if not self.alpha >= 0:
            raise UserInputError(f"RMU alpha must be non-negative, got alpha={self.alpha}.")


class RMU(Method):
    """Steer forget activations at one block to a random direction; keep retain activations in place."""

    name = "rmu"
    kinds = ("causal_lm",)
    needs = frozenset({"retain", "reference_model", "hidden_states"})
    paper = "Li et al., The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning, 2024"
    use_when = "Removing a domain or topic from an LM's representations (WMDP-style) rather than individual facts."
    Config = RMUConfig

    def unlearn(self, adapter: Any, request, config: RMUConfig) -> Outcome:
        model = adapter.model
        layer = resolve_layer(adapter, config.layer)
        chosen = [p for p in trainable_parameters(model, config.train_modules) if p.requires_grad]
        if not chosen:
            raise UserInputError(f"train_modules={config.train_modules!r} matches only frozen parameters (under "
                                 "LoRA the base weights are); choose modules that train, e.g. 'all'.")
        reference = frozen_reference(model)
        stream, steps = retain_pairing(adapter, request, config)
        target: list[torch.Tensor] = []

        def loss(model: nn.Module, batch: dict) -> torch.Tensor:
            forget = adapter.hidden_states(model, batch["forget"], layer)
            if torch.is_grad_enabled() and not forget.requires_grad:  # refused at the first step, before any update
                raise UserInputError(f"train_modules={config.train_modules!r} matches no trainable parameter before "
                                     f"RMU's layer {layer}, whose activations are all its loss reads; choose modules of "
                                     "the embeddings or of the blocks up to that layer.")
            if not target:
                target.append(config.steering * control_vector(forget.shape[-1], config.seed).to(forget))
            retain = adapter.hidden_states(model, batch["retain"], layer)
            with torch.no_grad():
                retain_reference = adapter.hidden_states(reference, batch["retain"], layer)
            return answer_mse(forget, target[0], batch["forget"]) + config.alpha * answer_mse(retain, retain_reference, batch["retain"])

        requires = {p: p.requires_grad for p in model.parameters()}
        keep = {id(p) for p in chosen}
        try:
            for p in model.parameters():
                p.requires_grad_(id(p) in keep)  # chosen holds trainable parameters only
            record = optimise(model, stream, loss, config, steps_per_epoch=steps, description="rmu",
                              stop=stop_for(config, adapter, request, steps))
        finally:
            for p, flag in requires.items():
                p.requires_grad_(flag)
        return Outcome(model, record, info={"layer": layer, "trained_parameters": sum(p.numel() for p in chosen)})

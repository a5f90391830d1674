"""Selective Synaptic Dampening.

Foster, Schoepf & Brintrup, "Fast Machine Unlearning Without Retraining Through Selective Synaptic
Dampening" (AAAI 2024; arXiv 2308.07707, 2023).

Importance of a set D: imp_D[p] = (1/#batches) Σ_b (∂ L̄_b / ∂p)², the squared gradient of each
batch-mean loss, model in eval mode. With forget importance f = imp_{D_f} and full-data importance
o = imp_{D} (D = retain ∪ forget), every parameter entry with f > α·o is scaled by
β = min(λ·o / f, 1). Biases and normalisation affine parameters are dampened too; buffers are not.

Choices, following the authors' code: batches are not shuffled, the last partial batch counts as one
batch, an entry with o = 0 and f > 0 is set to zero (β = 0), and D is taken in the authors' order,
``ConcatDataset(retain, forget)``: every retain item, then every forget item
(:func:`full_training_items`). The order matters because o squares each *batch* gradient: in this
order the last batches hold forget items only, their gradients add to o exactly where f is large,
so fewer entries pass f > α·o than when the forget items are spread through D (measured on the digits
bench's random forgetting at batch 256: about a third as many at α = 5, 14 times fewer at the bench's
α = 10). In class forgetting the authors' retain set is also grouped by class (built class by class,
unshuffled), so each of its importance batches holds nearly one class; here the retain items come in
the request's order, which on the digits bench's class forgetting dampens about three times as many
entries at the bench's α = 2, λ = 0.5 (0.078 against 0.026 of them; the class is forgotten to 0.000
either way). ``dampened_fraction`` in the run's info counts the entries actually changed (selected,
with β < 1). Importances are summed and compared in float32 whatever the weights' dtype (bf16 sums
of a few hundred batches would come out several per cent low, so o would be undercounted).

On a causal LM (not in the paper or the authors' code) a batch's loss is the mean over its items of
each item's mean answer-token NLL.

o depends on the model and on D in its order, not on the forget pass, so it can be computed ahead
of the request and stored: :func:`save_full_importance` writes it (safetensors, with the batch size,
the seconds it took and a fingerprint of the model's weights) and the ``full_importance`` setting
reads it, leaving the request only the forget set's pass; a file made for other weights is refused.
It equals the per-request o when computed over ``full_training_items(request)``, which needs the
request; computed once after training over the data in another order (which is how SSD can work
without long-term storage of the training data, as its abstract claims) it gives a different o, and
so a different selection. Without it, o is computed on every request (as the image benches do, so
their ``seconds`` include it). When that full set fits in one batch (a small request), o is the square of a
single mean gradient, and a weight only the forget items drive passes f > α·o by (full/forget)² instead of
about full/forget: the run's info then warns (:func:`one_batch_warning`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..adapters.base import batches, eval_mode
from ..errors import UserInputError
from ..io import fingerprint, save_state_dict
from ..train.config import OPTIMISER_SETTINGS, TrainConfig, finite_number
from .base import Method, Outcome


@dataclass
class SSDConfig(TrainConfig):
    """α (selection threshold) and λ (dampening strength); ``batch_size`` sets the importance batches;
    ``full_importance`` names a file from :func:`save_full_importance` (empty: compute it now)."""

    unused = (*OPTIMISER_SETTINGS, "seed")  # its importance batches are unshuffled: nothing is random
    alpha: float = 10.0
    lam: float = 1.0
    batch_size: int = 64
    full_importance: str = ""

    def check(self) -> None:
        """Also require α > 0, λ ≥ 0 (finite) and the named importance file to exist."""
        super().check()
        if not (finite_number(self.alpha) and self.alpha > 0):
            raise UserInputError(f"SSD alpha must be a positive number, got alpha={self.alpha}.")
        if not (finite_number(self.lam) and self.lam >= 0):
            raise UserInputError(f"SSD lam must be a non-negative number, got lam={self.lam}.")
        if self.full_importance and not Path(self.full_importance).is_file():
            what = "is a folder" if Path(self.full_importance).is_dir() else "does not exist"
            raise UserInputError(f"The SSD importance file {self.full_importance} {what}.")


def importance(adapter: Any, items: Sequence[Any], batch_size: int) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared gradient of the batch-mean loss, per parameter, in float32, model in eval mode.

    The model's train/eval modes and gradients are left as they were found (:func:`save_full_importance`
    runs this on the caller's own model)."""
    model = adapter.model
    grads = [(param, param.grad) for param in model.parameters()]
    totals = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in model.named_parameters() if p.requires_grad}
    count = 0
    try:
        with eval_mode(model):
            for chunk in batches(items, batch_size, shuffle=False, seed=0):
                model.zero_grad(set_to_none=True)
                adapter.per_item_loss(model, adapter.collate(chunk)).mean().backward()
                for name, param in model.named_parameters():
                    if param.grad is not None:
                        totals[name] += param.grad.detach().float() ** 2
                count += 1
    finally:
        for param, grad in grads:
            param.grad = grad
    return {n: t / max(count, 1) for n, t in totals.items()}


def full_training_items(request) -> list[Any]:
    """D in the authors' order, ``ConcatDataset(retain, forget)``: the retain items, then the forget items."""
    return request.retain_items() + request.forget_items()


def save_full_importance(adapter: Any, items: Sequence[Any], path: str | os.PathLike, batch_size: int = 64) -> float:
    """Compute the importance of the whole training set ``items``, in the order given (see
    :func:`full_training_items`), and write it to ``path`` (safetensors, written atomically, with the
    fingerprint of the model's weights); return the seconds the computation took."""
    model_fingerprint = fingerprint(adapter.model.state_dict())
    start = time.perf_counter()
    imp = importance(adapter, items, batch_size)
    seconds = time.perf_counter() - start
    save_state_dict(imp, path, metadata={"batch_size": str(batch_size), "items": str(len(items)), "seconds": repr(seconds),
                                         "model_fingerprint": model_fingerprint})
    return seconds


def load_full_importance(path: str | os.PathLike, model: torch.nn.Module, batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file of :func:`save_full_importance` (safetensors, whatever its name's suffix); refuse one made for
    other weights or another batch size."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise UserInputError(f"The SSD importance file {path} {'is a folder' if Path(path).is_dir() else 'does not exist'}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            imp = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # a corrupt or foreign file: say so in one sentence
        raise UserInputError(f"The SSD importance file {path} is not a file written by save_full_importance ({error}).") from None
    for name, param in model.named_parameters():
        if param.requires_grad and (name not in imp or imp[name].shape != param.shape):
            raise UserInputError(f"The SSD importance file {path} does not match this model (parameter {name!r}).")
    if metadata.get("model_fingerprint") != fingerprint(model.state_dict()):
        raise UserInputError(f"The SSD importance file {path} was not computed for this model's weights (its model "
                             "fingerprint is missing or differs); compute it again with save_full_importance.")
    if metadata.get("batch_size") != str(batch_size):
        raise UserInputError(f"The SSD importance file {path} was computed with batch size {metadata.get('batch_size')}, "
                             f"but ssd.batch_size is {batch_size}; use the same batch size for both.")
    return {n: t.to(p.device) for (n, p) in model.named_parameters() if (t := imp.get(n)) is not None}, metadata


@torch.no_grad()
def dampen(model: torch.nn.Module, forget_imp: dict, full_imp: dict, alpha: float, lam: float) -> float:
    """Scale the selected parameter entries in place; return the fraction of entries changed (selected, β < 1)."""
    changed = total = 0
    for name, param in model.named_parameters():
        if name not in forget_imp:
            continue
        dtype = torch.promote_types(param.dtype, torch.float32)  # 16-bit weights scaled in float32, float64 kept
        f, o = forget_imp[name].to(dtype), full_imp[name].to(dtype)
        selected = f > alpha * o
        beta = torch.clamp(lam * o / f.clamp_min(torch.finfo(dtype).tiny), max=1.0)
        param[selected] = (param[selected].to(dtype) * beta[selected]).to(param.dtype)
        changed += int((selected & (beta < 1)).sum())
        total += selected.numel()
    return changed / max(total, 1)


class SSD(Method):
    """Selective Synaptic Dampening: one pass, no training."""

    name = "ssd"
    kinds = ("classifier", "causal_lm")
    needs = frozenset({"retain", "labels", "original_training_data"})
    paper = "Foster et al., Fast Machine Unlearning Without Retraining Through Selective Synaptic Dampening, 2023"
    use_when = 'One-pass, training-free classifier forgetting; precompute the full-data importance ahead of the request (save_full_importance) so the request costs one pass over its forget set; tune α/λ per model.'
    Config = SSDConfig
    lora = False
    gradient_checkpointing = False  # its importance gradients are taken in eval mode

    def needs_for(self, config: SSDConfig) -> frozenset[str]:
        """A precomputed full-data importance stands in for the retained and original training data."""
        return frozenset({"labels"}) if config.full_importance else self.needs

    def unlearn(self, adapter: Any, request, config: SSDConfig) -> Outcome:
        forget = request.forget_items()
        forget_imp = importance(adapter, forget, config.batch_size)
        if config.full_importance:
            full_imp, metadata = load_full_importance(config.full_importance, adapter.model, config.batch_size)
            info = {"full_importance": "precomputed", "full_importance_seconds": float(metadata.get("seconds", "nan"))}
        else:
            full = full_training_items(request)
            full_imp = importance(adapter, full, config.batch_size)
            info = {"full_importance": "computed", **one_batch_warning(len(full), len(forget), config)}
        fraction = dampen(adapter.model, forget_imp, full_imp, config.alpha, config.lam)
        return Outcome(adapter.model, info={"dampened_fraction": fraction, **info})


def one_batch_warning(full: int, forget: int, config: SSDConfig) -> dict[str, str]:
    """``{"warning": ...}`` when the full set fits in one importance batch and that makes the selection broad.

    o is then the square of one mean gradient over all ``full`` items, in which the forget items weigh forget/full,
    so for a weight only they drive f/o = (full/forget)², not the full/forget that averaging over many batches
    gives (the forget items in batches of their own, the authors' order): past α, every such weight is dampened.
    """
    ratio = (full / forget) ** 2
    if full > config.batch_size or ratio <= config.alpha:
        return {}
    return {"warning": f"the full set's {full} items fit in one batch of batch_size={config.batch_size}, so for a "
                       f"weight only the {forget} forget items drive f/o = ({full}/{forget})² = {ratio:.3g} > "
                       f"alpha={config.alpha}: every such weight is dampened; use a batch_size well below {full}."}

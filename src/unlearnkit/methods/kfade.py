"""K-FADE: uphill Gauss-Newton steps on the forget loss, preconditioned by the retain curvature.

McKinney et al., "Gauss-Newton Unlearning for the LLM Era" (SaTML 2026; arXiv 2602.10568).
Update rule: Δθ = η (G_r + λI)⁻¹ ∇_θ L̄(D_f), the step that raises the forget loss most for a
bounded KL change on the retain set (G_r = the retain set's Gauss-Newton matrix / true Fisher).
G_r is approximated by K-FAC, one Kronecker block per linear layer:

    A = E[ā āᵀ] (layer inputs at the retain answer positions),
    S = E[δ δᵀ] (gradients w.r.t. the layer outputs, for labels **sampled** from the model),
    ΔW = η (S + √λ I)⁻¹ ∇_W L̄(D_f) (A + √λ I)⁻¹   (up to the damping split π below).

Choices where the paper is silent or unverified:

- Layers: every trainable ``nn.Linear`` and GPT-2 ``Conv1D`` (whose weight is stored transposed, ``(in, out)``;
  a frozen layer is left alone) except the output head, whose weight GPT-2 ties to the input embeddings and whose S would be
  V × V; ``include_head=True`` adds it on a model whose head is untied (a tied head is refused: its
  step would move the input embeddings with the head's factors).
- Biases ride in the same block: ā = [a; 1], so the bias gradient is the last column of the
  gradient matrix ("homogeneous coordinate").
- The damping split (unverified in the paper): by default Martens & Grosse's π-split,
  (S + √λ/π I) and (A + π√λ I) with π = √((tr A / dim A) / (tr S / dim S)), which keeps the λI
  term of G_r + λI and makes the two smaller cross terms as small as possible; S is orders of
  magnitude smaller than A in a transformer, so the equal split (``damping_split="equal"``,
  π = 1, the formula as printed) over-damps S and under-damps A.
- Only the preconditioned layers move: embeddings, position embeddings and norms keep their values
  (K-FAC, as the paper uses it, has factors for linear layers only).
- This is the K-FAC step; the paper's EK-FAC variant (an extra retain pass that refits the
  eigenvalues Λ* in the factors' eigenbasis) is not implemented.
- The factors are fitted once, at θ₀, over the retain answer tokens (EOS included; prompt and padding
  positions excluded); each of the ``steps`` steps recomputes the forget gradient, of L̄(D_f) = the
  mean over the forget items of each item's mean answer NLL (EOS included).
- δ is the gradient of the *summed* sampled-label loss, so S is the per-token Fisher factor.
- Defaults: one step and λ = 1e-8 as in the paper; η = 2e-4 rather than the paper's
  2.5e-3–1.1e-2 (sized for Zephyr-7B): on the facts model (2 × 128) η = 1e-3 already costs half
  the retain answer probability, and further steps with the θ₀ factors run away. λ = 1e-8 needs
  well-estimated factors: with fewer retain answer tokens than a factor's dimension the factors
  are singular and the step explodes (``info["warning"]`` says so); raise ``damping`` then.

The total change is kept on the returned model as ``model.kfade_update`` (parameter name →
tensor, safetensors-saveable with :func:`unlearnkit.io.save_state_dict`; ``unlearnkit forget`` writes it
beside the model as ``kfade_update.safetensors``) so :func:`apply_update` can re-apply it, e.g. after a
relearning attack.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.base import batches, device_of
from ..adapters.causal_lm import IGNORE
from ..errors import UserInputError
from ..train.config import OPTIMISER_SETTINGS, TrainConfig
from .base import Method, Outcome

#: The attribute of the returned model holding the update K-FADE applied.
UPDATE_ATTRIBUTE = "kfade_update"
#: How √λ is shared between the two factors.
DAMPING_SPLITS = ("pi", "equal")


@dataclass
class KFadeConfig(TrainConfig):
    """η (``lr``), λ (``damping``), the number of uphill steps; ``batch_size`` only batches the passes."""

    unused = tuple(name for name in OPTIMISER_SETTINGS if name != "lr")  # lr is its step size η
    lr: float = 2e-4
    damping: float = 1e-8
    steps: int = 1
    damping_split: str = "pi"
    include_head: bool = False
    batch_size: int = 32

    def check(self) -> None:
        """Also require λ > 0, at least one step and a known damping split."""
        super().check()
        if self.damping_split not in DAMPING_SPLITS:
            raise UserInputError(f"Unknown K-FADE damping_split {self.damping_split!r}; valid: {', '.join(DAMPING_SPLITS)}.")
        if not self.damping > 0:
            raise UserInputError(f"K-FADE damping must be positive, got damping={self.damping}.")
        if not (isinstance(self.steps, int) and self.steps > 0):
            raise UserInputError(f"K-FADE steps must be a positive integer, got steps={self.steps}.")


@dataclass
class Factors:
    """K-FAC factors of one layer: A over the (bias-augmented) inputs, S over the output gradients."""

    A: torch.Tensor
    S: torch.Tensor
    tokens: int = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the two factors."""
        return self.A.numel() * self.A.element_size() + self.S.numel() * self.S.element_size()


def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D: a linear layer whose weight is stored as ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def linear_layers(model: nn.Module, include_head: bool = False) -> dict[str, nn.Module]:
    """The layers K-FADE preconditions: ``nn.Linear`` and GPT-2 ``Conv1D``, the output head only if asked, each only
    if its weights train (a frozen layer is left alone, as every other method leaves it)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if include_head and head is not None and embeddings is not None and head.weight is embeddings.weight:
        raise UserInputError("K-FADE's include_head=True needs an output head of its own, but this model ties it to "
                             "the input embeddings, which the head's curvature does not describe.")
    found = {
        name: module for name, module in model.named_modules()
        if (isinstance(module, nn.Linear) or _is_conv1d(module)) and (include_head or module is not head)
        and all(p.requires_grad for p in module.parameters(recurse=False))
    }
    if not found:
        raise UserInputError("K-FADE found no trainable linear layers to precondition in the model.")
    return found


def weight_gradient_matrix(module: nn.Module, weight_grad: torch.Tensor, bias_grad: torch.Tensor | None) -> torch.Tensor:
    """The gradient as an ``(out, in[+1])`` matrix: Conv1D's transposed weight undone, bias as a last column."""
    matrix = weight_grad.t() if _is_conv1d(module) else weight_grad
    if bias_grad is not None:
        matrix = torch.cat([matrix, bias_grad[:, None]], dim=1)
    return matrix


def split_gradient_matrix(module: nn.Module, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`weight_gradient_matrix`: the weight-shaped and bias-shaped parts."""
    has_bias = getattr(module, "bias", None) is not None
    weight, bias = (matrix[:, :-1], matrix[:, -1]) if has_bias else (matrix, None)
    return (weight.t() if _is_conv1d(module) else weight), bias


def damping_factor(A: torch.Tensor, S: torch.Tensor, split: str) -> float:
    """π, the share of √λ that goes to A (S gets √λ/π): 1 for ``"equal"``, else √(mean eig A / mean eig S)."""
    if split == "equal":
        return 1.0
    mean_a, mean_s = float(A.trace()) / A.shape[0], float(S.trace()) / S.shape[0]
    return (mean_a / mean_s) ** 0.5 if mean_a > 0 and mean_s > 0 else 1.0


def kfac_precondition(gradient: torch.Tensor, A: torch.Tensor, S: torch.Tensor, damping: float,
                      split: str = "equal") -> torch.Tensor:
    """(S + (√λ/π) I)⁻¹ G (A + π√λ I)⁻¹ for a gradient matrix G of shape ``(out, in)`` (solved in float64).

    ``split="equal"`` gives π = 1, the formula as written in the paper; ``"pi"`` balances the
    damping by the factors' mean eigenvalues (see :func:`damping_factor`).
    """
    root, pi = damping ** 0.5, damping_factor(A, S, split)
    g, a, s = gradient.double(), A.double(), S.double()
    left = torch.linalg.solve(s + (root / pi) * torch.eye(s.shape[0], dtype=s.dtype, device=s.device), g)
    eye_a = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(a + (root * pi) * eye_a, left.t()).t().to(gradient.dtype)


def _answer_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mask ``(B, T−1)`` of the input positions whose next token is an answer token (EOS included)."""
    return batch["labels"][:, 1:] != IGNORE


def fit_factors(adapter: Any, layers: dict[str, nn.Module], items: Sequence[Any], batch_size: int, seed: int) -> dict[str, Factors]:
    """K-FAC factors A and S of each layer over the answer tokens of ``items`` (labels sampled from the model)."""
    model = adapter.model
    model.eval()
    sums: dict[str, list[torch.Tensor]] = {}
    count = 0
    generator = torch.Generator(device=device_of(model)).manual_seed(seed)  # multinomial's device
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def capture(name: str):
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            captured[name] = (inputs[0].detach(), output)
        return hook

    handles = [module.register_forward_hook(capture(name)) for name, module in layers.items()]
    try:
        for chunk in batches(items, batch_size, shuffle=False, seed=0):
            batch = adapter.collate(chunk)
            positions = _answer_positions(batch)
            logits = adapter.logits(model, batch)[:, :-1][positions].float()
            sampled = torch.multinomial(logits.detach().softmax(-1), 1, generator=generator).squeeze(1)
            loss = F.cross_entropy(logits, sampled, reduction="sum")
            names = list(captured)
            deltas = torch.autograd.grad(loss, [captured[n][1] for n in names])
            tokens = positions.shape[0], positions.shape[1] + 1  # (B, T): OPT's MLP sees its input as (B·T, H)
            for name, delta in zip(names, deltas):
                a = captured[name][0].reshape(*tokens, -1)[:, :-1][positions].float()  # float32 sums for bf16 too
                if getattr(layers[name], "bias", None) is not None:
                    a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
                d = delta.reshape(*tokens, -1)[:, :-1][positions].float()
                if name not in sums:
                    sums[name] = [a.new_zeros(a.shape[1], a.shape[1], dtype=torch.float32),
                                  d.new_zeros(d.shape[1], d.shape[1], dtype=torch.float32)]
                sums[name][0] += a.t() @ a
                sums[name][1] += d.t() @ d
            count += int(positions.sum())
            captured.clear()
    finally:
        for handle in handles:
            handle.remove()
    return {name: Factors(A / max(count, 1), S / max(count, 1), count) for name, (A, S) in sums.items()}


def forget_gradients(adapter: Any, layers: dict[str, nn.Module], items: Sequence[Any], batch_size: int) -> dict[str, torch.Tensor]:
    """∇ of the mean answer NLL over ``items``, per layer as an ``(out, in[+1])`` matrix."""
    model = adapter.model
    params = {name: [m.weight] + ([m.bias] if getattr(m, "bias", None) is not None else []) for name, m in layers.items()}
    flat = [p for group in params.values() for p in group]
    totals = [torch.zeros_like(p) for p in flat]
    for chunk in batches(items, batch_size, shuffle=False, seed=0):
        loss = adapter.per_item_loss(model, adapter.collate(chunk)).sum() / len(items)
        for total, grad in zip(totals, torch.autograd.grad(loss, flat)):
            total += grad
    out, i = {}, 0
    for name, group in params.items():
        bias = totals[i + 1] if len(group) == 2 else None
        out[name] = weight_gradient_matrix(layers[name], totals[i], bias)
        i += len(group)
    return out


def preconditioned_step(layers: dict[str, nn.Module], gradients: dict[str, torch.Tensor], factors: dict[str, Factors],
                        lr: float, damping: float, split: str = "equal") -> dict[str, torch.Tensor]:
    """η·(S + √λ/π I)⁻¹ G (A + π√λ I)⁻¹ per layer, keyed by the layers' parameter names (``<layer>.weight/.bias``)."""
    step: dict[str, torch.Tensor] = {}
    for name, module in layers.items():
        direction = lr * kfac_precondition(gradients[name], factors[name].A, factors[name].S, damping, split)
        weight, bias = split_gradient_matrix(module, direction)
        step[f"{name}.weight"] = weight.contiguous()
        if bias is not None:
            step[f"{name}.bias"] = bias.contiguous()
    return step


@torch.no_grad()
def apply_update(model: nn.Module, update: dict[str, torch.Tensor], scale: float = 1.0) -> None:
    """Add ``scale × update`` to the model's parameters in place (``update`` from ``model.kfade_update``)."""
    params = dict(model.named_parameters())
    missing = sorted(set(update) - set(params))
    if missing:
        raise UserInputError(f"The K-FADE update names parameter {missing[0]!r}, which the model does not have.")
    for name, delta in update.items():
        if params[name].shape != delta.shape:
            raise UserInputError(f"The K-FADE update for {name!r} has shape {tuple(delta.shape)}, "
                                 f"but the model's parameter has shape {tuple(params[name].shape)}.")
        params[name].add_(delta.to(params[name].device, params[name].dtype), alpha=scale)


class KFade(Method):
    """A few uphill K-FAC Gauss-Newton steps on the forget loss, curvature from the retain set."""

    name = "kfade"
    kinds = ("causal_lm",)
    needs = frozenset({"retain"})
    paper = "McKinney et al., Gauss-Newton Unlearning for the LLM Era, 2026"
    use_when = 'A few-step second-order edit when retain curvature can be estimated and retain drift must stay small; the update can be re-applied after later training.'
    Config = KFadeConfig
    lora = False
    gradient_checkpointing = False  # its factors and forget gradients are taken in eval mode
    saves = {UPDATE_ATTRIBUTE: f"{UPDATE_ATTRIBUTE}.safetensors"}

    def unlearn(self, adapter: Any, request, config: KFadeConfig) -> Outcome:
        model = adapter.model
        layers = linear_layers(model, config.include_head)
        start = time.perf_counter()
        factors = fit_factors(adapter, layers, request.retain_items(), config.batch_size, config.seed)
        factor_seconds = time.perf_counter() - start
        total: dict[str, torch.Tensor] = {}
        for _ in range(config.steps):
            gradients = forget_gradients(adapter, layers, request.forget_items(), config.batch_size)
            step = preconditioned_step(layers, gradients, factors, config.lr, config.damping, config.damping_split)
            apply_update(model, step)
            total = {k: total.get(k, 0) + v for k, v in step.items()}
        setattr(model, UPDATE_ATTRIBUTE, {k: v.detach().clone() for k, v in total.items()})
        return Outcome(model, info=_summary(factors, factor_seconds, total, config.steps))


def _summary(factors: dict[str, Factors], seconds: float, update: dict[str, torch.Tensor], steps: int) -> dict[str, Any]:
    """What the run cost and did, JSON-ready; warns when the retain set cannot fill the factors."""
    tokens = next(iter(factors.values())).tokens
    largest = max(max(f.A.shape[0], f.S.shape[0]) for f in factors.values())
    info: dict[str, Any] = {
        "layers": len(factors), "factor_bytes": sum(f.nbytes for f in factors.values()), "factor_seconds": seconds,
        "retain_tokens": tokens, "steps": steps,
        "update_norm": float(torch.sqrt(sum((v.double() ** 2).sum() for v in update.values()))),
    }
    if tokens < largest:
        info["warning"] = (f"{tokens} retain answer tokens cannot fill a {largest}-dimensional K-FAC factor: "
                           "the factors are singular; raise damping.")
    return info

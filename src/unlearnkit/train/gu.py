"""GU: project the forget update off the span of recent retain gradients.

Zhou, Zhang et al., "Geometric-Disentanglement Unlearning" (arXiv 2511.17100, 2025). With S the
metric (below), z_f = S·g_f and z_r = S·g_r the forget and retain gradients, and Q an orthonormal
basis of the last ``rank`` whitened retain gradients (Gram–Schmidt, FIFO), the update is

    S⁻¹ [ (I − QQᵀ) z_f + β_rep·QQᵀ z_r ]

written into ``.grad``. A step Δθ = −η·S²·grad (plain SGD with S = I; Adam with a frozen v̂) then has
g_rᵀΔθ = 0 for every stored retain gradient when β_rep = 0: the retain losses are unchanged to first
order. β_rep > 0 adds back a retain descent step inside that span.

Choices:
- Metric: Adam's. With an Adam/AdamW optimizer that has state, S = diag((√v̂ + ε)^−½), so that the
  Adam step −η·S²·g keeps g_rᵀΔθ = 0 (the paper's rule); before Adam's first step, and for SGD,
  S = I (Euclidean), which is exact for plain SGD.
- The basis is rebuilt each step from the stored *raw* retain gradients, whitened with the current
  metric, newest first (so the current retain gradient is always in it); a direction whose residual
  is below ``1e-6`` of its norm adds nothing and is skipped. Gram–Schmidt is run twice for FP32
  orthogonality.
- ``gu_repair`` defaults to 0, the paper's pure first-order invariance: a method's own retain term
  then acts only through it (see :class:`ProjectionConfig`). The authors' code adds the retain
  gradient's tangent part back by default (``inject_retain_tangent``); ``gu_repair=1`` does that.
- The guarantee is exact for plain SGD with momentum 0 (the shared loop's SGD defaults to 0.9). Under Adam the rule is the paper's heuristic:
  momentum and the update of v̂ by the current gradient are ignored, and on the tiny test GPT-2,
  1–5 Adam steps with GU changed the retain loss about as much as without it (opposite sign).
- The paper's optional "keep tangent components that help both losses" (κ > 0) is not implemented:
  this is its κ = 0 pure normal projection. Its γ is the method's own forget weight, already in
  the forget part. Scope is global over the optimizer's parameters (the paper also offers a
  per-tensor scope over the last blocks, norm and head).
- Memory: ``2·rank`` copies of the trainable parameters. Gradients come from ``torch.autograd.grad``
  in one process; the projection is not synchronised across processes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import torch
from torch import nn

from ..errors import UserInputError
from .config import TrainConfig, finite_number

#: Values accepted for a method config's ``project`` field.
PROJECTIONS = ("gu",)
_DEPENDENT = 1e-6


class LossParts(NamedTuple):
    """A loss given as its forget part and its retain part; without a projector the loop sums them."""

    forget: torch.Tensor
    retain: torch.Tensor


@dataclass
class ProjectionConfig(TrainConfig):
    """Settings of a gradient method that can project its forget update with GU.

    ``project``: ``None`` or ``"gu"``; ``gu_rank``: how many recent retain gradients the basis keeps;
    ``gu_repair``: β_rep, the weight of the retain step inside the protected span. Under GU a
    method's own retain term acts only through this repair step: the current retain gradient lies
    in the span, so ``gu_repair=1`` keeps the method's retain step and 0 drops it.
    """

    project: str | None = None
    gu_rank: int = 8
    gu_repair: float = 0.0

    def check(self) -> None:
        """Also validate the projection settings."""
        super().check()
        if self.project is not None and self.project not in PROJECTIONS:
            raise UserInputError(f"Unknown projection project={self.project!r}; valid: none, {', '.join(PROJECTIONS)}.")
        if not (isinstance(self.gu_rank, int) and self.gu_rank >= 1):
            raise UserInputError(f"gu_rank must be a positive integer, got gu_rank={self.gu_rank}.")
        if not (finite_number(self.gu_repair) and self.gu_repair >= 0):
            raise UserInputError(f"gu_repair must be a non-negative number, got gu_repair={self.gu_repair}.")
        # GU protects the directions of the method's (weighted) retain term; with its weight α at 0 there are none
        if self.project is not None and getattr(self, "alpha", None) == 0:
            raise UserInputError("project=gu protects the directions of the retain term, which alpha=0 switches off; "
                                 "give alpha > 0 or drop project.")


def projector_for(config: ProjectionConfig) -> "GradientProjector | None":
    """The projector a config asks for, or ``None`` when ``config.project`` is unset."""
    if getattr(config, "project", None) != "gu":
        return None
    return GradientProjector(rank=config.gu_rank, repair=config.gu_repair)


class GradientProjector:
    """Sets ``.grad`` to the forget gradient minus its part along recent retain gradients (GU)."""

    def __init__(self, params: Iterable[nn.Parameter] | None = None, *, rank: int = 8, repair: float = 0.0) -> None:
        self.rank, self.repair = int(rank), float(repair)
        self.params: list[nn.Parameter] = [p for p in params if p.requires_grad] if params is not None else []
        self.optimizer: torch.optim.Optimizer | None = None
        self.stored: deque[torch.Tensor] = deque(maxlen=self.rank)
        self.basis = torch.empty(0)

    def attach(self, optimizer: torch.optim.Optimizer) -> "GradientProjector":
        """Use ``optimizer``'s parameters (unless given) and, for Adam/AdamW, its metric."""
        if not self.params:
            self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        self.optimizer = optimizer
        return self

    # ------------------------------------------------------------------ geometry
    def scale(self) -> torch.Tensor | None:
        """The metric's diagonal S = (√v̂ + ε)^−½ as a flat vector, or ``None`` for the Euclidean metric."""
        optimizer = self.optimizer
        if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            return None
        groups = {p: group for group in optimizer.param_groups for p in group["params"]}
        parts = []
        for p in self.params:
            state = optimizer.state.get(p, {})
            if p not in groups or "exp_avg_sq" not in state:
                return None  # before its first step Adam has no metric yet
            beta2, eps = groups[p]["betas"][1], groups[p]["eps"]
            bias = 1.0 - beta2 ** float(state["step"])
            parts.append(((state["exp_avg_sq"] / bias).sqrt() + eps).rsqrt().flatten().float())
        return torch.cat(parts)

    def _flat_grad(self, loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, self.params, retain_graph=True, allow_unused=True)
        return torch.cat([
            (torch.zeros_like(p) if g is None else g).flatten().float() for p, g in zip(self.params, grads)
        ])

    def remember(self, retain_grad: torch.Tensor) -> None:
        """Add a raw retain gradient; the oldest is dropped beyond ``rank``."""
        self.stored.append(retain_grad.detach())

    def build_basis(self, scale: torch.Tensor | None) -> torch.Tensor:
        """Orthonormal rows spanning the stored retain gradients in the metric, newest first."""
        rows: list[torch.Tensor] = []
        for raw in reversed(self.stored):
            vector = raw if scale is None else raw * scale
            norm = vector.norm()
            for _ in range(2):  # the second pass restores FP32 orthogonality
                for q in rows:
                    vector = vector - (q @ vector) * q
            residual = vector.norm()
            if residual > _DEPENDENT * norm and residual > 0:
                rows.append(vector / residual)
        like = self.stored[-1] if self.stored else torch.empty(0)
        self.basis = torch.stack(rows) if rows else like.new_zeros(0, like.numel())
        return self.basis

    @staticmethod
    def orthogonal_part(vector: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        """``(I − QQᵀ)·vector`` (applied twice, for FP32 accuracy)."""
        for _ in range(2):
            vector = vector - basis.T @ (basis @ vector)
        return vector

    # ------------------------------------------------------------------ the step
    def project(self, forget_loss: torch.Tensor, retain_loss: torch.Tensor) -> None:
        """Store ∇retain_loss, then set each parameter's ``.grad`` to the GU update."""
        if not self.params:
            raise RuntimeError("GradientProjector has no parameters: pass them or call attach(optimizer) first.")
        g_forget = self._flat_grad(forget_loss)
        g_retain = self._flat_grad(retain_loss)
        self.remember(g_retain)
        scale = self.scale()
        basis = self.build_basis(scale)
        z_forget = g_forget if scale is None else g_forget * scale
        update = self.orthogonal_part(z_forget, basis)
        if self.repair:
            z_retain = g_retain if scale is None else g_retain * scale
            update = update + self.repair * (basis.T @ (basis @ z_retain))
        self._write(update if scale is None else update / scale)

    def _write(self, flat: torch.Tensor) -> None:
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
            offset += n


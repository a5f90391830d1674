"""Diagonal empirical Fisher information, shared by EWC and refresh learning."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..adapters.base import eval_mode


def diagonal_fisher(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk: int = 256,
) -> dict[str, torch.Tensor]:
    """F = mean_n p(y_n|x_n) · (∇_θ log p(y_n|x_n))², per parameter (as Mammoth's ``ewc_on``).

    Per-sample gradients come from ``torch.func.vmap``; ``mask`` may hide logits (task-IL).
    """
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def nll(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, p, (xi.unsqueeze(0),))
        if mask is not None:
            logits = mask(logits)
        return F.cross_entropy(logits, yi.unsqueeze(0))

    per_sample_grad = vmap(grad(nll), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    with eval_mode(model):
        for start in range(0, len(y), chunk):
            xs, ys = x[start : start + chunk], y[start : start + chunk]
            grads = per_sample_grad(params, xs, ys)
            with torch.no_grad():
                logits = model(xs)
                if mask is not None:
                    logits = mask(logits)
                weight = torch.exp(-F.cross_entropy(logits, ys, reduction="none"))
            for k, g in grads.items():
                total[k] += torch.einsum("n,n...->...", weight, g.pow(2))
    return {k: v / max(len(y), 1) for k, v in total.items()}

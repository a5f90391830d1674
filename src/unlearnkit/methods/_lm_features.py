"""Hidden-state features of question/answer items, shared by ICU, GUARD-IT and GUARD.

These methods' papers embed texts with a sentence encoder (all-MiniLM-L6-v2, SBERT). No encoder can
be downloaded here, so they embed with the model being unlearned (or its frozen copy): the mean of
its hidden states over an item's tokens. Everything goes through the adapter (``collate``,
``hidden_states``, ``layer_names``), never through a model class.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..adapters.base import batches, eval_mode
from ..errors import UserInputError

IGNORE = -100


def block_name(adapter: Any, model: nn.Module, index: int | None) -> str:
    """The name of decoder block ``index`` (``None``: the block at about a quarter of the depth)."""
    names = adapter.layer_names(model)
    if not names:
        raise UserInputError("The model has no list of decoder blocks to attach a hook to.")
    if index is None:
        index = len(names) // 4
    if not (isinstance(index, int) and 0 <= index < len(names)):
        raise UserInputError(f"layer must be a block index in 0..{len(names) - 1}, got layer={index!r}.")
    return names[index]


def token_mask(batch: dict[str, torch.Tensor], prompt_only: bool) -> torch.Tensor:
    """Boolean ``(B, T)`` mask of the real tokens, or of the prompt tokens only (label −100, not padding)."""
    mask = batch["attention_mask"].bool()
    if prompt_only:
        mask = mask & (batch["labels"] == IGNORE)
    return mask


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting only real tokens, so a left-padded row gets the positions of its unpadded
    self (models with absolute position embeddings, like GPT-2, otherwise see shifted prompts)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden (B, T, H)`` over the positions where ``mask (B, T)`` is true, shape ``(B, H)``."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


@torch.no_grad()
def pooled_states(
    adapter: Any, model: nn.Module, items: Sequence[Any], layer: int | str, *, prompt_only: bool, batch_size: int = 32
) -> torch.Tensor:
    """Mean-pooled hidden states ``(N, H)`` at ``layer`` of each item's prompt or whole text.

    Causal attention makes the prompt positions independent of the answer, so ``prompt_only``
    gives the same vector as embedding the prompt alone.
    """
    pooled = []
    with eval_mode(model):
        for chunk in batches(list(items), batch_size, shuffle=False, seed=0):
            batch = adapter.collate(chunk)
            hidden = adapter.hidden_states(model, batch, layer).float()
            pooled.append(masked_mean(hidden, token_mask(batch, prompt_only).to(hidden.device)).cpu())
    return torch.cat(pooled)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities ``(len(a), len(b))``."""
    return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or the first element of a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_first(output: Any, hidden: torch.Tensor) -> Any:
    """A block's output with its hidden states replaced, in the same structure."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden

"""First-epoch gradient ascent restricted to the input embeddings.

Zagardo, "A More Practical Approach to Machine Unlearning" (arXiv 2406.09391, 2024). During
training, each item's gradient on the embedding layer is logged in the first epoch; to forget
an item, its logged gradient is added back (ascent). Update rule, repeated ``steps`` times:

    E ← E + η Σ_{x ∈ D_f} g₁(x),   g₁(x) = ∇_E ℓ(x) at the step of the first epoch that saw x,

with ℓ(x) the mean answer NLL of x. When no recording is given, g(x) is the current gradient
(recomputed before every step), i.e. plain gradient ascent on the embedding rows.

Choices where the paper is vague (it has no code):

- "Embedding layer" means the input-token embedding matrix E; only the *input lookup* part of
  ∇_E is recorded and applied (the rows of the item's own tokens). GPT-2 ties its output head to
  E, so (1) the head's share of ∇E (a dense V × d term) is not used, and (2) editing a token's
  row also changes that token's output score everywhere: retain items sharing the tokens are
  affected as well.
- The per-item gradients are summed (each item's own first-epoch contribution is reversed), not
  averaged; η is therefore per item.
- Calibration: with ``stop_loss`` set, steps stop as soon as the forget set's mean NLL reaches
  it (the paper warns against both too few and too many ascent steps).

Recording is optional: :func:`record_first_epoch_gradients` trains a model for one epoch (the
first epoch of its normal recipe) and returns the per-item gradients keyed by item id;
:func:`save_first_epoch_gradients` writes them to a safetensors file that the ``gradients``
setting names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..adapters.base import batches, device_of
from ..errors import UserInputError
from ..train import TrainConfig, optimise
from ..train.config import OPTIMISER_SETTINGS
from ..train.distributed import process_count
from .base import Method, Outcome

#: One item's embedding gradient: the token rows it touches and the gradient of each row.
SparseRows = tuple[torch.Tensor, torch.Tensor]


class EmbeddingGradients:
    """Captures the per-item gradient of the input-embedding lookup during a forward/backward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.embedding = model.get_input_embeddings()
        self.grad: torch.Tensor | None = None
        self._handle = self.embedding.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(self._store)

    def _store(self, grad: torch.Tensor) -> None:
        self.grad = grad.detach()

    def per_item(self, batch: dict[str, torch.Tensor], scale: float) -> list[SparseRows]:
        """Per item, its unique token ids and ``scale ×`` the summed lookup gradient of each row."""
        if self.grad is None:
            raise RuntimeError("no embedding gradient was captured; run backward first")
        rows = []
        device = self.grad.device  # a collated batch may still be on the CPU
        for ids, mask, grad in zip(batch["input_ids"].to(device), batch["attention_mask"].to(device).bool(), self.grad):
            tokens, where = torch.unique(ids[mask], return_inverse=True)
            summed = torch.zeros(len(tokens), grad.shape[-1], dtype=grad.dtype, device=grad.device)
            summed.index_add_(0, where, grad[mask])
            rows.append((tokens.cpu(), (scale * summed).cpu()))
        self.grad = None
        return rows

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()


def record_first_epoch_gradients(adapter: Any, items: Sequence[Any], config: TrainConfig,
                                 ids: Sequence[Any] | None = None) -> dict[Any, SparseRows]:
    """Train ``adapter.model`` in place for one epoch on ``items`` and record each item's g₁.

    The epoch is the one :func:`unlearnkit.methods.base.item_stream` gives for epoch 0 (same
    seeded order), run by the shared loop with ``config`` unchanged (so the optimiser and the
    learning-rate schedule are those of the whole recipe; later epochs yield no batches). Called
    on a fresh model with a training recipe, it reproduces that recipe's first epoch. ``ids``
    (default: positions 0..n−1) name the items in the result; for a :class:`ForgetRequest` use
    the positions in ``request.data``. The model is left on the device it came on (the loop trains
    it on the GPU when there is one), and the records are on the CPU.
    """
    if process_count() > 1:  # each process would see only its rows of every batch
        raise UserInputError("Recording first-epoch gradients runs in one process; start it without "
                             "accelerate launch or torchrun (the cached file then serves every run).")
    ids = list(range(len(items))) if ids is None else list(ids)
    if len(ids) != len(items):
        raise UserInputError(f"record_first_epoch_gradients got {len(items)} items but {len(ids)} ids.")
    positions = list(range(len(items)))

    def epoch_batches(epoch: int):
        if epoch > 0:
            return
        for chunk in batches(positions, config.batch_size, shuffle=True, seed=config.seed):
            yield {**adapter.collate([items[i] for i in chunk]), "index": torch.tensor(chunk)}

    recorder = EmbeddingGradients(adapter.model)
    recorded: dict[Any, SparseRows] = {}
    current: list[dict] = []

    def loss(model: nn.Module, batch: dict) -> torch.Tensor:
        current[:] = [batch]
        return adapter.per_item_loss(model, batch).mean()

    def after_backward(_model: nn.Module) -> None:
        batch = current.pop()  # its loss was a batch mean: each item's own gradient is B × its share
        for index, rows in zip(batch["index"].tolist(), recorder.per_item(batch, scale=len(batch["index"]))):
            recorded[ids[index]] = rows

    home = device_of(adapter.model)
    try:
        optimise(adapter.model, epoch_batches, loss, config, steps_per_epoch=-(-len(items) // config.batch_size),
                 description="first epoch (recording)", after_backward=after_backward)
    finally:
        recorder.close()
        adapter.model.to(home)
    return recorded


def save_first_epoch_gradients(recorded: dict[Any, SparseRows], path: str | Path) -> None:
    """Write recorded gradients to a safetensors file (keys ``<id>.rows`` and ``<id>.grads``)."""
    from ..io import save_state_dict

    tensors = {}
    for item_id, (rows, grads) in recorded.items():
        tensors[f"{item_id}.rows"], tensors[f"{item_id}.grads"] = rows, grads
    save_state_dict(tensors, path)


def load_first_epoch_gradients(path: str | Path) -> dict[str, SparseRows]:
    """Read a file written by :func:`save_first_epoch_gradients`; ids come back as strings."""
    from ..io import load_state_dict

    tensors = load_state_dict(path, pickle_advice="record the gradients again (save_first_epoch_gradients writes "
                                                  "safetensors) or convert the file to safetensors")
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in tensors.items()):
        raise UserInputError(f"The first-epoch gradients file {path} is not a mapping of named tensors.")
    names = {key.rsplit(".", 1)[0] for key in tensors}
    unpaired = sorted(n for n in names if f"{n}.rows" not in tensors or f"{n}.grads" not in tensors)
    if unpaired:
        raise UserInputError(f"The first-epoch gradients file {path} lacks the pair {unpaired[0]}.rows and "
                             f"{unpaired[0]}.grads; it was not written by save_first_epoch_gradients.")
    return {name: (tensors[f"{name}.rows"], tensors[f"{name}.grads"]) for name in names}


def check_fit(gradients: Sequence[SparseRows], embedding: torch.Tensor, path: str | Path) -> None:
    """Refuse recorded gradients that do not fit ``embedding`` (another model's, or another file's tensors)."""
    vocabulary, width = embedding.shape
    for rows, grads in gradients:
        fits = (not rows.is_floating_point() and not rows.is_complex() and rows.dtype != torch.bool and rows.ndim == 1
                and grads.is_floating_point() and tuple(grads.shape) == (len(rows), width)
                and (not len(rows) or 0 <= int(rows.min()) <= int(rows.max()) < vocabulary))
        if not fits:
            raise UserInputError(f"The first-epoch gradients file {path} does not fit this model (rows {tuple(rows.shape)} "
                                 f"{rows.dtype}, gradients {tuple(grads.shape)}; its embedding is {vocabulary} × {width}); "
                                 "record them on this model.")


def current_gradients(adapter: Any, items: Sequence[Any], batch_size: int) -> list[SparseRows]:
    """Each item's present input-embedding gradient, in the order of ``items``."""
    recorder = EmbeddingGradients(adapter.model)
    rows: list[SparseRows] = []
    try:
        for chunk in batches(items, batch_size, shuffle=False, seed=0):
            batch = adapter.collate(chunk)
            adapter.model.zero_grad(set_to_none=True)
            adapter.per_item_loss(adapter.model, batch).sum().backward()
            rows.extend(recorder.per_item(batch, scale=1.0))
    finally:
        recorder.close()
        adapter.model.zero_grad(set_to_none=True)
    return rows


@torch.no_grad()
def ascend(embedding: torch.Tensor, gradients: Sequence[SparseRows], lr: float) -> None:
    """E[rows] += η · g for every item's sparse gradient."""
    for rows, grads in gradients:
        embedding.index_add_(0, rows.to(embedding.device), grads.to(embedding.device, embedding.dtype), alpha=lr)


@torch.no_grad()
def mean_nll(adapter: Any, items: Sequence[Any], batch_size: int) -> float:
    """The mean answer NLL over ``items``."""
    losses = [adapter.per_item_loss(adapter.model, adapter.collate(c)) for c in batches(items, batch_size, shuffle=False, seed=0)]
    return float(torch.cat(losses).mean())


@dataclass
class FirstEpochGAConfig(TrainConfig):
    """η (``lr``), ascent steps, optional recording file and calibration threshold."""

    unused = tuple(name for name in OPTIMISER_SETTINGS if name != "lr")  # its ascent steps are its own, lr is η
    lr: float = 0.01
    steps: int = 5
    gradients: str = ""
    stop_loss: float | None = None

    def check(self) -> None:
        """Also require a positive step count and an existing recording file when one is named."""
        super().check()
        if not (isinstance(self.steps, int) and self.steps > 0):
            raise UserInputError(f"first_epoch_ga steps must be a positive integer, got steps={self.steps}.")
        if self.gradients and not Path(self.gradients).is_file():
            raise UserInputError(f"The first-epoch gradients file {self.gradients} does not exist.")


class FirstEpochGA(Method):
    """Add the forget items' (first-epoch) embedding gradients back to the input embeddings."""

    name = "first_epoch_ga"
    kinds = ("causal_lm",)
    needs = frozenset()
    paper = "Zagardo, A More Practical Approach to Machine Unlearning, 2024"
    use_when = 'When per-item embedding gradients were logged during training and no retain data may be used; expect little selectivity on templated data.'
    Config = FirstEpochGAConfig
    lora = False
    gradient_checkpointing = False  # its embedding gradients are taken in eval mode

    def unlearn(self, adapter: Any, request, config: FirstEpochGAConfig) -> Outcome:
        forget = request.forget_items()
        recorded = self._recorded(request, config)
        embedding = adapter.model.get_input_embeddings().weight
        if recorded is not None:
            check_fit(recorded, embedding, config.gradients)
        elif not embedding.requires_grad:  # no gradient reaches it to be recorded: a RuntimeError otherwise
            raise UserInputError("first_epoch_ga ascends the input embeddings, which are frozen (requires_grad=False); "
                                 "unfreeze them, or give recorded first-epoch gradients.")
        adapter.model.eval()
        losses = [mean_nll(adapter, forget, config.batch_size)]
        for _ in range(config.steps):
            if config.stop_loss is not None and losses[-1] >= config.stop_loss:
                break
            gradients = recorded if recorded is not None else current_gradients(adapter, forget, config.batch_size)
            ascend(embedding, gradients, config.lr)
            losses.append(mean_nll(adapter, forget, config.batch_size))
        info = {"source": "first_epoch" if recorded is not None else "current", "steps": len(losses) - 1,
                "forget_loss": losses}
        return Outcome(adapter.model, info=info)

    @staticmethod
    def _recorded(request, config: FirstEpochGAConfig) -> list[SparseRows] | None:
        """The recorded g₁ of every forget item, or ``None`` when no recording was named."""
        if not config.gradients:
            return None
        stored = load_first_epoch_gradients(config.gradients)
        missing = [i for i in request.forget if str(i) not in stored]
        if missing:
            raise UserInputError(f"The first-epoch gradients file {config.gradients} has no gradient for forget item {missing[0]}.")
        return [stored[str(i)] for i in request.forget]

"""The shared optimisation loop (on Hugging Face accelerate) with a divergence guard."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .config import TrainConfig
from .gu import GradientProjector, LossParts
from .progress import progress_bar

Batch = dict
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class TrainRecord:
    """What happened during optimisation: steps taken, loss curve, and whether it diverged."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    status: str = "ok"
    message: str = ""


class DivergenceGuard:
    """Keeps the last weights that gave a finite loss and restores them when the loss turns NaN/inf."""

    def __init__(self, model: nn.Module, every: int) -> None:
        self.model, self.every = model, max(1, every)
        self._snapshot = self._copy()
        self._snapshot_step = 0

    def _copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def before_step(self, loss: torch.Tensor, step: int) -> bool:
        """Return True (after restoring the snapshot) when ``loss`` is not finite."""
        if not torch.isfinite(loss.detach()).all():
            self.model.load_state_dict(self._snapshot)
            return True
        if step % self.every == 0:  # these weights produced a finite loss: they are good
            self._snapshot, self._snapshot_step = self._copy(), step
        return False

    @property
    def restored_step(self) -> int:
        """The step whose weights the last restore brought back."""
        return self._snapshot_step


def make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named in ``config``."""
    params = [p for p in params if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """Warm-up followed by a constant, linear or cosine decay of the learning rate."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def optimise(
    model: nn.Module,
    epoch_batches: Callable[[int], Iterator[Batch]],
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    steps_per_epoch: int,
    description: str = "unlearning",
    params: Iterable[nn.Parameter] | None = None,
    after_backward: Callable[[nn.Module], None] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    projector: GradientProjector | None = None,
) -> TrainRecord:
    """Minimise ``loss_fn`` over ``epoch_batches(epoch)`` for ``config.epochs`` epochs (or ``max_steps``).

    ``after_backward`` may edit gradients (masks, projections); ``after_step`` may edit weights.
    ``loss_fn`` may return a :class:`LossParts` (forget, retain): the loop minimises their sum, or,
    with a ``projector`` (GU), lets it set the gradients from the two parts instead of backward.
    The model is trained in place: callers pass a copy. A NaN/inf loss stops the run, restores
    the last good weights and marks the record ``diverged``.
    """
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(config.seed)  # dropout and any sampling inside losses follow the one seed
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer = make_optimizer(params if params is not None else model.parameters(), config)
    if projector is not None:
        projector.attach(optimizer)
    schedule = make_schedule(optimizer, config, total)
    model, optimizer = accelerator.prepare(model, optimizer)
    guard = DivergenceGuard(accelerator.unwrap_model(model), config.guard_every)
    record = TrainRecord()
    model.train()
    with progress_bar(description, total) as bar:
        for epoch in range(config.epochs):
            if record.steps >= total or record.status == "diverged":
                break
            for batch in epoch_batches(epoch):
                if record.steps >= total:
                    break
                loss = loss_fn(model, _to_device(batch, accelerator.device))
                parts = loss if isinstance(loss, LossParts) else None
                if parts is not None:
                    loss = parts.forget + parts.retain
                elif projector is not None:
                    raise TypeError("a loss_fn used with a projector must return LossParts(forget, retain)")
                if guard.before_step(loss, record.steps):
                    record.status = "diverged"
                    record.message = (
                        f"loss became {loss.item()} at step {record.steps}; "
                        f"restored the weights of step {guard.restored_step}"
                    )
                    break
                optimizer.zero_grad(set_to_none=True)
                if projector is not None:
                    projector.project(parts.forget, parts.retain)
                else:
                    accelerator.backward(loss)
                if after_backward is not None:
                    after_backward(model)
                if config.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                schedule.step()
                if after_step is not None:
                    after_step(model)
                record.steps += 1
                record.losses.append(float(loss.detach()))
                bar.advance(1, loss=f"{record.losses[-1]:.4f}")
    model.eval()
    return record

"""The shared optimisation loop (on Hugging Face accelerate) with a divergence guard."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from ..errors import UserInputError
from ..progress import progress_bar
from . import distributed
from .config import TrainConfig
from .gu import GradientProjector, LossParts
from .sam import sharpness_aware

Batch = dict
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class TrainRecord:
    """What happened during optimisation: steps taken, loss curve, and whether it diverged."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    status: str = "ok"
    message: str = ""
    stopped_at: int | None = None


class DivergenceGuard:
    """Keeps the last finite weights that gave a finite loss and restores them when the loss turns NaN/inf.

    Finite means: every tensor that was finite when the run began still is (a buffer that held −inf from the
    start, such as an attention mask, is the model's design, not a divergence). A finite loss does not prove
    finite weights: a parameter the batch did not read (an embedding row, another task's head) can hold NaN,
    so a snapshot step checks the weights first.

    With ``restore=False`` (parameters sharded by FSDP / DeepSpeed, where a process holds only a
    slice) it keeps no snapshot and checks no weights: it only stops the run, leaving the weights of the
    last step.
    """

    def __init__(self, model: nn.Module, every: int, restore: bool = True) -> None:
        self.model, self.every, self.restore = model, max(1, every), restore
        self._checked = {k for k, v in model.state_dict().items()
                         if restore and v.is_floating_point() and bool(torch.isfinite(v).all())}
        self._snapshot = self._copy()
        self._snapshot_step = 0

    def _copy(self) -> dict[str, torch.Tensor]:
        if not self.restore:
            return {}
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def _weights_finite(self) -> bool:
        """Every tensor that was finite at the start still is."""
        return all(bool(torch.isfinite(v).all()) for k, v in self.model.state_dict().items() if k in self._checked)

    def before_step(self, loss: torch.Tensor, step: int) -> str | None:
        """Why the run stops (after restoring the snapshot): ``loss`` is not finite, or the weights at a snapshot
        step are not; None to go on."""
        if not torch.isfinite(loss.detach()).all():
            reason = f"loss became {loss.item()} at step {step}"
        elif step % self.every == 0 and self.restore:
            if self._weights_finite():  # finite weights that gave a finite loss: they are good
                self._snapshot, self._snapshot_step = self._copy(), step
                return None
            reason = f"the weights became non-finite by step {step}"
        else:
            return None
        if self.restore:
            self.model.load_state_dict(self._snapshot)
        return reason

    def after_run(self) -> bool:
        """Return True (after restoring the snapshot) when the last step left non-finite weights, which no
        later loss would reveal (not checked without snapshots: sharded parameters)."""
        if not self.restore or self._weights_finite():
            return False
        self.model.load_state_dict(self._snapshot)
        return True

    def outcome(self) -> str:
        """What a stop left: the restored step's weights, or the last step's when nothing was snapshotted."""
        if self.restore:
            return f"restored the weights of step {self.restored_step}"
        return "kept the weights of the last step (sharded parameters are not snapshotted)"

    @property
    def restored_step(self) -> int | None:
        """The step whose weights the last restore brought back (None when it does not restore)."""
        return self._snapshot_step if self.restore else None


def make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named in ``config``; float16 weights are refused (no loss scaler is used, so Adam's update of a
    small float16 gradient came out inf or NaN at the first step, and the run handed back the model unchanged)."""
    params = [p for p in params if p.requires_grad]
    if any(p.dtype == torch.float16 for p in params):
        raise UserInputError("The model's trainable weights are float16, which this training loop cannot step "
                             "(small gradients round to zero or overflow); load the model in float32 or bfloat16, "
                             "or pass --bf16.")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """Warm-up followed by a constant, linear or cosine decay of the learning rate.

    Step k (0-based) of ``total_steps`` uses lr·f(k): during the w = ``warmup_steps`` first steps
    f = (k+1)/(w+1), so no step has lr 0; then, with p = (k−w)/(total_steps−w), f = 1 (constant),
    1−p (linear) or (1 + cos πp)/2 (cosine). The last step has p < 1, so it still moves.
    """

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


def _repeatable(function: Callable) -> Callable:
    """Run ``function`` in a fork of the global random state (it may seed freely, the caller's state is kept)
    and on cuDNN's deterministic kernels, so that a seeded convolutional network trains to the same bits twice
    on one GPU: the default backward kernels of convolutions add up in an order that varies from run to run."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        deterministic = torch.backends.cudnn.deterministic
        torch.backends.cudnn.deterministic = True
        try:
            with torch.random.fork_rng():
                return function(*args, **kwargs)
        finally:
            torch.backends.cudnn.deterministic = deterministic
    return wrapper


@_repeatable
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
    stop: Callable[[nn.Module, int], str | None] | None = None,
    cpu: bool = False,
) -> TrainRecord:
    """Minimise ``loss_fn`` over ``epoch_batches(epoch)`` for ``config.epochs`` epochs (or ``max_steps``).

    ``after_backward`` may edit gradients (masks, projections); ``after_step`` may edit weights.
    ``loss_fn`` may return a :class:`LossParts` (forget, retain): the loop minimises their sum, or,
    with a ``projector`` (GU), lets it set the gradients from the two parts instead of backward.
    The model is trained in place, and stays on the device it trained on (accelerate's: the GPU when
    there is one): callers pass a copy, or move the model back. A NaN/inf loss stops the run, restores
    the last good weights and marks the record ``diverged``.

    Under ``accelerate launch`` / ``torchrun`` every process walks the same batch stream and takes
    its rows of each batch (``config.batch_size`` is the global batch) and weights its loss, part by
    part for :class:`LossParts`, so that the model prepared by accelerate, averaging the gradients,
    takes the one-process step; the recorded loss is the mean over processes. See
    :mod:`unlearnkit.train.distributed`. One process behaves exactly as before.

    ``stop`` (e.g. :class:`unlearnkit.train.stopping.HoldoutStop`), when given, is asked after
    every step where ``stop.due(step)``; a sentence back ends the run there (status stays ``ok``,
    the sentence goes to ``message`` and the step to ``stopped_at``). One process only.
    ``cpu=True`` keeps a one-process run on the CPU even when a GPU is visible (without accelerate,
    whose one device setting per process would otherwise be shared with GPU runs in the same process).
    The run seeds the global random state from ``config.seed`` inside a fork (the caller's state is kept)
    and uses cuDNN's deterministic kernels, so that a seeded convolutional network trains to the same bits
    twice on one GPU (some other CUDA kernels, an embedding's backward among them, may still vary).
    """
    if cpu and distributed.launched_processes() == 1:
        accelerator: Any = _CPUOnly()
    else:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=cpu or not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    sam_rho = getattr(config, "sam_rho", 0.0)  # sharpness-aware forget term (train/sam.py)
    distributed.check_loop_support(accelerator, projector=projector, callbacks=after_backward is not None
                                   or after_step is not None, sam=bool(sam_rho), stop=stop is not None)
    loss_fn = sharpness_aware(loss_fn, sam_rho)
    torch.manual_seed(config.seed)  # dropout and any sampling inside losses follow the one seed
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    plain, sharded = model, distributed.is_sharded(accelerator)
    if sharded:  # FSDP / DeepSpeed shard the module in place: train a copy, copy the weights back at the end
        model, params = _sharded_copy(model, params)
        plain.to("cpu")  # the whole model waits in CPU memory, not on the GPU, while its copy trains
        distributed.prepare_sharded(accelerator, config.batch_size, config.grad_clip)
    optimizer = make_optimizer(params if params is not None else model.parameters(), config)
    if projector is not None:
        projector.attach(optimizer)
    schedule = make_schedule(optimizer, config, total)
    model, optimizer = accelerator.prepare(model, optimizer)
    # the parameters this run trains (a sharded model is clipped whole, as accelerate requires): stale
    # gradients of others, e.g. frozen task embeddings, must not count toward the norm
    clipped = list(model.parameters()) if sharded else [p for g in optimizer.param_groups for p in g["params"]]
    # what losses and callbacks see: the model itself in one process, else a view that runs the wrapper
    net = model if world == 1 else distributed.ModelView(model, accelerator.unwrap_model(model))
    guard = DivergenceGuard(accelerator.unwrap_model(model), config.guard_every, restore=not sharded)
    record = TrainRecord()
    gives_parts = False  # learnt at the first step; LossParts let later batches be split part by part
    model.train()
    with progress_bar(description, total) if rank == 0 else _silent() as bar:
        for epoch in range(config.epochs):
            if record.steps >= total or record.status == "diverged" or record.stopped_at is not None:
                break
            for batch in _while_all_have(epoch_batches(epoch), world):
                if record.steps >= total:
                    break
                if world > 1:  # every process walks the same stream and takes its rows of each batch
                    batch, weights = _share(batch, rank, world, by_part=gives_parts)
                loss = loss_fn(net, _to_device(batch, accelerator.device))
                parts = loss if isinstance(loss, LossParts) else None
                gives_parts = parts is not None
                if projector is not None and parts is None:
                    raise TypeError("a loss_fn used with a projector must return LossParts(forget, retain)")
                if world > 1:
                    loss = _weighted(loss, weights)
                    if not sharded:
                        loss = distributed.touch_parameters(loss, model)
                elif parts is not None:
                    loss = parts.forget + parts.retain
                seen = distributed.mean_across(loss.detach()) if world > 1 else loss
                stopped = guard.before_step(seen, record.steps)
                if stopped:
                    record.status = "diverged"
                    record.message = f"{stopped}; {guard.outcome()}"
                    break
                optimizer.zero_grad(set_to_none=True)
                if projector is not None:
                    projector.project(parts.forget, parts.retain)
                else:
                    accelerator.backward(loss)
                if after_backward is not None:
                    after_backward(net)
                if config.grad_clip:
                    accelerator.clip_grad_norm_(clipped, config.grad_clip)
                optimizer.step()
                schedule.step()
                if after_step is not None:
                    after_step(net)
                record.steps += 1
                record.losses.append(float(seen.detach()))
                bar.advance(1, loss=f"{record.losses[-1]:.4f}")
                if stop is not None and stop.due(record.steps):
                    reason = stop(net, record.steps)
                    if reason:
                        record.stopped_at, record.message = record.steps, reason
                        break
    if record.status == "ok" and guard.after_run():
        record.status = "diverged"
        record.message = f"the weights became non-finite at step {record.steps}; {guard.outcome()}"
    model.eval()
    if sharded:
        distributed.copy_back_sharded(accelerator, model, plain)
        plain.eval()
        accelerator.free_memory()
    return record


class _CPUOnly:
    """The part of accelerate's ``Accelerator`` the loop uses, for one process on the CPU."""

    device = torch.device("cpu")
    num_processes, process_index = 1, 0
    distributed_type = "NO"

    def prepare(self, *objects: Any) -> tuple:
        for item in objects:
            if isinstance(item, nn.Module):
                item.to(self.device)
        return objects

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model


def _share(batch: Batch, rank: int, world: int, *, by_part: bool) -> tuple[Batch, tuple[float, float]]:
    """This process's rows of ``batch`` and the weights of its loss's (forget, retain) parts.

    ``by_part`` (the loss gives :class:`LossParts`) splits a paired batch part by part, evenly, with a
    weight per part; otherwise the batch is split in proportion, with one weight for the whole loss
    (exact for a loss that is one tensor, at the price of uneven work). See :mod:`.distributed`.
    """
    if by_part and distributed.has_parts(batch):
        return distributed.split_parts(batch, rank, world)
    batch, weight = distributed.split_batch(batch, rank, world)
    return batch, (weight, weight)


def _weighted(loss: torch.Tensor | LossParts, weights: tuple[float, float]) -> torch.Tensor:
    """The loss this process backpropagates: each LossParts field times its part's weight, a tensor times the one weight."""
    forget_weight, retain_weight = weights
    if isinstance(loss, LossParts):
        return forget_weight * loss.forget + retain_weight * loss.retain
    if forget_weight != retain_weight:
        raise TypeError("a loss_fn that returned LossParts at its first step must return them at every step")
    return loss * forget_weight


def _while_all_have(batches: Iterator[Batch], world: int) -> Iterator[Batch]:
    """The batches, ending as soon as any process's stream ends (so no process waits alone in DDP).

    Streams are meant to be identical everywhere, but one that decides from this process's own
    losses (an early stop) may end earlier on one process than on another.
    """
    if world == 1:
        yield from batches
        return
    for batch in batches:
        if not distributed.every_process(True):
            return
        yield batch
    distributed.every_process(False)


class _Silent:
    def advance(self, n: int = 1, **fields: object) -> None:
        """Nothing: only the main process draws progress."""


def _silent() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext(_Silent())


def _sharded_copy(model: nn.Module, params: Iterable[nn.Parameter] | None):
    """A deep copy of ``model`` for FSDP / DeepSpeed to shard, and ``params`` mapped onto it by name."""
    import copy

    twin = copy.deepcopy(model)
    if params is None:
        return twin, None
    names = {id(p): name for name, p in model.named_parameters()}
    theirs = dict(twin.named_parameters())
    return twin, [theirs[names[id(p)]] for p in params]


def warm_up_step(model: nn.Module, epoch_batches: Callable[[int], Iterator[Batch]], loss_fn: LossFn,
                 config: TrainConfig, *, steps_per_epoch: int) -> None:
    """One untimed step of this training on a copy of ``model``, before the training is measured: a
    process's first backward pass and optimizer step pay one-off set-up costs (threads, kernels, allocator
    arenas; ~100 MB on the image benches) that would otherwise land in the time and memory measured for
    the training. ``model`` and the caller's random state are left as they were."""
    optimise(copy.deepcopy(model), epoch_batches, loss_fn, dataclasses.replace(config, max_steps=1),
             steps_per_epoch=steps_per_epoch, description="warm-up")

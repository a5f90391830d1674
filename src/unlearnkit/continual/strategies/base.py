"""What a continual strategy is, and the gradient learner that plug-ins compose on.

A :class:`Strategy` learns tasks (``learn(task, ids)``), predicts (``logits(x, task)``), and drops
whatever it keeps about forgotten samples (``purge(ids, task)``). Most strategies are a
:class:`GradientLearner` (an MLP trained with the shared ``optimise`` loop, cross-entropy on the
current task) plus :class:`Plugin` objects that add a penalty (EWC, L2, distillation), a replay term
(ER), another loss for the new samples (UER), a pre-step (refresh) or a gradient and step edit (CUBER/GPM).
Plug-ins compose: the strategy spec ``"refresh+er+ewc"`` stacks three of them. Each hook acts on its
own: refresh's ascent step moves the weights directly, so with ``gpm`` or ``cuber`` only the ordinary
step (its gradient and its weight change) is projected, not that ascent step.

A training run that diverges (a NaN/inf loss or weights) raises :class:`UserInputError` naming what
was trained, rather than letting the stream go on from the weights the loop rolled back to.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserInputError
from ...train import TrainConfig, optimise
from ...train.config import build_config
from ..nets import build_mlp
from ..scenarios import Scenario, Task

MASK_VALUE = -1e9  # finite, so masked entries give probability 0 without NaNs in KL terms


@dataclass
class LearnerConfig(TrainConfig):
    """The gradient learner's recipe; ``epochs`` defaults to the scenario's (see :class:`..scenarios.Scenario`)."""

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 32
    grad_clip: float | None = None
    hidden: int = 100

    def check(self) -> None:
        """The recipe's checks plus a positive hidden-layer width."""
        super().check()
        if not (isinstance(self.hidden, int) and self.hidden >= 1):
            raise UserInputError(f"The hidden-layer width must be a positive integer, got hidden={self.hidden}.")


@dataclass
class PluginConfig:
    """Base of plug-in hyper-parameters."""

    def check(self) -> None:
        """Raise :class:`UserInputError` for a setting that cannot work (plug-ins override)."""


def non_negative(*values: float) -> bool:
    """True when every value is a finite number ≥ 0 (NaN and ±inf are not)."""
    return all(math.isfinite(v) and v >= 0 for v in values)


def positive(*values: float) -> bool:
    """True when every value is a finite number > 0."""
    return all(math.isfinite(v) and v > 0 for v in values)


def check_trained(record: Any, what: str, option: str = "--param") -> None:
    """Raise :class:`UserInputError` when the training run on ``what`` diverged (its settings come from ``option``)."""
    if record.status == "diverged":
        cause = record.message.partition(";")[0]  # the rest says which weights the loop restored: moot here
        raise UserInputError(f"Training diverged on {what} ({cause}); lower lr or set grad_clip with {option}.")


def split_params(configs: Sequence[type], overrides: Mapping[str, Any], owner: str) -> list[Any]:
    """Instantiate each config class with the overrides it declares; a name no config declares is an error."""
    if "seed" in overrides:
        raise UserInputError(f"Strategy {owner!r} takes its seed from the run's --seed, not from a seed hyper-parameter; drop seed.")
    names = {f.name for cls in configs for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserInputError(f"Strategy {owner!r} has no hyper-parameter {unknown[0]!r}; valid: {', '.join(sorted(names))}.")
    built = []
    for cls in configs:
        own = {f.name for f in dataclasses.fields(cls)}
        built.append(build_config(cls, {k: v for k, v in overrides.items() if k in own}, owner=f"Strategy {owner!r}"))
    return built


class Strategy:
    """Base class: a continual learner that can also be asked to drop forgotten samples."""

    name: ClassVar[str] = ""
    #: The unlearner used when the stream does not name one.
    default_unlearner: ClassVar[str] = "amnesiac"

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario, self.seed = scenario, seed

    def learn(self, task: Task, ids: torch.Tensor) -> None:  # pragma: no cover - abstract
        """Learn ``task`` from the training samples ``ids`` (a subset of the task's ids after unlearning)."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor, task: Task | None = None) -> torch.Tensor:  # pragma: no cover - abstract
        """Scores ``(B, C)``; ``task`` is given in the task-incremental setting only."""
        raise NotImplementedError

    def purge(self, ids: set[int], task: int | None) -> None:
        """Drop every stored trace of the forgotten sample ``ids`` (``task`` when a whole task went)."""

    def held_ids(self) -> set[int]:
        """Sample ids this strategy stores (replay buffers); must exclude every forgotten id."""
        return set()

    def unlearn(self, task: int | None, ids: set[int]) -> dict[str, Any]:
        """The strategy's own unlearning (ACU, UnCLe); others are unlearned by :mod:`..unlearners`."""
        raise UserInputError(f"Strategy {self.name!r} has no built-in unlearning; choose another unlearner.")


class Plugin:
    """A composable piece of a gradient strategy; every hook is optional."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = PluginConfig

    def __init__(self, config: Any) -> None:
        self.config = config

    def before_task(self, learner: "GradientLearner", task: Task, ids: torch.Tensor) -> None:
        """Called before training on a task."""

    def current_logits(self, learner: "GradientLearner", model: nn.Module, batch: dict) -> torch.Tensor | None:
        """Logits to train the current batch on, when the plug-in changes them (UER)."""
        return None

    def penalty(self, learner: "GradientLearner", model: nn.Module, batch: dict) -> torch.Tensor | None:
        """A term added to the loss (regularisers, distillation, replay)."""
        return None

    def before_step(self, learner: "GradientLearner", model: nn.Module, batch: dict) -> None:
        """Called before each step's loss is computed; may change the weights (refresh)."""

    def after_backward(self, learner: "GradientLearner", model: nn.Module) -> None:
        """May edit the gradients (projection)."""

    def after_step(self, learner: "GradientLearner", model: nn.Module) -> None:
        """Called after each optimiser step; may edit the weights (projection of the step's change)."""

    def after_task(self, learner: "GradientLearner", task: Task, ids: torch.Tensor) -> None:
        """Called after training on a task."""

    def forget(self, learner: "GradientLearner", ids: set[int], task: int | None) -> None:
        """Drop what the plug-in stores about forgotten samples."""

    def held_ids(self) -> set[int]:
        """Sample ids the plug-in stores."""
        return set()


class GradientLearner(Strategy):
    """An MLP trained task by task with cross-entropy through the shared loop, extended by plug-ins.

    It records each task's weight change Δθ^(t) so that the amnesiac unlearner can subtract it.
    """

    name = "naive"

    def __init__(self, scenario: Scenario, seed: int, config: LearnerConfig, plugins: Sequence[Plugin] = ()) -> None:
        super().__init__(scenario, seed)
        self.config, self.plugins = config, list(plugins)
        self.model = build_mlp(scenario.input_shape, scenario.num_classes, config.hidden, seed)
        self.task_deltas: dict[int, dict[str, torch.Tensor]] = {}
        self.learned_tasks: set[int] = set()  # tasks learned and not unlearned since
        self.tasks_learned = 0  # learn requests served (seeds the batch order)
        self.generator = torch.Generator().manual_seed(seed + 1)

    @property
    def seen_classes(self) -> set[int]:
        """The classes of the tasks learned and not unlearned since (a forgotten task's classes go)."""
        return {c for t in self.learned_tasks for c in self.scenario.tasks[t].classes}

    # -- data ---------------------------------------------------------------------------------
    def batch_of(self, ids: torch.Tensor, task_index: int | torch.Tensor) -> dict[str, torch.Tensor]:
        """A training batch for sample ``ids`` (inputs, labels, ids, task index of each sample)."""
        task = task_index if isinstance(task_index, torch.Tensor) else torch.full((len(ids),), task_index)
        return {"x": self.scenario.train_x[ids], "y": self.scenario.train_y[ids], "ids": ids, "task": task}

    def task_batches(self, task: Task, ids: torch.Tensor):
        """Epoch-indexed, seeded shuffles of the task's samples, and the steps per epoch."""
        size = self.config.batch_size

        def epoch_batches(epoch: int) -> Iterator[dict]:
            seed = self.seed + 1009 * (task.index + 1) + 7919 * epoch + 31 * self.tasks_learned
            order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
            for start in range(0, len(order), size):
                yield self.batch_of(order[start : start + size], task.index)

        return epoch_batches, -(-len(ids) // size)

    # -- logits and loss ----------------------------------------------------------------------
    def mask(self, logits: torch.Tensor, task_indices: torch.Tensor) -> torch.Tensor:
        """In the task-incremental setting, hide the classes outside each sample's task."""
        if self.scenario.setting != "task-il":
            return logits
        return logits.masked_fill(~self.scenario.class_mask(task_indices), MASK_VALUE)

    def task_loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """Cross-entropy of the current batch (masked per task in task-IL)."""
        return F.cross_entropy(self.mask(model(batch["x"]), batch["task"]), batch["y"])

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The full training loss: the current batch's term plus every plug-in's penalty."""
        for plugin in self.plugins:
            plugin.before_step(self, model, batch)
        logits = next((l for p in self.plugins if (l := p.current_logits(self, model, batch)) is not None), None)
        if logits is None:
            loss = self.task_loss(model, batch)
        else:
            loss = F.cross_entropy(self.mask(logits, batch["task"]), batch["y"])
        for plugin in self.plugins:
            extra = plugin.penalty(self, model, batch)
            if extra is not None:
                loss = loss + extra
        return loss

    def _after_backward(self, model: nn.Module) -> None:
        for plugin in self.plugins:
            plugin.after_backward(self, model)

    def _after_step(self, model: nn.Module) -> None:
        for plugin in self.plugins:
            plugin.after_step(self, model)

    # -- Strategy API -------------------------------------------------------------------------
    def learn(self, task: Task, ids: torch.Tensor) -> None:
        """Train on the task's samples ``ids`` with the plug-ins' hooks around the shared loop."""
        before = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        for plugin in self.plugins:
            plugin.before_task(self, task, ids)
        stream, steps = self.task_batches(task, ids)
        config = dataclasses.replace(self.config, seed=self.seed + task.index)
        # cpu=True: the strategies keep their data, buffers and stored traces on the CPU, where these
        # small models train fastest; on a GPU, accelerate would move the model away from them.
        record = optimise(self.model, stream, self.loss, config, steps_per_epoch=steps,
                          description=f"task {task.index}", after_backward=self._after_backward,
                          after_step=self._after_step, cpu=True)
        check_trained(record, f"task {task.index}")
        self.model.eval()
        for plugin in self.plugins:
            plugin.after_task(self, task, ids)
        self.learned_tasks.add(task.index)
        self.tasks_learned += 1
        delta = {k: v.detach() - before[k] for k, v in self.model.state_dict().items()}
        old = self.task_deltas.get(task.index)
        self.task_deltas[task.index] = delta if old is None else {k: old[k] + delta[k] for k in delta}

    @torch.no_grad()
    def logits(self, x: torch.Tensor, task: Task | None = None) -> torch.Tensor:
        """Class scores of the current model (masked to the task's classes when ``task`` is given)."""
        self.model.eval()
        out = self.model(x)
        if task is not None:
            out = self.mask(out, torch.full((len(x),), task.index))
        return out

    def purge(self, ids: set[int], task: int | None) -> None:
        """Let every plug-in drop its state about the forgotten samples; a forgotten task's delta goes too,
        and it no longer counts as learned (its classes leave :attr:`seen_classes`)."""
        if task is not None:
            self.learned_tasks.discard(task)
        for plugin in self.plugins:
            plugin.forget(self, ids, task)
        if task is not None:
            self.task_deltas.pop(task, None)

    def held_ids(self) -> set[int]:
        """Union of the sample ids the plug-ins store."""
        return set().union(*(p.held_ids() for p in self.plugins)) if self.plugins else set()

    def plugin(self, cls: type) -> Any:
        """The first plug-in of this class, or None."""
        return next((p for p in self.plugins if isinstance(p, cls)), None)

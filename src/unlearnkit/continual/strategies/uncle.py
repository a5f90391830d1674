"""UnCLe: a hypernetwork generates each task's classifier; unlearning a task is data-free.

Adhikari et al., "An Unlearning Framework for Continual Learning" (UnCLe, arXiv 2509.17530, 2025).
A hypernetwork H(e_t; φ) maps a learned task embedding e_t to the weights θ_t of task t's
classifier. With φ* the copy before an operation and R the retained earlier tasks:

- learn t:    min_{φ, e_t} L_t(θ = H(e_t; φ)) + β · mean_{j∈R} ‖H(e_j; φ) − H(e_j; φ*)‖²;
- unlearn f:  min_φ mean_{j∈R} ‖H(e_j; φ) − H(e_j; φ*)‖² + γ · (1/S) Σ_s ‖H(e_f; φ) − ε_s‖²,
  ε_s ~ N(0, σ²I), S samples drawn anew each step, which drives θ_f towards noise (towards 0 in
  expectation) without any data.

The defaults follow the authors' public code (github.com/visprasadh/uncle, its P-MNIST and CIFAR-100
configs): β = 0.1, γ = 0.01, σ = 1, S = 10, 100 unlearning steps, each later unlearning taking 10 %
fewer steps (``unlearn_decay``), Adam at 1e-3 and gradients clipped to norm 1 in both phases. Our
choices: the generated classifier is a one-hidden-layer MLP over the flattened input, whose weights
are scaled by 1/√fan-in (so σ = 1 gives weights of a fresh initialisation's size); earlier embeddings
are frozen; R holds the retained tasks only (``regularise_forgotten`` also keeps forgotten tasks'
noise outputs); the learning regulariser is the mean over R as the paper writes it (the authors'
code divides the sum by the number of tasks in the sequence instead); the clipping also covers the
task embedding being learned (the authors clip the hypernetwork alone); the decayed step count stays
at least 1 (the authors' can reach 0); epochs and batch size are the other strategies' on these
small scenarios. Prediction: in task-IL the task's own generated classifier; otherwise each class gets
the highest log-probability any learned task's classifier gives it. A forgotten task stays in
prediction with the weights H(e_f) still generated for it, so its accuracy, relapse and the
spillover measure what the unlearning did (dropping e_f is the paper's trivial baseline, not UnCLe).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserInputError
from ...train import TrainConfig, optimise
from ..scenarios import Scenario, Task
from .base import MASK_VALUE, Strategy, check_trained, non_negative


@dataclass
class UnCLeConfig(TrainConfig):
    """Training recipe, network sizes, β, and the data-free unlearning schedule."""

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 32
    grad_clip: float | None = 1.0
    embedding_dim: int = 32
    hyper_hidden: int = 100
    target_hidden: int = 32
    beta: float = 0.1
    gamma: float = 0.01
    unlearn_steps: int = 100
    unlearn_decay: float = 0.9
    noise_std: float = 1.0
    noise_samples: int = 10
    regularise_forgotten: bool = False

    def check(self) -> None:
        """The recipe's checks plus positive sizes and step counts, finite β, γ, σ ≥ 0, and 0 < decay ≤ 1."""
        super().check()
        sizes = (self.embedding_dim, self.hyper_hidden, self.target_hidden, self.unlearn_steps, self.noise_samples)
        if min(sizes) < 1 or not non_negative(self.beta, self.gamma, self.noise_std) or not 0 < self.unlearn_decay <= 1:
            raise UserInputError("UnCLe needs positive embedding_dim, hyper_hidden, target_hidden, unlearn_steps and "
                                 "noise_samples, finite beta, gamma and noise_std ≥ 0, and 0 < unlearn_decay ≤ 1.")


class HyperNetwork(nn.Module):
    """H(e; φ): task embedding → flat weights of a one-hidden-layer classifier; embeddings per task."""

    def __init__(self, in_features: int, num_classes: int, config: UnCLeConfig) -> None:
        super().__init__()
        self.shapes = [(config.target_hidden, in_features), (config.target_hidden,), (num_classes, config.target_hidden), (num_classes,)]
        self.fan_in = [in_features, in_features, config.target_hidden, config.target_hidden]
        size = sum(math.prod(s) for s in self.shapes)
        self.net = nn.Sequential(nn.Linear(config.embedding_dim, config.hyper_hidden), nn.ReLU(), nn.Linear(config.hyper_hidden, size))
        self.embeddings = nn.ParameterDict()
        self.embedding_dim = config.embedding_dim

    def initial_embedding(self, task: int, seed: int) -> torch.Tensor:
        """The seeded starting value of a task's embedding."""
        return torch.randn(self.embedding_dim, generator=torch.Generator().manual_seed(seed + 7 * task))

    def embedding(self, task: int, seed: int, create: bool = False) -> torch.Tensor:
        """The learned embedding of ``task``; its seeded starting value when not learned (registered if ``create``)."""
        key = str(task)
        if key in self.embeddings:
            return self.embeddings[key]
        start = self.initial_embedding(task, seed)
        if create:
            self.embeddings[key] = nn.Parameter(start)
            return self.embeddings[key]
        return start

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Flat generated weights θ."""
        return self.net(embedding)

    def classify(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Run the generated classifier θ on ``x``."""
        w1, b1, w2, b2 = (
            part.view(shape) / math.sqrt(fan)
            for part, shape, fan in zip(theta.split([math.prod(s) for s in self.shapes]), self.shapes, self.fan_in)
        )
        return F.linear(torch.relu(F.linear(x.flatten(1), w1, b1)), w2, b2)


class UnCLe(Strategy):
    """Hypernetwork-generated per-task classifiers with data-free task unlearning."""

    name = "uncle"
    default_unlearner = "uncle"

    def __init__(self, scenario: Scenario, seed: int, config: UnCLeConfig) -> None:
        super().__init__(scenario, seed)
        self.config = config
        with torch.random.fork_rng(devices=[]):  # seeded initialisation; the caller's random state is left alone
            torch.manual_seed(seed)
            self.model = HyperNetwork(math.prod(scenario.input_shape), scenario.num_classes, config)
        self.retained: list[int] = []
        self.forgotten: list[int] = []
        self.unlearn_steps = config.unlearn_steps  # shrinks by unlearn_decay after each unlearning
        self.generator = torch.Generator().manual_seed(seed + 1)

    def _embedding(self, task: int) -> torch.Tensor:
        return self.model.embedding(task, self.seed)

    def _own(self, logits: torch.Tensor, task: Task) -> torch.Tensor:
        if self.scenario.setting == "domain-il":
            return logits
        keep = torch.zeros(self.scenario.num_classes, dtype=torch.bool)
        keep[list(task.classes)] = True
        return logits.masked_fill(~keep, MASK_VALUE)

    def _anchors(self, exclude: int) -> dict[int, torch.Tensor]:
        """H(e_j; φ*) for the tasks the regulariser keeps."""
        keep = self.retained + (self.forgotten if self.config.regularise_forgotten else [])
        with torch.no_grad():
            return {j: self.model(self._embedding(j).detach()) for j in keep if j != exclude}

    def _regulariser(self, anchors: dict[int, torch.Tensor]) -> torch.Tensor:
        if not anchors:
            return torch.tensor(0.0)
        outputs = [self.model(self._embedding(j).detach()) - a for j, a in anchors.items()]
        return torch.stack([o.pow(2).sum() for o in outputs]).mean()

    def learn(self, task: Task, ids: torch.Tensor) -> None:
        """Train φ and e_t on the task with the output-preserving regulariser."""
        embedding = self.model.embedding(task.index, self.seed, create=True)
        anchors = self._anchors(exclude=task.index)
        size = self.config.batch_size

        def epoch_batches(epoch: int) -> Iterator[dict]:
            order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(self.seed + 1009 * (task.index + 1) + 7919 * epoch))]
            for start in range(0, len(order), size):
                pick = order[start : start + size]
                yield {"x": self.scenario.train_x[pick], "y": self.scenario.train_y[pick]}

        def loss(model: nn.Module, batch: dict) -> torch.Tensor:
            logits = self._own(self.model.classify(self.model(embedding), batch["x"]), task)
            return F.cross_entropy(logits, batch["y"]) + self.config.beta * self._regulariser(anchors)

        config = dataclasses.replace(self.config, seed=self.seed + task.index)  # as the shared strategies seed a task
        record = optimise(self.model, epoch_batches, loss, config, steps_per_epoch=-(-len(ids) // size),
                          description=f"task {task.index}", params=[*self.model.net.parameters(), embedding], cpu=True)
        check_trained(record, f"task {task.index}")
        self.model.eval()
        self.forgotten = [t for t in self.forgotten if t != task.index]
        if task.index not in self.retained:
            self.retained.append(task.index)

    def unlearn(self, task: int | None, ids: set[int]) -> dict[str, Any]:
        """Drive H(e_f) towards N(0, σ²) noise while keeping the retained tasks' outputs (no data used)."""
        if task is None:
            raise UserInputError("UnCLe unlearns whole tasks only (unlearn:<task>), not individual samples.")
        self.retained = [t for t in self.retained if t != task]
        anchors = self._anchors(exclude=task)
        target = self._embedding(task).detach()
        noise_shape = (self.config.noise_samples, *self.model(target).shape)
        count = self.unlearn_steps

        def steps(epoch: int) -> Iterator[dict]:
            for _ in range(count):
                yield {"noise": torch.randn(noise_shape, generator=self.generator) * self.config.noise_std}

        def loss(model: nn.Module, batch: dict) -> torch.Tensor:
            noise_term = (self.model(target) - batch["noise"]).pow(2).sum(dim=1).mean()
            return self._regulariser(anchors) + self.config.gamma * noise_term

        config = dataclasses.replace(self.config, epochs=1, max_steps=None, seed=self.seed)
        record = optimise(self.model, steps, loss, config, steps_per_epoch=count,
                          description=f"unlearn task {task}", params=list(self.model.net.parameters()), cpu=True)
        check_trained(record, f"the unlearning of task {task}")
        self.model.eval()
        self.forgotten.append(task)
        self.unlearn_steps = max(1, int(count * self.config.unlearn_decay))
        return {"unlearn_loss": record.losses[-1] if record.losses else None}

    @torch.no_grad()
    def logits(self, x: torch.Tensor, task: Task | None = None) -> torch.Tensor:
        """Task-IL: the task's classifier. Otherwise: per class, the best log-probability of any learned task
        (forgotten ones with the weights still generated for them)."""
        self.model.eval()
        if task is not None and self.scenario.setting == "task-il":
            return self._own(self.model.classify(self.model(self._embedding(task.index)), x), task)
        scores = torch.full((len(x), self.scenario.num_classes), MASK_VALUE)
        for t in self.retained + self.forgotten:
            own = self.scenario.tasks[t]
            log_p = F.log_softmax(self._own(self.model.classify(self.model(self._embedding(t)), x), own), dim=1)
            scores = torch.maximum(scores, log_p)
        return scores

    def purge(self, ids: set[int], task: int | None) -> None:
        """UnCLe stores no samples."""

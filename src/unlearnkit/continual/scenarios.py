"""Continual-learning scenarios built on scikit-learn's digits (no download), seeded.

A scenario is a pool of training samples (indexed by a global *sample id*), one or more test
sets ("domains") and an ordered list of tasks. Each task names the sample ids it trains on, the
classes it covers and the test samples that measure it. Settings:

- ``class-il``: one head over all classes, no task id at test time (``split-digits``, ``scole``);
- ``task-il``: the task id is known, logits are masked to the task's classes (``split-digits-task``);
- ``domain-il``: every task has all classes, inputs change from task to task (``permuted-digits``,
  CLOFAI folders, see :mod:`unlearnkit.continual.clofai`).

``scole`` follows Lesort et al., "Challenging Common Assumptions about Catastrophic Forgetting"
(CoLLAs 2023): a long sequence of short tasks, each drawing a few classes from a finite pool, so
classes re-occur. Our choice where the paper is loose: each task samples its classes uniformly
without replacement inside the task and ``samples_per_class`` training samples per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..errors import UserInputError
from ..train.config import check_seed

SETTINGS = ("class-il", "task-il", "domain-il")


@dataclass
class Task:
    """One task: its training sample ids, its classes, and where its test samples are."""

    index: int
    train_ids: torch.Tensor
    classes: tuple[int, ...]
    domain: int
    test_index: torch.Tensor


@dataclass
class Scenario:
    """A pool of training samples, test sets per domain, and the ordered tasks over them.

    ``epochs`` is the default number of passes per task for the gradient strategies: 20 on split
    digits (fewer leave the last class-IL task under-fitted), 5 on permuted digits (5× the samples
    per task), 1 on SCoLe (as in the paper), 3 on CLOFAI folders (as in its reference set-up).
    """

    name: str
    setting: str
    num_classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: list[torch.Tensor]
    test_y: list[torch.Tensor]
    tasks: list[Task]
    seed: int = 0
    epochs: int = 20
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        """Number of tasks."""
        return len(self.tasks)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return tuple(self.train_x.shape[1:])

    def task(self, index: int) -> Task:
        """The task with this index; a clear error names the valid range."""
        if not 0 <= index < self.num_tasks:
            raise UserInputError(f"Scenario {self.name} has tasks 0..{self.num_tasks - 1}, not task {index}.")
        return self.tasks[index]

    def class_mask(self, task_indices: torch.Tensor) -> torch.Tensor:
        """Boolean ``(B, C)`` mask of the classes each sample's task owns."""
        table = torch.zeros(self.num_tasks, self.num_classes, dtype=torch.bool)
        for task in self.tasks:
            table[task.index, list(task.classes)] = True
        return table[task_indices]

    def items(self) -> "PoolItems":
        """The training pool as an indexable sequence of ``(x, y)`` items (for core unlearning methods)."""
        return PoolItems(self.train_x, self.train_y)


class PoolItems:
    """A read-only ``(x, y)`` view of the training pool, indexed by sample id."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.y[index])


def _digits(seed: int, test_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as ``(N, 1, 8, 8)`` floats in [0, 1], split train/test stratified with ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(data.target.astype(np.int64))
    train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=data.target)
    train, test = torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))
    return images[train], labels[train], images[test], labels[test]


def _ids_of(labels: torch.Tensor, classes: tuple[int, ...]) -> torch.Tensor:
    return torch.nonzero(torch.isin(labels, torch.tensor(classes))).flatten()


def split_digits(seed: int = 0, *, setting: str = "class-il", classes_per_task: int = 2) -> Scenario:
    """Split digits: 5 tasks of 2 consecutive classes (0-1, 2-3, ...), class- or task-incremental."""
    if setting not in ("class-il", "task-il"):
        raise UserInputError(f"split-digits is class-il or task-il, not {setting!r}.")
    if classes_per_task not in (1, 2, 5, 10):
        raise UserInputError(f"split-digits needs classes_per_task dividing the 10 classes (1, 2, 5 or 10), "
                             f"got {classes_per_task!r}.")
    train_x, train_y, test_x, test_y = _digits(seed)
    tasks = []
    for index in range(10 // classes_per_task):
        classes = tuple(range(index * classes_per_task, (index + 1) * classes_per_task))
        tasks.append(Task(index, _ids_of(train_y, classes), classes, 0, _ids_of(test_y, classes)))
    name = "split-digits" if setting == "class-il" else "split-digits-task"
    return Scenario(name, setting, 10, train_x, train_y, [test_x], [test_y], tasks, seed)


def permuted_digits(seed: int = 0, *, num_tasks: int = 5) -> Scenario:
    """Permuted digits (domain-incremental): task 0 is the original images, task t>0 a seeded pixel permutation.

    Every task holds its own copy of the training images, so sample ids are distinct across tasks
    (id = t · N + i for image i of task t).
    """
    train_x, train_y, test_x, test_y = _digits(seed)
    generator = torch.Generator().manual_seed(seed)
    pixels = train_x[0].numel()
    xs, ys, tests, test_labels, tasks = [], [], [], [], []
    for index in range(num_tasks):
        order = torch.arange(pixels) if index == 0 else torch.randperm(pixels, generator=generator)
        permute = lambda x: x.reshape(len(x), -1)[:, order].reshape(x.shape)
        xs.append(permute(train_x))
        ys.append(train_y)
        tests.append(permute(test_x))
        test_labels.append(test_y)
        ids = torch.arange(len(train_y)) + index * len(train_y)
        tasks.append(Task(index, ids, tuple(range(10)), index, torch.arange(len(test_y))))
    return Scenario("permuted-digits", "domain-il", 10, torch.cat(xs), torch.cat(ys), tests, test_labels, tasks, seed, epochs=5)


def scole(seed: int = 0, *, num_tasks: int = 200, classes_per_task: int = 2, samples_per_class: int = 64) -> Scenario:
    """SCoLe on digits: ``num_tasks`` short class-incremental tasks drawn from the 10-class pool (1 epoch each).

    Each task draws ``samples_per_class`` training images of each of its classes from that class's
    pool, so tasks that share a class share sample ids. Requests act on sample ids: ``unlearn:t``
    forgets task t's samples wherever they were learned, so it also removes them from every earlier
    task that holds them (from the data of the retrained reference and from replay buffers; a later
    ``learn`` of such a task brings them back), and spillover is measured only on the tasks it did
    not touch.

    Departures from Lesort et al.'s set-up: their tasks train on all images of their classes (we draw
    ``samples_per_class``, so images recur as well as classes), their sequences run to 500-2500 tasks,
    and they report accuracy on the whole test set, where each task here is scored on its own classes'
    test images, so ``avg_acc`` weighs a class by how often it was drawn (the draws of classes and of
    images share one generator, so ``samples_per_class`` also changes the class sequence).
    """
    if num_tasks < 1 or not 1 <= classes_per_task <= 10 or samples_per_class < 1:
        raise UserInputError("scole needs num_tasks ≥ 1, classes_per_task in 1..10 and samples_per_class ≥ 1.")
    train_x, train_y, test_x, test_y = _digits(seed)
    smallest = int(torch.bincount(train_y, minlength=10).min())
    if samples_per_class > smallest:  # the draw would silently take fewer
        raise UserInputError(f"scole samples_per_class={samples_per_class} exceeds the smallest class's "
                             f"{smallest} training images; give at most {smallest}.")
    rng = np.random.default_rng(seed)
    tasks = []
    for index in range(num_tasks):
        classes = tuple(sorted(int(c) for c in rng.choice(10, size=classes_per_task, replace=False)))
        ids = []
        for c in classes:
            pool = _ids_of(train_y, (c,)).numpy()
            ids.extend(rng.choice(pool, size=samples_per_class, replace=False).tolist())
        tasks.append(Task(index, torch.tensor(sorted(ids)), classes, 0, _ids_of(test_y, classes)))
    return Scenario("scole", "class-il", 10, train_x, train_y, [test_x], [test_y], tasks, seed, epochs=1)


#: name -> builder(seed) for the scenarios that need no files.
SCENARIOS: dict[str, Callable[[int], Scenario]] = {
    "split-digits": lambda seed: split_digits(seed, setting="class-il"),
    "split-digits-task": lambda seed: split_digits(seed, setting="task-il"),
    "permuted-digits": permuted_digits,
    "scole": scole,
}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


MAX_PERMUTED_TASKS = 1000
MAX_SCOLE_TASKS = 10000

#: Each scenario's options: name -> (check, what a valid value is).
SCENARIO_OPTIONS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    # bounded so that a typo cannot hold memory for hours: each permuted task copies the images (~0.5 MB)
    "permuted-digits": {"num_tasks": (lambda v: _positive_int(v) and v <= MAX_PERMUTED_TASKS,
                                      f"a whole number in 1..{MAX_PERMUTED_TASKS}")},
    "scole": {"num_tasks": (lambda v: _positive_int(v) and v <= MAX_SCOLE_TASKS, f"a whole number in 1..{MAX_SCOLE_TASKS}"),
              "classes_per_task": (lambda v: _positive_int(v) and v <= 10, "a whole number in 1..10"),
              "samples_per_class": (_positive_int, "a whole number ≥ 1")},
    "clofai": {"image_size": (lambda v: _positive_int(v) and v >= 4, "a whole number ≥ 4"),
               "test_fraction": (_fraction, "a number strictly between 0 and 1")},
}


def check_scenario_options(name: str, options: Mapping[str, Any]) -> None:
    """One sentence for an option the scenario does not have or a value it cannot use."""
    valid = SCENARIO_OPTIONS.get(name, {})
    for option, value in options.items():
        if option not in valid:
            listed = f"; valid: {', '.join(valid)}" if valid else ""
            raise UserInputError(f"Scenario {name} has no option {option!r}{listed}.")
        check, wanted = valid[option]
        if not check(value):
            raise UserInputError(f"Scenario {name} option {option} must be {wanted}, got {value!r}.")


def build_scenario(name: str, seed: int = 0, *, data: str | None = None, **options: Any) -> Scenario:
    """The scenario called ``name`` (``clofai`` reads the folder ``data``); unknown names are errors."""
    if name != "clofai" and name not in SCENARIOS:
        valid = ", ".join([*SCENARIOS, "clofai"])
        raise UserInputError(f"Unknown scenario {name!r}; valid scenarios: {valid}.")
    check_scenario_options(name, options)
    check_seed(seed, "The scenario seed")  # None drew a different split on every call; -1 crashed in scikit-learn
    if name == "clofai":
        if not data:
            raise UserInputError("The clofai scenario needs a data folder (--data DIR) with one sub-folder per task.")
        from .clofai import load_clofai

        return load_clofai(data, seed=seed, **options)
    builders = {"permuted-digits": permuted_digits, "scole": scole}
    return builders[name](seed, **options) if options else SCENARIOS[name](seed)

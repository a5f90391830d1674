"""Continual-learning and continual-unlearning metrics, pure functions of accuracy matrices.

Square form (rows: after training task t; columns: task i; ``initial[i]`` = accuracy before any
training), for T tasks learned in order:

- ``average_accuracy`` = mean_i R[T−1, i];
- ``backward_transfer`` (BWT) = mean_{i<T−1} (R[T−1, i] − R[i, i]);
- ``forward_transfer`` (FWT) = mean_{i≥1} (R[i−1, i] − initial[i]);
- ``forgetting_last`` (Avalanche) = mean_{i<T−1} (R[i, i] − R[T−1, i]) = −BWT;
- ``forgetting_max`` (Chaudhry; Mammoth ``utils/metrics.py``) = mean_{i<T−1} (max_{t≥i} R[t, i] − R[T−1, i]).
  Mammoth zero-pads the entries before task i is learned, so the max runs over t ≥ i and the value is ≥ 0.

With a single task there is no earlier (or later) task: BWT, FWT and both forgetting forms are None, as in
the stream form, not a 0.0 that reads as "measured, no forgetting".

Stream form (:func:`stream_metrics`): rows are the steps of a learn/unlearn stream. The same
definitions are applied with "the row where task i was last learned" as its diagonal and the last
row as final, over the tasks still learned at the end (forgotten tasks are meant to drop); FWT alone
runs over every task ever learned but the first, with the row just before its first learning. BWT and
both forgetting forms leave out only a task whose diagonal row is the last row that changed the
model (trailing ``evaluate`` steps ignored), as the square form leaves out the last task; a task
learned before a final unlearning step counts. On a learn-only stream 0..T−1 they equal the square
form. Unlearning adds:

- ``forgotten_acc``: mean final accuracy of the tasks unlearned (and not learned again);
- ``relapse``: for each unlearned task followed by learning (of other tasks) before it is learned
  again, the largest rise of its accuracy above its value right after the unlearning step, over the
  steps from that first later learning step until it is learned again (clipped at 0); mean over
  those requests (None when no request is followed by learning);
- ``spillover``: at each unlearning step, the mean accuracy drop (before − after) of the learned tasks
  that the request did not touch; mean over unlearning steps (negative when they improve).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def average_accuracy(matrix: np.ndarray) -> float:
    """Mean accuracy over all tasks after the last task."""
    return float(np.mean(np.asarray(matrix)[-1]))


def backward_transfer(matrix: np.ndarray) -> float | None:
    """BWT: mean change of each earlier task's accuracy from just after learning it to the end."""
    r = np.asarray(matrix)
    t = len(r)
    return float(np.mean([r[-1, i] - r[i, i] for i in range(t - 1)])) if t > 1 else None


def forward_transfer(matrix: np.ndarray, initial: Sequence[float]) -> float | None:
    """FWT: mean accuracy on task i just before learning it, minus the untrained model's accuracy."""
    r, b = np.asarray(matrix), np.asarray(initial)
    t = len(r)
    return float(np.mean([r[i - 1, i] - b[i] for i in range(1, t)])) if t > 1 else None


def forgetting_last(matrix: np.ndarray) -> float | None:
    """Forgetting as in Avalanche: accuracy just after learning a task minus at the end (= −BWT)."""
    r = np.asarray(matrix)
    t = len(r)
    return float(np.mean([r[i, i] - r[-1, i] for i in range(t - 1)])) if t > 1 else None


def forgetting_max(matrix: np.ndarray) -> float | None:
    """Forgetting as in Mammoth: best accuracy a task ever had (from its learning on) minus at the end."""
    r = np.asarray(matrix)
    t = len(r)
    return float(np.mean([r[i:, i].max() - r[-1, i] for i in range(t - 1)])) if t > 1 else None


@dataclass(frozen=True)
class StepInfo:
    """What a stream step did, for the stream metrics: its action, its task, the tasks it touched and, for an
    unlearning step, the tasks it forgot: every learned task left with no training sample (default: its own task)."""

    action: str
    task: int | None = None
    touched: tuple[int, ...] = ()
    forgotten: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.forgotten is None:
            object.__setattr__(self, "forgotten", (self.task,) if self.action == "unlearn" and self.task is not None else ())


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def stream_metrics(matrix: np.ndarray, initial: Sequence[float], steps: Sequence[StepInfo]) -> dict[str, float | None]:
    """All metrics of a learn/unlearn stream; ``matrix[s, i]`` is task i's accuracy after step s.

    ``touched`` of an unlearning step lists the tasks whose training samples it removed (all of
    them for a task request), ``forgotten`` the tasks it left with none: those count as forgotten from then on
    (relapse, forgotten-task accuracy), whether a task request or sample requests removed them. Metrics that do
    not apply (e.g. relapse without unlearning) are None.
    """
    r, b = np.asarray(matrix, dtype=float), np.asarray(initial, dtype=float)
    rows = [b, *r]  # rows[s + 1] is the state after step s; rows[0] the untrained model
    last_learn, first_learn, forgotten_at = {}, {}, {}
    for s, step in enumerate(steps):
        if step.action == "learn":
            last_learn[step.task] = s
            first_learn.setdefault(step.task, s)
            forgotten_at.pop(step.task, None)
        elif step.action == "unlearn":
            for task in step.forgotten:
                last_learn.pop(task, None)
                forgotten_at[task] = s
    retained = sorted(last_learn)
    last_change = max((s for s, step in enumerate(steps) if step.action != "evaluate"), default=-1)
    earlier = [i for i in retained if last_learn[i] != last_change]
    ordered = sorted(first_learn, key=first_learn.get)
    return {
        "avg_acc": _mean([r[-1, i] for i in retained]),
        "bwt": _mean([r[-1, i] - r[last_learn[i], i] for i in earlier]),
        "fwt": _mean([rows[first_learn[i]][i] - b[i] for i in ordered[1:]]),
        "forgetting_last": _mean([r[last_learn[i], i] - r[-1, i] for i in earlier]),
        "forgetting_max": _mean([r[last_learn[i]:, i].max() - r[-1, i] for i in earlier]),
        "forgotten_acc": _mean([r[-1, f] for f in sorted(forgotten_at)]),
        "relapse": _mean(relapses(r, steps)),
        "spillover": _mean(spillovers(rows, steps)),
    }


def relapses(matrix: np.ndarray, steps: Sequence[StepInfo]) -> list[float]:
    """For each task an unlearning step forgot, followed by learning before that task is learned again:
    max(0, highest accuracy of that task from the first later learning step on − accuracy right after).
    Requests with no such learning step are left out."""
    out = []
    for s, step in enumerate(steps):
        if step.action != "unlearn":
            continue
        for task in step.forgotten:
            end = next((k for k in range(s + 1, len(steps)) if steps[k].action == "learn" and steps[k].task == task), len(steps))
            start = next((k for k in range(s + 1, end) if steps[k].action == "learn"), None)
            if start is not None:
                out.append(float(max(0.0, matrix[start:end, task].max() - matrix[s, task])))
    return out


def spillovers(rows: Sequence[np.ndarray], steps: Sequence[StepInfo]) -> list[float]:
    """For each unlearning step: mean drop of the learned, untouched tasks (``rows[s]`` is before step s)."""
    out, learned = [], set()
    for s, step in enumerate(steps):
        if step.action == "learn":
            learned.add(step.task)
        elif step.action == "unlearn":
            learned -= set(step.forgotten)
            kept = sorted(learned - set(step.touched))
            if kept:
                out.append(float(np.mean([rows[s][j] - rows[s + 1][j] for j in kept])))
    return out

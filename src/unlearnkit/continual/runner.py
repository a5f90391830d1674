"""Run a learn/unlearn/evaluate stream on a scenario and measure it.

After every step the accuracy of every task is recorded (a steps × tasks matrix, plus the untrained
model's row). At every unlearning step a reference model is retrained with the same strategy and
seed on the remaining data (each earlier learn request replayed without the forgotten samples), and
the step reports ``retrain_gap`` (mean |accuracy difference| over the tasks learned so far) and
``retrain_output_kl`` (mean KL(reference ‖ model) of the predictive distributions on those tasks'
test samples, each sample counted once; None where the reference prefers no class, see :func:`_distance`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserInputError
from .metrics import StepInfo, stream_metrics
from .scenarios import Scenario
from .stream import Request, check_stream, default_stream, parse_stream
from .strategies import Strategy, build_strategy
from .strategies.acu import ACU
from .unlearners import apply_unlearner, check_retain, check_unlearner_params, resolve_unlearner


@torch.no_grad()
def task_log_probs(strategy: Strategy, scenario: Scenario) -> list[torch.Tensor]:
    """Each task's test-set log-probabilities (task-aware in task-IL; one pass per domain otherwise)."""
    if scenario.setting == "task-il":
        return [
            F.log_softmax(strategy.logits(scenario.test_x[t.domain][t.test_index], t), dim=1) for t in scenario.tasks
        ]
    per_domain = {d: F.log_softmax(strategy.logits(scenario.test_x[d]), dim=1) for d in {t.domain for t in scenario.tasks}}
    return [per_domain[t.domain][t.test_index] for t in scenario.tasks]


def accuracies(log_probs: Sequence[torch.Tensor], scenario: Scenario) -> np.ndarray:
    """Accuracy of every task from its test log-probabilities."""
    return np.array([
        float((lp.argmax(1) == scenario.test_y[t.domain][t.test_index]).float().mean()) for lp, t in zip(log_probs, scenario.tasks)
    ])


@dataclass
class StepResult:
    """One stream step: what it did, its cost, the accuracies after it, and the retrain distances."""

    index: int
    action: str
    task: int | None
    token: str
    seconds: float
    accuracy: np.ndarray
    samples: int = 0
    retrain_gap: float | None = None
    retrain_output_kl: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready step record (accuracies keyed by task index)."""
        return {
            "index": self.index, "action": self.action, "task": self.task, "token": self.token,
            "samples": self.samples, "seconds": self.seconds,
            "accuracy": {str(i): float(a) for i, a in enumerate(self.accuracy)},
            "retrain_gap": self.retrain_gap, "retrain_output_kl": self.retrain_output_kl, "info": self.info,
        }


@dataclass
class ContinualRun:
    """A finished stream: its steps, the accuracy matrix, the metrics, and the final strategy."""

    scenario: str
    strategy: str
    unlearner: str
    seed: int
    initial: np.ndarray
    steps: list[StepResult]
    metrics: dict[str, float | None]
    final: Strategy
    task_names: list[str] | None = None  # a folder scenario's task folders, in task order (clofai)

    @property
    def matrix(self) -> np.ndarray:
        """Accuracy after each step (rows) on each task (columns)."""
        return np.stack([s.accuracy for s in self.steps])

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` document."""
        return {
            "scenario": self.scenario, "strategy": self.strategy, "unlearner": self.unlearner, "seed": self.seed,
            "initial_accuracy": {str(i): float(a) for i, a in enumerate(self.initial)},
            "steps": [s.to_dict() for s in self.steps], "metrics": self.metrics,
        } | ({"task_names": self.task_names} if self.task_names else {})


class _History:
    """The learn requests so far, each with the sample ids it still contributes."""

    def __init__(self) -> None:
        self.events: list[tuple[int, torch.Tensor]] = []

    def add(self, task: int, ids: torch.Tensor) -> None:
        self.events.append((task, ids))

    def learned(self) -> set[int]:
        return set().union(*(set(ids.tolist()) for _, ids in self.events)) if self.events else set()

    def touched(self, ids: set[int]) -> tuple[int, ...]:
        lookup = torch.tensor(sorted(ids), dtype=torch.long)
        return tuple(sorted({t for t, e in self.events if torch.isin(e, lookup).any()}))

    def remove(self, ids: set[int]) -> None:
        lookup = torch.tensor(sorted(ids), dtype=torch.long)
        self.events = [(t, e[~torch.isin(e, lookup)]) for t, e in self.events]

    def emptied(self, tasks: Sequence[int]) -> tuple[int, ...]:
        """Those of ``tasks`` (learned at some point) that have no training sample left."""
        return tuple(t for t in tasks if not any(len(e) for task, e in self.events if task == t))


def retrain(spec: str, scenario: Scenario, seed: int, params: Mapping[str, Any] | None, history: _History) -> Strategy:
    """The strategy trained from scratch on the remaining data, in the original order of requests."""
    strategy = build_strategy(spec, scenario, seed, params)
    for task, ids in history.events:
        if len(ids):
            strategy.learn(scenario.tasks[task], ids)
    return strategy


def _distinct_rows(scenario: Scenario, tasks: list[int]) -> list[torch.Tensor]:
    """For each of ``tasks``, the rows of its test log-probabilities that no earlier task in ``tasks`` already
    holds. Outside task-IL a test sample gets one prediction whatever task it is scored for, and tasks may
    share test samples (SCoLe's tasks share classes): each sample counts once. In task-IL the prediction
    depends on the task (its class mask), so every (task, sample) pair is its own row."""
    if scenario.setting == "task-il":
        return [torch.arange(len(scenario.tasks[t].test_index)) for t in tasks]
    seen: dict[int, set[int]] = {}
    rows = []
    for t in tasks:
        task = scenario.tasks[t]
        taken = seen.setdefault(task.domain, set())
        index = task.test_index.tolist()
        rows.append(torch.tensor([k for k, j in enumerate(index) if j not in taken], dtype=torch.long))
        taken.update(index)
    return rows


def _distance(model: list[torch.Tensor], reference: list[torch.Tensor], scenario: Scenario,
              tasks: list[int]) -> tuple[float, float | None]:
    """Mean |accuracy difference| over ``tasks`` and mean KL(reference ‖ model) over their distinct test samples.

    The KL is taken in float64 on re-normalised distributions and each sample's term is clipped at 0:
    float32 log-probabilities do not sum exactly to one, which made near-identical models score a
    negative divergence (−1e-8). It is None where the reference scores every class alike on every sample: a
    reference retrained on no sample, of a strategy that masks the classes it has not learned (uncle), masks them
    all; the KL to a model that still masks some was then (masked share) × 10⁹, the mask constant, not a distance."""
    acc_m = accuracies(model, scenario)[tasks]
    acc_r = accuracies(reference, scenario)[tasks]
    rows = _distinct_rows(scenario, tasks)
    log_m = torch.cat([model[t][r] for t, r in zip(tasks, rows)]).double().log_softmax(1)
    log_r = torch.cat([reference[t][r] for t, r in zip(tasks, rows)]).double().log_softmax(1)
    gap = float(np.mean(np.abs(acc_m - acc_r)))
    if bool((log_r == log_r[:, :1]).all()):
        return gap, None
    per_sample = (log_r.exp() * (log_r - log_m)).sum(1).clamp_min(0.0)
    return gap, float(per_sample.mean())


#: The largest |W − W_resolved| / max |W_resolved| after an ACU unlearning request that still counts as exact.
ACU_EXACTNESS = 1e-6


def _acu_check(strategy: ACU) -> dict[str, float | None]:
    """Time a full re-solve of the ridge head and its distance to the recursive solution: the largest
    |W − W_resolved|, and that relative to max |W_resolved| (None when no learned sample is left: the
    re-solved head is then all zeros and the recursion's rounding residue has nothing to be relative to).
    A distance beyond :data:`ACU_EXACTNESS` is refused: forgotten samples would still shape the head."""
    start = time.perf_counter()
    reference = strategy.resolve()
    seconds = time.perf_counter() - start
    diff, scale = float((strategy.w - reference).abs().max()), float(reference.abs().max())
    if scale > 0 and diff > ACU_EXACTNESS * scale:  # an ill-conditioned update that still had a Cholesky factor
        raise UserInputError(f"ACU's head after this request is {diff / scale:.2g} (relative) away from the ridge "
                             f"solution on the remaining data, more than the {ACU_EXACTNESS:g} exact unlearning allows: "
                             f"float64 cannot carry these updates with gamma={strategy.config.gamma}; use a larger gamma.")
    return {"resolve_seconds": seconds, "max_abs_diff_to_resolve": diff,
            "relative_max_abs_diff_to_resolve": diff / scale if scale > 0 else None}


def check_run_arguments(scenario: Any, strategy: Any, stream: Any, seed: Any) -> None:
    """One sentence for arguments of the wrong kind (the CLI's parsing makes them right; API callers may not)."""
    from ..train.config import check_seed

    if not isinstance(scenario, Scenario):
        raise UserInputError(f"run_stream needs a Scenario (from build_scenario), got a {type(scenario).__name__}.")
    if not isinstance(strategy, str):
        raise UserInputError(f"The strategy is a name such as 'er' or 'refresh+er', got a {type(strategy).__name__}.")
    tokens = [stream] if isinstance(stream, str) else list(stream or [])
    if not all(isinstance(token, str) for token in tokens):
        raise UserInputError("The stream is text such as 'learn:0,unlearn:0' or a list of such tokens.")
    check_seed(seed, "seed")


def plan_run(scenario: Scenario, strategy: str, stream: str | Sequence[str] | None, *, seed: int = 0,
             unlearner: str | None = None, params: Mapping[str, Any] | None = None,
             unlearner_params: Mapping[str, Any] | None = None) -> tuple[list[Request], str, Strategy]:
    """Check a run's input without training: the stream's syntax and tasks, the strategy spec and settings,
    and whether the unlearner can serve every unlearning request (its model kind, retain data where it needs
    them); return the requests, the unlearner and the untrained strategy."""
    check_run_arguments(scenario, strategy, stream, seed)
    requests: list[Request] = default_stream(scenario) if stream is None else parse_stream(stream, len(scenario.train_y))
    remaining = check_stream(requests, scenario)
    unlearner_name = resolve_unlearner(strategy, unlearner, requests)
    check_unlearner_params(unlearner_name, unlearner_params)
    check_retain(unlearner_name, unlearner_params, requests, remaining)
    return requests, unlearner_name, build_strategy(strategy, scenario, seed, params)


def run_stream(
    scenario: Scenario,
    strategy: str,
    stream: str | Sequence[str] | None = None,
    *,
    seed: int = 0,
    unlearner: str | None = None,
    params: Mapping[str, Any] | None = None,
    unlearner_params: Mapping[str, Any] | None = None,
    reference: bool = True,
) -> ContinualRun:
    """Run ``stream`` (default: learn every task in order) with ``strategy`` and measure every step.

    All input is checked before any training (:func:`plan_run`).
    """
    requests, unlearner_name, learner = plan_run(scenario, strategy, stream, seed=seed, unlearner=unlearner,
                                                 params=params, unlearner_params=unlearner_params)
    history, results, infos, learned_tasks = _History(), [], [], []
    initial = accuracies(task_log_probs(learner, scenario), scenario)
    for index, request in enumerate(requests):
        start, extra, touched, samples = time.perf_counter(), {}, (), 0
        if request.action == "learn":
            task = scenario.tasks[request.task]
            learner.learn(task, task.train_ids)
            history.add(task.index, task.train_ids)
            learned_tasks.append(task.index)
            samples = len(task.train_ids)
        elif request.action == "unlearn":
            wanted = set(scenario.tasks[request.task].train_ids.tolist()) if request.task is not None else set(request.ids)
            forget = wanted & history.learned()
            touched, samples = history.touched(forget), len(forget)
            history.remove(forget)
            forgotten = history.emptied(touched)
            if unlearner_name == "retrain":
                learner = retrain(strategy, scenario, seed, params, history)
            else:
                extra = apply_unlearner(learner, unlearner_name, scenario, request.task, forget, history.learned(), unlearner_params)
                for task_index in set(forgotten) - {request.task}:  # left with no sample: forgotten as a whole
                    learner.purge(set(), task_index)
            if forgotten != ((request.task,) if request.task is not None else ()):
                extra["forgotten_tasks"] = list(forgotten)
        seconds = time.perf_counter() - start
        log_probs = task_log_probs(learner, scenario)
        step = StepResult(index, request.action, request.task, request.token, seconds, accuracies(log_probs, scenario), samples, info=extra)
        if request.action == "unlearn":
            if isinstance(learner, ACU):
                step.info.update(_acu_check(learner))
            if reference:
                # the retrain unlearner's model is that reference already: it is not trained twice
                ref = log_probs if unlearner_name == "retrain" else task_log_probs(
                    retrain(strategy, scenario, seed, params, history), scenario)
                step.retrain_gap, step.retrain_output_kl = _distance(log_probs, ref, scenario, sorted(set(learned_tasks)))
        results.append(step)
        infos.append(StepInfo(request.action, request.task, touched,
                              forgotten if request.action == "unlearn" else None))
    matrix = np.stack([s.accuracy for s in results])
    metrics = stream_metrics(matrix, initial, infos)
    gaps = [s.retrain_gap for s in results if s.retrain_gap is not None]
    metrics["retrain_gap"] = float(np.mean(gaps)) if gaps else None
    kls = [s.retrain_output_kl for s in results if s.retrain_output_kl is not None]
    metrics["retrain_output_kl"] = float(np.mean(kls)) if kls else None
    return ContinualRun(scenario.name, strategy, unlearner_name, seed, initial, results, metrics, learner,
                        (scenario.info or {}).get("task_names"))

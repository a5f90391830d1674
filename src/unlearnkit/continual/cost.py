"""ACU's exactness and cost per unlearning request, against re-solving the ridge head from all data."""

from __future__ import annotations

import copy
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve
from scipy.linalg.blas import dgemm, dsyrk

from .runner import accuracies, task_log_probs
from .scenarios import Scenario, build_scenario
from .strategies import build_strategy
from .strategies.acu import ACU

#: The feature widths compared for ACU's default width, on a scenario seed the sweep does not report.
ACU_WIDTHS = (500, 1000, 2000, 4000)
WIDTH_SEED = 7
WIDTH_SCENARIOS = ("split-digits", "permuted-digits")


def _best_seconds(action, repeats: int) -> float:
    """The fastest of ``repeats`` runs (as ``timeit`` advises: slower runs measure other load, not the code)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def _cholesky_solve(gram: np.ndarray, gamma: float, rhs: np.ndarray) -> np.ndarray:
    """(G + γI)⁻¹ · ``rhs`` for a Gram matrix G whose lower triangle ``syrk`` filled (overwritten)."""
    gram[np.diag_indices_from(gram)] += gamma
    return cho_solve(cho_factor(gram, lower=True, overwrite_a=True, check_finite=False), rhs, check_finite=False)


def primal_resolve(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """W = (XᵀX + γI)⁻¹XᵀY by a Cholesky factor of the d×d Gram matrix: about n·d²/2 + d³/3 multiply-adds."""
    xt = x.numpy().T  # Fortran-ordered d×n, no copy
    gram = dsyrk(1.0, xt, lower=1)  # its argument times its transpose: XᵀX, lower triangle
    return torch.from_numpy(_cholesky_solve(gram, gamma, dgemm(1.0, xt, y.numpy())))


def dual_resolve(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """The same W as Xᵀ(XXᵀ + γI)⁻¹Y by a Cholesky factor of the n×n kernel matrix: about n²·d/2 + n³/3
    multiply-adds, the cheaper route when fewer rows are learned than there are features."""
    xt = x.numpy().T
    kernel = dsyrk(1.0, xt, trans=1, lower=1)  # its argument's transpose times itself: X Xᵀ, lower triangle
    return torch.from_numpy(dgemm(1.0, xt, _cholesky_solve(kernel, gamma, y.numpy())))


RESOLVE_ROUTES = {"primal": primal_resolve, "dual": dual_resolve}


def resolve_seconds(strategy: ACU, repeats: int) -> dict[str, float]:
    """The best time of each exact re-solve route (features of the remaining rows included), in seconds."""
    ids = strategy.remaining_ids()
    gamma = strategy.config.gamma

    def route(solve):
        return lambda: solve(strategy.features(strategy.scenario.train_x[ids]), strategy.targets(ids), gamma)

    return {name: _best_seconds(route(solve), repeats) for name, solve in RESOLVE_ROUTES.items()}


def _amortised_seconds(learned: ACU, pool: list[int], size: int) -> float:
    """Seconds per request over consecutive requests of ``size`` samples from ``pool``, enough of them that the
    pending low-rank correction is folded into R once: what a stream of such requests costs on average."""
    strategy = copy.deepcopy(learned)
    count = strategy.config.fold_rank // size + 1
    start = time.perf_counter()
    for k in range(count):
        strategy.unlearn(None, set(pool[k * size : (k + 1) * size]))
    return (time.perf_counter() - start) / count


def learned_acu(scenario: Scenario, seed: int = 0, params: Mapping[str, Any] | None = None) -> ACU:
    """ACU after learning every task of ``scenario``."""
    learned: ACU = build_strategy("acu", scenario, seed, params)  # type: ignore[assignment]
    for task in scenario.tasks:
        learned.learn(task, task.train_ids)
    return learned


def request_cost(learned: ACU, ids: Sequence[int], pool: Sequence[int], repeats: int) -> dict[str, Any]:
    """One unlearning request of ``ids`` on fresh copies of ``learned``: its best time, the best time per request
    of a run of such requests drawn from ``pool`` that includes one fold (amortised), the best time of each exact
    re-solve route afterwards, the ratios to the faster route, and |W_recursive − W_resolved| / max |W_resolved|."""
    copies = [copy.deepcopy(learned) for _ in range(repeats)]
    pending = iter(copies)
    unlearn = _best_seconds(lambda: next(pending).unlearn(None, set(ids)), repeats)
    amortised = min(_amortised_seconds(learned, list(pool), len(ids)) for _ in range(repeats))
    done = copies[0]
    routes = resolve_seconds(done, repeats)
    route = min(routes, key=routes.get)
    resolve = routes[route]
    reference = done.resolve()
    diff = float((done.w - reference).abs().max() / reference.abs().max())
    return {"rows": len(learned.remaining_ids()) - len(done.remaining_ids()), "unlearn_ms": 1e3 * unlearn,
            "amortised_ms": 1e3 * amortised, "primal_ms": 1e3 * routes["primal"], "dual_ms": 1e3 * routes["dual"],
            "route": route, "resolve_ms": 1e3 * resolve, "ratio": unlearn / resolve,
            "amortised_ratio": amortised / resolve, "relative_diff": diff}


def acu_cost(scenario: Scenario, seed: int = 0, repeats: int = 5,
             params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Learn every task, then measure requests of 1 sample, 10 samples and task 1 (:func:`request_cost`; a
    request folds R only when its own rows pass ``fold_rank``).

    The reference is the faster of the primal and dual Cholesky solves, not the LU solve of
    :meth:`ACU.resolve`, so that the ratio compares ACU with the quickest way we know to get the same W
    from the data: both form their Gram matrix by OpenBLAS's ``syrk`` (one triangle, half the work of a
    general product), which made them 1.7–1.9 times as fast here as with torch's products, and ACU's small
    requests take R Xᵀ from the same OpenBLAS."""
    learned = learned_acu(scenario, seed, params)
    task_ids = scenario.tasks[1].train_ids.tolist()
    requests = {"1 sample": 1, "10 samples": 10, "task 1": len(task_ids)}
    learned_rows = len(learned.remaining_ids())
    return [{"scenario": scenario.name, "learned_rows": learned_rows, "request": label,
             **request_cost(learned, task_ids[:size], task_ids, repeats)} for label, size in requests.items()]


def acu_width_rows(seed: int = WIDTH_SEED, widths: Sequence[int] = ACU_WIDTHS, repeats: int = 5) -> list[dict[str, Any]]:
    """For each feature width: ACU's average accuracy over the tasks after learning every task of each of
    :data:`WIDTH_SCENARIOS` (scenario ``seed``), their mean, R's size in MiB, and the cost of a 1-sample request
    on the first of them against its faster exact re-solve (:func:`request_cost`: ``request_ms``, ``resolve_ms``,
    ``request_ratio``), so that the table shows what a narrower head saves."""
    scenarios = [build_scenario(name, seed) for name in WIDTH_SCENARIOS]
    rows = []
    for width in widths:
        row: dict[str, Any] = {"width": width, "r_mb": width * width * 8 / 2**20}
        for scenario in scenarios:
            learner = learned_acu(scenario, seed, {"expansion": width})
            row[scenario.name] = float(accuracies(task_log_probs(learner, scenario), scenario).mean())
            if scenario is scenarios[0]:
                pool = scenario.tasks[1].train_ids.tolist()
                cost = request_cost(learner, pool[:1], pool, repeats)
                row |= {"request_ms": cost["unlearn_ms"], "resolve_ms": cost["resolve_ms"], "request_ratio": cost["ratio"]}
        row["mean"] = sum(row[name] for name in WIDTH_SCENARIOS) / len(WIDTH_SCENARIOS)
        rows.append(row)
    return rows


def chosen_width(rows: Sequence[Mapping[str, Any]]) -> int:
    """The width with the highest mean accuracy (the narrower on a tie): the rule behind ACU's default."""
    return min(rows, key=lambda r: (-r["mean"], r["width"]))["width"]

"""Continual learning and continual unlearning: scenarios, strategies, request streams, metrics.

Typical use::

    from unlearnkit.continual import build_scenario, run_stream
    run = run_stream(build_scenario("split-digits"), "er", "learn:0,learn:1,learn:2,unlearn:1,learn:3,learn:4")
    run.metrics["avg_acc"], run.steps[3].retrain_gap

Each name loads its module (and torch) on first use, so the CLI, which imports ``continual.cli`` to list its
commands, starts without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .metrics import (
        average_accuracy,
        backward_transfer,
        forgetting_last,
        forgetting_max,
        forward_transfer,
        stream_metrics,
    )
    from .runner import ContinualRun, StepResult, run_stream
    from .scenarios import SCENARIOS, Scenario, Task, build_scenario
    from .stream import Request, check_stream, parse_stream
    from .strategies import ALL_STRATEGIES, build_strategy, strategy_names

_HOMES = {
    "metrics": ("average_accuracy", "backward_transfer", "forgetting_last", "forgetting_max", "forward_transfer",
                "stream_metrics"),
    "runner": ("ContinualRun", "StepResult", "run_stream"),
    "scenarios": ("SCENARIOS", "Scenario", "Task", "build_scenario"),
    "stream": ("Request", "check_stream", "parse_stream"),
    "strategies": ("ALL_STRATEGIES", "build_strategy", "strategy_names"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "ALL_STRATEGIES", "ContinualRun", "Request", "SCENARIOS", "Scenario", "StepResult", "Task",
    "average_accuracy", "backward_transfer", "build_scenario", "build_strategy", "check_stream",
    "forgetting_last", "forgetting_max", "forward_transfer", "parse_stream", "run_stream",
    "stream_metrics", "strategy_names",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)


def __dir__() -> list[str]:
    """The lazy names too, as the eager imports listed them (for tab completion and ``dir``)."""
    return sorted(set(globals()) | set(__all__))

"""Continual learning and continual unlearning: scenarios, strategies, request streams, metrics.

Typical use::

    from unlearnkit.continual import build_scenario, run_stream
    run = run_stream(build_scenario("split-digits"), "er", "learn:0,learn:1,learn:2,unlearn:1,learn:3,learn:4")
    run.metrics["avg_acc"], run.steps[3].retrain_gap
"""

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

__all__ = [
    "ALL_STRATEGIES", "ContinualRun", "Request", "SCENARIOS", "Scenario", "StepResult", "Task",
    "average_accuracy", "backward_transfer", "build_scenario", "build_strategy", "check_stream",
    "forgetting_last", "forgetting_max", "forward_transfer", "parse_stream", "run_stream",
    "stream_metrics", "strategy_names",
]

"""One entry point to every built-in benchmark."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, overload

from ..api import keeps_caller_random_state
from ..errors import UserInputError
from ..request import ForgetRequest
from .facts import FactsData
from .vision import VISION_BENCHMARKS, VisionBenchmark, load_vision_benchmark
from .vision import forget_request as vision_forget_request

BENCHMARKS = (*VISION_BENCHMARKS, "facts")


@overload
def load_benchmark(name: Literal["digits", "mnist"], seed: int = 0, **options: Any) -> VisionBenchmark: ...
@overload
def load_benchmark(name: Literal["facts"], seed: int = 0, **options: Any) -> FactsData: ...
@overload
def load_benchmark(name: str, seed: int = 0, **options: Any) -> VisionBenchmark | FactsData: ...


@keeps_caller_random_state  # its first call imports scikit-learn, and with it rich, which draws from random
def load_benchmark(name: str, seed: int = 0, **options: Any) -> VisionBenchmark | FactsData:
    """Load a built-in benchmark by name: ``digits``, ``mnist`` or ``facts``."""
    if name in VISION_BENCHMARKS:
        _check_options(name, options, ["test_fraction"])
        return load_vision_benchmark(name, seed, **options)
    if name == "facts":
        from .facts import FactsConfig, load_facts

        _check_options(name, options, [f.name for f in dataclasses.fields(FactsConfig) if f.name != "seed"])
        return load_facts(FactsConfig(seed=seed, **options))
    raise UserInputError(f"Unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}.")


def _check_options(name: str, options: Any, valid: list[str]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserInputError(f"Benchmark {name!r} has no option {unknown[0]!r}; valid: {', '.join(valid)}.")


def forget_request(benchmark: Any, scenario: str, **options: Any) -> ForgetRequest:
    """The forget request of a scenario (``random``/``class`` for images, a split like ``forget10`` for facts)."""
    if isinstance(benchmark, VisionBenchmark):
        # an option of the other scenario was ignored (class 3 asked, a random tenth given); a misspelt one a TypeError
        takes = {"random": ["fraction"], "class": ["forget_class"]}.get(scenario, [])
        unknown = sorted(set(options) - set(takes))
        if unknown:
            raise UserInputError(f"The {scenario!r} scenario of {benchmark.name} has no option {unknown[0]!r}; "
                                 f"valid: {', '.join(takes) or 'none'}.")
        return vision_forget_request(benchmark, scenario, **options)
    from .facts import FactsData, facts_request

    if not isinstance(benchmark, FactsData):
        raise UserInputError(f"forget_request needs a benchmark from unlearnkit.load_benchmark, got a {type(benchmark).__name__}.")

    return facts_request(benchmark, scenario, **options)

"""Continual strategies: a registry and :func:`build_strategy` for specs such as ``"refresh+er"``.

Plug-ins (``ewc``, ``l2``, ``lwf``, ``featkd``, ``er``, ``uer``, ``refresh``, ``cuber``, ``gpm``)
compose with ``+`` on top of the naive gradient learner; ``naive``, ``joint``, ``acu`` and
``uncle`` are whole strategies (``joint+ewc`` and the like are refused, ``naive+x`` is just ``x``).
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import UserInputError
from ..scenarios import Scenario
from .acu import ACU, ACUConfig
from .base import GradientLearner, LearnerConfig, Plugin, Strategy, split_params
from .cuber import GPM, Cuber
from .er import ER
from .ewc import EWC
from .featkd import FeatKD
from .joint import Joint
from .l2 import L2
from .lwf import LwF
from .naive import Naive
from .refresh import Refresh
from .uer import UER
from .uncle import UnCLe, UnCLeConfig

PLUGINS: dict[str, type[Plugin]] = {p.name: p for p in (EWC, L2, LwF, FeatKD, ER, UER, Refresh, Cuber, GPM)}
STANDALONE: dict[str, type[Strategy]] = {"naive": Naive, "joint": Joint, "acu": ACU, "uncle": UnCLe}
#: The strategies the sweep runs by default (every registered name once).
ALL_STRATEGIES = ("naive", "joint", "ewc", "l2", "lwf", "featkd", "er", "uer", "refresh+er", "cuber", "gpm", "acu", "uncle")


def strategy_names() -> list[str]:
    """Every name a strategy spec may use."""
    return [*STANDALONE, *PLUGINS]


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """Split ``"refresh+er"`` into (base strategy, plug-in names); raise on unknown or clashing names."""
    parts = [p.strip() for p in spec.split("+")]
    for part in parts:
        if part not in PLUGINS and part not in STANDALONE:
            raise UserInputError(f"Unknown strategy {part!r} in {spec!r}; valid: {', '.join(strategy_names())} (join plug-ins with '+').")
    bases = [p for p in parts if p in STANDALONE and p != "naive"]
    plugins = [p for p in parts if p in PLUGINS]
    if bases and (len(parts) > 1):
        raise UserInputError(f"Strategy {bases[0]!r} cannot be combined with others in {spec!r}; only plug-ins ({', '.join(PLUGINS)}) compose.")
    if len(set(plugins)) != len(plugins) or ("er" in plugins and "uer" in plugins) or ("gpm" in plugins and "cuber" in plugins):
        raise UserInputError(f"Strategy {spec!r} lists the same plug-in twice (uer includes er; cuber includes gpm).")
    return (bases[0] if bases else "naive"), plugins


def strategy_class(spec: str) -> type[Strategy]:
    """The class that runs ``spec`` (its ``default_unlearner`` tells how it unlearns)."""
    base, _ = parse_spec(spec)
    return STANDALONE[base]


def build_strategy(spec: str, scenario: Scenario, seed: int = 0, params: Mapping[str, Any] | None = None) -> Strategy:
    """A fresh strategy for ``spec`` on ``scenario``; ``params`` override hyper-parameters by name."""
    base, plugin_names = parse_spec(spec)
    overrides = dict(params or {})
    if base == "acu":
        (config,) = split_params([ACUConfig], overrides, spec)
        return ACU(scenario, seed, config)
    overrides.setdefault("epochs", scenario.epochs)
    if base == "uncle":
        (config,) = split_params([UnCLeConfig], overrides, spec)
        return UnCLe(scenario, seed, config)
    classes = [PLUGINS[name] for name in plugin_names]
    learner_config, *plugin_configs = split_params([LearnerConfig, *(c.Config for c in classes)], overrides, spec)
    plugins = [cls(config) for cls, config in zip(classes, plugin_configs)]
    learner = STANDALONE[base](scenario, seed, learner_config, plugins)
    learner.name = "+".join(plugin_names) if plugin_names else base
    return learner


__all__ = ["ALL_STRATEGIES", "PLUGINS", "STANDALONE", "GradientLearner", "Plugin", "Strategy", "build_strategy", "parse_spec", "strategy_class", "strategy_names"]

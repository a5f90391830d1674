"""Audit of train/: plug-in settings that cannot work are refused in one sentence, not run.

An infinite SAM radius moves the weights to ±inf inside the perturbed pass, and an infinite GU repair
weight writes ±inf/NaN gradients: either run used to start and end as 'diverged' at its first steps.
"""

import math

import pytest

from unlearnkit.errors import UserInputError
from unlearnkit.train.config import build_config
from unlearnkit.train.gu import ProjectionConfig
from unlearnkit.train.sam import SharpnessConfig


@pytest.mark.parametrize("config_class, name", [(SharpnessConfig, "sam_rho"), (ProjectionConfig, "gu_repair")])
@pytest.mark.parametrize("value", [math.inf, "inf", "Infinity"])
def test_an_infinite_sam_radius_or_gu_repair_weight_is_refused(config_class, name, value):
    with pytest.raises(UserInputError, match=f"{name} must be a non-negative number, got {name}=inf"):
        build_config(config_class, {name: value}, owner="this method")


@pytest.mark.parametrize("method", ["graddiff", "npo", "simnpo"])
def test_gu_with_the_retain_term_switched_off_is_refused(method):
    """With alpha=0 the retain gradient GU builds its basis from is zero: the projection did nothing (graddiff's
    weights were bit-identical with and without project=gu)."""
    from unlearnkit.methods.registry import get_method
    from unlearnkit.train.config import build_config

    with pytest.raises(UserInputError, match="alpha=0 switches off"):
        build_config(get_method(method).Config, {"project": "gu", "alpha": 0.0}, owner=method)
    build_config(get_method(method).Config, {"project": "gu", "alpha": 0.5}, owner=method)
    build_config(get_method(method).Config, {"alpha": 0.0}, owner=method)

"""The benches' check that `time_vs_retrain` divides by a retraining time taken under this run's conditions."""

import time

import pytest
import torch
from torch import nn

from unlearnkit.adapters.classifier import ClassifierAdapter
from unlearnkit.benchmarks.timing import recipe_pace, recipe_steps, timing_notes
from unlearnkit.train import TrainConfig


def test_recipe_steps_counts_partial_batches_and_the_cap():
    recipe = TrainConfig(epochs=15, batch_size=64)
    assert recipe_steps(recipe, 1437) == 15 * 23  # 22 full batches and one of 29
    assert recipe_steps(recipe, 1408) == 15 * 22
    assert recipe_steps(TrainConfig(epochs=15, batch_size=64, max_steps=40), 1437) == 40


class SlowNet(nn.Module):
    """A linear classifier whose every forward takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return self.linear(x)


def test_recipe_pace_is_seconds_per_step_on_a_copy():
    model = SlowNet(0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    items = [(torch.randn(4), i % 2) for i in range(40)]
    pace = recipe_pace(TrainConfig(epochs=3, batch_size=4, lr=0.1), ClassifierAdapter(model, 2), items, steps=4)
    # one forward a step: 0.25 s and a little (much more on a loaded machine); the four steps' total (1 s) would fail
    assert 0.25 <= pace < 0.6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the given model is not trained


def test_a_retrain_reference_timed_under_other_load_is_noted():
    # cached digits retrains on this machine took 1.09 s and 29.7 s for the same 345 steps
    rates = {"original": 1.09 / 345, "retrain": 29.7 / 345}
    [spread, now] = timing_notes(rates, 1.09 / 345, "retrain")
    assert "from 0.00316 s a step (original) to 0.0861 s (retrain)" in spread
    assert "the retrain model's training took 0.0861 s a step, but the same recipe took 0.00316 s a step" in now
    # the divisor's role is the one named: the same rates against an original-role divisor say nothing of pace
    assert timing_notes(rates, 1.09 / 345, "original") == [spread]
    assert timing_notes({"original": 0.0031, "retrain": 0.0033}, 0.0030, "retrain") == []


@pytest.mark.parametrize("pace", [0.0864 / 1.26, 0.0864 * 1.26])
def test_the_pace_note_triggers_either_way_past_the_spread(pace):
    assert len(timing_notes({"retrain": 0.0864}, pace, "retrain")) == 1
    assert timing_notes({"retrain": 0.0864}, 0.0864 * 1.2, "retrain") == []


def test_lm_reference_seconds_per_step_come_from_each_meta():
    from unlearnkit.benchmarks.lm_bench import step_seconds

    references = [("target", None, {"train_seconds": 10.0, "steps": 4}), ("retain", None, {"train_seconds": 3.0}),
                  ("retain_seed1", None, {"train_seconds": 9.0, "steps": 3})]
    assert step_seconds(references) == {"target": 2.5, "retain_seed1": 3.0}  # a meta without steps has no pace

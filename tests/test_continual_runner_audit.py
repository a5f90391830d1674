"""Continual runner audit: input refused before training, ACU's exactness check when nothing is left, readable
heatmap rows, the retrained reference's data, and the stream metrics on a hand-written learn/unlearn stream."""

import warnings

import numpy as np
import pytest
import torch

from unlearnkit.continual.metrics import StepInfo, stream_metrics
from unlearnkit.continual.runner import ContinualRun, StepResult, plan_run, run_stream
from unlearnkit.continual.scenarios import split_digits
from unlearnkit.errors import UserInputError

ACU_SMALL = {"expansion": 200}


@pytest.fixture(scope="module")
def scenario():
    return split_digits(0)


def _no_training(monkeypatch):
    from unlearnkit.continual.strategies.base import GradientLearner

    def refuse(*args, **kwargs):
        raise AssertionError("a task was trained before the input was checked")

    monkeypatch.setattr(GradientLearner, "learn", refuse)


def test_a_core_method_for_language_models_is_refused_before_any_training(scenario, monkeypatch):
    # npo serves causal LMs only: it used to pass the plan and fail at the first unlearning step, after training.
    _no_training(monkeypatch)
    with pytest.raises(UserInputError, match="Unlearner 'npo' works on causal_lm models, not on the classifiers") as error:
        run_stream(scenario, "naive", "learn:0,learn:1,unlearn:0", unlearner="npo")
    valid = str(error.value).partition("valid: ")[2]
    assert "gradient_ascent" in valid and "retrain" in valid and "npo" not in valid
    plan_run(scenario, "naive", "learn:0,learn:1,unlearn:0", unlearner="gradient_ascent")


def test_a_method_that_needs_retain_data_is_refused_where_a_request_leaves_none(scenario, monkeypatch):
    # finetune trains on the retain set: "learn:0,unlearn:0" leaves it empty. It used to fail after task 0 was trained.
    _no_training(monkeypatch)
    with pytest.raises(UserInputError, match="Unlearner 'finetune' needs retain data, but the stream token 2 'unlearn:0' "
                                             "leaves no learned sample"):
        run_stream(scenario, "naive", "learn:0,unlearn:0", unlearner="finetune")
    every = ";".join(map(str, scenario.tasks[0].train_ids.tolist()))
    with pytest.raises(UserInputError, match="token 2 'unlearn:ids="):
        plan_run(scenario, "naive", f"learn:0,unlearn:ids={every}", unlearner="finetune")
    plan_run(scenario, "naive", "learn:0,learn:1,unlearn:0", unlearner="finetune")  # task 1 is left to retain
    plan_run(scenario, "naive", "learn:0,unlearn:0", unlearner="gradient_ascent")  # needs no retain data
    plan_run(scenario, "naive", "learn:0,unlearn:0", unlearner="random_label", unlearner_params={"retain_weight": 0})


def test_check_stream_reports_the_learned_samples_left_after_each_request(scenario):
    from unlearnkit.continual.stream import check_stream, parse_stream

    n0, n1 = (len(t.train_ids) for t in scenario.tasks[:2])
    some = scenario.tasks[0].train_ids[:3].tolist()
    stream = f"learn:0,learn:1,unlearn:ids={';'.join(map(str, some))},evaluate,unlearn:0,learn:0,learn:0"
    assert check_stream(parse_stream(stream), scenario) == [n0, n0 + n1, n0 + n1 - 3, n0 + n1 - 3, n1, n0 + n1, n0 + n1]


def test_acu_exactness_check_after_every_sample_is_unlearned_is_not_a_huge_ratio(scenario):
    # With nothing left the re-solved head is all zeros: the ratio to max |W_resolved| was the recursion's
    # rounding residue divided by 1e-300 (7.8e291 on this stream), which read as a failure of exactness.
    run = run_stream(scenario, "acu", "learn:0,learn:1,unlearn:0,unlearn:1", params=ACU_SMALL)
    partial, empty = run.steps[2].info, run.steps[3].info
    assert partial["relative_max_abs_diff_to_resolve"] <= 1e-6
    assert empty["relative_max_abs_diff_to_resolve"] is None
    assert empty["max_abs_diff_to_resolve"] < 1e-6 and float(run.final.w.abs().max()) < 1e-6


def _run_with(token: str, samples: int, action: str = "unlearn", task=None) -> ContinualRun:
    steps = [StepResult(0, "learn", 0, "learn:0", 0.1, np.array([0.9, 0.0])),
             StepResult(1, action, task, token, 0.1, np.array([0.5, 0.0]), samples)]
    return ContinualRun("toy", "naive", "gradient_ascent", 0, np.array([0.1, 0.1]), steps, {}, None)


def test_heatmap_rows_stay_readable_with_a_long_sample_request(tmp_path):
    # A request listing 280 sample ids made its row label ~1,400 characters long: tight_layout gave up and
    # every label, "untrained" and "learn:0" included, was cut off at the image's edge.
    from unlearnkit.continual.report import save_heatmap, step_label

    token = "unlearn:ids=" + ";".join(str(i) for i in range(0, 1400, 5))
    run = _run_with(token, 280)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_heatmap(run, tmp_path / "accuracy.png")
    assert not [w for w in caught if "Tight layout not applied" in str(w.message)]
    assert [step_label(s) for s in run.steps] == ["learn:0", "unlearn:ids (280 samples)"]
    assert step_label(_run_with("unlearn:ids=123456789012345", 1).steps[1]) == "unlearn:ids (1 sample)"
    assert step_label(_run_with("unlearn:ids=3;5", 2).steps[1]) == "unlearn:ids=3;5"  # short tokens stay as written
    from unlearnkit.continual.report import matrix_csv

    assert token in matrix_csv(run)  # the CSV keeps the whole token


def test_the_reference_is_retrained_on_exactly_the_remaining_data(scenario, monkeypatch):
    """At every unlearning step the reference replays the learn requests so far, in order, each without every
    sample forgotten since (task and sample requests), and a learn after a request brings its samples back."""
    import unlearnkit.continual.runner as runner

    seen = []
    original = runner.retrain

    def recording(spec, scen, seed, params, history):
        seen.append([(task, set(ids.tolist())) for task, ids in history.events])
        return original(spec, scen, seed, params, history)

    monkeypatch.setattr(runner, "retrain", recording)
    t = [set(task.train_ids.tolist()) for task in scenario.tasks]
    a = sorted(t[0])[:2]
    stream = f"learn:0,learn:1,unlearn:ids={a[0]};{a[1]},learn:2,unlearn:1,learn:0,unlearn:2"
    run = run_stream(scenario, "acu", stream, params=ACU_SMALL)
    assert seen == [
        [(0, t[0] - set(a)), (1, t[1])],
        [(0, t[0] - set(a)), (1, set()), (2, t[2])],
        [(0, t[0] - set(a)), (1, set()), (2, set()), (0, t[0])],
    ]
    # ACU's recursive unlearning equals its retrained reference: zero accuracy gap, KL at rounding level.
    for step in run.steps:
        if step.action == "unlearn":
            assert step.retrain_gap == 0.0 and step.retrain_output_kl < 1e-9


def test_the_same_seed_gives_the_same_stream_twice(scenario):
    # Replay, a core unlearner and the retrained reference: every random draw comes from the run's seed.
    stream = f"learn:0,unlearn:ids={int(scenario.tasks[0].train_ids[0])},learn:1,evaluate"
    params = {"epochs": 1, "buffer_size": 50}
    first, second = (run_stream(scenario, "er", stream, params=params, unlearner="gradient_ascent") for _ in range(2))
    assert first.steps[1].retrain_gap is not None
    assert np.array_equal(first.matrix, second.matrix) and first.metrics == second.metrics
    assert all(torch.equal(v, second.final.model.state_dict()[k]) for k, v in first.final.model.state_dict().items())


def test_stream_metrics_on_a_stream_with_sample_requests_and_relearning():
    # learn 0, learn 1, unlearn 0, learn 2, unlearn 2 samples of task 2 (touches 2, forgets nothing),
    # learn 0 again, evaluate; untrained accuracies b.
    matrix = np.array([
        [0.95, 0.00, 0.00],
        [0.80, 0.90, 0.05],
        [0.10, 0.85, 0.05],
        [0.30, 0.70, 0.90],  # task 0 rises from 0.10 while forgotten: relapse 0.20
        [0.35, 0.60, 0.85],  # the sample request: task 1 (untouched) drops 0.10
        [0.90, 0.50, 0.80],
        [0.90, 0.50, 0.80],
    ])
    b = np.array([0.10, 0.20, 0.00])
    steps = [StepInfo("learn", 0), StepInfo("learn", 1), StepInfo("unlearn", 0, (0,)), StepInfo("learn", 2),
             StepInfo("unlearn", None, (2,), ()), StepInfo("learn", 0), StepInfo("evaluate")]
    m = stream_metrics(matrix, b, steps)
    # Retained at the end: 0 (last learned at step 5, the last change: left out of BWT/forgetting), 1, 2.
    assert m["avg_acc"] == pytest.approx((0.90 + 0.50 + 0.80) / 3)
    assert m["bwt"] == pytest.approx(((0.50 - 0.90) + (0.80 - 0.90)) / 2)  # -0.25
    assert m["forgetting_last"] == pytest.approx(0.25)
    assert m["forgetting_max"] == pytest.approx(((0.90 - 0.50) + (0.90 - 0.80)) / 2)
    # FWT over tasks 1 and 2: the row just before each is first learned, minus the untrained model's accuracy.
    assert m["fwt"] == pytest.approx(((0.00 - 0.20) + (0.05 - 0.00)) / 2)
    assert m["forgotten_acc"] is None  # task 0 was learned again
    assert m["relapse"] == pytest.approx(0.35 - 0.10)  # rows 3..4 (before relearning), above row 2
    # Spillover over the learned tasks a request did not touch: step 2 on task 1 (0.90 → 0.85), step 4 on task 1
    # only (0.70 → 0.60; task 0 is forgotten, task 2 touched).
    assert m["spillover"] == pytest.approx((0.05 + 0.10) / 2)


def test_uncle_output_kl_is_none_where_the_reference_learned_no_class(scenario):
    """Once every learned task was unlearned, the reference (retrained on nothing) masks every class alike, and the
    KL to UnCLe, which still masks the classes it never learned, was 8e8: the mask constant, not a distance."""
    run = run_stream(scenario, "uncle", "learn:0,learn:1,unlearn:0,unlearn:1", params={"epochs": 1})
    first, last = run.steps[2], run.steps[3]
    assert first.retrain_output_kl is not None and 0 <= first.retrain_output_kl < 50  # task 1 is still learned
    assert last.retrain_output_kl is None and last.retrain_gap is not None
    assert run.metrics["retrain_output_kl"] == first.retrain_output_kl

"""Continual metrics against hand-computed values."""

import numpy as np
import pytest

from unlearnkit.continual.metrics import (
    StepInfo,
    average_accuracy,
    backward_transfer,
    forgetting_last,
    forgetting_max,
    forward_transfer,
    relapses,
    spillovers,
    stream_metrics,
)

# R[t, i]: accuracy on task i after training task t.
R = np.array([
    [0.90, 0.10, 0.20],
    [0.60, 0.80, 0.30],
    [0.70, 0.50, 0.95],
])
B = np.array([0.10, 0.20, 0.10])  # untrained model


def test_square_metrics_match_hand_values():
    assert average_accuracy(R) == pytest.approx((0.70 + 0.50 + 0.95) / 3)
    assert backward_transfer(R) == pytest.approx(((0.70 - 0.90) + (0.50 - 0.80)) / 2)
    assert forward_transfer(R, B) == pytest.approx(((0.10 - 0.20) + (0.30 - 0.10)) / 2)
    assert forgetting_last(R) == pytest.approx(((0.90 - 0.70) + (0.80 - 0.50)) / 2)
    assert forgetting_last(R) == pytest.approx(-backward_transfer(R))


def test_forgetting_max_uses_the_best_accuracy_from_learning_on():
    # Task 0 peaks at 0.90 (t=0); task 1 peaks at 0.80 (t=1); entries before learning are ignored.
    assert forgetting_max(R) == pytest.approx(((0.90 - 0.70) + (0.80 - 0.50)) / 2)
    rising = np.array([[0.5, 0.9], [0.8, 0.9]])  # task 0 improves after training task 1
    assert forgetting_last(rising) == pytest.approx(-0.3)
    assert forgetting_max(rising) == pytest.approx(0.0)  # Mammoth's form never goes below 0


def test_stream_metrics_equal_square_metrics_on_a_learn_only_stream():
    steps = [StepInfo("learn", t) for t in range(3)]
    metrics = stream_metrics(R, B, steps)
    assert metrics["avg_acc"] == pytest.approx(average_accuracy(R))
    assert metrics["bwt"] == pytest.approx(backward_transfer(R))
    assert metrics["fwt"] == pytest.approx(forward_transfer(R, B))
    assert metrics["forgetting_last"] == pytest.approx(forgetting_last(R))
    assert metrics["forgetting_max"] == pytest.approx(forgetting_max(R))
    assert metrics["relapse"] is None and metrics["spillover"] is None and metrics["forgotten_acc"] is None


def test_relapse_and_spillover_on_a_hand_written_stream():
    # learn 0, learn 1, unlearn 0, learn 2, evaluate: task 0 drops to 0.1, rises to 0.4 then 0.3.
    matrix = np.array([
        [0.9, 0.0, 0.0],
        [0.7, 0.9, 0.0],
        [0.1, 0.8, 0.0],  # unlearn 0: task 1 drops by 0.1 (spillover)
        [0.4, 0.6, 0.9],
        [0.3, 0.6, 0.9],
    ])
    steps = [StepInfo("learn", 0), StepInfo("learn", 1), StepInfo("unlearn", 0, (0,)), StepInfo("learn", 2), StepInfo("evaluate")]
    initial = np.zeros(3)
    assert relapses(matrix, steps) == [pytest.approx(0.3)]
    assert spillovers([initial, *matrix], steps) == [pytest.approx(0.1)]
    metrics = stream_metrics(matrix, initial, steps)
    assert metrics["relapse"] == pytest.approx(0.3)
    assert metrics["spillover"] == pytest.approx(0.1)
    assert metrics["forgotten_acc"] == pytest.approx(0.3)
    # Retained tasks 1 and 2; task 2 was learned last, so BWT/forgetting cover task 1 only.
    assert metrics["avg_acc"] == pytest.approx((0.6 + 0.9) / 2)
    assert metrics["bwt"] == pytest.approx(0.6 - 0.9)
    assert metrics["forgetting_max"] == pytest.approx(0.9 - 0.6)


def test_relapse_window_ends_when_the_task_is_learned_again():
    # Task 0 is learned again right after its unlearning: no learning in between, so no relapse value.
    matrix = np.array([[0.9, 0.0], [0.2, 0.9], [0.95, 0.5]])
    steps = [StepInfo("learn", 0), StepInfo("unlearn", 0, (0,)), StepInfo("learn", 0)]
    assert relapses(matrix, steps) == []
    metrics = stream_metrics(matrix, np.zeros(2), steps)
    assert metrics["forgotten_acc"] is None and metrics["relapse"] is None


def test_requests_without_later_learning_are_left_out_of_relapse():
    # Unlearn 0, learn 2 (task 0 rises by 0.5), then unlearn 1 as the last step: only the first
    # request has later learning. An evaluate or another unlearning step alone does not count either.
    matrix = np.array([
        [0.9, 0.0, 0.0],
        [0.8, 0.9, 0.0],
        [0.1, 0.9, 0.0],
        [0.6, 0.8, 0.9],
        [0.6, 0.0, 0.9],
    ])
    steps = [StepInfo("learn", 0), StepInfo("learn", 1), StepInfo("unlearn", 0, (0,)), StepInfo("learn", 2),
             StepInfo("unlearn", 1, (1,))]
    assert relapses(matrix, steps) == [pytest.approx(0.5)]
    assert stream_metrics(matrix, np.zeros(3), steps)["relapse"] == pytest.approx(0.5)
    only = np.array([[0.9, 0.0], [0.8, 0.9], [0.8, 0.1], [0.8, 0.1], [0.85, 0.0]])
    steps = [StepInfo("learn", 0), StepInfo("learn", 1), StepInfo("unlearn", 1, (1,)), StepInfo("evaluate"),
             StepInfo("unlearn", 0, (0,))]
    assert relapses(only, steps) == []
    assert stream_metrics(only, np.zeros(2), steps)["relapse"] is None


def test_a_task_learned_before_a_final_unlearning_step_counts_in_bwt_and_forgetting():
    # learn 0, learn 1, learn 2, unlearn 2 (then evaluate): task 1's diagonal row (step 1) is not the
    # last row that changed the model (step 3), so both remaining tasks count.
    matrix = np.array([
        [0.9, 0.0, 0.0],
        [0.8, 0.9, 0.0],
        [0.7, 0.2, 0.9],
        [0.7, 0.2, 0.0],
        [0.7, 0.2, 0.0],
    ])
    steps = [StepInfo("learn", 0), StepInfo("learn", 1), StepInfo("learn", 2), StepInfo("unlearn", 2, (2,)),
             StepInfo("evaluate")]
    for n in (4, 5):  # with and without the trailing evaluate step
        metrics = stream_metrics(matrix[:n], np.zeros(3), steps[:n])
        assert metrics["bwt"] == pytest.approx(((0.7 - 0.9) + (0.2 - 0.9)) / 2)  # -0.45
        assert metrics["forgetting_last"] == pytest.approx(0.45)
        assert metrics["forgetting_max"] == pytest.approx(((0.9 - 0.7) + (0.9 - 0.2)) / 2)
    # Ending with learn 2 then evaluate: task 2 is the last change and stays out (square form).
    learn_only = stream_metrics(matrix[[0, 1, 2, 2]], np.zeros(3), steps[:3] + [StepInfo("evaluate")])
    assert learn_only["bwt"] == pytest.approx(((0.7 - 0.9) + (0.2 - 0.9)) / 2)
    assert learn_only["bwt"] == pytest.approx(backward_transfer(matrix[:3]))


def test_forgetting_max_ignores_what_a_task_scored_before_it_was_learned():
    # Task 1 scores 0.95 before it is learned (row 0), 0.80 once learned and 0.50 at the end: its
    # forgetting is 0.30, not 0.45.
    r = np.array([
        [0.90, 0.95, 0.10],
        [0.60, 0.80, 0.20],
        [0.70, 0.50, 0.90],
    ])
    expected = ((0.90 - 0.70) + (0.80 - 0.50)) / 2
    assert forgetting_max(r) == pytest.approx(expected)
    assert stream_metrics(r, B, [StepInfo("learn", t) for t in range(3)])["forgetting_max"] == pytest.approx(expected)
    # In a stream the rows count from the task's last learning: task 0 peaks at 0.99 when first learned,
    # but is learned again at step 2 (0.80) and ends at 0.60.
    relearned = np.array([
        [0.99, 0.10, 0.00],
        [0.30, 0.90, 0.00],
        [0.80, 0.70, 0.00],
        [0.60, 0.65, 0.90],
    ])
    steps = [StepInfo("learn", 0), StepInfo("learn", 1), StepInfo("learn", 0), StepInfo("learn", 2)]
    assert stream_metrics(relearned, np.zeros(3), steps)["forgetting_max"] == pytest.approx(((0.80 - 0.60) + (0.90 - 0.65)) / 2)


def test_retrain_output_kl_is_kl_of_the_reference_from_the_model():
    # Two test samples of one task: model p, reference q. KL(q ‖ p) = mean_n Σ_c q log(q / p) is 0.4427;
    # the other direction, KL(p ‖ q), would be 0.5663.
    import math

    import torch

    from unlearnkit.continual.runner import _distance
    from unlearnkit.continual.scenarios import Scenario, Task

    p = [[0.4, 0.6], [0.6, 0.4]]
    q = [[0.9, 0.1], [0.2, 0.8]]
    scenario = Scenario("toy", "class-il", 2, torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), [torch.zeros(2, 1)],
                        [torch.tensor([0, 1])], [Task(0, torch.tensor([0]), (0, 1), 0, torch.arange(2))])
    gap, kl = _distance([torch.tensor(p).log()], [torch.tensor(q).log()], scenario, [0])
    by_hand = sum(qc * math.log(qc / pc) for qn, pn in zip(q, p) for qc, pc in zip(qn, pn)) / 2
    assert by_hand == pytest.approx(0.4427, abs=1e-4)
    assert kl == pytest.approx(by_hand, rel=1e-5)
    assert gap == pytest.approx(1.0)  # the model gets both samples wrong, the reference both right


def test_single_task_transfer_and_forgetting_are_undefined_in_both_forms():
    # one task has nothing before or after it: None, as the stream form says, not a measured-looking 0.0
    single, initial = np.array([[0.9]]), [0.1]
    square = [backward_transfer(single), forward_transfer(single, initial), forgetting_last(single), forgetting_max(single)]
    stream = stream_metrics(single, initial, [StepInfo("learn", 0)])
    assert square == [None] * 4
    assert [stream[k] for k in ("bwt", "fwt", "forgetting_last", "forgetting_max")] == square
    assert average_accuracy(single) == stream["avg_acc"] == pytest.approx(0.9)

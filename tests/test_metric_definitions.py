"""Metrics recomputed from their definitions (REFERENCE.md, or the module's documented form) on hand-made
inputs: each test here catches a change of the metric code that the rest of the suite let through (found by
mutating the code). The expected values are computed here, never by the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from unlearnkit.adapters.classifier import ClassifierAdapter
from unlearnkit.eval.classification import ItemStats, collect, mia_efficacy


class FixedLogits(nn.Module):
    """Returns, for input row x, the logits x itself: the test sets each item's class scores directly."""

    def forward(self, x):
        return x * 1.0


def test_collect_keeps_the_true_class_loss_probability_and_the_argmax_of_each_item():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 4.0], [-2.0, 5.0, 0.0], [0.3, 0.0, 0.1]])
    labels = [0, 2, 1, 1, 2]
    items = [(torch.tensor(row, dtype=torch.float32), y) for row, y in zip(logits, labels)]
    stats = collect(ClassifierAdapter(FixedLogits(), 3), items, batch_size=2)
    # by hand: softmax over the classes of each row, loss = −log p_y, prediction = argmax of the row
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    true = probs[np.arange(5), labels]
    assert stats.labels.tolist() == labels
    np.testing.assert_allclose(stats.true_probs, true, rtol=1e-5)
    np.testing.assert_allclose(stats.losses, -np.log(true), rtol=1e-5, atol=1e-6)
    assert stats.predictions.tolist() == [0, 2, 2, 1, 0]


def _confidences(values) -> ItemStats:
    p = np.asarray(values, dtype=float)
    return ItemStats(np.zeros(len(p), dtype=int), -np.log(p), np.zeros(len(p), dtype=int), p)


def test_mia_efficacy_is_an_rbf_svc_with_c_3_and_gamma_auto_on_the_confidence():
    """SVC_MIA (REFERENCE §4, OPTML protocol): an RBF SVC, C = 3, gamma "auto" (1 / n_features = 1 on the 1-D
    confidence), members 1 vs non-members 0; the score is the fraction of D_f predicted 0. With retain and test
    of the same size every item of both trains the attack, so an SVC fitted here is the reference; on this
    overlapping data C = 1 or gamma "scale" call different grid points non-members."""
    from sklearn.svm import SVC

    members = [0.77, 0.94, 0.75, 0.68, 0.65, 0.69, 0.74, 0.64, 0.92, 0.64, 0.93, 0.74]
    non_members = [0.47, 0.17, 0.68, 0.79, 0.62, 0.57, 0.54, 0.61, 0.48, 0.74, 0.92, 0.84]
    grid = np.linspace(0.0, 1.0, 41)
    reference = SVC(C=3, gamma=1.0, kernel="rbf").fit(np.array(members + non_members)[:, None],
                                                        np.r_[np.ones(12), np.zeros(12)])
    expected = float(np.mean(reference.predict(grid[:, None]) == 0))
    assert expected == pytest.approx(28 / 41)  # the reference itself, pinned
    grid_stats = ItemStats(np.zeros(41, dtype=int), np.zeros(41), np.zeros(41, dtype=int), grid)
    for seed in range(3):
        assert mia_efficacy(_confidences(members), _confidences(non_members), grid_stats, seed=seed) == expected


def _es_by_definition(pred, label) -> float:
    """ES = 1 − k/|y| with k the first index such that pred[k:] == label[k:] (k = |y| when none, REFERENCE §1)."""
    n = len(label)
    k = next((k for k in range(n) if list(pred[k:]) == list(label[k:])), n)
    return 1.0 - k / n


def test_extraction_strength_starts_the_suffix_after_the_last_mismatch_not_the_first():
    from unlearnkit.eval import lm_metrics as m

    # two mismatches (positions 0 and 2): the matching suffix is [4, 5], k = 3, ES = 1 − 3/5
    assert m.extraction_strength([[9, 2, 9, 4, 5]], [[1, 2, 3, 4, 5]]).value == pytest.approx(0.4)
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 3, size=rng.integers(1, 9)) for _ in range(200)]
    preds = [np.where(rng.random(len(y)) < 0.6, y, rng.integers(0, 3, size=len(y))) for y in labels]
    result = m.extraction_strength(preds, labels)
    expected = [_es_by_definition(p, y) for p, y in zip(preds, labels)]
    assert result.per_item == pytest.approx(expected)
    assert result.value == pytest.approx(np.mean(expected))


def _auc_by_pairs(forget, holdout) -> float:
    """P(holdout score > forget score) + ½ P(tie): the ROC AUC with holdout = 1, forget = 0 (REFERENCE §1 MIA)."""
    wins = sum((h > f) + 0.5 * (h == f) for f in forget for h in holdout)
    return wins / (len(forget) * len(holdout))


def _split(rng, n, *, paraphrase=True, shift=0.0):
    from unlearnkit.eval.language import LMSplitStats

    lengths = rng.integers(2, 7, size=n)
    token_logprobs = [-(rng.random(t) * 3 + shift) for t in lengths]
    labels = [rng.integers(0, 4, size=t) for t in lengths]
    argmax = [np.where(rng.random(t) < 0.5, y, (y + 1) % 4) for t, y in zip(lengths, labels)]
    return LMSplitStats(
        ids=list(range(n)), answers=[f"answer {i} " * (1 + i % 3) for i in range(n)],
        avg_loss=(rng.random(n) * 2 + shift).astype(np.float32),
        paraphrase_loss=(rng.random(n) * 2 + 0.2).astype(np.float32) if paraphrase else None,
        perturbed_loss=[rng.random(rng.integers(1, 4)) * 2 + 0.5 for _ in range(n)],
        token_logprobs=token_logprobs, minkpp_mu=[np.full(len(t), -1.0) for t in token_logprobs],
        minkpp_sigma=[np.full(len(t), 0.5) for t in token_logprobs], argmax_ids=argmax, label_ids=labels,
        generations=["g"] * n, rouge=rng.random(n) * 0.8 + 0.1)


def test_lm_metric_suite_matches_the_definitions_on_hand_made_statistics():
    """lm_metrics glues the primitives together: which loss is "correct" in each truth ratio, which AUC is the
    model's in privleak, which split's truth ratios go into forget quality. Checked against REFERENCE §1."""
    from scipy.stats import ks_2samp

    from unlearnkit.eval.language import lm_metrics

    rng = np.random.default_rng(7)
    stats = {"forget": _split(rng, 9, shift=0.3), "retain": _split(rng, 8), "holdout": _split(rng, 10, shift=0.6),
             "general": _split(rng, 7)}
    reference = {"forget": _split(rng, 9, shift=0.5), "holdout": _split(rng, 10, shift=0.5)}
    got = lm_metrics(stats, reference)

    def tr(correct, perturbed):  # P_wrong / P_correct, P_wrong the geometric mean of the perturbed answers
        return np.array([math.exp(-np.mean(p)) / math.exp(-float(c)) for c, p in zip(correct, perturbed)])

    f = stats["forget"]
    tr_forget = tr(f.paraphrase_loss, f.perturbed_loss)  # TOFU forget: correct = the paraphrase
    assert got["forget_truth_ratio"] == pytest.approx(np.mean(np.minimum(tr_forget, 1 / tr_forget)))
    assert got["forget_prob"] == pytest.approx(np.mean(np.exp(-f.avg_loss.astype(float))))
    ref = reference["forget"]
    assert got["forget_quality"] == pytest.approx(ks_2samp(tr_forget, tr(ref.paraphrase_loss, ref.perturbed_loss)).pvalue)

    r, g = stats["retain"], stats["general"]
    components = [
        np.mean(np.exp(-r.avg_loss.astype(float))), np.mean(r.rouge),
        np.mean(np.maximum(0, 1 - tr(r.paraphrase_loss, r.perturbed_loss))),
        # world facts / real authors: probability against the wrong options, truth ratio against the answer
        np.mean([math.exp(-float(c)) / (math.exp(-float(c)) + np.exp(-p).sum()) for c, p in zip(g.avg_loss, g.perturbed_loss)]),
        np.mean(g.rouge), np.mean(np.maximum(0, 1 - tr(g.avg_loss, g.perturbed_loss))),
    ]
    assert got["model_utility"] == pytest.approx(len(components) / sum(1 / c for c in components))

    def mink(split):  # −mean of the lowest ⌊0.4 n⌋ (at least 1) token log-probs
        return [-np.mean(np.sort(t)[:max(1, int(0.4 * len(t)))]) for t in split.token_logprobs]

    h = stats["holdout"]
    assert got["mia_loss_auc"] == pytest.approx(_auc_by_pairs(f.avg_loss, h.avg_loss))
    auc_model = _auc_by_pairs(mink(f), mink(h))
    auc_retain = _auc_by_pairs(mink(ref), mink(reference["holdout"]))
    assert got["mia_mink_auc"] == pytest.approx(auc_model)
    assert auc_model != pytest.approx(auc_retain)  # the data tell the two AUCs apart
    assert got["privleak"] == pytest.approx(((1 - auc_model) - (1 - auc_retain)) / (1 - auc_retain) * 100)
    assert got["exact_memorization"] == pytest.approx(np.mean([np.mean(p == y) for p, y in zip(f.argmax_ids, f.label_ids)]))


def test_stream_bwt_and_forgetting_take_a_relearned_task_from_its_last_learning():
    """Stream form (module docstring): "the row where task i was last learned" is task i's diagonal."""
    from unlearnkit.continual.metrics import StepInfo, stream_metrics

    # learn 0, learn 1, learn 0 again, learn 2
    matrix = np.array([
        [0.60, 0.10, 0.00],
        [0.40, 0.85, 0.10],
        [0.95, 0.70, 0.10],  # task 0 relearned: its diagonal is now 0.95, not 0.60
        [0.75, 0.65, 0.90],
    ])
    steps = [StepInfo("learn", 0), StepInfo("learn", 1), StepInfo("learn", 0), StepInfo("learn", 2)]
    metrics = stream_metrics(matrix, np.zeros(3), steps)
    # tasks 0 (last learned at row 2) and 1 (row 1); task 2 was learned by the last step
    assert metrics["bwt"] == pytest.approx(((0.75 - 0.95) + (0.65 - 0.85)) / 2)
    assert metrics["forgetting_last"] == pytest.approx(((0.95 - 0.75) + (0.85 - 0.65)) / 2)
    assert metrics["forgetting_max"] == pytest.approx(((0.95 - 0.75) + (0.85 - 0.65)) / 2)


def test_relapse_is_clipped_at_zero_when_a_forgotten_task_keeps_falling():
    """relapse: the largest rise above the value right after unlearning, clipped at 0."""
    from unlearnkit.continual.metrics import StepInfo, relapses, stream_metrics

    matrix = np.array([
        [0.9, 0.0, 0.0],
        [0.8, 0.9, 0.0],
        [0.4, 0.9, 0.0],  # unlearn 0
        [0.2, 0.8, 0.9],  # learn 2: task 0 falls further, nothing came back
    ])
    steps = [StepInfo("learn", 0), StepInfo("learn", 1), StepInfo("unlearn", 0, (0,)), StepInfo("learn", 2)]
    assert relapses(matrix, steps) == [0.0]
    assert stream_metrics(matrix, np.zeros(3), steps)["relapse"] == 0.0


def _bench(seed: int, forget_acc: float, **run_fields) -> dict:
    runs = [{"method": "ssd", "metrics": {"forget_acc": forget_acc}, "seconds": 1.0, "retrain_seconds": 2.0,
             "status": "ok", **run_fields}]
    return {"benchmark": "digits", "scenario": "class", "seed": seed, "notes": [], "runs": runs}


def test_a_summary_cell_is_the_mean_of_three_skewed_values_and_skips_a_nan_run():
    from unlearnkit.benchmarks.results import summary_rows

    values = [0.1, 0.2, 0.6]  # mean 0.3, median 0.2; population std sqrt(((.2)² + (.1)² + (.3)²) / 3)
    rows, _ = summary_rows([_bench(s, v) for s, v in zip((1, 2, 3), values)])
    assert rows[0]["forget_acc"] == f"0.3000 ± {math.sqrt((0.04 + 0.01 + 0.09) / 3):.4f}"
    # a run whose metric could not be measured (NaN, e.g. a diverged attack) is left out of the cell, which names
    # the seeds it holds
    rows, _ = summary_rows([_bench(1, 0.1), _bench(2, float("nan")), _bench(3, 0.5)])
    assert rows[0]["forget_acc"] == "0.3000 ± 0.2000 (seeds 1, 3 only)"


def test_results_page_shows_a_dash_for_a_metric_a_run_does_not_report_and_no_ratio_to_a_zero_retrain_time(tmp_path):
    from unlearnkit.benchmarks.results import flat_rows, markdown_table

    results = {"runs": [{"method": "original", "metrics": {"forget_acc": 0.5}, "seconds": 1.0, "retrain_seconds": 0.0},
                        {"method": "ssd", "metrics": {"forget_acc": 0.25, "mia_auc": 0.75}, "seconds": 1.0,
                         "retrain_seconds": 2.0}]}
    rows = flat_rows(results)
    assert math.isnan(rows[0]["time_vs_retrain"]) and rows[1]["time_vs_retrain"] == 0.5
    table = markdown_table(rows, ["method", "forget_acc", "mia_auc"]).splitlines()
    assert table[2] == "| original | 0.5000 | — |"  # not 0.0000: mia_auc was not measured for it
    assert table[3] == "| ssd | 0.2500 | 0.7500 |"


@pytest.mark.parametrize("value, text", [(0.000123, "1.23e-04"), (0.0009, "9.00e-04"), (0.001, "0.0010"), (0.0, "0.0000"),
                                         (12345.0, "1.23e+04"), (-99.97, "-100.0")])
def test_small_and_large_numbers_keep_three_significant_digits_on_a_page(value, text):
    from unlearnkit.benchmarks.results import markdown_table

    assert markdown_table([{"x": value}], ["x"]).splitlines()[2] == f"| {text} |"

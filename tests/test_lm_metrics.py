"""Causal-LM metrics on toy inputs whose expected values are worked out by hand below."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch

from unlearnkit.errors import UserInputError
from unlearnkit.eval import lm_metrics as m

LN2 = math.log(2.0)


def test_probability_is_mean_of_exp_negative_loss():
    result = m.probability([0.0, LN2, 2 * LN2])
    assert result.per_item == pytest.approx([1.0, 0.5, 0.25])
    assert result.value == pytest.approx((1.0 + 0.5 + 0.25) / 3)


def test_probability_with_options_normalises_against_ragged_wrong_options():
    # item 1: p_c = 0.5, wrong 0.25 + 0.25 -> 0.5 / 1.0; item 2: p_c = 0.25, wrong 0.25 + 0.5 -> 0.25 / 1.0
    result = m.probability_with_options([LN2, 2 * LN2], [[2 * LN2, 2 * LN2], [2 * LN2, LN2]])
    assert result.per_item == pytest.approx([0.5, 0.25], rel=1e-9)
    assert result.value == pytest.approx(0.375, rel=1e-9)


def test_truth_ratio_uses_geometric_mean_of_perturbed_probabilities():
    # item 1: P_c = 0.5, perturbed probs 0.5 and 0.125 -> geometric mean 0.25 -> TR 0.5
    # (an arithmetic mean would give 0.3125 / 0.5 = 0.625)
    correct = [LN2, 0.0, 2 * LN2]
    perturbed = [[LN2, 3 * LN2], [0.0], [0.0, 0.0]]
    legacy = m.truth_ratio(correct, perturbed, eps=0.0)
    assert legacy == pytest.approx([0.5, 1.0, 4.0], rel=1e-12)
    default = m.truth_ratio(correct, perturbed)
    assert default[0] == pytest.approx(0.25 / (0.5 + 1e-10), rel=1e-12)
    assert default[2] == pytest.approx(1.0 / (0.25 + 1e-10), rel=1e-12)


def test_truth_ratio_aggregators():
    ratios = [0.5, 1.0, 4.0]
    forget = m.forget_truth_ratio(ratios)
    assert forget.per_item == pytest.approx([0.5, 1.0, 0.25], rel=1e-9)
    assert forget.value == pytest.approx((0.5 + 1.0 + 0.25) / 3, rel=1e-9)
    score = m.truth_ratio_score(ratios)
    assert score.per_item == pytest.approx([0.5, 0.0, 0.0])
    assert score.value == pytest.approx(0.5 / 3)


def test_rouge_l_recall_counts_stemmed_lcs_over_ground_truth_length():
    result = m.rouge_l_recall(
        ["the cat sat on the mat", "dogs running fast", "paris"],
        ["the cat was on a mat", "a dog runs", "it is in paris france"],
    )
    # LCS "the cat on mat" = 4 of 6; stems dog, run shared = 2 of 3; recall ignores extra words = 1
    assert result.per_item == pytest.approx([4 / 6, 2 / 3, 1.0])
    assert result.value == pytest.approx((4 / 6 + 2 / 3 + 1.0) / 3)


def test_forget_quality_is_ks_pvalue():
    # Completely separated samples of 2 and 2: 2 of the C(4, 2) = 6 orderings reach D = 1.
    assert m.forget_quality([1.0, 2.0], [3.0, 4.0]) == pytest.approx(2 / 6)
    # 3 and 3: 2 of C(6, 3) = 20.
    assert m.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(2 / 20)
    assert m.forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_model_utility_is_harmonic_mean_and_zero_collapses_it():
    assert m.model_utility([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
    assert m.model_utility({"a": 1.0, "b": 0.5, "c": 0.25}) == pytest.approx(3 / 7)
    assert m.model_utility({"a": 0.9, "b": 0.0}) == 0.0


def test_utility_components_plain_and_with_options():
    plain = m.utility_components(
        "retain", correct_avg_losses=[0.0, LN2], rouge_l_recalls=[1.0, 0.5], truth_ratios=[0.5, 2.0]
    )
    assert plain == pytest.approx(
        {"retain_probability": 0.75, "retain_rouge_l_recall": 0.75, "retain_truth_ratio_score": 0.25}
    )
    options = m.utility_components(
        "world_facts",
        correct_avg_losses=[LN2],
        wrong_avg_losses=[[LN2, LN2]],
        rouge_l_recalls=[0.2],
        truth_ratios=[0.2],
    )
    assert options["world_facts_probability"] == pytest.approx(0.5 / 1.5, rel=1e-9)
    assert options["world_facts_truth_ratio_score"] == pytest.approx(0.8)


def test_mia_auc_counts_holdout_above_forget_pairs():
    assert m.mia_auc([1.0, 2.0], [3.0, 4.0]) == pytest.approx(1.0)
    # pairs (holdout > forget): 2>1, 4>1, 4>3 yes; 2>3 no -> 3/4
    assert m.mia_auc([1.0, 3.0], [2.0, 4.0]) == pytest.approx(0.75)
    assert m.mia_auc([1.0], [1.0]) == pytest.approx(0.5)
    assert m.mia_auc([3.0, 4.0], [1.0, 2.0]) == pytest.approx(0.0)


def test_loss_and_zlib_scores():
    assert m.loss_score(1.25) == 1.25
    text = "the author was born in Taipei"
    assert m.zlib_score(2.0, text) * len(zlib.compress(text.encode("utf-8"))) == pytest.approx(2.0)
    # Same loss, same length: the repetitive text compresses better, so its score is higher.
    assert m.zlib_score(2.0, "a" * 40) > m.zlib_score(2.0, "the quick brown fox jumps over the lazy d")


def test_min_k_score_takes_lowest_fraction_with_at_least_one():
    logprobs = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert m.min_k_score(logprobs, k=0.4) == pytest.approx(4.5)  # floor(2.0) = 2 lowest: -5, -4
    assert m.min_k_score(logprobs, k=0.1) == pytest.approx(5.0)  # floor(0.5) = 0 -> at least 1
    assert m.min_k_score(logprobs, k=1.0) == pytest.approx(3.0)


def test_min_k_plus_plus_score_standardises_per_token():
    logprobs, mu, sigma = [-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [1.0, 2.0, 0.5]
    # z = [0, -0.5, -4]
    assert m.min_k_plus_plus_score(logprobs, mu, sigma, k=0.4) == pytest.approx(4.0)
    assert m.min_k_plus_plus_score(logprobs, mu, sigma, k=1.0) == pytest.approx(1.5)


def test_minkpp_moments_by_hand_and_from_torch():
    with np.errstate(divide="ignore"):
        log_probs = np.log(np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    mu, sigma = m.minkpp_moments(log_probs)
    # row 1: mu = -1.5 ln2, E[(log p)^2] = 0.5 ln2^2 + 0.5 * 4 ln2^2 = 2.5 ln2^2, var = 0.25 ln2^2
    assert mu[0] == pytest.approx(-1.5 * LN2)
    assert sigma[0] == pytest.approx(0.5 * LN2)
    # rows 2 and 3 have zero variance: clamped at 1e-6, and log 0 = -inf contributes nothing (no nan)
    assert mu[1] == pytest.approx(0.0) and mu[2] == pytest.approx(-LN2)
    assert sigma[1:] == pytest.approx([1e-3, 1e-3])
    # torch input, bf16 included (numpy cannot take bf16): computed in float64 from the rounded values
    bf16 = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.bfloat16))
    rounded = [float(v) for v in bf16[0]]
    probs = [math.exp(v) for v in rounded]
    mean = sum(p * v for p, v in zip(probs, rounded))
    second = sum(p * v * v for p, v in zip(probs, rounded))
    mu_t, sigma_t = m.minkpp_moments(bf16)
    assert mu_t[0] == pytest.approx(mean, rel=1e-12)
    assert sigma_t[0] == pytest.approx(math.sqrt(second - mean**2), rel=1e-9)


def test_privleak_reading():
    assert m.privleak(1.0, 0.5) == pytest.approx(-100.0)  # forget set plainly memorised
    assert m.privleak(0.5, 0.5) == pytest.approx(0.0)  # as private as retraining
    assert m.privleak(0.25, 0.5) == pytest.approx(50.0)  # s = 0.75, r = 0.5 -> over-unlearning
    assert m.privleak(0.8, 0.6) == pytest.approx((0.2 - 0.4) / 0.4 * 100)


def test_extraction_strength_correct_and_upstream_quirk():
    labels = [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]
    preds = [[1, 9, 3, 4], [1, 2, 3, 4], [1, 2, 3, 9]]
    correct = m.extraction_strength(preds, labels)
    # last mismatch at 1 -> k = 2 -> 0.5; all match -> 1; last token wrong -> no suffix -> 0
    assert correct.per_item == pytest.approx([0.5, 1.0, 0.0])
    assert correct.value == pytest.approx(0.5)
    quirk = m.extraction_strength(preds, labels, match_upstream_quirk=True)
    assert quirk.per_item == pytest.approx([0.5, 1.0, 0.25])  # upstream stops at k = |y| - 1


def test_extraction_strength_accepts_tensors():
    result = m.extraction_strength([torch.tensor([5, 6, 7])], [torch.tensor([0, 6, 7])])
    assert result.per_item == pytest.approx([1 - 1 / 3])


def test_exact_memorization_is_token_match_rate():
    result = m.exact_memorization([[1, 9, 3, 4], [5, 6]], [[1, 2, 3, 4], [5, 7]])
    assert result.per_item == pytest.approx([0.75, 0.5])
    assert result.value == pytest.approx(0.625)


def test_relearn_recovery():
    assert m.relearn_recovery(0.6, 0.2, 1.0) == pytest.approx(0.5)
    assert m.relearn_recovery(0.2, 0.2, 1.0) == 0.0
    assert math.isnan(m.relearn_recovery(0.6, 0.4, 0.4))
    # a denominator within min_gap is noise, not forgetting: no share is reported
    assert math.isnan(m.relearn_recovery(0.1, 0.95, 0.96, min_gap=0.05))
    assert m.relearn_recovery(0.5, 0.9, 0.96, min_gap=0.05) == pytest.approx(-0.4 / 0.06)


def test_metric_result_to_dict_is_json_ready():
    payload = m.probability([0.0, LN2]).to_dict()
    assert json.loads(json.dumps(payload)) == {"value": 0.75, "per_item": [1.0, 0.5]}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: m.probability([]), "avg_losses must be a non-empty 1-D sequence"),
        (lambda: m.probability([[0.1, 0.2], [0.3]]), "avg_losses must be a 1-D sequence of numbers"),
        (lambda: m.probability(["high"]), "avg_losses must be a 1-D sequence of numbers"),
        (lambda: m.truth_ratio([0.1, 0.2], [[0.3]]), "perturbed_avg_losses must hold one entry per item"),
        (lambda: m.probability_with_options([0.1], [[]]), r"wrong_avg_losses\[0\] must be a non-empty"),
        (lambda: m.rouge_l_recall(["a", "b"], ["a"]), "must be non-empty and the same length, got 2 and 1"),
        (lambda: m.rouge_l_recall("abc", "abc"), "not single strings"),
        (lambda: m.min_k_score([-1.0], k=0.0), r"k must be in \(0, 1\]"),
        (lambda: m.min_k_plus_plus_score([-1.0, -2.0], [0.0], [1.0, 1.0]), "must have one value per token"),
        (lambda: m.minkpp_moments(np.zeros(3)), r"must be a non-empty \(T, V\) array"),
        (lambda: m.privleak(1.2, 0.5), r"auc_model must be an AUC in \[0, 1\]"),
        (lambda: m.extraction_strength([[1, 2]], [[1, 2, 3]]), "item 0: pred_ids and label_ids must be non-empty"),
        (lambda: m.exact_memorization([], []), "must be non-empty and hold the same number of items"),
        (lambda: m.model_utility([0.5, -0.1]), "must all be non-negative"),
        (lambda: m.forget_quality([], [1.0]), "unlearned_forget_tr must be a non-empty"),
    ],
)
def test_bad_inputs_raise_user_input_error(call, message):
    with pytest.raises(UserInputError, match=message):
        call()


def test_mia_auc_ranks_an_infinite_score_instead_of_refusing_it():
    # an answer token given probability 0 (banned with a −inf logit) has an infinite loss-like score
    assert m.mia_auc([1.0, math.inf], [2.0, 3.0]) == pytest.approx(0.5)
    assert m.mia_auc([1.0, 3.0], [2.0, 4.0]) == pytest.approx(0.75)  # finite scores: the same AUC as before


def test_adapter_moments_ignore_a_banned_token_like_minkpp_moments():
    from unlearnkit.adapters.causal_lm import _moments

    log_probs = torch.log_softmax(torch.tensor([[2.0, 1.0, -math.inf, 0.5]], dtype=torch.float64), -1)
    mean, std = _moments(log_probs)
    mu, sigma = m.minkpp_moments(log_probs)
    assert torch.isfinite(mean).all() and mean.item() == pytest.approx(mu[0]) and std.item() == pytest.approx(sigma[0])

"""Per-item rows agree with the metrics computed from them; evaluate_lm refuses what it cannot score."""

from __future__ import annotations

import numpy as np
import pytest

from lm_fixtures import memorised_lm, tiny_qa
from unlearnkit.errors import UserInputError
from unlearnkit.eval import lm_metrics as M
from unlearnkit.eval.language import collect_lm, evaluate_lm


@pytest.fixture(scope="module")
def adapter_and_items():
    items = tiny_qa(12)  # each item has an answer, a paraphrase and perturbed answers
    return memorised_lm(items), items


@pytest.mark.parametrize("split, correct", [("general", "avg_loss"), ("retain", "paraphrase_loss")])
def test_row_truth_ratios_are_the_ones_the_splits_metrics_use(adapter_and_items, split, correct):
    # Option splits (general, real_authors) score the wrong options against the answer itself; the
    # rows used to divide by the paraphrase everywhere.
    adapter, items = adapter_and_items
    stats = collect_lm(adapter, items[8:12], generate=False)
    expected = M.truth_ratio(getattr(stats, correct), stats.perturbed_loss)
    assert np.allclose([row["truth_ratio"] for row in stats.rows(split)], expected, rtol=1e-6)
    assert not np.allclose(stats.paraphrase_loss, stats.avg_loss)  # the two readings differ on these items


def test_evaluate_lm_refuses_to_score_without_generations(adapter_and_items):
    adapter, items = adapter_and_items
    splits = {name: items[i:i + 3] for name, i in (("forget", 0), ("retain", 3), ("holdout", 6), ("general", 9))}
    with pytest.raises(UserInputError, match="evaluate_lm needs generations"):
        evaluate_lm(adapter, splits, None, generate=False)


def test_collected_predictions_and_min_k_come_from_the_models_own_log_probabilities(adapter_and_items):
    # extraction strength and exact memorisation read argmax_ids: storing the labels there (ES = EM = 1 for every
    # item) passed every test, as did Min-K with k = 1 instead of 0.4
    import torch

    adapter, items = adapter_and_items
    untrained = memorised_lm(items, steps=3)  # barely trained: its predictions are often wrong
    stats = collect_lm(untrained, items[:6], generate=False)
    with torch.no_grad():
        log_probs = untrained.vocab_log_softmax(untrained.model, untrained.collate(items[:6]))
    for predicted, labels, lp in zip(stats.argmax_ids, stats.label_ids, log_probs):
        assert np.array_equal(predicted, lp.argmax(dim=-1).numpy())
    assert any(not np.array_equal(p, y) for p, y in zip(stats.argmax_ids, stats.label_ids))
    expected = [M.min_k_score(t, k=0.4) for t in stats.token_logprobs]
    assert np.allclose(stats.mia_scores()["mink"], expected)
    assert not np.allclose(expected, [M.min_k_score(t, k=1.0) for t in stats.token_logprobs])


def test_an_option_splits_utility_truth_ratio_scores_the_options_against_the_answer(adapter_and_items):
    # the retain split's is against the paraphrase, an option split's (general, real_authors) against the answer
    from unlearnkit.eval.language import model_utility_components

    adapter, items = adapter_and_items
    stats = collect_lm(adapter, items[8:12], generate=False)
    stats.rouge = np.ones(4)  # not read by the truth-ratio components
    components = model_utility_components({"retain": stats, "general": stats})
    against_answer = M.truth_ratio_score(M.truth_ratio(stats.avg_loss, stats.perturbed_loss)).value
    against_paraphrase = M.truth_ratio_score(M.truth_ratio(stats.paraphrase_loss, stats.perturbed_loss)).value
    assert components["general_truth_ratio_score"] == pytest.approx(against_answer)
    assert components["retain_truth_ratio_score"] == pytest.approx(against_paraphrase)
    assert against_answer != pytest.approx(against_paraphrase)

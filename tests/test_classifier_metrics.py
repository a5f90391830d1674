"""Classifier metrics (eval/classification.py) against values worked out by hand."""

import numpy as np
import pytest

from unlearnkit.eval.classification import ItemStats, avg_gap, classifier_metrics, loss_mia_auc, mia_efficacy


def stats(losses=(), true_probs=(), labels=None, predictions=None) -> ItemStats:
    """Per-item statistics with only the columns a metric reads filled in (the others zero)."""
    n = max(len(losses), len(true_probs), len(labels or ()))
    column = lambda values: np.asarray(values, dtype=float) if len(values) else np.zeros(n)
    return ItemStats(np.asarray(labels if labels is not None else [0] * n), column(losses),
                     np.asarray(predictions if predictions is not None else [0] * n), column(true_probs))


def test_loss_mia_auc_is_one_when_every_forget_loss_is_below_every_held_out_loss():
    # held-out items are the positives and the loss is the score: all 3 × 2 pairs ranked right
    assert loss_mia_auc(stats(losses=[0.1, 0.2, 0.3]), stats(losses=[0.5, 0.9])) == 1.0
    # the other way round the forget set looks less like training data than unseen data does
    assert loss_mia_auc(stats(losses=[0.5, 0.9]), stats(losses=[0.1, 0.2, 0.3])) == 0.0


def test_loss_mia_auc_is_one_half_when_the_losses_interleave():
    # pairs (held-out, forget) with held-out > forget: (2, 1) and (3, 1) of the four → 2/4
    assert loss_mia_auc(stats(losses=[1.0, 4.0]), stats(losses=[2.0, 3.0])) == 0.5
    # one above, one tie (counts one half), one below → 1.5 / 3
    assert loss_mia_auc(stats(losses=[0.4]), stats(losses=[0.2, 0.4, 0.6])) == 0.5


def test_mia_efficacy_is_the_fraction_of_forget_items_the_svc_calls_non_members():
    # members (retain) are confident, non-members (test) are not: the SVC's split between them is obvious
    retain = stats(true_probs=np.linspace(0.90, 1.00, 20))
    test = stats(true_probs=np.linspace(0.00, 0.20, 10))
    forget = stats(true_probs=[0.97, 0.95, 0.99, 0.05])  # three look like members, one like unseen data
    assert mia_efficacy(retain, test, forget, seed=0) == 0.25
    assert mia_efficacy(retain, test, stats(true_probs=[0.1, 0.15]), seed=3) == 1.0
    assert mia_efficacy(retain, test, stats(true_probs=[0.92, 0.98]), seed=3) == 0.0


def test_avg_gap_is_the_mean_absolute_gap_over_the_four_metrics_only():
    metrics = {"forget_acc": 0.5, "retain_acc": 0.9, "test_acc": 0.8, "mia_efficacy": 0.3, "mia_auc": 0.9}
    reference = {"forget_acc": 0.0, "retain_acc": 1.0, "test_acc": 0.9, "mia_efficacy": 0.7, "mia_auc": 0.5}
    # (0.5 + 0.1 + 0.1 + 0.4) / 4; mia_auc is not part of it
    assert avg_gap(metrics, reference) == pytest.approx(0.275)
    assert avg_gap(reference, reference) == 0.0


def test_classifier_metrics_take_the_class_scenario_mia_auc_against_forget_test():
    forget = stats(losses=[0.1, 0.2], true_probs=[0.9, 0.8], labels=[0, 0], predictions=[0, 1])
    retain = stats(losses=[0.1] * 4, true_probs=[0.9, 0.95, 0.99, 0.97], labels=[1, 2, 1, 2], predictions=[1, 2, 1, 1])
    test = stats(losses=[0.05, 0.06], true_probs=[0.1, 0.2], labels=[1, 2], predictions=[1, 2])
    forget_test = stats(losses=[0.3, 0.4], true_probs=[0.1, 0.1], labels=[0, 0], predictions=[1, 1])
    metrics = classifier_metrics({"forget": forget, "retain": retain, "test": test, "forget_test": forget_test})
    assert (metrics["forget_acc"], metrics["retain_acc"], metrics["test_acc"], metrics["forget_test_acc"]) == (0.5, 0.75, 1.0, 0.0)
    assert metrics["mia_auc"] == 1.0  # against forget_test; against test (lower losses) it would be 0.0
    assert "forget_test_acc" not in classifier_metrics({"forget": forget, "retain": retain, "test": test})

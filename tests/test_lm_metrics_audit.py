"""Audit of the MUSE / MIA / memorisation metrics: NaN handling and per-item rows behind every aggregate."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from lm_fixtures import memorised_lm, tiny_qa
from unlearnkit.eval import lm_metrics as M
from unlearnkit.eval.language import collect_lm, evaluate_lm, lm_metrics


def test_a_nan_token_logprob_makes_min_k_scores_nan_instead_of_being_skipped():
    # np.sort puts NaN last: the lowest 40% of [-1, nan, -3] used to be just [-3], a finite score of 3.0
    assert math.isnan(M.min_k_score([-1.0, math.nan, -3.0]))
    assert math.isnan(M.min_k_plus_plus_score([-1.0, math.nan, -3.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]))
    assert M.min_k_score([-1.0, -2.0, -3.0]) == pytest.approx(3.0)  # finite input: unchanged


def test_a_nan_score_makes_the_auc_and_privleak_nan_instead_of_raising():
    # sklearn's roc_auc_score raised "Input contains NaN", and privleak refused a NaN AUC
    assert math.isnan(M.mia_auc([1.0, math.nan], [2.0, 3.0]))
    assert math.isnan(M.mia_auc([1.0, 2.0], [math.nan, 3.0]))
    assert math.isnan(M.privleak(math.nan, 0.5)) and math.isnan(M.privleak(0.5, math.nan))
    assert M.mia_auc([1.0, math.inf], [2.0, 3.0]) == pytest.approx(0.5)  # an infinite score is still ranked


@pytest.fixture(scope="module")
def adapter_and_splits():
    items = tiny_qa(12)
    adapter = memorised_lm(items, steps=60)  # part-memorised: ES and EM differ between items
    splits = {"forget": items[0:3], "retain": items[3:6], "holdout": items[6:9], "general": items[9:12]}
    return adapter, splits


def test_a_model_that_outputs_nan_is_scored_nan_not_a_crash(adapter_and_splits):
    adapter, splits = adapter_and_splits
    _, reference = evaluate_lm(adapter, splits, None, max_new_tokens=4)
    broken = adapter.with_model(copy.deepcopy(adapter.model))
    with torch.no_grad():
        broken.model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("inf")  # every logit becomes NaN
    metrics, _ = evaluate_lm(broken, splits, reference, max_new_tokens=4)
    # extraction strength and exact memorisation read the argmax over NaN as token 0: 0.0, "nothing extractable"
    for name in ("mia_loss_auc", "mia_zlib_auc", "mia_mink_auc", "mia_minkpp_auc", "privleak", "extraction_strength",
                 "exact_memorization"):
        assert math.isnan(metrics[name]), name
    rows = collect_lm(broken, splits["forget"], generate=False).rows("forget")
    assert all(math.isnan(row["extraction_strength"]) and math.isnan(row["exact_memorization"]) for row in rows)


def test_rows_carry_the_per_item_memorisation_behind_the_aggregates(adapter_and_splits):
    adapter, splits = adapter_and_splits
    stats = {name: collect_lm(adapter, items, generate=True, max_new_tokens=4) for name, items in splits.items()}
    metrics = lm_metrics(stats)
    rows = stats["forget"].rows("forget")
    es = [row["extraction_strength"] for row in rows]
    em = [row["exact_memorization"] for row in rows]
    assert np.mean(es) == pytest.approx(metrics["extraction_strength"], rel=1e-12)
    assert np.mean(em) == pytest.approx(metrics["exact_memorization"], rel=1e-12)
    for row, pred, label in zip(rows, stats["forget"].argmax_ids, stats["forget"].label_ids):
        assert row["exact_memorization"] == pytest.approx(float(np.mean(pred == label)))
    # the MIA columns of the rows are the scores the AUCs rank
    holdout_rows = stats["holdout"].rows("holdout")
    for name in ("loss", "zlib", "mink", "minkpp"):
        auc = M.mia_auc([r[f"mia_{name}"] for r in rows], [r[f"mia_{name}"] for r in holdout_rows])
        assert auc == pytest.approx(metrics[f"mia_{name}_auc"], abs=1e-12)

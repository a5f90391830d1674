"""Results files are standard JSON: a metric that could not be computed is ``null``, never a bare ``NaN``."""

import json
import math

import numpy as np
import pytest
import torch

from unlearnkit.benchmarks.results import markdown_table, read_bench_results, write_items
from unlearnkit.io import write_json_atomic


def strict_load(text):
    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null_at_any_depth(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"runs": [{"method": "ssd", "metrics": {"a": math.nan, "b": math.inf, "c": 0.5},
                                       "seconds": np.float64("nan"), "curve": (1.0, -math.inf, torch.tensor(2.0))}]})
    data = strict_load(path.read_text())
    run = data["runs"][0]
    assert run["metrics"] == {"a": None, "b": None, "c": 0.5}
    assert run["seconds"] is None and run["curve"] == [1.0, None, 2.0]


def test_arrays_are_written_as_lists_with_null_for_what_is_not_finite(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": np.array([1.0, np.nan]), "t": torch.tensor([[2.0, math.inf]]), "n": np.int64(3)})
    assert strict_load(path.read_text()) == {"a": [1.0, None], "t": [[2.0, None]], "n": 3}


def test_item_rows_are_standard_json_lines(tmp_path):
    path = tmp_path / "items.jsonl"
    write_items(path, [{"id": 0, "loss": math.nan}, {"id": 1, "loss": 0.25}])
    assert [strict_load(line) for line in path.read_text().splitlines()] == [{"id": 0, "loss": None},
                                                                             {"id": 1, "loss": 0.25}]


def test_a_null_metric_reads_back_and_shows_as_a_dash(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"benchmark": "digits", "runs": [{"method": "ssd", "metrics": {"forget_acc": math.nan},
                                                              "seconds": 1.0}]})
    run = read_bench_results(path)["runs"][0]
    assert markdown_table([run["metrics"]], ["forget_acc"]).splitlines()[-1] == "| — |"


def test_a_value_json_cannot_hold_is_still_refused(tmp_path):
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json_atomic(tmp_path / "x.json", {"model": object()})
    assert not (tmp_path / "x.json").exists()


def test_evaluate_output_with_null_seconds_reads_and_makes_cards(tmp_path):
    # evaluate scores given models and times nothing: its runs' seconds are NaN in memory, null in the file
    from unlearnkit.cli import main

    bench = tmp_path / "eval"
    run = {"method": "npo", "reference": False, "params": {}, "seconds": math.nan, "retrain_seconds": None,
           "metrics": {"forget_quality": 0.5, "model_utility": math.nan}}
    write_json_atomic(bench / "results.json", {"benchmark": "tofu", "split": "forget10", "runs": [run]})
    assert read_bench_results(bench / "results.json")["runs"][0]["seconds"] is None
    assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 0
    row = next(line for line in (tmp_path / "cards" / "npo.md").read_text().splitlines() if line.startswith("| tofu"))
    assert "| forget_quality 0.5 | — | ok |" in row


def test_the_page_does_not_bound_privleak_above(tmp_path):
    # MUSE's privleak is (s - r) / r with s, r = 1 - AUC: an over-unlearned model reached 300 on the smollm2 page,
    # whose header claimed privleak lies in [-100, 100]
    from unlearnkit.benchmarks.results import write_results
    from unlearnkit.eval.lm_metrics import privleak

    assert privleak(0.0, 0.75) == pytest.approx(300.0)
    results = {"seed": 0, "runs": [{"method": "npo", "metrics": {"privleak": 300.0}, "seconds": 1.0}]}
    page = write_results(tmp_path, results, ["method", "privleak"], "t", "unlearnkit bench")
    assert "100]" not in page and "unbounded above" in page and "| npo | 300.0 |" in page

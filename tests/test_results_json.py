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

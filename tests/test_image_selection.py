"""Selecting the image benches' settings on held-out splits: the rule, the run, the CLI's refusals,
and that the bench uses what the published selection chose."""

from pathlib import Path

import pytest

from unlearnkit.benchmarks.classifier_bench import run_classifier_bench
from unlearnkit.benchmarks.image_selection import choose, select_image_settings, write_image_selection
from unlearnkit.benchmarks.vision import BENCH_METHOD_SETTINGS, SELECTION_SEEDS, selection_page
from unlearnkit.cli import main
from unlearnkit.errors import UserInputError

GRID = {"gradient_ascent": ({"lr": 1e-4}, {"lr": 8e-4})}


def test_the_rule_takes_the_lowest_gap_per_scenario_and_the_earlier_on_a_tie():
    rows = [{"scenario": "class", "method": "gradient_ascent", "lr": 1e-4, "avg_gap": 0.5},
            {"scenario": "class", "method": "gradient_ascent", "lr": 8e-4, "avg_gap": 0.1},
            {"scenario": "random", "method": "gradient_ascent", "lr": 1e-4, "avg_gap": 0.02},
            {"scenario": "random", "method": "gradient_ascent", "lr": 8e-4, "avg_gap": 0.02}]
    assert choose(rows, GRID) == {"class": {"gradient_ascent": {"lr": 8e-4}},
                                  "random": {"gradient_ascent": {"lr": 1e-4}}}
    rows[0]["avg_gap"] = float("nan")  # a NaN gap is never the lowest, even first
    assert choose(rows, GRID)["class"] == {"gradient_ascent": {"lr": 8e-4}}


def test_selection_scores_match_the_bench_on_the_same_split(tmp_path):
    chosen, rows = select_image_settings("digits", (1,), candidates=GRID, log=lambda _: None)
    assert [(r["scenario"], r["lr"]) for r in rows] == [("class", 1e-4), ("class", 8e-4), ("random", 1e-4), ("random", 8e-4)]
    gaps = {(r["scenario"], r["lr"]): r["avg_gap"] for r in rows}
    assert chosen == choose(rows, GRID)
    # a selection row is what the bench reports for that setting on that split, not a number of its own
    results = run_classifier_bench("digits", "class", ["gradient_ascent"], tmp_path / "bench", seed=1,
                                   params={"gradient_ascent": {"lr": 8e-4}}, log=lambda _: None)
    reported = next(run for run in results["runs"] if run["method"] == "gradient_ascent")
    assert reported["metrics"]["avg_gap"] == pytest.approx(gaps[("class", 8e-4)], abs=1e-9)
    out = tmp_path / "selection.md"
    write_image_selection(out, "digits", (1,), chosen, rows, "unlearnkit select-images --seeds 1")
    text = out.read_text()
    assert "split seeds 1\n" in text and text.count("| gradient_ascent |") == 4
    with pytest.raises(UserInputError, match="other splits"):
        select_image_settings("digits", (0, 1), candidates=GRID)


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,2"], "other splits than the reported one"),
    (["--seeds", "1,1"], "repeated"),
    (["--seeds", "one"], "comma-separated integers"),
    (["--seeds", "1,,2"], "--seeds has an empty item"),
    (["--seeds", ""], "at least one split seed"),
    (["--benchmark", "cifar"], "Unknown benchmark"),
])
def test_select_images_refuses_bad_input_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "selection.md"
    assert main(["select-images", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# named bench_name, not benchmark: where pytest-benchmark is installed, its fixture of that name crashed the worker
@pytest.mark.parametrize("bench_name", sorted(BENCH_METHOD_SETTINGS))
def test_the_bench_uses_the_settings_the_published_selection_chose(bench_name):
    text = (Path(__file__).parents[1] / selection_page(bench_name)).read_text()
    assert text.startswith(f"# Image-bench settings selected on {bench_name} ")
    assert f"split seeds {', '.join(map(str, SELECTION_SEEDS))}\n" in text  # the seeds the pages' notes name
    line = next(line for line in text.splitlines() if line.startswith("Chosen: "))
    published: dict = {}
    for entry in line.removeprefix("Chosen: ").split("; "):
        scenario, method, values = entry.split(" ", 2)
        published.setdefault(scenario, {})[method] = {k: float(v) for k, v in
                                                      (pair.split("=") for pair in values.split(", "))}
    used = {scenario: {method: {k: v for k, v in values.items() if k in published[scenario][method]}
                       for method, values in methods.items()} for scenario, methods in BENCH_METHOD_SETTINGS[bench_name].items()}
    assert published == used


def test_each_page_says_which_choices_looked_at_its_split():
    from unlearnkit.benchmarks.vision import settings_note

    assert "this split (seed 0), so their rows are in-sample" in settings_note("digits", "class", 0)
    assert "ssd alpha 2, lam 0.5; gradient_ascent lr 0.0008" in settings_note("digits", "class", 0)  # the values used
    assert "this one among them" in settings_note("mnist", "random", SELECTION_SEEDS[0])
    assert "no choice looked at this split" in settings_note("digits", "random", 4)
    assert "no choice looked at this split" in settings_note("mnist", "class", 0)  # defaults looked at digits only
    # a --param that replaces one of the bench's own settings is named (the page claimed the replaced value)
    note = settings_note("digits", "class", 0, {"ssd": {"alpha": 10.0, "batch_size": 8}, "scrub": {"lr": 0.1}})
    assert "lr 0.0008; this run set ssd.alpha=10.0, ssd.batch_size=8 instead, with --param)" in note
    assert "replaced" not in settings_note("digits", "class", 0, {"scrub": {"lr": 0.1}})

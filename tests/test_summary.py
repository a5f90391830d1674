"""`unlearnkit summarize`: mean ± std over bench runs that differ only in their seed."""

import json

import pytest

from unlearnkit.benchmarks.results import summary_rows
from unlearnkit.cli import main
from unlearnkit.errors import UserInputError


def fake_results(seed: int, forget_acc: float, *, scenario: str = "class", methods=("original", "ssd")) -> dict:
    runs = [{"method": m, "metrics": {"forget_acc": forget_acc + i, "status_text": "x", "nan_metric": float("nan")},
             "seconds": 2.0 * (seed + 1), "retrain_seconds": 4.0, "peak_mem_mb": 100.0, "status": "ok"}
            for i, m in enumerate(methods)]
    return {"benchmark": "digits", "scenario": scenario, "seed": seed, "notes": ["a note"], "runs": runs}


def test_cells_are_mean_and_population_std_of_each_number():
    rows, columns = summary_rows([fake_results(4, 0.1), fake_results(5, 0.3)])
    assert columns == ["method", "forget_acc", "seconds", "time_vs_retrain"]  # text, NaN and memory are left out
    assert rows[0] == {"method": "original", "forget_acc": "0.2000 ± 0.1000", "seconds": "11.0 ± 1.0000",
                       "time_vs_retrain": "2.7500 ± 0.2500"}
    assert rows[1]["forget_acc"] == "1.2000 ± 0.1000"


def test_equal_values_have_no_spread_and_a_number_beyond_any_float_is_no_number(tmp_path, capsys):
    """Three equal values printed "± 1.11e-16" (np.std's rounding residue); a 400-digit integer raised OverflowError."""
    runs = [fake_results(seed, 0.7) for seed in (4, 5, 6)]
    runs[2]["runs"][1]["metrics"]["huge"] = 10 ** 400
    rows, columns = summary_rows(runs)
    assert rows[0]["forget_acc"] == "0.7000 ± 0.0000" and "huge" not in columns
    runs[2]["runs"][1]["seconds"] = 10 ** 400
    folders = [write_folder(tmp_path / f"r{i}", results) for i, results in enumerate(runs)]
    out = tmp_path / "summary.md"
    assert main(["summarize", *[arg for f in folders for arg in ("--results", f)], "--out", str(out)]) == 2
    assert "the seconds of run 2 is not a number" in capsys.readouterr().err and not out.exists()


def test_a_metric_only_some_rows_or_runs_report_still_gets_its_column():
    a, b = fake_results(4, 0.1), fake_results(5, 0.3)
    a["runs"][1]["metrics"]["relearn_recovery"] = 0.2  # reported by a method, not by the original row
    b["runs"][1]["metrics"]["relearn_recovery"] = "n/a"  # no number in this run: left out of the cell
    rows, columns = summary_rows([a, b])
    assert "relearn_recovery" in columns
    assert rows[0]["relearn_recovery"] == "—" and rows[1]["relearn_recovery"] == "0.2000 (seed 4 only)"  # one value: no std, and its seed named


def _with_other_params(results: dict) -> dict:
    results["runs"][1]["params"] = {"alpha": 99.0}
    return results


@pytest.mark.parametrize("other, message", [
    (fake_results(5, 0.3, scenario="random"), "differ in scenario"),
    (fake_results(5, 0.3, methods=("original", "scrub")), "different methods"),
    (_with_other_params(fake_results(5, 0.3)), "different settings"),
])
def test_runs_of_different_benches_are_refused(other, message):
    with pytest.raises(UserInputError, match=message):
        summary_rows([fake_results(4, 0.1), other])


def _with_config(results: dict, **config) -> dict:
    results["config"] = {"seed": results["seed"], "lr": 0.001, **config}
    return results


def test_a_setting_one_run_sets_to_null_and_the_other_lacks_is_named():
    # before: a bare StopIteration (None == None for every key) instead of the refusal
    with pytest.raises(UserInputError, match=r"differ in the config setting retain_steps \(None and absent\)"):
        summary_rows([_with_config(fake_results(4, 0.1), retain_steps=None), _with_config(fake_results(5, 0.3))])


def write_folder(path, results):
    path.mkdir()
    (path / "results.json").write_text(json.dumps(results))
    return str(path)


def test_summarize_writes_the_page(tmp_path):
    a = write_folder(tmp_path / "a", fake_results(4, 0.1))
    b = write_folder(tmp_path / "b", fake_results(5, 0.3))
    out = tmp_path / "summary.md"
    assert main(["summarize", "--results", a, "--results", b, "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# digits — class, mean ± std over seeds 4, 5\n")
    assert text.count("Note (from the runs) — a note") == 1  # the runs' notes, each once
    assert "| ssd | 1.2000 ± 0.1000 |" in text


@pytest.mark.parametrize("seeds, second, message", [
    ((4, 4), None, "same seed"),
    ((4,), None, "at least two"),
    ((4, 5), "", "holds no results.json"),
    ((4, 5), "{not json", "is not a results.json written by 'unlearnkit bench'"),
    ((4, 5), "[1, 2]", "needs a list of runs"),
    ((4, 5), '{"runs": []}', "needs a list of runs"),
    ((4, 5), '{"runs": [{"method": "ssd"}]}', "needs a list of runs"),
    ((4, 5), '{"runs": [{"method": "ssd", "metrics": {}, "seconds": "1.2"}]}', "the seconds of run 1 is not a number"),
    ((4, 5), '{"runs": [{"method": "ssd", "metrics": [], "seconds": 1}]}', "the metrics of run 1 is not a mapping"),
])
def test_summarize_refuses_bad_input_and_writes_nothing(tmp_path, capsys, seeds, second, message):
    folders = [write_folder(tmp_path / f"r{i}", fake_results(seed, 0.1)) for i, seed in enumerate(seeds)]
    if second == "":
        (tmp_path / "r1" / "results.json").unlink()
    elif second is not None:
        (tmp_path / "r1" / "results.json").write_text(second)
    out = tmp_path / "summary.md"
    assert main(["summarize", *[arg for f in folders for arg in ("--results", f)], "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_cpu_page_says_what_its_peak_memory_includes(tmp_path):
    from unlearnkit.benchmarks.results import write_results

    results = fake_results(0, 0.1) | {"resident_mb_before_methods": 487.4}
    markdown = write_results(tmp_path, results, ["method", "peak_mem_mb"], "digits — class forgetting", "unlearnkit bench")
    assert "the process held 487 MB before the first method" in markdown
    assert "held" not in write_results(tmp_path, fake_results(0, 0.1), ["method"], "t", "c")  # no baseline: no note


def test_runs_whose_settings_differ_only_in_their_seed_are_summarised():
    a, b = fake_results(4, 0.1), fake_results(5, 0.3)
    for results in (a, b):
        for run in results["runs"]:
            run["params"] = {"lr": 1e-3, "seed": results["seed"]}
    rows, _ = summary_rows([a, b])
    assert rows[0]["forget_acc"] == "0.2000 ± 0.1000"


def test_a_note_only_some_runs_carry_names_their_seeds(tmp_path):
    """A note of one seed's run (e.g. 'chosen on this split') must not read as true of every seed."""
    first, second = fake_results(4, 0.1), fake_results(5, 0.3)
    first["notes"] = [*first.get("notes", ()), "settings chosen on this split"]
    out = tmp_path / "summary.md"
    assert main(["summarize", "--results", write_folder(tmp_path / "a", first), "--results",
                 write_folder(tmp_path / "b", second), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Note (from the runs) — (seed 4) settings chosen on this split" in text
    assert text.count("Note (from the runs) — a note") == 1

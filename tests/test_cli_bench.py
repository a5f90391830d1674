"""The classifier bench end to end, and the CLI's handling of bad input (exit 2, nothing written)."""

import json
import subprocess
import sys

import pytest

import unlearnkit
from unlearnkit.cli import main


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "digits-class"
    code = main(["bench", "--benchmark", "digits", "--scenario", "class", "--methods", "ssd,gradient_ascent",
                 "--param", "ssd.alpha=1", "--out", str(out)])
    assert code == 0
    return out


def test_bench_writes_results_items_and_markdown(bench_out):
    results = json.loads((bench_out / "results.json").read_text())
    assert results["benchmark"] == "digits" and results["scenario"] == "class" and results["seed"] == 0
    runs = {run["method"]: run for run in results["runs"]}
    assert set(runs) == {"original", "retrain", "ssd", "gradient_ascent"}
    for run in runs.values():
        for key in ("forget_acc", "retain_acc", "test_acc", "forget_test_acc", "mia_efficacy", "mia_auc", "avg_gap"):
            assert 0.0 <= run["metrics"][key] <= 1.0, (run["method"], key)
    assert runs["retrain"]["metrics"]["avg_gap"] == 0.0
    assert runs["original"]["metrics"]["test_acc"] >= 0.95
    assert runs["ssd"]["params"]["alpha"] == 1.0
    assert runs["ssd"]["metrics"]["forget_acc"] < runs["original"]["metrics"]["forget_acc"]
    assert "| ssd |" in (bench_out / "results.md").read_text()
    # the full-data importance depends on the request (retain items, then forget items), so the timed run computes it
    assert runs["ssd"]["info"]["full_importance"] == "computed"
    assert "Note — ssd: the full-training-set importance is taken in the authors' order" in (bench_out / "results.md").read_text()


def test_bench_aggregates_can_be_recomputed_from_items(bench_out):
    results = json.loads((bench_out / "results.json").read_text())
    ssd = next(run for run in results["runs"] if run["method"] == "ssd")
    rows = [json.loads(line) for line in (bench_out / "items" / "ssd.jsonl").read_text().splitlines()]
    for split, key in (("forget", "forget_acc"), ("retain", "retain_acc"), ("test", "test_acc")):
        chosen = [r for r in rows if r["split"] == split]
        assert chosen, split
        accuracy = sum(r["predicted"] == r["label"] for r in chosen) / len(chosen)
        assert accuracy == pytest.approx(ssd["metrics"][key], abs=1e-9)


def test_bench_records_the_pace_its_retraining_time_is_compared_with(bench_out):
    """time_vs_retrain divides by the cached retrain model's training seconds; the run records each reference's
    seconds per step and the recipe's pace timed just before the methods, so that a note can say when they disagree."""
    from unlearnkit.benchmarks.timing import recipe_steps
    from unlearnkit.benchmarks.vision import forget_request, load_vision_benchmark

    results = json.loads((bench_out / "results.json").read_text())
    runs = {run["method"]: run for run in results["runs"]}
    bench = load_vision_benchmark("digits", 0)
    kept = len(bench.train) - len(forget_request(bench, "class").forget)
    pace = results["step_seconds"]
    assert set(pace) == {"original", "retrain", "now"} and pace["now"] > 0
    assert pace["retrain"] == pytest.approx(results["retrain_seconds"] / recipe_steps(bench.recipe, kept))
    assert pace["original"] == pytest.approx(runs["original"]["seconds"] / recipe_steps(bench.recipe, len(bench.train)))


@pytest.mark.parametrize("args, message", [
    (["--methods", "nope"], "Unknown method 'nope'; valid methods:"),
    (["--benchmark", "cifar"], "Unknown benchmark 'cifar'; valid: digits, mnist, facts."),
    (["--scenario", "half"], "Unknown scenario 'half'; valid: random, class"),
    (["--methods", "finetune", "--param", "finetune.lr=0"], "learning rate must be a positive number"),
    (["--methods", "ssd", "--param", "ssd.lr=0.1"], "'ssd' does not use hyper-parameter 'lr' (it takes no optimizer"),
    (["--methods", "gradient_ascent", "--param", "gradient_ascent.epochs=-2"], "epoch count must be a positive"),
    (["--methods", "ssd", "--param", "ssd.nonsense=1"], "has no hyper-parameter 'nonsense'"),
    (["--methods", "ssd", "--param", "ssd.alpha=high"], "not a valid float"),
    (["--methods", "ssd", "--param", "salun.lr=1"], "not in --methods"),
    (["--methods", "ssd", "--retrain-seeds", "1"], "--retrain-seeds applies to the facts benchmark"),
    (["--methods", "ssd", "--split", "forget01"], "--split and --preset apply to the facts benchmark"),
    (["--benchmark", "facts", "--scenario", "class"], "--scenario applies to the image benchmarks"),
    (["--methods", "ssd,ssd"], "Method 'ssd' is named twice in --methods"),
    (["--methods", "ssd", "--param", "ssd.alpha=1", "--param", "ssd.alpha=2"], "--param ssd.alpha is given twice"),
    (["--methods", "ssd", "--seed", "-1"], "--seed must be an integer from 0 to 4294967295, got -1"),
    (["--methods", "salun", "--param", "salun.reset_masked=ture"], "reset_masked='ture' is not a valid bool"),
    (["--methods", "gradient_ascent", "--param", "gradient_ascent.optimizer=sgd", "--param",
      "gradient_ascent.momentum=-1"], "momentum must lie in [0, 1), got momentum=-1.0"),
    (["--benchmark", "facts", "--preset", "tiny", "--lora", ""], "--lora is empty"),
])
def test_bad_bench_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["bench", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_the_model_cache_is_never_an_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "classifiers").mkdir(parents=True)
    assert main(["bench", "--methods", "ssd", "--out", str(tmp_path / "cache"), "--overwrite"]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert (tmp_path / "cache" / "classifiers").is_dir()


def test_existing_output_is_not_overwritten(bench_out, capsys):
    before = (bench_out / "results.json").read_text()
    assert main(["bench", "--methods", "ssd", "--out", str(bench_out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (bench_out / "results.json").read_text() == before


def test_console_script_reports_user_errors_with_status_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "bench", "--methods", "nope", "--out",
                           str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: Unknown method") and "Traceback" not in proc.stderr


def test_methods_command_lists_every_method(capsys):
    assert main(["methods"]) == 0
    rows = [line.split("│") for line in capsys.readouterr().out.splitlines() if line.count("│") >= 2]
    listed = {cells[1].strip() for cells in rows} - {"method", ""}
    assert listed == set(unlearnkit.list_methods())


@pytest.mark.parametrize("args, message", [
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["bench", "--seed", "abc"], "Invalid value for '--seed'"),
    (["forget", "--model", "m"], "Missing option"),
    (["ledger", "show", "abc"], "Invalid value"),
])
def test_command_line_usage_errors_exit_2_with_one_line(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_usage_errors_are_one_line_without_click_installed(capsys, monkeypatch):
    """typer ≥ 0.29 bundles click and does not install it; the usage-error handler imported click itself, so
    where nothing else installed click every usage error became a ModuleNotFoundError traceback."""
    monkeypatch.setitem(sys.modules, "click", None)  # importing click now fails, as when it is not installed
    assert main(["bench", "--seed", "abc"]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for '--seed'" in err and err.startswith("error: ") and err.count("\n") == 1, err

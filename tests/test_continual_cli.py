"""The continual commands end to end through typer's CliRunner."""

import json

import typer
from typer.testing import CliRunner

from unlearnkit.continual.cli import register

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_continual_writes_results_table_and_heatmap(tmp_path):
    out = tmp_path / "run"
    args = ["continual", "--scenario", "split-digits", "--strategy", "ewc", "--stream", "learn:0,learn:1,unlearn:0,learn:2",
            "--param", "epochs=2", "--out", str(out)]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert (data["scenario"], data["strategy"], data["seed"]) == ("split-digits", "ewc", 0)
    assert set(data["metrics"]) >= {"avg_acc", "bwt", "fwt", "forgetting_last", "forgetting_max", "relapse", "spillover"}
    steps = data["steps"]
    assert [s["action"] for s in steps] == ["learn", "learn", "unlearn", "learn"]
    assert set(steps[2]) >= {"index", "action", "task", "seconds", "accuracy", "retrain_gap", "retrain_output_kl"}
    assert steps[2]["retrain_gap"] is not None and steps[2]["retrain_output_kl"] >= 0
    assert steps[0]["retrain_gap"] is None
    assert set(steps[0]["accuracy"]) == {"0", "1", "2", "3", "4"}
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "accuracy.csv").read_text().splitlines()[0].startswith("step,token,task_0")

    again = runner.invoke(_app(), args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert runner.invoke(_app(), args + ["--overwrite"]).exit_code == 0


def test_bad_input_exits_2_with_one_sentence_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    for extra, message in (
        (["--stream", "learn:0,unlearn:2"], "not learned"),
        (["--stream", "learn:0,forget:0"], "token 2"),
        (["--strategy", "ewk"], "Unknown strategy"),
        (["--scenario", "split-cifar"], "Unknown scenario"),
        (["--param", "epochs"], "NAME=VALUE"),
        (["--scenario", "permuted-digits", "--scenario-param", "num_tasks=0"], "num_tasks must be a whole number ≥ 1"),
        (["--scenario", "permuted-digits", "--scenario-param", "num_tasks=1.5"], "num_tasks must be a whole number"),
        (["--scenario", "scole", "--scenario-param", "classes_per_task=11"], "classes_per_task must be"),
        (["--scenario", "scole", "--scenario-param", "colour=red"], "has no option 'colour'; valid: num_tasks"),
        (["--scenario", "split-digits", "--scenario-param", "num_tasks=3"], "has no option 'num_tasks'."),
        (["--scenario", "clofai", "--data", str(tmp_path), "--scenario-param", "image_size=0"], "image_size must be"),
        (["--scenario", "clofai", "--data", str(tmp_path), "--scenario-param", "test_fraction=1.5"], "test_fraction"),
    ):
        result = runner.invoke(_app(), ["continual", "--out", str(out / "deeper"), *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not out.exists()  # not even the parent folder


def test_sweep_writes_a_markdown_page(tmp_path):
    page = tmp_path / "continual.md"
    args = ["continual-sweep", "--strategies", "naive,acu", "--stream", "learn:0,learn:1,unlearn:0", "--seeds", "0",
            "--no-acu-cost", "--out", str(page)]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "| naive | amnesiac |" in text and "| acu | acu |" in text
    assert "split-digits, with unlearning" in text

"""Method cards are generated from the registry and quote bench numbers exactly."""

import json

import pytest

from unlearnkit.cli import main


def test_cards_quote_the_bench_numbers(tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    run = {"method": "npo", "seconds": 2.0, "retrain_seconds": 40.0, "status": "ok",
           "metrics": {"forget_quality": 0.0123, "model_utility": 0.456},
           "params": {"beta": 0.1, "epochs": 4, "full_importance": "/cache/x/importance.safetensors"}}
    (bench / "results.json").write_text(json.dumps({"benchmark": "facts", "split": "forget10", "runs": [run]}))
    assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 0
    text = (tmp_path / "cards" / "npo.md").read_text()
    assert "Negative Preference Optimization" in text and "reference_model, retain" in text
    # the settings column names only what departs from the card's defaults (beta 0.1 is npo's default)
    assert ("| facts forget10 | epochs=4 | forget_quality 0.0123, model_utility 0.456 | 2.00 s (0.050 of retraining) "
            "| ok |") in text
    assert "Not yet part of a committed bench run." in (tmp_path / "cards" / "ssd.md").read_text()
    assert "[npo](npo.md)" in (tmp_path / "cards" / "README.md").read_text()


def test_cards_refuse_a_folder_without_results(tmp_path, capsys):
    assert main(["cards", "--results", str(tmp_path), "--out", str(tmp_path / "cards")]) == 2
    assert "holds no results.json" in capsys.readouterr().err
    assert not (tmp_path / "cards").exists()


def test_cards_refuse_malformed_results_before_writing_any_card(tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    for text, message in (("{not json", "is not a results.json written by 'unlearnkit bench'"),
                          (json.dumps({"runs": [{"method": "npo", "seconds": 1.0}]}), "needs a list of runs, each with a method, metrics and seconds")):
        (bench / "results.json").write_text(text)
        assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "cards").exists()


def test_cards_never_land_among_other_files(tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    runs = [classifier_run("ssd", 0.5, reference=False, epochs=1)]
    (bench / "results.json").write_text(json.dumps({"benchmark": "digits", "scenario": "class", "runs": runs}))
    assert main(["cards", "--results", str(bench), "--out", str(bench)]) == 2  # the bench output itself
    assert "holds the input" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["cards", "--results", str(bench), "--out", str(other)]) == 2
    assert "holds notes.txt, which 'unlearnkit cards' did not write" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 0
    assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards"), "--overwrite"]) == 0  # earlier cards are replaced


def test_cards_never_replace_a_hand_written_readme_or_card(tmp_path, capsys):
    """Only the cards index (README.md starting "# Method cards") and ``<name>.md`` cards may be replaced."""
    for name, text in (("README.md", "# Our team's docs — hand written\n"), ("npo.md", "# NPO notes\n"),
                       ("README.md", "# Method cards, annotated by hand\n")):
        out = tmp_path / f"mixed-{name}-{len(text)}"
        out.mkdir()
        (out / name).write_text(text)
        assert main(["cards", "--out", str(out)]) == 2
        assert f"holds {name}, which 'unlearnkit cards' did not write" in capsys.readouterr().err
        assert [(p.name, p.read_text()) for p in out.iterdir()] == [(name, text)]


def test_cards_remove_stale_cards_of_methods_no_longer_registered(tmp_path, capsys):
    out = tmp_path / "cards"
    assert main(["cards", "--out", str(out)]) == 0
    (out / "gone.md").write_text("# `gone` — A method since removed.\n")
    (out / ".keep").write_text("")
    assert main(["cards", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "gone.md").exists() and (out / ".keep").exists() and (out / "npo.md").exists()


@pytest.mark.parametrize("field, value", [
    ("metrics", []), ("seconds", [1.2]), ("seconds", "1.2"), ("retrain_seconds", "1.2"), ("params", [1]), ("method", 3),
])
def test_cards_refuse_results_fields_of_the_wrong_type(tmp_path, capsys, field, value):
    run = classifier_run("ssd", 0.5, reference=False, epochs=1)
    run[field] = value
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "results.json").write_text(json.dumps({"benchmark": "digits", "scenario": "class", "runs": [run]}))
    assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 2
    err = capsys.readouterr().err
    assert str(bench / "results.json") in err and f"the {field} of run 1 is not" in err
    assert not (tmp_path / "cards").exists()


@pytest.mark.parametrize("config", ["tiny", [1]])
def test_cards_refuse_a_config_that_is_not_a_mapping(tmp_path, capsys, config):
    # an AttributeError traceback before ('str' object has no attribute 'get')
    bench = tmp_path / "bench"
    bench.mkdir()
    results = {"benchmark": "digits", "scenario": "class", "config": config,
               "runs": [classifier_run("ssd", 0.5, reference=False, epochs=1)]}
    (bench / "results.json").write_text(json.dumps(results))
    assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 2
    assert "its config is not a mapping of settings" in capsys.readouterr().err
    assert not (tmp_path / "cards").exists()


def test_cards_quote_a_metric_the_bench_could_not_measure(tmp_path, capsys):
    """The bench writes NaN (JSON ``NaN``) for a metric it could not compute, as out/facts-forget10 holds."""
    bench = tmp_path / "bench"
    bench.mkdir()
    run = classifier_run("ssd", float("nan"), reference=False, epochs=1)
    (bench / "results.json").write_text(json.dumps({"benchmark": "digits", "scenario": "class", "runs": [run]}))
    assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 0
    assert "forget_acc —, retain_acc 1" in (tmp_path / "cards" / "ssd.md").read_text()  # as the results pages show it


@pytest.mark.parametrize("value", [None, "0.5", True])
def test_cards_leave_out_a_metric_that_holds_no_number(tmp_path, value):
    # as summarize leaves it out of its cell (it used to be a TypeError)
    bench = tmp_path / "bench"
    bench.mkdir()
    run = classifier_run("finetune", value, reference=False, epochs=1)
    (bench / "results.json").write_text(json.dumps({"benchmark": "digits", "scenario": "class", "runs": [run]}))
    assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 0
    assert "| epochs=1, lr=0.002 | retain_acc 1, test_acc 0.975" in (tmp_path / "cards" / "finetune.md").read_text()


def classifier_run(method, forget_acc, *, reference, epochs):
    return {"method": method, "reference": reference, "seconds": 1.2, "retrain_seconds": 1.2, "status": "ok",
            "params": {"epochs": epochs, "lr": 0.002},
            "metrics": {"forget_acc": forget_acc, "retain_acc": 1.0, "test_acc": 0.975, "mia_efficacy": 1.0,
                        "avg_gap": 0.222 if not reference else 0.0, "mia_auc": 0.6}}


def test_retrain_card_quotes_a_run_of_the_method_before_the_bench_reference(tmp_path, capsys):
    """The bench's gold row is named ``retrain`` too; a real run of the method is stored as ``retrain_method``."""
    both, reference_only = tmp_path / "both", tmp_path / "reference_only"
    for folder, scenario, runs in (
        (both, "class", [classifier_run("retrain", 0.0, reference=True, epochs=8),
                            classifier_run("retrain_method", 0.111, reference=False, epochs=3)]),
        (reference_only, "random", [classifier_run("retrain", 0.993, reference=True, epochs=8)]),
    ):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"benchmark": "digits", "scenario": scenario, "runs": runs}))
    assert main(["cards", "--results", str(both), "--results", str(reference_only), "--out", str(tmp_path / "cards")]) == 0
    lines = [l for l in (tmp_path / "cards" / "retrain.md").read_text().splitlines() if l.startswith("| digits")]
    # the classifier metrics of CARD_METRICS, in order, and mia_auc (not one of them) left out
    assert lines == [
        "| digits class | epochs=3 | forget_acc 0.111, retain_acc 1, test_acc 0.975, mia_efficacy 1, "
        "avg_gap 0.222 | 1.20 s (1.000 of retraining) | ok |",
        "| digits random | bench reference (trained by the bench, not the method): epochs=8 | forget_acc 0.993, "
        "retain_acc 1, test_acc 0.975, mia_efficacy 1, avg_gap 0 | 1.20 s (1.000 of retraining) | ok |",
    ]


def test_cards_tell_runs_of_one_bench_apart_and_refuse_a_folder_given_twice(tmp_path, capsys):
    """Two seeds (or a scratch and a pretrained-base run) of one bench gave rows labelled alike, and one folder given
    twice (``s4`` and ``s4/``) quoted every row twice."""
    runs = [classifier_run("retrain", 0.0, reference=True, epochs=8)]
    folders = []
    for name, results in (("seed0", {"seed": 0}), ("seed4", {"seed": 4}),
                          ("smollm2", {"seed": 0, "config": {"base": "smollm2"}})):
        folders.append(tmp_path / name)
        folders[-1].mkdir()
        (folders[-1] / "results.json").write_text(json.dumps({"benchmark": "digits", "scenario": "class", "runs": runs,
                                                              **results}))
    assert main(["cards", *[f"--results={f}" for f in folders], "--out", str(tmp_path / "cards")]) == 0
    labels = [line.split(" | ")[0] for line in (tmp_path / "cards" / "retrain.md").read_text().splitlines()
              if line.startswith("| digits")]
    assert labels == ["| digits class", "| digits class, seed 4", "| digits (smollm2 base) class"]
    capsys.readouterr()
    assert main(["cards", "--results", str(folders[0]), "--results", f"{folders[0]}/", "--out", str(tmp_path / "again")]) == 2
    assert "is given twice (the same folder)" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()

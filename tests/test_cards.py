"""Method cards are generated from the registry and quote bench numbers exactly."""

import json

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
    for text, message in (("{not json", "is not valid JSON"),
                          (json.dumps({"runs": [{"method": "npo", "seconds": 1.0}]}), "every run needs")):
        (bench / "results.json").write_text(text)
        assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "cards").exists()


def test_cards_never_land_among_other_files(tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "results.json").write_text(json.dumps({"benchmark": "digits", "scenario": "class", "runs": []}))
    assert main(["cards", "--results", str(bench), "--out", str(bench)]) == 2  # the bench output itself
    assert "holds the input" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["cards", "--results", str(bench), "--out", str(other)]) == 2
    assert "holds files that are not cards (e.g. notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 0
    assert main(["cards", "--results", str(bench), "--out", str(tmp_path / "cards")]) == 0  # earlier cards are replaced

"""Selecting the facts bench's settings on a held-out world: the rules, the run, and the CLI's refusals."""

import pytest

from unlearnkit.benchmarks.facts import FactsConfig
from unlearnkit.benchmarks.selection import select_facts_settings, widest_run_centre, write_selection
from unlearnkit.cli import main


@pytest.mark.parametrize("passing, centre", [
    ([False, True, True, True, False, True], 6),       # the run 4..8 beats the single 12
    ([True, True, False, True, True, True, True], 10),  # the 4-long run 8..14: its lower centre
    ([True, True, False, True, True], 2),               # equal runs: the earlier (cheaper) one
    ([False, False, False], None),
])
def test_widest_run_centre(passing, centre):
    values = [2 * (i + 1) for i in range(len(passing))]
    assert widest_run_centre(values, passing) == centre


def test_selection_scores_every_candidate_and_applies_both_rules(tmp_path):
    config = FactsConfig.tiny(seed=1)
    chosen, rows = select_facts_settings(config, "forget10", rmu_epochs=(1, 2), sam_rhos=(0.1, 0.5), log=lambda _: None)
    assert [(r["method"], r.get("epochs"), r.get("sam_rho")) for r in rows] == [
        ("rmu", 1, None), ("rmu", 2, None), ("sam_npo", None, 0.1), ("sam_npo", None, 0.5)]
    sam = rows[2:]
    assert chosen["sam_npo"]["sam_rho"] == min(sam, key=lambda r: r["relearn_recovery"])["sam_rho"]
    holding = [r["epochs"] for r in rows[:2] if r["forget_quality"] >= 0.3]
    assert chosen.get("rmu", {}).get("epochs") == (holding[0] if holding else None)
    for row in rows:
        assert 0 <= row["forget_quality"] <= 1 and row["utility_vs_retain"] > 0 and row["time_vs_retrain"] > 0
    out = tmp_path / "selection.md"
    write_selection(out, config, "forget10", chosen, rows, "unlearnkit select-facts --preset tiny")
    text = out.read_text()
    assert "world seed 1" in text and text.count("\n| rmu |") == 2 and text.count("\n| sam_npo |") == 2


@pytest.mark.parametrize("args, message", [
    (["--seed", "0"], "another world"),
    (["--split", "forget33"], "Unknown forget split"),
])
def test_select_facts_refuses_bad_input_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "selection.md"
    assert main(["select-facts", "--preset", "tiny", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_bench_uses_the_settings_the_published_selection_chose():
    from pathlib import Path

    from unlearnkit.benchmarks.lm_bench import FACTS_METHOD_SETTINGS

    text = (Path(__file__).parents[1] / "docs" / "results" / "facts-selection.md").read_text()
    chosen = next(line for line in text.splitlines() if line.startswith("Chosen: "))
    published = {}
    for part in chosen.removeprefix("Chosen: ").split("; "):
        method, setting = part.split(" ", 1)
        name, value = setting.split("=")
        published[method] = {name: float(value)}
    assert published == {m: {k: float(v) for k, v in s.items()} for m, s in FACTS_METHOD_SETTINGS.items()}

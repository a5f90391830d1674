"""Selecting the facts bench's settings on a held-out world: the rules, the run, and the CLI's refusals."""

import pytest

from unlearnkit.benchmarks.facts import FactsConfig
from unlearnkit.benchmarks.selection import select_facts_settings, widest_run_centre, write_selection
from unlearnkit.cli import main
from unlearnkit.errors import UserInputError


@pytest.mark.parametrize("passing, centre", [
    ([False, True, True, True, False, True], 6),       # the run 4..8 beats the single 12
    ([True, True, False, True, True, True, True], 10),  # the 4-long run 8..14: its lower centre
    ([True, True, False, True, True], 2),               # equal runs: the earlier (cheaper) one
    ([False, False, False], None),
])
def test_widest_run_centre(passing, centre):
    values = [2 * (i + 1) for i in range(len(passing))]
    assert widest_run_centre(values, passing) == centre


def test_selection_scores_every_candidate_and_applies_both_rules(tmp_path, monkeypatch):
    import unlearnkit.benchmarks.selection as selection
    from unlearnkit.benchmarks.lm_bench import bench_relearn_settings

    config = FactsConfig.tiny(seed=1)
    attacked_with = []
    real_attacks = selection.run_attacks
    monkeypatch.setattr(selection, "run_attacks",
                        lambda *a, **k: attacked_with.append(k.get("relearn_settings")) or real_attacks(*a, **k))
    chosen, rows = select_facts_settings(config, "forget10", rmu_epochs=(1, 2), sam_rhos=(0.1, 0.5), npo_lrs=(0.01,),
                                         npo_seeds=(0, 1), log=lambda _: None)
    assert [(r["method"], r.get("epochs"), r.get("sam_rho"), r.get("lr"), r.get("seed")) for r in rows] == [
        ("rmu", 1, None, None, None), ("rmu", 2, None, None, None), ("sam_npo", None, 0.1, None, None),
        ("sam_npo", None, 0.5, None, None), ("npo", None, None, 0.01, 0), ("npo", None, None, 0.01, 1)]
    assert chosen["npo"] == {**selection.NPO_RECIPE, "lr": 0.01}
    for row in rows:
        assert 0 <= row["forget_quality"] <= 1 and row["utility_vs_retain"] > 0 and row["time_vs_retrain"] > 0
    out = tmp_path / "selection.md"
    write_selection(out, config, "forget10", chosen, rows, "unlearnkit select-facts --preset tiny")
    text = out.read_text()
    assert "world seed 1 (forget10, 12 people)" in text
    assert text.count("\n| rmu |") == 2 and text.count("\n| sam_npo |") == 2 and text.count("\n| npo |") == 2
    # sam_npo's ρ is ranked under the relearning attack the bench reports, not the generic default
    assert attacked_with and all(s == bench_relearn_settings(config) for s in attacked_with)


def test_the_rules_pick_the_widest_passing_run_and_the_lowest_defined_recovery(monkeypatch):
    from unlearnkit.benchmarks import selection

    fqs = {6: 0.01, 8: 0.4, 10: 0.35, 12: 0.02, 14: 0.5}
    recoveries = {0.1: float("nan"), 0.2: 0.3, 0.5: 0.09, 1.0: float("nan")}  # nan: too little forgetting to measure

    # npo (two seeds each): 0.004 forgets little (0.2 / 0.5 = 0.4), 0.01 forgets but costs utility
    # (0.85 / 0.97 = 0.876), 0.006 is nearest the bar (min(0.9, 0.96) = 0.9)
    npo = {(0.004, 0): (0.1, 1.0), (0.004, 1): (0.3, 1.0), (0.006, 0): (0.3, 0.95), (0.006, 1): (0.6, 0.91),
           (0.01, 0): (0.9, 0.8), (0.01, 1): (0.7, 0.9)}

    def fake_scores(config, split, method, setting, candidates, seeds=(None,), **_):
        if method == "rmu":
            return [{"method": method, setting: c, "forget_quality": fqs[c]} for c in candidates]
        if method == "npo":
            return [{"method": method, setting: c, "seed": s, "forget_quality": npo[c, s][0],
                     "utility_vs_retain": npo[c, s][1]} for c in candidates for s in seeds]
        return [{"method": method, setting: c, "relearn_recovery": recoveries[c]} for c in candidates]

    monkeypatch.setattr(selection, "score_candidates", fake_scores)
    chosen, _ = select_facts_settings(FactsConfig.tiny(seed=1), rmu_epochs=tuple(fqs), sam_rhos=tuple(recoveries),
                                      npo_lrs=(0.004, 0.006, 0.01), npo_seeds=(0, 1))
    assert chosen == {"rmu": {"epochs": 8}, "sam_npo": {"sam_rho": 0.5}, "npo": {**selection.NPO_RECIPE, "lr": 0.006}}
    recoveries.update({0.2: float("nan"), 0.5: float("nan")})
    fqs.update({8: 0.1, 10: 0.1, 14: 0.1})
    chosen, _ = select_facts_settings(FactsConfig.tiny(seed=1), rmu_epochs=tuple(fqs), sam_rhos=tuple(recoveries),
                                      npo_lrs=())
    assert chosen == {}  # nothing qualifies: the generic defaults stay
    with pytest.raises(UserInputError, match="another world"):
        select_facts_settings(FactsConfig.tiny(seed=0))


@pytest.mark.parametrize("args, message", [
    (["--seed", "0"], "another world"),
    (["--split", "forget33"], "Unknown forget split"),
    (["--seed=-1"], "--seed must be an integer from 0"),
    (["--seed", "99999999999999999999"], "--seed must be an integer from 0"),
])
def test_select_facts_refuses_bad_input_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "selection.md"
    assert main(["select-facts", "--preset", "tiny", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_select_facts_and_images_refuse_an_output_inside_the_bench_cache(capsys):
    """With --overwrite, an --out inside the cache could replace a cached model the selection then reads."""
    from unlearnkit.benchmarks.cache import cache_root

    out = cache_root() / "selection.md"
    for command in (["select-facts", "--preset", "tiny"], ["select-images"]):
        assert main([*command, "--out", str(out), "--overwrite"]) == 2
        assert "lies inside the input folder" in capsys.readouterr().err
    assert not out.exists()


def test_an_output_inside_a_cache_not_yet_made_is_refused(tmp_path, monkeypatch, capsys):
    """The bench creates its cache: an --out inside it passed the check, then replaced the models just trained."""
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "new-cache"))
    out = tmp_path / "new-cache" / "classifier"
    assert main(["bench", "--benchmark", "digits", "--methods", "finetune", "--out", str(out), "--overwrite"]) == 2
    assert "lies inside the input folder" in capsys.readouterr().err
    assert not (tmp_path / "new-cache").exists()


def test_the_bench_uses_the_settings_the_published_selection_chose():
    from pathlib import Path

    from unlearnkit.benchmarks.lm_bench import FACTS_METHOD_SETTINGS

    text = (Path(__file__).parents[1] / "docs" / "results" / "facts-selection.md").read_text()
    chosen = next(line for line in text.splitlines() if line.startswith("Chosen: "))
    published = {}
    for part in filter(None, chosen.removeprefix("Chosen: ").split("; ")):  # empty when nothing qualified
        method, settings = part.split(" ", 1)
        published[method] = dict(setting.split("=") for setting in settings.split(", "))
    assert published == {m: {k: str(v) for k, v in s.items()} for m, s in FACTS_METHOD_SETTINGS.items()}


def test_a_candidate_with_a_nan_metric_is_never_the_closest_to_the_target():
    from unlearnkit.benchmarks.selection import closest_to_target

    rows = [{"lr": 1, "forget_quality": float("nan"), "utility_vs_retain": 1.0},
            {"lr": 2, "forget_quality": 0.2, "utility_vs_retain": 0.9}]
    assert closest_to_target(rows, "lr") == 2
    assert closest_to_target(rows[:1], "lr") is None

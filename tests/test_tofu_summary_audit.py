"""Audit of `unlearnkit summarize` (benchmarks/results.py) and the TOFU-format reader/export (benchmarks/tofu_format.py):
bad input is one sentence with nothing written, and the numbers of a summary are those of the runs behind them."""

from __future__ import annotations

import json

import pytest

from unlearnkit.benchmarks.results import summary_rows
from unlearnkit.benchmarks.tofu_format import read_tofu_dir, read_tofu_file, tofu_request
from unlearnkit.cli import main
from unlearnkit.errors import UserInputError


def bench(seed: int, value: float, **extra) -> dict:
    """A results.json of a one-method bench run with ``seed``, its metric ``forget_acc`` = ``value``."""
    runs = [{"method": "ssd", "metrics": {"forget_acc": value}, "seconds": 1.0, "retrain_seconds": 2.0, "status": "ok"}]
    return {"benchmark": "digits", "scenario": "class", "seed": seed, "runs": runs, **extra}


def summarize(tmp_path, *results, raw: dict[int, str] | None = None) -> tuple[int, str]:
    """Run `unlearnkit summarize` over ``results`` (each written to its own folder; ``raw`` replaces a file's text):
    the exit status and the page (empty when none was written)."""
    folders = []
    for index, result in enumerate(results):
        folder = tmp_path / f"run{index}"
        folder.mkdir()
        text = (raw or {}).get(index)
        (folder / "results.json").write_text(json.dumps(result) if text is None else text, encoding="utf-8")
        folders += ["--results", str(folder)]
    out = tmp_path / "summary.md"
    code = main(["summarize", *folders, "--out", str(out)])
    return code, out.read_text(encoding="utf-8") if out.exists() else ""


def refused(tmp_path, capsys, *results, raw=None) -> str:
    """The one-line error of a summarize that must be refused with status 2, having written nothing."""
    code, page = summarize(tmp_path, *results, raw=raw)
    err = capsys.readouterr().err
    assert code == 2 and page == "", err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------- summarize: bad input
def test_untimed_runs_are_summarised_not_a_traceback(tmp_path):
    """A run's seconds may be null (RUN_FIELDS allows it: an untimed run); flat_rows divided None by the retraining
    time and summarize crashed with a TypeError."""
    first, second = bench(1, 0.1), bench(2, 0.3)
    for results in (first, second):
        results["runs"][0]["seconds"] = None
    code, page = summarize(tmp_path, first, second)
    assert code == 0
    assert "| ssd | 0.2000 ± 0.1000 |" in page and "time_vs_retrain" not in page


def test_results_naming_no_benchmark_are_refused_in_one_sentence(tmp_path, capsys):
    """Both files without a benchmark name passed every check and the page title raised KeyError: 'benchmark'."""
    first, second = bench(1, 0.1), bench(2, 0.3)
    del first["benchmark"], second["benchmark"]
    assert "name no benchmark" in refused(tmp_path, capsys, first, second)


@pytest.mark.parametrize("field, value, message", [
    ("seed", [1], "its seed is not a whole number"),  # was: TypeError: unhashable type: 'list'
    ("seed", "1", "its seed is not a whole number"),  # was: a page "over seeds 1, 1" (the number 1 and the text "1")
    ("notes", [{"text": "x"}], "its notes is not a list of texts"),  # was: TypeError: unhashable type: 'dict'
])
def test_malformed_top_level_fields_are_refused_naming_the_file(tmp_path, capsys, field, value, message):
    first, second = bench(1, 0.1), bench(2, 0.3)
    second[field] = value
    err = refused(tmp_path, capsys, first, second)
    assert message in err and "run1/results.json" in err


def test_notes_given_as_one_text_are_refused_not_spelled_out_letter_by_letter(tmp_path, capsys):
    first, second = bench(1, 0.1, notes="chosen on this split"), bench(2, 0.3, notes="chosen on this split")
    assert "its notes is not a list of texts" in refused(tmp_path, capsys, first, second)


def test_results_nested_too_deeply_are_refused_in_one_sentence(tmp_path, capsys):
    """json.loads raised RecursionError (a traceback) on a deeply nested results.json."""
    err = refused(tmp_path, capsys, bench(1, 0.1), bench(2, 0.3), raw={1: "[" * 100_000})
    assert "nested too deeply" in err


def test_an_unreadable_results_file_is_refused_in_one_sentence(tmp_path, monkeypatch):
    """A results.json that cannot be read (no permission; tests run as root, so the error is simulated) raised
    PermissionError, a traceback."""
    from pathlib import Path

    from unlearnkit.benchmarks.results import read_bench_results

    path = tmp_path / "results.json"
    path.write_text(json.dumps(bench(1, 0.1)))

    def unreadable(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", unreadable)
    with pytest.raises(UserInputError, match="results.json cannot be read \\(Permission denied\\)"):
        read_bench_results(path)


def test_results_without_a_seed_are_refused_naming_the_file(tmp_path, capsys):
    """evaluate's results.json has seed null: two of them were refused as 'the same seed (None, None)', and one next
    to a bench run was summarised as a seed 'None'."""
    evaluated = {**bench(1, 0.1), "seed": None}
    err = refused(tmp_path, capsys, bench(2, 0.3), evaluated)
    assert "run1/results.json names no seed" in err


def test_the_same_folder_given_twice_is_named(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(bench(1, 0.1)))
    assert main(["summarize", "--results", str(folder), "--results", str(tmp_path / "." / "run"),
                 "--out", str(tmp_path / "s.md")]) == 2
    assert "is given twice" in capsys.readouterr().err and not (tmp_path / "s.md").exists()


# ---------------------------------------------------------------------------- summarize: the numbers
def test_runs_with_different_attacks_or_attack_settings_are_not_averaged(tmp_path, capsys):
    """A facts bench run with --attacks relearn and one without, or relearning attacks of 50 and 200 steps, were
    averaged into one mean ± std as if they were the same bench."""
    relearn = {"steps": 50, "lr": 3e-4, "batch_size": 8}
    with pytest.raises(UserInputError, match="differ in attacks"):
        summary_rows([bench(1, 0.1, attacks=["relearn"], relearn={**relearn, "seed": 1}), bench(2, 0.3, attacks=[])])
    with pytest.raises(UserInputError, match="relearn setting steps \\(50 and 200\\)"):
        summary_rows([bench(1, 0.1, attacks=["relearn"], relearn={**relearn, "seed": 1}),
                      bench(2, 0.3, attacks=["relearn"], relearn={**relearn, "steps": 200, "seed": 2})])
    # the attack's seed follows the run's seed: that difference is what a summary is over
    rows, _ = summary_rows([bench(1, 0.1, attacks=["relearn"], relearn={**relearn, "seed": 1}),
                            bench(2, 0.3, attacks=["relearn"], relearn={**relearn, "seed": 2})])
    assert rows[0]["forget_acc"] == "0.2000 ± 0.1000"


def test_runs_of_different_bench_configs_are_not_averaged():
    config = {"people": 200, "templates": 10, "seed": 0}
    with pytest.raises(UserInputError, match="config setting people \\(200 and 12\\)"):
        summary_rows([bench(1, 0.1, config=config), bench(2, 0.3, config={**config, "people": 12, "seed": 2})])
    rows, _ = summary_rows([bench(1, 0.1, config=config), bench(2, 0.3, config={**config, "seed": 2})])
    assert rows[0]["forget_acc"] == "0.2000 ± 0.1000"


def test_a_cell_of_one_value_has_no_std_and_names_its_seed():
    """A metric only one seed's run holds was shown as 'value ± 0.0000', a spread of zero that was never measured,
    under a header claiming every cell is over all the seeds."""
    first, second, third = bench(1, 0.1), bench(2, 0.3), bench(3, 0.5)
    first["runs"][0]["metrics"]["relearn_recovery"] = 0.2
    second["runs"][0]["metrics"]["relearn_recovery"] = 0.4
    third["runs"][0]["metrics"]["in_context_recovery"] = 0.7
    rows, columns = summary_rows([first, second, third])
    assert rows[0]["forget_acc"] == "0.3000 ± 0.1633"
    assert rows[0]["relearn_recovery"] == "0.3000 ± 0.1000 (seeds 1, 2 only)"
    assert rows[0]["in_context_recovery"] == "0.7000 (seed 3 only)"


def test_a_run_that_did_not_end_ok_is_flagged_in_the_summary(tmp_path):
    """The bench pages show each run's status; the summary dropped it, averaging a diverged run with sound ones
    without a word."""
    first, second = bench(1, 0.1), bench(2, 0.3)
    first["runs"][0]["status"] = "diverged"
    code, page = summarize(tmp_path, first, second)
    assert code == 0
    assert "| method | forget_acc | seconds | time_vs_retrain | status |" in page
    assert "| diverged (seed 1); ok (seed 2) |" in page
    rows, columns = summary_rows([bench(1, 0.1), bench(2, 0.3)])
    assert "status" not in columns and "status" not in rows[0]  # all ok: no column, as before


# ---------------------------------------------------------------------------- the TOFU reader
def _line(question: str = "q", answer: str = "a", **fields) -> str:
    """One JSON line of a TOFU file (non-ASCII written as is, as the export writes it)."""
    return json.dumps({"question": question, "answer": answer, **fields}, ensure_ascii=False) + "\n"


def test_a_json_lines_error_names_the_files_line(tmp_path):
    path = tmp_path / "forget10.json"
    path.write_text(_line() + "\n" + _line() + '{"question": "q",\n')
    with pytest.raises(UserInputError, match="at line 4"):  # was 'at line 1': each line's own numbering
        read_tofu_file(path)


def test_text_with_unicode_line_separators_reads_back(tmp_path):
    """JSON lines written with ensure_ascii=False (as the export writes them) hold U+2028 and U+0085 unescaped; the
    reader split lines with str.splitlines, which breaks at those, and refused the file as invalid JSON."""
    path = tmp_path / "retain90.json"
    path.write_text(_line(question="first\u2028line") + _line(answer="next\x85line"), encoding="utf-8")
    assert [item["question"] for item in read_tofu_file(path)] == ["first\u2028line", "q"]


def test_a_byte_order_mark_is_read_past(tmp_path):
    path = tmp_path / "forget10.json"
    path.write_bytes(b"\xef\xbb\xbf" + _line().encode())
    assert read_tofu_file(path) == [{"question": "q", "answer": "a"}]  # was: 'Unexpected UTF-8 BOM'


def test_a_split_in_both_json_and_jsonl_is_refused(tmp_path):
    """read_tofu_dir kept the .jsonl file's items and tofu_request the .json file's, silently, for the same split."""
    (tmp_path / "forget10.json").write_text(_line(question="one"))
    (tmp_path / "forget10.jsonl").write_text(_line(question="two"))
    (tmp_path / "retain90.json").write_text(_line(question="three"))
    for read in (read_tofu_dir, tofu_request):
        with pytest.raises(UserInputError, match="holds both forget10.json and forget10.jsonl"):
            read(tmp_path)


def test_an_item_both_forgotten_and_retained_is_refused(tmp_path):
    """A retain file holding a forget item (e.g. full.json saved as retain90.json) made a request that both forgets
    and retains the same question."""
    (tmp_path / "forget10.json").write_text(_line(question="gone"))
    (tmp_path / "retain90.json").write_text(_line(question="kept") + _line(question="gone"))
    with pytest.raises(UserInputError, match="Record 2 of .*retain90.json is also an item of forget10.json"):
        tofu_request(tmp_path)
    (tmp_path / "retain90.json").write_text(_line(question="kept", id="a") + _line(question="kept too", id="b"))
    (tmp_path / "forget10.json").write_text(_line(question="gone", id="b"))
    with pytest.raises(UserInputError, match="the same id"):
        tofu_request(tmp_path)
    (tmp_path / "forget10.json").write_text(_line(question="gone", id="c"))
    assert len(tofu_request(tmp_path).forget) == 1


# ---------------------------------------------------------------------------- TOFU export (checked sound)
def test_export_files_follow_tofus_fields_and_keep_splits_apart():
    """Guard for what the audit found sound: TOFU's file names and fields, and no item of a forget split in its
    retain split, the retain_perturbed set or the holdout (data only, no model is trained)."""
    from unlearnkit.benchmarks.facts import FactsConfig, load_facts
    from unlearnkit.benchmarks.tofu_format import facts_tofu_files

    files = {name: [json.loads(line) for line in text.splitlines()]
             for name, text in facts_tofu_files(load_facts(FactsConfig.tiny())).items()}
    tofu = {"full", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90", "holdout01", "holdout05",
            "holdout10", "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
            "world_facts_perturbed"}
    assert tofu <= {name.removesuffix(".json") for name in files}
    for name, items in files.items():
        fields = {"question", "answer"} | ({"paraphrased_answer", "perturbed_answer"} if "_perturbed" in name else set())
        assert all(fields <= set(item) for item in items), name
    ids = {name: {item["id"] for item in items} for name, items in files.items()}
    for forget, retain in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
        assert ids[f"{forget}.json"] and not ids[f"{forget}.json"] & ids[f"{retain}.json"]
        assert ids[f"{forget}.json"] == ids[f"{forget}_perturbed.json"]
        assert ids[f"{forget}.json"] | ids[f"{retain}.json"] <= ids["full.json"]
    assert not ids["forget10.json"] & ids["retain_perturbed.json"]
    assert not ids["holdout10.json"] & ids["full.json"]


def test_evaluate_refuses_a_split_in_both_json_and_jsonl(tmp_path):
    """evaluate's reader took the .json file of a split silently when a .jsonl of it was there too."""
    from unlearnkit.benchmarks.lm_bench import tofu_evaluation_splits

    (tmp_path / "forget10_perturbed.json").write_text(_line(question="one"))
    (tmp_path / "forget10_perturbed.jsonl").write_text(_line(question="two"))
    with pytest.raises(UserInputError, match="holds both forget10_perturbed.json and forget10_perturbed.jsonl"):
        tofu_evaluation_splits(tmp_path, "forget10")

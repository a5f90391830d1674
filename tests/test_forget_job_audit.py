"""Atomic outputs and data-file reading: the failure paths found by the forget-job audit."""

import os
import subprocess
import sys

import pytest

from unlearnkit.errors import UserInputError
from unlearnkit.io import atomic_dir
from unlearnkit.userdata import read_records


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_a_killed_run_are_removed_by_the_next_one(tmp_path):
    """A kill leaves .out.tmp-HOST-PID-* (and, mid-swap, .out.old-HOST-PID); only those of this output and of
    dead processes of this host go, and an old copy is kept while it is the only copy of the output."""
    from unlearnkit.io import _owner

    host = _owner().split("-")[0]
    dead, alive = f"{host}-{_dead_pid()}", _owner()
    elsewhere = f"{'0' * 8 if host != '0' * 8 else '1' * 8}-{_dead_pid()}"  # another host's run: cannot be checked
    names = [f".out.tmp-{dead}-abc123_x", f".out.old-{dead}", f".out.tmp-{alive}-live0000", ".out.tmp-nopid",
             f".out.tmp-{elsewhere}-abc123_x", f".other.tmp-{dead}-abc123_x"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_text("half")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "done.txt").write_text("done")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["out", *names[1:]])  # no "out" existed, so the old copy stayed
    with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "done.txt").write_text("again")
    assert not (tmp_path / f".out.old-{dead}").exists()
    assert (tmp_path / f".out.tmp-{elsewhere}-abc123_x").exists()


def test_a_failing_on_placed_removes_the_new_output_and_restores_the_old(tmp_path):
    def refuse():
        raise UserInputError("The ledger refused the row.")

    with pytest.raises(UserInputError, match="refused"):
        with atomic_dir(tmp_path / "new" / "out", on_placed=refuse) as tmp:
            (tmp / "model.txt").write_text("new")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.txt").write_text("old")
    with pytest.raises(UserInputError, match="refused"):
        with atomic_dir(tmp_path / "out", overwrite=True, on_placed=refuse) as tmp:
            (tmp / "model.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (tmp_path / "out" / "model.txt").read_text() == "old"


@pytest.mark.parametrize("theirs", [["theirs.txt"], []])  # an empty folder: os.rename would replace it
def test_an_output_that_appeared_during_the_block_is_never_replaced(tmp_path, theirs):
    with pytest.raises(UserInputError, match="created by something else while this run worked"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "mine.txt").write_text("mine")
            (tmp_path / "out").mkdir()
            for name in theirs:
                (tmp_path / "out" / name).write_text("theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == theirs


def test_text_is_written_as_utf8_whatever_the_locale(tmp_path):
    """Under a locale whose encoding cannot hold "—" (ASCII here), the file is still UTF-8."""
    target = tmp_path / "report.html"
    code = f"from unlearnkit.io import write_text_atomic; write_text_atomic({str(target)!r}, 'a \\u2014 b')"
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run([sys.executable, "-X", "utf8=0", "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == "a — b".encode("utf-8")


def test_a_csv_field_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    path = tmp_path / "big.csv"
    values = "[" + ", ".join(["0.123456"] * 20000) + "]"  # 200,000 characters: a flattened image as text
    path.write_text(f'input,label\n"{values}",0\n', encoding="utf-8")
    assert read_records(path) == [("line 2", {"input": values, "label": "0"})]


def test_a_malformed_csv_row_gets_one_sentence_with_file_and_line(tmp_path, monkeypatch):
    import csv

    path = tmp_path / "bad.csv"
    path.write_text('input,label\n"[1, 2]",0,extra,more\n', encoding="utf-8")
    with pytest.raises(UserInputError, match=r"bad.csv line 2 has 2 more value\(s\) than the header has column names"):
        read_records(path)
    path.write_text('input,label\n"[1, 2]",0\n"' + "9" * 200 + '",1\n', encoding="utf-8")
    monkeypatch.setattr("unlearnkit.userdata.CSV_FIELD_LIMIT", 100)
    limit = csv.field_size_limit(100)  # the one csv.Error left in Python 3.11's lenient parsing
    try:
        with pytest.raises(UserInputError, match=r"bad.csv line 3 is not valid CSV \(field larger than field limit"):
            read_records(path)
    finally:
        csv.field_size_limit(limit)


@pytest.mark.parametrize("question, answer, field", [
    *(("Where?", answer, "answer") for answer in (["Varna", "Oslo"], {"city": "Varna"}, True, None, "", " \n", 2.5)),
    (" ", "Varna", "question")])
def test_an_lm_field_that_is_not_text_is_refused_before_the_model_loads(tmp_path, capsys, question, answer, field):
    """str() of a list or a dict would become the answer the model is taught to forget ("['Varna', 'Oslo']"), and a
    blank answer holds nothing to forget (the reader refused an empty value, but passed one of spaces alone); a
    blank question is refused as the TOFU reader and the metrics refuse it; a JSON float has lost its text
    (2.50 reads as 2.5)."""
    import json

    from unlearnkit.cli import main

    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text("{}")  # never loaded: the data is refused first
    (tmp_path / "forget.jsonl").write_text(json.dumps({"question": question, "answer": answer}) + "\n")
    code = main(["forget", "--model", str(tmp_path / "lm"), "--forget", str(tmp_path / "forget.jsonl"),
                 "--method", "gradient_ascent", "--out", str(tmp_path / "out"), "--ledger", str(tmp_path / "l.db")])
    assert code == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert "forget.jsonl line 1" in err and f"'{field}'" in err and err.count("\n") == 1

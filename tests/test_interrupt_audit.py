"""Interruption and concurrency: a run stopped (Ctrl-C, kill) or racing another leaves every output and the ledger
consistent, and never a leftover that makes the next run refuse to start."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from unlearnkit import ledger as ledger_module
from unlearnkit.adapters.classifier_spec import MLP, save_classifier
from unlearnkit.cli import main
from unlearnkit.ledger import Ledger

SPEC = {"kind": "classifier", "architecture": "mlp", "input_dim": 4, "hidden": [8], "num_classes": 2}


@pytest.fixture()
def workspace(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    rows = [{"input": row.tolist(), "label": int(row[0] > 0)} for row in x]
    save_classifier(MLP(4, [8], 2), SPEC, tmp_path / "model")
    (tmp_path / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (tmp_path / "retain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    return tmp_path


def _ctrl_c(*args, **kwargs):
    """Stands in for a call that a Ctrl-C interrupts."""
    raise KeyboardInterrupt


def _forget(ws, out="out"):
    return ["forget", "--model", str(ws / "model"), "--forget", str(ws / "forget.jsonl"), "--retain",
            str(ws / "retain.jsonl"), "--method", "gradient_ascent", "--param", "epochs=1", "--out", str(ws / out),
            "--ledger", str(ws / "ledger.db")]


def test_a_first_ledger_append_stopped_midway_does_not_block_the_next_forget(workspace, monkeypatch, capsys):
    """Switching a new ledger to WAL wrote its file header before the tables were committed: a Ctrl-C (or kill)
    in between left a file without tables, which every later `forget` refused as a ledger whose tables were
    dropped, until the user deleted it."""
    create_all = ledger_module._metadata.create_all

    monkeypatch.setattr(ledger_module._metadata, "create_all", _ctrl_c)
    assert main(_forget(workspace)) == 130
    assert not (workspace / "out").exists()
    assert not (workspace / "ledger.db").exists() or (workspace / "ledger.db").stat().st_size == 0
    monkeypatch.setattr(ledger_module._metadata, "create_all", create_all)
    assert main(_forget(workspace)) == 0, capsys.readouterr().err
    with Ledger(workspace / "ledger.db") as book:
        assert book.verify().ok and len(book.rows()) == 1


CREATOR = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from unlearnkit import ledger as L
    path, folder = Path(sys.argv[1]), Path(sys.argv[2])
    create_all = L._metadata.create_all

    def paused(*args, **kwargs):  # inside the first append's transaction: wait until the other run has checked
        create_all(*args, **kwargs)
        (folder / "creating").touch()
        deadline = time.monotonic() + 20
        while not (folder / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    L._metadata.create_all = paused
    with L.Ledger(path) as ledger:
        ledger.append("first", ["an item"], "ssd", {}, "a" * 64, "b" * 64, {}, 0.0)
    """
)


def test_a_forget_started_while_another_run_creates_the_ledger_is_not_refused(workspace, monkeypatch, capsys):
    """Two runs sharing a new ledger: the one whose checks fell while the other was creating the ledger found a
    file without tables and refused ("fails verification"), after the other had switched it to WAL."""
    creator = subprocess.Popen([sys.executable, "-c", CREATOR, str(workspace / "ledger.db"), str(workspace)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (workspace / "creating").exists():
        assert creator.poll() is None and time.monotonic() < deadline, creator.communicate()[1].decode()
        time.sleep(0.01)
    check_writable = Ledger.check_writable

    def checked_then_release(self):  # forget's checks are done: let the creator commit
        check_writable(self)
        (workspace / "go").touch()

    monkeypatch.setattr(Ledger, "check_writable", checked_then_release)
    try:
        assert main(_forget(workspace)) == 0, capsys.readouterr().err
    finally:
        (workspace / "go").touch()
        _, err = creator.communicate(timeout=60)
    assert creator.returncode == 0, err.decode()
    with Ledger(workspace / "ledger.db") as book:
        assert book.verify().ok and [row.subject for row in book.rows()] == ["first", ""]


def _default_ctrl_c() -> bool:
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)


@pytest.mark.skipif(not _default_ctrl_c(), reason="needs Python's own Ctrl-C handling in the main thread")
def test_ctrl_c_just_after_the_ledger_commit_keeps_the_output_it_records(workspace, monkeypatch):
    """A Ctrl-C that arrived while the row was being committed was raised just after the commit, and the
    output was then removed as for a refused append: a row recording a model that was never written."""
    append = Ledger.append

    def ctrl_c_after_commit(self, *args, **kwargs):
        row = append(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(1000))  # Python runs the handler here, as it would on the way out of the commit
        return row

    monkeypatch.setattr(Ledger, "append", ctrl_c_after_commit)
    assert main(_forget(workspace)) == 130  # the run still stops, as asked
    run = json.loads((workspace / "out" / "run.json").read_text())
    with Ledger(workspace / "ledger.db") as book:
        rows = book.rows()
    assert len(rows) == 1 and rows[0].fingerprint_after == run["fingerprint_after"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(not _default_ctrl_c(), reason="needs Python's own Ctrl-C handling in the main thread")
def test_a_second_ctrl_c_while_the_row_goes_in_stops_at_once_and_writes_neither(workspace, monkeypatch):
    def ctrl_c_twice(self, *args, **kwargs):
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))
        raise AssertionError("the second Ctrl-C did not interrupt")

    monkeypatch.setattr(Ledger, "append", ctrl_c_twice)
    assert main(_forget(workspace)) == 130
    assert not (workspace / "out").exists() and not list(workspace.glob(".out.*"))
    assert not (workspace / "ledger.db").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_says_aborted_on_stderr(workspace, monkeypatch, capsys):
    """typer turns a KeyboardInterrupt into a silent exit 130: a stopped run said nothing."""
    monkeypatch.setattr(Ledger, "append", _ctrl_c)
    assert main(_forget(workspace)) == 130
    assert capsys.readouterr().err == "aborted\n"


@pytest.mark.parametrize("extra, status", [(["--param", "lr=-1"], 2), ([], 0)])
def test_forget_closes_its_ledger_however_it_ends(workspace, monkeypatch, extra, status):
    """A refused run left the ledger's pooled connections open (only closed on success): a leak for API users."""
    closed = []
    close = Ledger.close
    monkeypatch.setattr(Ledger, "close", lambda self: closed.append(self) or close(self))
    assert main(_forget(workspace) + extra) == status
    assert len(closed) == 1


def _theirs(final):
    final.mkdir()
    (final / "theirs").write_text("x")


@pytest.mark.parametrize("race", ["placed", "moved away", "placed once ours moved the old aside"])
def test_an_overwriting_output_raced_by_another_run_is_one_sentence(tmp_path, monkeypatch, race):
    """Two --overwrite runs to one output: the other run's folder appearing (or leaving) between the check and the
    rename was a traceback (OSError: Directory not empty), and could strand the moved-aside old output."""
    from unlearnkit import io
    from unlearnkit.errors import UserInputError

    final = tmp_path / "out"
    real_lexists, real_replace = io.os.path.lexists, io.os.replace
    if race == "placed":  # the check saw no output, then the other run placed its own
        _theirs(final)
        monkeypatch.setattr(io.os.path, "lexists", lambda path: False if Path(path) == final else real_lexists(path))
    elif race == "moved away":  # the check saw an output, then the other run moved it away to put its own
        monkeypatch.setattr(io.os.path, "lexists", lambda path: True if Path(path) == final else real_lexists(path))
    else:  # an earlier output is there; ours moves it aside, then the other run places its own
        final.mkdir()

        def replace(source, target):
            if Path(target) == final and ".tmp-" in Path(source).name:
                _theirs(final)
            return real_replace(source, target)

        monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(UserInputError, match="^Another run wrote the output path .* at the same time"):
        with io.atomic_dir(final, overwrite=True) as tmp:
            (tmp / "mine").write_text("y")
    assert not list(tmp_path.glob(".out.*"))  # neither our temporary folder nor the moved-aside old one is left
    if race != "moved away":
        assert [p.name for p in final.iterdir()] == ["theirs"]  # the other run's output stands


def test_a_ledger_stopped_before_its_switch_to_wal_is_switched_by_the_next_append(workspace, monkeypatch):
    """The switch follows the schema commit; a run stopped between the two left the ledger in rollback-journal
    mode for good (verify marks the file ready, so no later append reached the switch)."""
    import sqlite3

    enable_wal = ledger_module._enable_wal

    monkeypatch.setattr(ledger_module, "_enable_wal", _ctrl_c)
    assert main(_forget(workspace)) == 130
    monkeypatch.setattr(ledger_module, "_enable_wal", enable_wal)
    journal_mode = lambda: sqlite3.connect(workspace / "ledger.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert journal_mode() == "delete"  # the tables are in, the switch is not
    assert main(_forget(workspace, out="out2")) == 0
    assert journal_mode() == "wal"
    with Ledger(workspace / "ledger.db") as book:
        assert book.verify().ok

"""Ledger audit: a damaged database file and read-only locations each give one sentence (exit status 2 from the
CLI), never a traceback, and a new ledger that cannot be written is refused before any work; a ledger kept
read-only (an archive, read-only media) can still be listed, checked and verified; a bad salt leaves no file
behind and its error never quotes the salt."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from unlearnkit.cli import main
from unlearnkit.errors import UserInputError
import unlearnkit.ledger as ledger_module
from unlearnkit.ledger import ROWS_TABLE, Ledger

BEFORE, AFTER = "a" * 64, "b" * 64
SALT = "test-salt-0123456789abcdef"


def add(ledger: Ledger, subject: str = "request", items: list | None = None) -> int:
    return ledger.append(subject, items if items is not None else [f"item of {subject}"], "ssd", {"alpha": 10.0},
                         BEFORE, AFTER, {"forget_accuracy": 0.5}, 1.25)


def write_rows(path: Path, count: int = 5, **options) -> None:
    with Ledger(path, **options) as ledger:
        for i in range(1, count + 1):
            add(ledger, f"request {i}")


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- a damaged SQLite file


def _corrupt_rows_page(path: Path) -> None:
    """Overwrite the b-tree page type of the rows table's root page: SQLite then calls the file malformed."""
    with sqlite3.connect(path) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (ROWS_TABLE,)).fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size] = 0x55
    path.write_bytes(bytes(data))


def test_a_ledger_file_with_a_damaged_page_gives_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    write_rows(path, salt=SALT)
    assert not Path(f"{path}-wal").exists()  # checkpointed on close: the damage goes to the file itself
    _corrupt_rows_page(path)
    before = files_in(tmp_path)
    with Ledger(path, salt=SALT) as ledger:
        for action in (ledger.rows, ledger.verify, lambda: ledger.get(1), lambda: ledger.check_item("x"),
                       lambda: add(ledger)):
            with pytest.raises(UserInputError, match=r"ledger .*ledger\.db cannot be (read|written) \(.*malformed"):
                action()
    assert files_in(tmp_path) == before  # nothing written


def test_cli_verify_of_a_damaged_ledger_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "ledger.db"
    write_rows(path)
    _corrupt_rows_page(path)
    for command in (["verify"], ["list"], ["show", "1"]):
        assert main(["ledger", *command, "--ledger", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: The ledger") and "malformed" in err and "Traceback" not in err


# --------------------------------------------------------------------------- the salt


@pytest.mark.parametrize("salt_text", ["short\n", "\n", "a" * 8])
def test_a_first_append_with_a_bad_salt_file_leaves_no_ledger_file(tmp_path: Path, salt_text: str) -> None:
    # a SQLite file without tables left behind would fail every later `verify` (dropped tables) and `forget`
    path = tmp_path / "ledger.db"
    (tmp_path / "given.salt").write_text(salt_text)
    with Ledger(path, salt_file=tmp_path / "given.salt") as ledger, pytest.raises(UserInputError, match="salt"):
        add(ledger)
    assert sorted(os.listdir(tmp_path)) == ["given.salt"]


def test_a_first_append_with_a_short_salt_in_the_environment_leaves_no_ledger_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNLEARNKIT_LEDGER_SALT", "short")
    with Ledger(tmp_path / "ledger.db") as ledger, pytest.raises(UserInputError, match="salt is 5 bytes"):
        add(ledger)
    assert os.listdir(tmp_path) == []


def test_an_unreadable_salt_file_is_refused_without_quoting_the_salt(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    salt_file = tmp_path / "binary.salt"
    salt_file.write_bytes(bytes(range(0xF0, 0x100)) * 2)  # 32 random-looking bytes, not UTF-8
    with Ledger(path, salt_file=salt_file) as ledger, pytest.raises(UserInputError) as refused:
        add(ledger)
    message = str(refused.value)
    assert "binary.salt is not UTF-8 text" in message
    assert "0xf" not in message and "\\xf" not in message  # the decoder's text named the first byte: 0xf0
    assert not path.exists()


# --------------------------------------------------------------------------- read-only locations


@pytest.fixture
def read_only_folder(tmp_path: Path, monkeypatch):
    """A folder, and a function that makes the ledger module see it as read-only (as on read-only media or an
    archive): SQLite is then opened on it read-only, so any write attempt fails as it would there."""
    folder = tmp_path / "archive"
    folder.mkdir()

    def make_read_only() -> None:
        monkeypatch.setattr(ledger_module, "_writable", lambda path: not Path(path).resolve().is_relative_to(folder.resolve()))

    return folder, make_read_only


def _can_mount() -> bool:
    """Whether this process can mount a small tmpfs (root with the capability): a file system that is read-only
    for root too, for the one test that needs SQLite itself to meet one."""
    probe = Path(tempfile.mkdtemp())
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True)
        subprocess.run(["umount", "-l", str(probe)], capture_output=True)
        return mounted.returncode == 0
    except OSError:
        return False
    finally:
        probe.rmdir()


def test_a_ledger_in_a_read_only_folder_can_be_read_and_verified(read_only_folder) -> None:
    folder, make_read_only = read_only_folder
    path = folder / "ledger.db"
    write_rows(path)
    with Ledger(path) as ledger:
        head = ledger.verify().head_hash
    make_read_only()  # e.g. an archived copy, or evidence on read-only media
    with Ledger(path) as ledger:
        result = ledger.verify(expect_head=head)
        assert result.ok and result.rows == 5
        assert [row.subject for row in ledger.rows()] == [f"request {i}" for i in range(1, 6)]
        assert [row_id for row_id, _ in ledger.check_item("item of request 3")] == [3]
        with pytest.raises(UserInputError, match="read-only"):
            ledger.check_writable()
        with pytest.raises(UserInputError, match=r"cannot be written \(.*readonly"):
            add(ledger)


def test_a_new_ledger_in_a_read_only_folder_is_refused_before_any_work(read_only_folder) -> None:
    folder, make_read_only = read_only_folder
    (folder / "empty.db").touch()
    make_read_only()
    for name in ("ledger.db", "empty.db"):  # a missing file, and an empty one (a place for a new ledger)
        with Ledger(folder / name, salt=SALT) as ledger, pytest.raises(UserInputError, match="read-only"):
            ledger.check_writable()  # what `forget` asks before it unlearns anything
    assert sorted(os.listdir(folder)) == ["empty.db"]


@pytest.mark.skipif(os.geteuid() == 0 and not _can_mount(), reason="root without mount rights has no read-only folder")
def test_a_first_append_to_an_empty_file_in_a_read_only_folder_gives_one_sentence(tmp_path: Path) -> None:
    """SQLite itself must meet the read-only file system here (switching to WAL was the first write): a folder
    without write permission, or for root a tmpfs remounted read-only."""
    folder = tmp_path / "mnt"
    folder.mkdir()
    (folder / "empty.db").touch()
    mounted = os.geteuid() == 0
    if mounted:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], check=True, capture_output=True)
        (folder / "empty.db").touch()
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
    else:
        folder.chmod(0o555)
    try:
        _first_append_is_refused(folder)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        folder.chmod(0o755)


def _first_append_is_refused(folder: Path) -> None:
    with Ledger(folder / "empty.db", salt=SALT) as ledger:  # setting up WAL was the first write, and it failed
        with pytest.raises(UserInputError, match=r"empty\.db cannot be written \(attempt to write a readonly database"):
            add(ledger)
    assert sorted(os.listdir(folder)) == ["empty.db"] and (folder / "empty.db").stat().st_size == 0


def test_a_salt_file_in_a_read_only_folder_is_refused_before_any_work(tmp_path: Path, read_only_folder) -> None:
    folder, make_read_only = read_only_folder
    make_read_only()
    with Ledger(tmp_path / "ledger.db", salt_file=folder / "ledger.salt") as ledger:
        with pytest.raises(UserInputError, match="salt file .*read-only"):
            ledger.check_writable()
    assert not (tmp_path / "ledger.db").exists()


def test_a_field_holding_json_nested_past_the_parsers_depth_is_compared_as_text():
    # forget's overlap check crashed with a RecursionError on such an item (canonical_value parses JSON text)
    from unlearnkit.ledger import canonical_value

    deep = "[" * 100_000 + "]" * 100_000
    assert canonical_value(deep) == deep


# --------------------------------------------------------------------------- review: values, files, terminals


def test_a_negative_zero_duration_is_stored_so_that_the_row_verifies(tmp_path: Path) -> None:
    """-0.0 passed the ``< 0`` check and was hashed as -0.0, but SQLite reads it back as 0.0: an honest append
    made a ledger that never verified again (and that forget then refused to append to)."""
    with Ledger(tmp_path / "zero.db", salt=SALT) as ledger:
        ledger.append("t", ["x"], "m", {}, BEFORE, AFTER, {}, -0.0)
        assert ledger.verify().ok
        assert str(ledger.rows()[0].seconds) == "0.0"


@pytest.mark.parametrize("value, message", [
    (10 ** 400, "is not a number of seconds"),  # float() overflows: it was an OverflowError traceback
])
def test_an_impossible_duration_is_one_sentence(tmp_path: Path, value, message) -> None:
    with Ledger(tmp_path / "bad.db", salt=SALT) as ledger, pytest.raises(UserInputError, match=message):
        ledger.append("t", ["x"], "m", {}, BEFORE, AFTER, {}, value)
    assert not (tmp_path / "bad.db").exists()


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("field, value, message", [
    ("params", {"n": 10 ** 5000}, "The params holds an integer too long to be stored"),
    ("items", [10 ** 5000], "The item holds an integer too long to be stored"),
    ("params", {"deep": _nested(2000)}, "The params is nested too deeply to be stored"),
    ("items", [_nested(2000)], "The item is nested too deeply to be stored"),
    ("params", {"lr": 1, 1: "a", "1": "b"}, r"The params has keys with the same text \(1, .1.\)"),  # one was lost
])
def test_values_json_cannot_hold_are_one_sentence(tmp_path: Path, field, value, message) -> None:
    fields = {"params": {}, "items": ["x"], field: value}
    with Ledger(tmp_path / "bad.db", salt=SALT) as ledger, pytest.raises(UserInputError, match=message):
        ledger.append("t", fields["items"], "m", fields["params"], BEFORE, AFTER, {}, 1.0)
    assert not (tmp_path / "bad.db").exists()


def test_a_label_python_reads_as_a_number_is_recorded_as_that_number() -> None:
    """forget trains on "01", "+1" and "1." as class 1, so it records, compares and looks them up as 1: they were
    kept as text, so an overlap with a retain item labelled 1 passed and check-item could not find the item."""
    from unlearnkit.ledger import recorded_form, recorded_forms

    plain = recorded_form({"input": [0.5, 2], "label": 1}, "classifier", ("input", "label"))
    for label in ("01", "+1", "1.", " 1 ", "1"):
        assert recorded_form({"input": "[0.5, 2]", "label": label}, "classifier", ("input", "label")) == plain
    assert plain in recorded_forms({"input": [0.5, 2.0], "label": "01"})
    assert recorded_form({"input": [0], "label": "cat"}, "classifier", ("input", "label"))["label"] == "cat"
    huge = 10 ** 401  # beyond any float: kept as the integer (float() raised OverflowError in check-item)
    assert recorded_form({"input": [0], "label": huge}, "classifier", ("input", "label"))["label"] == huge


@pytest.mark.parametrize("damage", ["emptied", "deleted"])
def test_a_wiped_ledger_file_is_tampered_against_a_published_head(tmp_path: Path, damage: str, capsys) -> None:
    """Emptying or deleting the file read as 'nothing is recorded yet' (exit 2), even given the head an auditor
    kept: the one check the docs promise for rows cut off the end."""
    path = tmp_path / "wiped.db"
    write_rows(path, 3, salt=SALT)
    with Ledger(path, salt=SALT) as ledger:
        head = ledger.verify().head_hash
    for side in path.parent.glob("wiped.db-*"):
        side.unlink()
    if damage == "emptied":
        path.write_bytes(b"")
    else:
        path.unlink()
    with Ledger(path, salt=SALT) as ledger:
        result = ledger.verify(expect_head=head)
    assert not result.ok and f"no row has the published head hash {head}" in result.reason
    assert main(["ledger", "verify", "--ledger", str(path), "--expect-head", head]) == 1
    assert "TAMPERED: no row has the published head hash" in capsys.readouterr().out
    assert main(["ledger", "verify", "--ledger", str(path)]) == 2  # without a head: nothing says rows existed


def test_text_that_is_not_utf8_names_its_row(tmp_path: Path, capsys) -> None:
    """A subject set to bytes that are not UTF-8 stopped verify with 'cannot be read' (exit 2), not the row."""
    path = tmp_path / "bytes.db"
    write_rows(path, 4, salt=SALT)
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE {ROWS_TABLE} SET subject = CAST(X'FF41' AS TEXT) WHERE id = 3")
    conn.close()
    with Ledger(path, salt=SALT) as ledger:
        result = ledger.verify()
    assert result.first_bad_id == 3 and "not UTF-8 text" in result.reason
    assert main(["ledger", "verify", "--ledger", str(path)]) == 1
    assert capsys.readouterr().out.startswith("TAMPERED: row 3:")


def test_ledger_list_shows_control_codes_escaped(tmp_path: Path, capsys) -> None:
    """A subject holding terminal escapes could hide text or restyle the listing (Rich stops markup, not these)."""
    path = tmp_path / "codes.db"
    with Ledger(path, salt=SALT) as ledger:
        ledger.append("ticket-1\x1b[8mHIDDEN\x1b[0m\rFAKE", ["x"], "m\x1b[31m", {}, BEFORE, AFTER, {}, 1.0)
    assert main(["ledger", "list", "--ledger", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert "ticket-1\\x1b[8mHIDDEN\\x1b[0m\\rFAKE" in out and "m\\x1b[31m" in out


def test_each_new_ledger_gets_its_own_random_salt(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_rows(tmp_path / name / "ledger.db", 1)
    salts = {(tmp_path / name / "ledger.db.salt").read_text() for name in ("a", "b")}
    assert len(salts) == 2


@pytest.mark.parametrize("durable, synchronous", [(False, 1), (True, 2)])  # NORMAL, FULL
def test_appends_use_wal_and_the_chosen_durability(tmp_path: Path, durable: bool, synchronous: int) -> None:
    """Readers never block the writer (WAL), and durable=True syncs every commit; nothing checked either."""
    with Ledger(tmp_path / "modes.db", salt=SALT, durable=durable) as ledger:
        add(ledger)
        with ledger._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == synchronous
    with sqlite3.connect(tmp_path / "modes.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()

"""The tamper-evident ledger: chain, privacy of items, tamper detection, concurrency, speed, errors, CLI."""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from unlearnkit.errors import UserInputError
from unlearnkit.ledger import GENESIS_HASH, META_TABLE, ROWS_TABLE, Ledger, canonical_json, item_hash, row_hash
from unlearnkit.ledger_cli import register

BEFORE, AFTER = "a" * 64, "b" * 64
SALT = "test-salt-0123456789abcdef"


def add(ledger: Ledger, subject: str = "request", items: list | None = None, **overrides) -> int:
    """Append one row with plausible defaults."""
    fields = dict(
        method="ssd", params={"alpha": 10.0, "lambda": 1.0}, fingerprint_before=BEFORE, fingerprint_after=AFTER,
        metrics={"forget_accuracy": 0.5}, seconds=1.25, status="ok",
    )
    fields.update(overrides)
    return ledger.append(subject, items if items is not None else [f"item of {subject}"], **fields)


def ledger_files(path: Path) -> list[Path]:
    """The database file and its SQLite side files (not the salt)."""
    return [p for p in path.parent.iterdir() if p.name.startswith(path.name) and not p.name.endswith(".salt")]


def raw_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in ledger_files(path))


def sql(path: Path, statement: str, params: tuple = ()) -> None:
    """Run one statement on the ledger file behind the ledger's back (the tamperer's view)."""
    with sqlite3.connect(path) as conn:
        conn.execute(statement, params)
    conn.close()


def stored_row(path: Path, row_id: int) -> dict:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute(f"SELECT * FROM {ROWS_TABLE} WHERE id=?", (row_id,)).fetchone())
    conn.close()
    return row


def rewrite_and_rehash(path: Path, row_id: int, **changes) -> None:
    """Change fields of a row and recompute its row_hash, as an attacker who knows the format would."""
    row = {**stored_row(path, row_id), **changes}
    fields = {k: (json.loads(v) if k in ("item_hashes", "params", "metrics") else v) for k, v in row.items()}
    row["row_hash"] = row_hash(fields)
    assignments = ", ".join(f"{k}=?" for k in row if k != "id")
    sql(path, f"UPDATE {ROWS_TABLE} SET {assignments} WHERE id=?", (*[v for k, v in row.items() if k != "id"], row_id))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def five_rows(path: Path) -> Path:
    with Ledger(path, salt=SALT) as ledger:
        for i in range(1, 6):
            add(ledger, f"request {i}")
        assert ledger.verify().ok
    return path


# --------------------------------------------------------------------------- round trip


def test_append_rows_get_and_verify_round_trip(path: Path) -> None:
    items = ["Ada Lovelace", {"question": "q", "answer": "a"}, (torch.arange(4.0), 3), np.eye(2, dtype=np.float32)]
    with Ledger(path, salt=SALT) as ledger:
        first = add(ledger, "subject one", items, metrics={"loss": float("nan"), "acc": np.float64(0.75)}, seconds=2)
        second = add(ledger, "Zoë — 東京 \"quoted\"\n", status="diverged")
        third = add(ledger, "subject three", status="failed", fingerprint_after=None)
        rows = ledger.rows()
        result = ledger.verify()
        got = ledger.get(2)
        head = ledger.head()
    assert (first, second, third) == (1, 2, 3)
    assert [r.id for r in rows] == [1, 2, 3] and got == rows[1]
    assert rows[0].prev_hash == GENESIS_HASH
    assert rows[1].prev_hash == rows[0].row_hash and rows[2].prev_hash == rows[1].row_hash
    assert rows[0].item_hashes == [item_hash(item, SALT) for item in items]
    assert rows[0].metrics == {"loss": "NaN", "acc": 0.75} and rows[0].seconds == 2.0
    assert rows[0].params == {"alpha": 10.0, "lambda": 1.0}
    assert [r.status for r in rows] == ["ok", "diverged", "failed"] and rows[2].fingerprint_after is None
    assert datetime.fromisoformat(rows[0].time).utcoffset() == timezone.utc.utcoffset(None)
    assert result.ok and result.first_bad_id is None and result.rows == 3 and result.head_hash == rows[2].row_hash
    assert head == (3, rows[2].row_hash)


def test_row_hash_covers_every_field_in_canonical_json(path: Path) -> None:
    with Ledger(path, salt=SALT) as ledger:
        add(ledger)
        row = ledger.get(1).to_dict()
    content = {k: v for k, v in row.items() if k != "row_hash"}
    import hashlib

    assert row["row_hash"] == hashlib.sha256(canonical_json(content).encode()).hexdigest()
    assert set(content) == {"id", "time", "subject", "item_hashes", "method", "params", "fingerprint_before",
                            "fingerprint_after", "metrics", "seconds", "status", "prev_hash"}


def test_item_hash_canonical_forms() -> None:
    assert item_hash({"b": 1, "a": [1, 2]}, SALT) == item_hash({"a": [1, 2], "b": 1}, SALT)
    assert item_hash("héllo", SALT) == item_hash("héllo".encode(), SALT)
    assert item_hash(torch.arange(6, dtype=torch.float32).reshape(2, 3), SALT) == item_hash(
        np.arange(6, dtype=np.float32).reshape(2, 3), SALT
    )
    # shape and dtype are part of the form, and so is the salt
    assert item_hash(torch.zeros(2, 3), SALT) != item_hash(torch.zeros(3, 2), SALT)
    assert item_hash(torch.zeros(2, 3), SALT) != item_hash(torch.zeros(2, 3, dtype=torch.float64), SALT)
    assert item_hash("x", SALT) != item_hash("x", SALT + "!")
    with pytest.raises(UserInputError, match="salt"):
        item_hash("x", "short")
    with pytest.raises(UserInputError, match="object"):
        item_hash(object(), SALT)


# --------------------------------------------------------------------------- privacy


def test_table_never_contains_item_content(path: Path) -> None:
    secret_text = "Ada Lovelace lives at 12 Secret Lane, passport X9Y8Z7"
    secret_value = "card 4111-1111-1111-1111"
    with Ledger(path) as ledger:
        add(ledger, "erasure request", [secret_text, {"note": secret_value}])
        assert ledger.verify().ok
        data = raw_bytes(path)  # database and its write-ahead log, while the rows are fresh
    assert len(data) > 0
    for secret in (secret_text, secret_value, "Secret Lane", "4111-1111"):
        assert secret.encode() not in data


def test_salt_is_kept_outside_the_database(path: Path) -> None:
    with Ledger(path) as ledger:
        add(ledger)
        during = raw_bytes(path)
    salt_file = path.with_name(path.name + ".salt")
    salt = salt_file.read_text().strip()
    assert len(bytes.fromhex(salt)) == 32
    assert salt_file.stat().st_mode & 0o777 == 0o600
    assert salt.encode() not in during + raw_bytes(path)
    assert bytes.fromhex(salt) not in during + raw_bytes(path)


def test_salt_from_environment_creates_no_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNLEARNKIT_LEDGER_SALT", SALT)
    with Ledger(path) as ledger:
        add(ledger, items=["env item"])
    assert not path.with_name(path.name + ".salt").exists()
    with Ledger(path, salt=SALT) as ledger:
        assert [row_id for row_id, _ in ledger.check_item("env item")] == [1]


def test_a_salt_variable_naming_a_file_is_refused(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the variable holds the salt itself: a file name there became the (guessable) salt and nothing was read
    salt_file = tmp_path / "env.salt"
    salt_file.write_text(SALT)
    monkeypatch.setenv("UNLEARNKIT_LEDGER_SALT", str(salt_file))
    with pytest.raises(UserInputError, match=r"holds the salt itself, but its value names the file .*env\.salt"):
        with Ledger(path) as ledger:
            add(ledger, items=["env item"])


def test_check_item_finds_the_forgotten_item_only(path: Path) -> None:
    tensor_item = (torch.tensor([1.0, 2.0]), 7)
    with Ledger(path, salt=SALT) as ledger:
        add(ledger, "first", ["alice", {"name": "bob", "age": 41}])
        add(ledger, "second", ["alice", tensor_item])
        rows = ledger.rows()
        assert ledger.check_item("alice") == [(1, rows[0].time), (2, rows[1].time)]
        assert ledger.check_item({"age": 41, "name": "bob"}) == [(1, rows[0].time)]
        assert ledger.check_item((torch.tensor([1.0, 2.0]), 7)) == [(2, rows[1].time)]
        assert ledger.check_item("alicia") == []
        assert ledger.check_item({"name": "bob", "age": 42}) == []
        assert ledger.check_item((torch.tensor([1.0, 2.5]), 7)) == []
    with Ledger(path, salt=SALT + "-other") as other, pytest.raises(UserInputError, match="salt does not match"):
        other.check_item("alice")


def test_check_item_matches_text_in_either_unicode_normal_form(path: Path) -> None:
    # "José" typed with a composed é or with e + combining accent: the same text, other bytes, both recorded as given
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    with Ledger(path, salt=SALT) as ledger:
        add(ledger, "first", [{"question": f"Where was {decomposed} born?", "answer": "In Le\u0301on."}])
        add(ledger, "second", [composed])
        rows = ledger.rows()
        assert rows[1].item_hashes == [item_hash(composed, SALT)]  # recording hashes the bytes as given
        assert ledger.check_item(decomposed) == ledger.check_item(composed) == [(2, rows[1].time)]
        asked = {"question": f"Where was {composed} born?", "answer": "In L\u00e9on."}
        assert ledger.check_item(asked) == [(1, rows[0].time)]
        assert ledger.check_item({**asked, "answer": "In Leon."}) == []  # an accent dropped is other text
        assert ledger.check_item((torch.tensor([1.0]), "Jos\u00e9")) == []  # non-text values pass through untouched
        Pair = collections.namedtuple("Pair", "name label")
        add(ledger, "third", [Pair(decomposed, 1)])
        assert ledger.check_item(Pair(composed, 1)) == [(3, ledger.rows()[2].time)]


def test_appending_with_a_different_salt_is_refused(path: Path) -> None:
    with Ledger(path, salt=SALT) as ledger:
        add(ledger)
    with Ledger(path, salt=SALT + "-other") as other, pytest.raises(UserInputError, match="salt does not match"):
        add(other)
    with Ledger(path, salt=SALT) as ledger:
        assert len(ledger.rows()) == 1 and ledger.verify().ok


# --------------------------------------------------------------------------- tampering


def _delete(path: Path, row_id: int) -> None:
    sql(path, f"DELETE FROM {ROWS_TABLE} WHERE id=?", (row_id,))


TAMPERING = {
    "edit a field": (lambda p: sql(p, f"UPDATE {ROWS_TABLE} SET subject='nobody' WHERE id=3"), 3),
    "edit the seconds": (lambda p: sql(p, f"UPDATE {ROWS_TABLE} SET seconds=9.5 WHERE id=4"), 4),
    "break a JSON field": (lambda p: sql(p, f"UPDATE {ROWS_TABLE} SET metrics='{{' WHERE id=2"), 2),
    "change prev_hash": (lambda p: sql(p, f"UPDATE {ROWS_TABLE} SET prev_hash=? WHERE id=3", ("c" * 64,)), 3),
    "delete a middle row": (lambda p: _delete(p, 3), 3),
    "delete the first row": (lambda p: _delete(p, 1), 1),
    "delete the last row": (lambda p: _delete(p, 5), 5),
    "swap two rows' ids": (
        lambda p: [sql(p, f"UPDATE {ROWS_TABLE} SET id=? WHERE id=?", a) for a in ((-1, 2), (2, 3), (3, -1))], 2),
    "rewrite a row and re-hash it": (lambda p: rewrite_and_rehash(p, 3, subject="nobody"), 3),
    "change prev_hash and re-hash": (lambda p: rewrite_and_rehash(p, 3, prev_hash="c" * 64), 3),
    "rewrite the first row and re-hash it": (lambda p: rewrite_and_rehash(p, 1, method="other"), 1),
    "rewrite the last row and re-hash it": (lambda p: rewrite_and_rehash(p, 5, status="failed"), 5),
}


def _forge_next_row(path: Path) -> None:
    """Insert a well-formed row 6 that continues the chain but bypasses the ledger (the head is not moved)."""
    row = {**stored_row(path, 5), "id": 6, "subject": "forged"}
    row["prev_hash"] = stored_row(path, 5)["row_hash"]
    fields = {k: (json.loads(v) if k in ("item_hashes", "params", "metrics") else v) for k, v in row.items()}
    row["row_hash"] = row_hash(fields)
    sql(path, f"INSERT INTO {ROWS_TABLE} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


TAMPERING["append a row behind the ledger's back"] = (_forge_next_row, 6)


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_verify_names_the_first_altered_row(five_rows: Path, tamper: str) -> None:
    change, bad_id = TAMPERING[tamper]
    change(five_rows)
    with Ledger(five_rows, salt=SALT) as ledger:
        result = ledger.verify()
    assert not result.ok
    assert result.first_bad_id == bad_id, result.reason
    assert result.reason.startswith(f"row {bad_id}:")


def test_append_after_tail_deletion_still_shows_the_gap(five_rows: Path) -> None:
    _delete(five_rows, 5)
    with Ledger(five_rows, salt=SALT) as ledger:
        assert add(ledger) == 6  # ids come from the head, so the deleted row leaves a visible hole
        result = ledger.verify()
    assert (result.ok, result.first_bad_id) == (False, 5)


# --------------------------------------------------------------------------- concurrency and speed

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from unlearnkit.ledger import Ledger
    path, tag, count, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    ledger = Ledger(path)
    (folder / f"ready-{tag}").touch()
    while not (folder / "go").exists():
        time.sleep(0.001)
    start = time.time()
    for i in range(count):
        ledger.append(f"{tag}-{i}", [f"{tag} item {i}"], "ssd", {"i": i}, "a" * 64, "b" * 64, {}, 0.0, "ok")
    print(start, time.time())
    ledger.close()
    """
)


def test_two_processes_appending_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"  # does not exist yet: the writers also race to create it and its salt
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, "200", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for tag in ("p0", "p1")
    ]
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready-{t}").exists() for t in ("p0", "p1")) and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    windows = []
    for writer in writers:
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err.decode()
        windows.append([float(t) for t in out.split()])
    # the test means something only if both writers were appending during the same interval
    assert max(start for start, _ in windows) < min(end for _, end in windows), windows
    with Ledger(path) as ledger:
        rows = ledger.rows()
        result = ledger.verify()
    assert result.ok, result.reason
    assert [r.id for r in rows] == list(range(1, 401))
    subjects = [r.subject for r in rows]
    assert sorted(subjects) == sorted(f"{t}-{i}" for t in ("p0", "p1") for i in range(200))
    # each writer's rows keep its own order
    for tag in ("p0", "p1"):
        assert [s for s in subjects if s.startswith(tag)] == [f"{tag}-{i}" for i in range(200)]


def test_one_thousand_appends_take_at_most_five_seconds(path: Path) -> None:
    with Ledger(path, salt=SALT) as ledger:
        start = time.perf_counter()
        for i in range(1000):
            add(ledger, f"request {i}", [f"item {i}", {"id": i}])
        elapsed = time.perf_counter() - start
        assert ledger.verify().rows == 1000
    print(f"\n1000 appends: {elapsed:.2f} s")
    assert elapsed <= 5.0


def _bulk_chain(path: Path, total: int) -> None:
    """Grow a one-row ledger to ``total`` valid rows in one transaction (fast set-up for the verify timing)."""
    first = stored_row(path, 1)
    previous, rows = first["row_hash"], []
    for row_id in range(2, total + 1):
        fields = {**{k: v for k, v in first.items() if k != "row_hash"}, "id": row_id, "prev_hash": previous,
                  "subject": f"request {row_id}", "item_hashes": [f"{row_id:064x}"],
                  "params": json.loads(first["params"]), "metrics": {"forget_accuracy": row_id / total}}
        previous = row_hash(fields)
        stored = {k: (canonical_json(v) if k in ("item_hashes", "params", "metrics") else v) for k, v in fields.items()}
        rows.append({**stored, "row_hash": previous})
    columns = list(rows[0])
    with sqlite3.connect(path) as conn:
        conn.executemany(
            f"INSERT INTO {ROWS_TABLE} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(r[c] for c in columns) for r in rows],
        )
        conn.execute("UPDATE unlearnkit_ledger_meta SET value=? WHERE key='head'",
                     (canonical_json({"id": total, "hash": previous}),))
    conn.close()


def test_verify_of_ten_thousand_rows_takes_at_most_two_seconds(path: Path) -> None:
    with Ledger(path, salt=SALT) as ledger:
        add(ledger)
    _bulk_chain(path, 10_000)
    with Ledger(path, salt=SALT) as ledger:
        start = time.perf_counter()
        result = ledger.verify()
        elapsed = time.perf_counter() - start
    print(f"\nverify of 10000 rows: {elapsed:.2f} s")
    assert result.ok and result.rows == 10_000, result.reason
    assert elapsed <= 2.0
    sql(path, f"UPDATE {ROWS_TABLE} SET method='other' WHERE id=9000")
    with Ledger(path, salt=SALT) as ledger:
        assert ledger.verify().first_bad_id == 9000


# --------------------------------------------------------------------------- bad inputs write nothing


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_sqlite_file_without_the_ledger_schema_is_refused(tmp_path: Path, journal_mode: str) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    before, listing = path.read_bytes(), sorted(os.listdir(tmp_path))
    with pytest.raises(UserInputError, match="not an unlearnkit ledger"):
        Ledger(path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == listing


def test_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some notes, not a database\n" * 10)
    before, listing = path.read_bytes(), sorted(os.listdir(tmp_path))
    with pytest.raises(UserInputError, match="not a SQLite ledger"):
        Ledger(path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == listing


@pytest.mark.parametrize(
    "target, message",
    [
        ("{tmp}/missing/dir/ledger.db", "directory .* does not exist"),
        ("sqlite:///{tmp}/missing/ledger.db", "directory .* does not exist"),
        ("nosuchdb://host/ledger", "unknown database scheme"),
        ("postgresql://user@127.0.0.1:1/ledger", "driver|cannot be reached"),
        ("sqlite://", "names no SQLite file"),
        ("{tmp}", "is a directory"),
    ],
)
def test_unusable_ledger_locations_are_refused(tmp_path: Path, target: str, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        Ledger(target.format(tmp=tmp_path))
    assert os.listdir(tmp_path) == []


def test_reading_a_missing_ledger_creates_nothing(path: Path) -> None:
    ledger = Ledger(path, salt=SALT)
    for read in (ledger.rows, ledger.verify, lambda: ledger.get(1), lambda: ledger.check_item("x")):
        with pytest.raises(UserInputError, match="does not exist"):
            read()
    ledger.close()
    assert os.listdir(path.parent) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"status": "done"}, "status"),
        ({"fingerprint_before": "abc"}, "fingerprint_before"),
        ({"fingerprint_after": None}, "fingerprint_after"),
        ({"seconds": -1.0}, "duration"),
        ({"params": [1, 2]}, "params"),
        ({"metrics": {"model": object()}}, "metrics"),
        ({"items": []}, "no forgotten items"),
        ({"items": [object()]}, "object"),
        ({"items": [{"answer": "Varna \udc80"}]}, "not valid Unicode text"),
    ],
)
def test_bad_rows_are_refused_before_anything_is_written(path: Path, overrides: dict, message: str) -> None:
    items = overrides.pop("items", ["x"])
    with Ledger(path) as ledger, pytest.raises(UserInputError, match=message):
        add(ledger, items=items, **overrides)
    assert os.listdir(path.parent) == []


def test_a_writer_locked_out_past_the_busy_timeout_gets_one_sentence(five_rows: Path) -> None:
    blocker = sqlite3.connect(five_rows, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with Ledger(five_rows, salt=SALT, busy_timeout_s=0.2) as ledger, pytest.raises(UserInputError, match="locked"):
            add(ledger)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with Ledger(five_rows, salt=SALT) as ledger:
        assert ledger.verify().rows == 5


def test_a_lost_salt_file_is_not_silently_replaced(five_rows: Path) -> None:
    salt_file = five_rows.with_name(five_rows.name + ".salt")
    with Ledger(five_rows) as ledger:  # rows written with SALT; the default salt file was never made
        with pytest.raises(UserInputError, match="salt file .* does not exist"):
            add(ledger)
        with pytest.raises(UserInputError, match="salt file .* does not exist"):
            ledger.check_item("item of request 1")
    assert not salt_file.exists()


# --------------------------------------------------------------------------- CLI


def cli_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root (keeps `ledger` a sub-command)."""

    register(app)
    return app


def test_cli_list_show_verify_and_check_item(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    with Ledger(path) as ledger:
        add(ledger, "first request", [{"name": "Ada", "city": "London"}], method="ssd")
        add(ledger, "second request", ["plain text item"], method="gradient_ascent")
        expected = ledger.get(2).to_dict()
    app, runner = cli_app(), CliRunner()
    where = ["--ledger", str(path)]

    listed = runner.invoke(app, ["ledger", "list", *where])
    assert listed.exit_code == 0, listed.output
    assert "first request" in listed.output and "gradient_ascent" in listed.output

    shown = runner.invoke(app, ["ledger", "show", "2", *where])
    assert shown.exit_code == 0 and json.loads(shown.output) == expected

    verified = runner.invoke(app, ["ledger", "verify", *where])
    assert verified.exit_code == 0 and verified.output.startswith("ok: 2 rows")

    (tmp_path / "item.json").write_text('{"city": "London", "name": "Ada"}')
    (tmp_path / "item.txt").write_text("plain text item\n")
    (tmp_path / "other.txt").write_text("another item\n")
    found = runner.invoke(app, ["ledger", "check-item", "--item", str(tmp_path / "item.json"), *where])
    assert found.exit_code == 0 and "forgotten: row 1" in found.output
    found = runner.invoke(app, ["ledger", "check-item", "--item", str(tmp_path / "item.txt"), *where])
    assert found.exit_code == 0 and "forgotten: row 2" in found.output
    missing = runner.invoke(app, ["ledger", "check-item", "--item", str(tmp_path / "other.txt"), *where])
    assert missing.exit_code == 1 and "not forgotten" in missing.output and "looked up as one item" not in missing.output
    # a whole data file is one item (its bytes): a user who passed forget's data file is told how to check a record
    (tmp_path / "erase.csv").write_text("name,city\nAda,London\n")
    data_file = runner.invoke(app, ["ledger", "check-item", "--item", str(tmp_path / "erase.csv"), *where])
    assert data_file.exit_code == 1 and "erase.csv is looked up as one item; to check one record of a .csv data file, " \
        "write that record alone to a .json file" in " ".join(data_file.output.split())
    (tmp_path / "deep.json").write_text("[" * 100_000)  # deeper than the JSON parser goes: checked as text
    deep = runner.invoke(app, ["ledger", "check-item", "--item", str(tmp_path / "deep.json"), *where])
    assert deep.exit_code == 1 and "not forgotten" in deep.output

    sql(path, f"UPDATE {ROWS_TABLE} SET subject='edited' WHERE id=2")
    tampered = runner.invoke(app, ["ledger", "verify", *where])
    assert tampered.exit_code == 1 and tampered.output.startswith("TAMPERED: row 2: ")


def test_cli_salt_file_option(tmp_path: Path) -> None:
    path, salt_file = tmp_path / "cli.db", tmp_path / "my.salt"
    with Ledger(path, salt_file=salt_file) as ledger:
        add(ledger, items=["salted item"])
    assert salt_file.exists() and not path.with_name(path.name + ".salt").exists()
    (tmp_path / "item.txt").write_text("salted item")
    runner, app = CliRunner(), cli_app()
    args = ["ledger", "check-item", "--item", str(tmp_path / "item.txt"), "--ledger", str(path)]
    assert runner.invoke(app, [*args, "--salt-file", str(salt_file)]).exit_code == 0
    no_salt = runner.invoke(app, args)  # the default <ledger>.salt does not exist
    assert isinstance(no_salt.exception, UserInputError) and "salt file" in str(no_salt.exception)


def test_cli_user_errors_raise_and_create_nothing(tmp_path: Path) -> None:
    runner, app = CliRunner(), cli_app()
    missing = runner.invoke(app, ["ledger", "list", "--ledger", str(tmp_path / "none.db")])
    assert isinstance(missing.exception, UserInputError)
    shown = runner.invoke(app, ["ledger", "show", "1", "--ledger", str(tmp_path / "none.db")])
    assert isinstance(shown.exception, UserInputError)
    no_item = runner.invoke(app, ["ledger", "check-item", "--item", str(tmp_path / "no.json"),
                                  "--ledger", str(tmp_path / "none.db")])
    assert isinstance(no_item.exception, UserInputError) and "item file" in str(no_item.exception)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- damaged meta records

@pytest.mark.parametrize("head", ["garbage", '{"id": 3}', '{"id": "x", "hash": "y"}'])
def test_an_unreadable_head_is_reported_not_raised(five_rows: Path, head: str) -> None:
    sql(five_rows, f"UPDATE {META_TABLE} SET value=? WHERE key='head'", (head,))
    with Ledger(five_rows, salt=SALT) as ledger:
        result = ledger.verify()
        assert not result.ok and "head record is not readable" in result.reason
        with pytest.raises(UserInputError, match="head record is not readable"):
            ledger.check_writable()
        with pytest.raises(UserInputError, match="head record is not readable"):
            add(ledger)


def test_a_deleted_salt_check_is_damage_not_a_pass(five_rows: Path) -> None:
    sql(five_rows, f"DELETE FROM {META_TABLE} WHERE key='salt_check'")
    with Ledger(five_rows, salt=SALT + "-other") as other:
        result = other.verify()
        assert not result.ok and "salt check record is missing" in result.reason
        for action in (other.check_writable, lambda: add(other), lambda: other.check_item({"q": "x"})):
            with pytest.raises(UserInputError, match="salt check record is missing"):
                action()
    assert len(Ledger(five_rows, salt=SALT).rows()) == 5


def test_check_writable_refuses_what_append_would_and_writes_nothing(tmp_path: Path, five_rows: Path) -> None:
    Ledger(five_rows, salt=SALT).check_writable()  # the right salt: fine
    with pytest.raises(UserInputError, match="salt does not match"):
        Ledger(five_rows, salt=SALT + "-other").check_writable()
    (tmp_path / "short.salt").write_text("abc")
    with pytest.raises(UserInputError, match="for the salt file does not exist"):
        Ledger(tmp_path / "new.db", salt_file=tmp_path / "nodir" / "s.salt").check_writable()
    with pytest.raises(UserInputError, match="at least"):
        Ledger(tmp_path / "new2.db", salt_file=tmp_path / "short.salt").check_writable()
    with Ledger(tmp_path / "new3.db") as fresh:
        fresh.check_writable()  # a new ledger whose salt can be made beside it
    made = [p.name for p in tmp_path.iterdir() if p.name.startswith("new") or p.name == "nodir"]
    assert made == []  # no ledger file, salt file or folder was created


def test_a_salt_that_is_not_text_or_bytes_and_a_bare_string_of_items_are_refused(path: Path) -> None:
    with pytest.raises(UserInputError, match="salt must be text or bytes, got a int"):
        Ledger(path, salt=123)  # bytes(123) would have been 123 zero bytes: a key anyone can guess
    with Ledger(path, salt=SALT) as ledger:
        with pytest.raises(UserInputError, match="not a single string; pass \\[item\\]"):
            add(ledger, items="hello")  # iterating would have hashed h, e, l, l, o as five items
        add(ledger, items=["hello"])
        assert ledger.check_item("hello") and not ledger.check_item("h")


@pytest.mark.parametrize("damage, message", [
    (f"DROP TABLE {ROWS_TABLE}", f"has lost its {ROWS_TABLE} table; it was damaged or tampered with"),
    (f"DELETE FROM {META_TABLE} WHERE key='schema_version'", "has lost its schema version"),
])
def test_a_ledger_missing_its_rows_table_or_version_is_called_damaged(five_rows: Path, damage: str, message: str) -> None:
    """Opening it is refused; the verify command reports it as tampering (exit 1), as it does both tables dropped."""
    sql(five_rows, damage)
    with pytest.raises(UserInputError, match=message):
        Ledger(five_rows, salt=SALT).verify()
    verified = CliRunner().invoke(cli_app(), ["ledger", "verify", "--ledger", str(five_rows)])
    assert verified.exit_code == 1 and verified.output.startswith("TAMPERED: the ledger has lost its")


def test_a_row_id_must_be_an_integer(five_rows: Path) -> None:
    with Ledger(five_rows, salt=SALT) as ledger:
        assert ledger.get(2).id == 2
        with pytest.raises(UserInputError, match="A ledger row id is an integer, got 1.9"):
            ledger.get(1.9)


def test_a_subject_with_no_utf8_form_is_refused_before_any_file_exists(path: Path) -> None:
    with Ledger(path) as ledger, pytest.raises(UserInputError, match="subject holds '\\\\udcfc'"):
        add(ledger, "M\udcfcller")
    assert os.listdir(path.parent) == []


def test_check_item_says_forgotten_only_for_an_ok_row_that_changed_the_model(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    with Ledger(path) as ledger:
        add(ledger, items=["diverged item"], status="diverged", fingerprint_after=BEFORE)
        add(ledger, items=["unchanged item"], fingerprint_after=BEFORE)
        add(ledger, items=["diverged item", "forgotten item"])
    app, runner = cli_app(), CliRunner()
    outcomes = {}
    for name in ("diverged", "unchanged", "forgotten"):
        (tmp_path / f"{name}.txt").write_text(f"{name} item")
        outcomes[name] = runner.invoke(app, ["ledger", "check-item", "--item", str(tmp_path / f"{name}.txt"),
                                             "--ledger", str(path)])
    unchanged = outcomes["unchanged"]
    assert unchanged.exit_code == 1 and "row 2" in unchanged.output and "left unchanged" in unchanged.output
    assert "not forgotten: no row" in unchanged.output and "has status ok and changed the model" in unchanged.output
    diverged = outcomes["diverged"]  # row 1 diverged, row 3 succeeded: forgotten by row 3
    assert diverged.exit_code == 0 and "row 1" in diverged.output and "status diverged" in diverged.output
    assert "forgotten: row 3" in diverged.output
    assert outcomes["forgotten"].exit_code == 0 and "forgotten: row 3" in outcomes["forgotten"].output
    (tmp_path / "lone.txt").write_text("lone diverged")
    with Ledger(path) as ledger:
        add(ledger, items=["lone diverged"], status="diverged", fingerprint_after=BEFORE)
    lone = runner.invoke(app, ["ledger", "check-item", "--item", str(tmp_path / "lone.txt"), "--ledger", str(path)])
    assert lone.exit_code == 1 and "row 4" in lone.output and "status diverged" in lone.output
    assert "forgotten: row" not in lone.output.replace("not forgotten", "")
    # a status edited in the database (diverged → ok) no longer matches the row's hash: not trusted
    sql(path, f"UPDATE {ROWS_TABLE} SET status='ok', fingerprint_after='edited' WHERE id=4")
    edited = runner.invoke(app, ["ledger", "check-item", "--item", str(tmp_path / "lone.txt"), "--ledger", str(path)])
    assert isinstance(edited.exception, UserInputError) and "forgotten: row" not in edited.output
    assert "Row 4 of the ledger" in str(edited.exception) and "does not match its row_hash" in str(edited.exception)


def test_a_published_head_catches_a_rewrite_that_the_chain_cannot(five_rows: Path) -> None:
    """Rewrite row 2, re-hash every row after it and move the head: verify alone passes, a kept head does not."""
    with Ledger(five_rows, salt=SALT) as ledger:
        published = ledger.get(3).row_hash
        assert ledger.verify(expect_head=published).ok
    rewrite_and_rehash(five_rows, 2, subject="nobody")
    for row_id in range(3, 6):
        rewrite_and_rehash(five_rows, row_id, prev_hash=stored_row(five_rows, row_id - 1)["row_hash"])
    head = canonical_json({"id": 5, "hash": stored_row(five_rows, 5)["row_hash"]})
    sql(five_rows, f"UPDATE {META_TABLE} SET value=? WHERE key='head'", (head,))
    with Ledger(five_rows, salt=SALT) as ledger:
        assert ledger.verify().ok  # the unkeyed chain cannot tell
        with pytest.raises(UserInputError, match="not a row_hash"):
            ledger.verify(expect_head="abc")
    result = CliRunner().invoke(cli_app(), ["ledger", "verify", "--ledger", str(five_rows), "--expect-head", published])
    assert result.exit_code == 1 and "TAMPERED" in result.output and "published head hash" in result.output


# --------------------------------------------------------------------------- damaged rows, user text, odd ids


def test_text_moved_between_json_fields_is_caught_and_the_row_is_not_skipped(tmp_path: Path) -> None:
    """Moving text across the metrics/params boundary keeps the row hash; the fields are then not canonical JSON."""
    path = tmp_path / "moved.db"
    with Ledger(path, salt=SALT) as ledger:
        add(ledger, "request 1")
        add(ledger, "request 2", ["moved item"], params={"lr": 0.1}, metrics={"eval": {"acc": 0.9, "params": 3}})
        add(ledger, "request 3")
    row = stored_row(path, 2)
    metrics, params = (row["metrics"] + ',"params":' + row["params"]).split(',"params":', 1)
    assert (metrics, params) == ('{"eval":{"acc":0.9', '3}},"params":{"lr":0.1}')
    sql(path, f"UPDATE {ROWS_TABLE} SET metrics=?, params=? WHERE id=2", (metrics, params))
    with Ledger(path, salt=SALT) as ledger:
        result = ledger.verify()
        assert (result.ok, result.first_bad_id) == (False, 2)
        assert result.reason == "row 2: its params is not canonical JSON (text was moved between fields)"
        for read in (ledger.rows, lambda: ledger.matching_rows("moved item"), lambda: ledger.get(2)):
            with pytest.raises(UserInputError, match="Row 2 of the ledger .* is damaged"):
                read()
    listed = CliRunner().invoke(cli_app(), ["ledger", "list", "--ledger", str(path)])
    assert isinstance(listed.exception, UserInputError) and "is damaged" in str(listed.exception)


@pytest.mark.parametrize("assignment, field", [
    ("metrics=CAST(metrics AS BLOB)", "metrics"), ("seconds=X'00'", "seconds"), ("subject=X'41'", "subject"),
    ("status=X'6f6b'", "status"),
])
def test_a_field_of_the_wrong_type_is_reported_as_tampering(five_rows: Path, assignment: str, field: str) -> None:
    sql(five_rows, f"UPDATE {ROWS_TABLE} SET {assignment} WHERE id=3")
    with Ledger(five_rows, salt=SALT) as ledger:
        result = ledger.verify()
        assert (result.ok, result.first_bad_id) == (False, 3)
        assert result.reason.startswith(f"row 3: a field has the wrong type (its {field} is a ")
        with pytest.raises(UserInputError, match="Row 3 of the ledger .* is damaged \\(a field has the wrong type\\)"):
            ledger.rows()
    verified = CliRunner().invoke(cli_app(), ["ledger", "verify", "--ledger", str(five_rows)])
    assert verified.exit_code == 1 and not isinstance(verified.exception, TypeError)
    assert verified.output.startswith("TAMPERED: row 3: a field has the wrong type")


def test_list_last_shows_only_the_newest_rows(tmp_path: Path, capsys) -> None:
    """A ledger of 10^5 rows took 99 s and 1.4 GB to draw whole; ``--last N`` reads and draws only N rows."""
    from unlearnkit import cli

    path = tmp_path / "long.db"
    with Ledger(path, salt=SALT) as ledger:
        for n in range(1, 6):
            add(ledger, f"request {n}")
        assert [row.id for row in ledger.rows(last=2)] == [4, 5] and ledger.count() == 5
        assert [row.id for row in ledger.rows(last=9)] == [1, 2, 3, 4, 5] == [row.id for row in ledger.rows()]
        with pytest.raises(UserInputError, match="positive integer"):
            ledger.rows(last=0)
    listed = CliRunner().invoke(cli_app(), ["ledger", "list", "--ledger", str(path), "--last", "2"])
    assert listed.exit_code == 0, listed.output
    assert "request 4" in listed.output and "request 5" in listed.output and "request 3" not in listed.output
    assert "The last 2 of 5 rows" in listed.output
    whole = CliRunner().invoke(cli_app(), ["ledger", "list", "--ledger", str(path)])
    assert "request 1" in whole.output and "of 5 rows" not in whole.output
    assert cli.main(["ledger", "list", "--ledger", str(path), "--last", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_list_last_beyond_a_64_bit_limit_lists_every_row(tmp_path: Path) -> None:
    """SQLite's LIMIT is a signed 64-bit integer: ``--last 2**63`` (any N past it) gave an OverflowError traceback."""
    path = tmp_path / "short.db"
    with Ledger(path, salt=SALT) as ledger:
        for n in range(1, 4):
            add(ledger, f"request {n}")
        assert [row.id for row in ledger.rows(last=2**63)] == [1, 2, 3] == [row.id for row in ledger.rows(last=10**30)]
    listed = CliRunner().invoke(cli_app(), ["ledger", "list", "--ledger", str(path), "--last", str(10**20)])
    assert listed.exit_code == 0, listed.output
    assert "request 1" in listed.output and "request 3" in listed.output and "of 3 rows" not in listed.output


def test_cli_list_shows_user_text_literally_not_as_markup(tmp_path: Path) -> None:
    path = tmp_path / "markup.db"
    with Ledger(path, salt=SALT) as ledger:
        add(ledger, "ticket [/x] from user")
        add(ledger, "[bold]#12[/bold] [red]x", method="[blue]m")
    listed = CliRunner().invoke(cli_app(), ["ledger", "list", "--ledger", str(path)])
    assert listed.exit_code == 0, listed.output
    assert "ticket [/x] from user" in listed.output
    assert "[bold]#12[/bold] [red]x" in listed.output and "[blue]m" in listed.output


def test_cli_check_item_also_looks_up_the_file_text_when_it_parses_as_json(tmp_path: Path) -> None:
    """Items recorded as text that happens to be JSON ("1e3", "[1, 2]") are found by their text as well."""
    path = tmp_path / "texts.db"
    texts = ["1e3", "[1, 2]", '"quoted"', '{"a": 1}']
    with Ledger(path, salt=SALT) as ledger:
        for text in texts:
            add(ledger, f"text {text}", [text])
        add(ledger, "the list", [[1, 2]])  # the parsed form of "[1, 2]"
        add(ledger, "both forms", ["[1, 2]", [1, 2]])
        assert [ledger.check_item(text)[0][0] for text in texts] == [1, 2, 3, 4]
    runner, app, item = CliRunner(), cli_app(), tmp_path / "item"
    check = ["ledger", "check-item", "--item", str(item), "--ledger", str(path)]
    for row_id, text in enumerate(texts, start=1):
        item.write_text(text + "\n")
        found = runner.invoke(app, check, env={"UNLEARNKIT_LEDGER_SALT": SALT})
        assert found.exit_code == 0, (text, found.output)
        assert f"forgotten: row {row_id} " in found.output
    item.write_text("[1, 2]")
    both = runner.invoke(app, check, env={"UNLEARNKIT_LEDGER_SALT": SALT})
    rows = [line.split()[2] for line in both.output.splitlines()]
    assert rows == ["2", "5", "6"]  # each matching row once, in id order


def test_a_row_id_beyond_64_bits_is_no_row_not_a_crash(five_rows: Path) -> None:
    with Ledger(five_rows, salt=SALT) as ledger:
        for row_id in (0, -1, 2**63 - 1, 2**63, 10**20):
            with pytest.raises(UserInputError, match=f"has no row {row_id}\\.$"):
                ledger.get(row_id)
    shown = CliRunner().invoke(cli_app(), ["ledger", "show", "99999999999999999999", "--ledger", str(five_rows)])
    assert isinstance(shown.exception, UserInputError) and "has no row 99999999999999999999" in str(shown.exception)


@pytest.mark.parametrize("damage, reason", [
    (f"DELETE FROM {META_TABLE} WHERE key='head'", "the ledger head record is missing"),
    (f"UPDATE {META_TABLE} SET value='garbage' WHERE key='head'", "the ledger head record is not readable"),
])
def test_a_missing_or_unreadable_head_names_no_row(five_rows: Path, damage: str, reason: str) -> None:
    sql(five_rows, damage)
    with Ledger(five_rows, salt=SALT) as ledger:
        result = ledger.verify()
    assert (result.ok, result.first_bad_id, result.reason) == (False, None, reason)
    verified = CliRunner().invoke(cli_app(), ["ledger", "verify", "--ledger", str(five_rows)])
    assert verified.exit_code == 1 and verified.output == f"TAMPERED: {reason}\n"


def test_a_ledger_file_whose_tables_were_dropped_does_not_verify_as_empty(five_rows: Path) -> None:
    """Dropping both tables is not an empty ledger: the first append creates the file and its tables together."""
    sql(five_rows, f"DROP TABLE {ROWS_TABLE}")
    sql(five_rows, f"DROP TABLE {META_TABLE}")
    with Ledger(five_rows, salt=SALT) as ledger:
        result = ledger.verify()
        assert (result.ok, result.first_bad_id, result.rows) == (False, None, 0)
        assert "holds no ledger tables" in result.reason
    verified = CliRunner().invoke(cli_app(), ["ledger", "verify", "--ledger", str(five_rows)])
    assert verified.exit_code == 1 and "TAMPERED: the ledger file holds no ledger tables" in verified.output


def test_an_empty_ledger_file_reads_like_a_missing_one_and_takes_a_first_append(path: Path) -> None:
    path.write_bytes(b"")
    with Ledger(path, salt=SALT) as ledger:
        with pytest.raises(UserInputError, match="is an empty file: nothing is recorded in it yet"):
            ledger.verify()
        add(ledger)
        assert ledger.verify().ok and ledger.verify().rows == 1

"""The ``unlearnkit ledger`` commands: list, show, verify and check-item.

SQLAlchemy is imported only when a command runs (through :mod:`unlearnkit.ledger`), so
``unlearnkit --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .errors import UserInputError

if TYPE_CHECKING:
    from .ledger import Ledger

DEFAULT_LEDGER = "unlearnkit-ledger.db"

LedgerOption = Annotated[
    str, typer.Option("--ledger", help="Ledger SQLite file or SQLAlchemy URL (e.g. postgresql://host/db).")
]
SaltFileOption = Annotated[
    Optional[Path],
    typer.Option(
        "--salt-file",
        help="File holding the item salt (default: <ledger-file>.salt, unless $UNLEARNKIT_LEDGER_SALT is set: "
        "that variable holds the salt itself, not a file name). Only check-item needs it.",
    ),
]


def register(app: typer.Typer) -> None:
    """Add the ``ledger`` command group (list, show, verify, check-item) to ``app``."""
    group = typer.Typer(help="Read and verify the tamper-evident ledger of unlearning requests.", no_args_is_help=True)
    from .cli import examples

    group.command("list", epilog=examples("unlearnkit ledger list --ledger ledger.db",
                                          "unlearnkit ledger list --ledger ledger.db --last 20"))(list_command)
    group.command("show", epilog=examples("unlearnkit ledger show 3 --ledger ledger.db"))(show_command)
    group.command("verify", epilog=examples("unlearnkit ledger verify --ledger ledger.db"))(verify_command)
    group.command("check-item", epilog=examples(
        "unlearnkit ledger check-item --ledger ledger.db --item item.json"))(check_item_command)
    app.add_typer(group, name="ledger")


def _open(ledger: str, salt_file: Path | None) -> "Ledger":
    from .ledger import Ledger

    return Ledger(ledger, salt_file=salt_file)


def list_command(
    ledger: LedgerOption = DEFAULT_LEDGER,
    salt_file: SaltFileOption = None,
    last: Annotated[Optional[int], typer.Option("--last", help="Only the N most recent rows (a long ledger's "
                                                 "whole table takes a while to draw).", metavar="N")] = None,
) -> None:
    """List every recorded unlearning request as a table."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    with _open(ledger, salt_file) as book:
        rows = book.rows(last=last)
        total = book.count() if last is not None else len(rows)
    if not rows:
        typer.echo(f"The ledger {ledger} has no rows.")
        return
    table = Table("id", "time (UTC)", "subject", "method", "items", "status", "seconds", "model before → after")
    for row in rows:
        after = (row.fingerprint_after or "—")[:12]
        cells = (
            str(row.id), row.time[:19], row.subject, row.method, str(len(row.item_hashes)), row.status,
            f"{row.seconds:.2f}", f"{row.fingerprint_before[:12]} → {after}",
        )
        # literally: a subject like "[red]x" or "[/x]" is text, not markup, and control codes are shown escaped
        table.add_row(*(Text(_printable(cell)) for cell in cells))
    Console(width=160).print(table)
    if total > len(rows):
        typer.echo(f"The last {len(rows)} of {total} rows ('ledger show ID' prints any one).")


def _printable(text: str) -> str:
    """``text`` with each character a terminal would act on (escape sequences, carriage returns) or could not print
    shown as its Python escape, so that stored text cannot hide or restyle the listing."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def show_command(
    row_id: Annotated[int, typer.Argument(metavar="ID", help="Row id.")],
    ledger: LedgerOption = DEFAULT_LEDGER,
    salt_file: SaltFileOption = None,
) -> None:
    """Print one row as JSON."""
    with _open(ledger, salt_file) as book:
        row = book.get(row_id)
    typer.echo(json.dumps(row.to_dict(), indent=2, ensure_ascii=False))


def verify_command(
    ledger: LedgerOption = DEFAULT_LEDGER,
    salt_file: SaltFileOption = None,
    expect_head: Annotated[Optional[str], typer.Option(
        "--expect-head", metavar="ROW_HASH",
        help="A head row_hash printed by an earlier verify and kept elsewhere: fail unless a row still has it "
        "(the chain alone cannot catch rows rewritten and re-hashed to the end).")] = None,
) -> None:
    """Check the hash chain; print ok and the head hash, or the first altered row (exit status 1)."""
    from .ledger import LostLedgerPart, VerifyResult

    try:
        with _open(ledger, salt_file) as book:
            result = book.verify(expect_head.strip().lower() if expect_head is not None else None)
    except LostLedgerPart as lost:  # a dropped rows table is tampering, as both tables dropped are
        result = VerifyResult(False, None, lost.reason)
    if result.ok:
        typer.echo(f"ok: {result.rows} rows, chain intact; head row_hash {result.head_hash}")
        return
    typer.echo(f"TAMPERED: {result.reason}")  # the reason names the first bad row, when there is one
    raise typer.Exit(1)


def check_item_command(
    item: Annotated[Path, typer.Option(
        "--item", help="File holding one item; its JSON value and its text are both looked up (bytes if not UTF-8).")],
    ledger: LedgerOption = DEFAULT_LEDGER,
    salt_file: SaltFileOption = None,
) -> None:
    """Say whether the item in the --item file was forgotten and when; exit status 1 unless a row that lists it
    has status ok and changed the model. The ledger records runs, not how well they forgot: that is measured
    in each run's report (run.json, report.html).

    A record of a `forget` run (question/answer or input/label, under those names) is matched as `forget`
    recorded it: only those fields, numbers compared by value (0 and 0.0, "[1, 2]" and [1, 2] alike).
    A file that holds JSON also matches the item recorded as its text (e.g. the string "1e3").
    """
    forms = read_item_forms(item)
    with _open(ledger, salt_file) as book:
        found = {row.id: row for form in forms for row in book.matching_rows(form)}
    rows = [found[row_id] for row_id in sorted(found)]
    if not rows:
        typer.echo(f"not forgotten: no row of {ledger} lists this item.{_data_file_hint(item)}")
        raise typer.Exit(1)
    for row in rows:
        typer.echo(_row_outcome(row))
    if not any(_changed_model(row) for row in rows):
        typer.echo(f"not forgotten: no row of {ledger} that lists this item has status ok and changed the model.")
        raise typer.Exit(1)


#: Suffixes of the data files `forget` reads records from; an --item file is one item, read as JSON, text or bytes.
DATA_FILE_SUFFIXES = (".csv", ".parquet", ".jsonl")


def _data_file_hint(item: Path) -> str:
    """A hint when the --item file looks like a whole data file, which is looked up as one item (its bytes)."""
    if item.suffix.lower() not in DATA_FILE_SUFFIXES:
        return ""
    return (f" ({item.name} is looked up as one item; to check one record of a {item.suffix} data file, write that "
            "record alone to a .json file and pass that.)")


def _changed_model(row: Any) -> bool:
    return row.status == "ok" and row.fingerprint_after is not None and row.fingerprint_after != row.fingerprint_before


def _row_outcome(row: Any) -> str:
    """One line on what a row that lists the item did."""
    if _changed_model(row):
        return (f"forgotten: row {row.id} at {row.time}, by a run with status ok that changed the model (how far it "
                "forgot is measured in that run's report)")
    unchanged = "; the model's weights were left unchanged" if row.fingerprint_after == row.fingerprint_before else ""
    return f"recorded, not forgotten: row {row.id} at {row.time} has status {row.status}{unchanged}"


def read_item_forms(path: Path) -> list[Any]:
    """The forms under which the item in a file may have been recorded: its text without one trailing
    newline, preceded by its JSON value if the text parses; its raw bytes if it is not UTF-8."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserInputError(f"The item file {path} does not exist.") from None
    except OSError as error:
        raise UserInputError(f"The item file {path} cannot be read ({error.strerror}).") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark is not part of the item, as in the data files read
    except UnicodeDecodeError:
        return [raw]
    forms = [text.removesuffix("\n").removesuffix("\r")]  # editors add a final newline the item did not have
    try:
        return [json.loads(text), *forms]
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        return forms

"""The tamper-evident ledger: one hash-chained row per unlearning request.

A row records *that* items were forgotten, never *what* they were: each item is stored as a salted
SHA-256 digest (HMAC-SHA256 keyed by the salt, so a digest cannot be extended or recomputed without
the salt), next to the method, its settings, SHA-256 fingerprints of the model before and after,
the metrics, the duration and the outcome status.

Chain. ``row_hash = SHA-256(canonical JSON of every other field of the row, prev_hash included)``
where ``prev_hash`` is the previous row's ``row_hash`` (64 zeros for row 1) and the canonical JSON
has sorted keys, no spaces and UTF-8 text. Ids are contiguous from 1, and a *head* (the last id and
its row_hash) is kept in the meta table and moved in the same transaction as each insert, so an
edited, deleted, reordered or truncated-away row is detected by :meth:`Ledger.verify` unless the
chain was rebuilt after it. The chain is unkeyed: whoever can write to the database can forge a
consistent ledger by rewriting, inserting, deleting or reordering any rows and re-hashing every row
after them (and the head), or by deleting the newest rows and moving the head back (one UPDATE).
Only a head hash that ``verify`` printed and that was kept somewhere else detects such a rewrite
(``verify(expect_head=...)``), and only for the rows up to that head.

Salt. The salt never enters the database. It comes from the caller (``salt=``), a salt file
(``salt_file=``), the ``UNLEARNKIT_LEDGER_SALT`` environment variable, or by default the file
``<ledger-file>.salt`` beside a SQLite ledger, created on the first append with 32 random bytes
(hex) and mode 0600. A keyed check value of the salt is kept in the meta table so that appending or
checking with a different salt is an error instead of a silent miss. That check value is not part of the
chain: whoever can write the database and the salt file can replace both, after which ``verify`` (which
needs no salt) still passes and :meth:`Ledger.check_item` with the new salt finds none of the old items.
Keep a copy of the salt somewhere safe besides the published head (the salt is a secret, the head is not):
with it, a replaced salt shows as "salt does not match". The subject is free text stored as given: a ticket
number, not a name or an item.

Concurrency. On SQLite the file is put in WAL mode and each append is its own ``BEGIN IMMEDIATE``
transaction, which takes the single writer lock *before* the head is read, so concurrent writers
(threads or processes) queue on the lock (busy timeout, 30 s by default) and never fork the chain;
readers see a consistent snapshot and never block writers. On other backends (PostgreSQL, MySQL) the head
row is read with ``SELECT ... FOR UPDATE`` in the append transaction, which serialises appenders on
that row lock. Only SQLite is tested here; the server path is written against SQLAlchemy's generic
API. WAL needs a local file system (not NFS).

Durability. By default SQLite runs with ``synchronous=NORMAL``: a committed row survives a crash of
the process, and the file is never corrupted, but after a power loss or an operating-system crash
the most recent rows may be missing (always whole rows with their head, so the chain stays valid).
``durable=True`` selects ``synchronous=FULL``, one fsync per append: no committed row is ever lost,
at a cost set by the disk's fsync latency (1,000 appends took 4.5–7 s instead of 1.1–1.4 s on the
shared virtual disk this was measured on).

Reading never creates a file: a ledger file is created by its first append only. A SQLite ledger in a folder
this process cannot write (an archive, read-only media) is read as an immutable snapshot, unless a ``-wal``
file beside it shows a writer at work; :meth:`Ledger.check_writable` refuses such a folder, or a read-only
file, before any work, and a database that SQLite finds damaged is one sentence, not a traceback.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import sqlite3
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from .errors import UserInputError

SCHEMA_VERSION = "1"
ROWS_TABLE = "unlearnkit_ledger"
META_TABLE = "unlearnkit_ledger_meta"
GENESIS_HASH = "0" * 64
STATUSES = ("ok", "diverged", "failed")
SALT_ENV = "UNLEARNKIT_LEDGER_SALT"
MIN_SALT_CHARS = 16
_SQLITE_HEADER = b"SQLite format 3\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SALT_CHECK_MESSAGE = b"unlearnkit-ledger-salt-check"

_metadata = sa.MetaData()
_meta_table = sa.Table(
    META_TABLE,
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
_rows_table = sa.Table(
    ROWS_TABLE,
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("time", sa.String(40), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("item_hashes", sa.Text, nullable=False),
    sa.Column("method", sa.String(200), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("fingerprint_before", sa.String(64), nullable=False),
    sa.Column("fingerprint_after", sa.String(64), nullable=True),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("seconds", sa.Double, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("row_hash", sa.String(64), nullable=False),
)
_JSON_FIELDS = ("item_hashes", "params", "metrics")
_HASHED_FIELDS = tuple(sorted(c.name for c in _rows_table.columns if c.name != "row_hash"))
# The Python types each stored field reads back as (compared exactly, so a bool is no id); any other is tampering.
_FIELD_TYPES = {c.name: (int,) if c.name == "id" else (float,) if c.name == "seconds" else (str,)
                for c in _rows_table.columns}
_FIELD_TYPES["fingerprint_after"] = (str, type(None))
_MAX_ID = 2**63 - 1  # the largest id a 64-bit integer column holds
# Built once: constructing statements costs more than running them on SQLite.
_LOCK_HEAD = (
    sa.select(_meta_table.c.key, _meta_table.c.value)
    .where(_meta_table.c.key.in_(("head", "salt_check")))
    .with_for_update()
)
_INSERT_ROW = sa.insert(_rows_table)
_READ_HEAD = sa.select(_meta_table.c.value).where(_meta_table.c.key == "head")
_READ_SALT_CHECK = sa.select(_meta_table.c.value).where(_meta_table.c.key == "salt_check")
_READ_HEADS = sa.select(_meta_table.c.key, _meta_table.c.value).where(_meta_table.c.key.in_(("head", "salt_check")))
_MOVE_HEAD = sa.update(_meta_table).where(_meta_table.c.key == "head").values(value=sa.bindparam("head_value"))


# --------------------------------------------------------------------------- canonical forms


def canonical_json(value: Any) -> str:
    """Sorted-key, space-free, UTF-8 JSON of already-plain data (the form every hash is taken over)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _plain_json(value: Any, *, what: str) -> Any:
    """Turn ``value`` into plain JSON data: tuples become lists, numpy/tensor scalars and arrays become
    numbers and lists, and non-finite floats become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.
    """
    with _storable(what):
        plain = _plain(value, what=what, arrays=_array_to_list)
        return json.loads(canonical_json(plain))  # so stored and freshly built values hash the same way


@contextmanager
def _storable(what: str) -> Iterator[None]:
    """Turn the limits of JSON in Python (nesting deeper than the interpreter recurses, integers longer than it
    writes as text) into one sentence about ``what``."""
    try:
        yield
    except UserInputError:
        raise
    except RecursionError:
        raise UserInputError(f"The {what} is nested too deeply to be stored.") from None
    except ValueError as error:
        if "Exceeds the limit" not in str(error):  # int-to-text's length limit; other ValueErrors are not ours
            raise
        raise UserInputError(f"The {what} holds an integer too long to be stored ({error}).") from None


def _plain(value: Any, *, what: str, arrays: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        plain = {str(k): _plain(v, what=what, arrays=arrays) for k, v in value.items()}
        if len(plain) < len(value):  # {1: a, "1": b}: JSON keys are text, and one value would be lost
            twins = [k for k in value if [str(other) for other in value].count(str(k)) > 1]
            raise UserInputError(f"The {what} has keys with the same text ({', '.join(map(repr, twins))}); "
                                 "JSON keys are text, so one value would be lost.")
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain(v, what=what, arrays=arrays) for v in value]
    if _is_array(value):
        return arrays(value, what=what)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        return _plain(value.item(), what=what, arrays=arrays)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__bytes_sha256__": hashlib.sha256(bytes(value)).hexdigest()}
    raise UserInputError(f"The {what} holds a {type(value).__name__}, which cannot be stored as JSON.")


def _is_array(value: Any) -> bool:
    torch = sys.modules.get("torch")
    numpy = sys.modules.get("numpy")
    return (torch is not None and isinstance(value, torch.Tensor)) or (
        numpy is not None and isinstance(value, numpy.ndarray)
    )


def _array_to_list(value: Any, *, what: str) -> Any:
    data = value.detach().cpu().tolist() if hasattr(value, "detach") else value.tolist()
    return _plain(data, what=what, arrays=_array_to_list)


def _array_bytes(value: Any) -> tuple[str, tuple[int, ...], bytes]:
    """(dtype name, shape, raw little-endian bytes) of a tensor or numpy array; same names for both."""
    if hasattr(value, "detach"):
        torch = sys.modules["torch"]
        tensor = value.detach().to("cpu").contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), raw
    numpy = sys.modules["numpy"]
    array = numpy.ascontiguousarray(value)
    if array.dtype.hasobject:
        raise UserInputError("An item is a numpy array of Python objects, which has no byte form to hash.")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.dtype.name, tuple(array.shape), array.tobytes()


def _array_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    return f"unlearnkit-array\x00{dtype}\x00{','.join(map(str, shape))}\x00".encode()


def _array_digest(value: Any, *, what: str) -> dict[str, Any]:
    dtype, shape, raw = _array_bytes(value)
    return {"__array__": {"dtype": dtype, "shape": list(shape), "sha256": hashlib.sha256(raw).hexdigest()}}


def item_bytes(item: Any) -> bytes:
    """The canonical byte form of one item: bytes as they are, ``str`` as UTF-8, a tensor or numpy
    array as a dtype/shape header plus its raw bytes, anything JSON-like (dicts, lists, tuples, numbers,
    e.g. a ``(tensor, label)`` pair) as canonical JSON where nested arrays stand as their dtype, shape
    and SHA-256. Text with no UTF-8 form (a lone surrogate) is a :class:`UserInputError`."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if _is_array(item):
        dtype, shape, raw = _array_bytes(item)
        return _array_header(dtype, shape) + raw
    if not isinstance(item, str):
        with _storable("item"):
            item = canonical_json(_plain(item, what="item", arrays=_array_digest))
    return _utf8(item, "An item")


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UserInputError(f"{what} holds {text[error.start:error.end]!r}, which is not valid Unicode text "
                             "(it has no UTF-8 form to hash).") from None


def canonical_value(value: Any) -> Any:
    """A field value as the same thing whatever file format carried it ("[1, 2]" in CSV, [1, 2] in JSONL)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
            return value
    if isinstance(value, (list, tuple)):
        return [canonical_value(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float: compared as the integer
            return value
    return value


def canonical_label(value: Any) -> Any:
    """A class label as the number the model trains on: :func:`canonical_value`, and also text that reads as a
    number only to Python's ``float`` ("01", "+1", "1.", " 1 "), as ``forget`` reads labels."""
    value = canonical_value(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def recorded_form(record: Mapping[str, Any], kind: str, fields: Sequence[str]) -> dict[str, Any]:
    """What ``unlearnkit forget`` records in the ledger for one forget record: only the fields the model used,
    under their default names (question/answer, input/label), numbers normalised by :func:`canonical_value`, so
    the same item hashes the same whether it came from CSV, JSONL or Parquet, whatever other columns it had."""
    if kind == "causal_lm":
        question, answer = fields
        return {"question": str(record[question]), "answer": str(record[answer])}
    inputs, label = fields
    return {"input": _flattened(canonical_value(record[inputs])), "label": canonical_label(record[label])}


def _flattened(value: Any) -> Any:
    """A nested list of numbers as one flat list: the model reads [[1, 2], [3, 4]] and [1, 2, 3, 4] alike (reshaped
    to its input shape), so they are one item."""
    if not isinstance(value, list) or not any(isinstance(v, list) for v in value):
        return value
    return [leaf for v in value for leaf in (_flattened(v) if isinstance(v, list) else [v])]


def recorded_forms(item: Any) -> list[Any]:
    """The item as given, and as ``forget`` records a question/answer or input/label record (:func:`recorded_form`),
    each also with its text in Unicode's composed and decomposed forms (NFC, NFD): "é" typed as one character or as
    "e" and an accent is the same text, but not the same bytes, and a user looking an item up cannot see which
    form the forgotten data used. Recording hashes the bytes as given, so rows written earlier still match (and an
    item that mixes both forms matches only as given)."""
    forms = [item]
    if isinstance(item, Mapping):
        for kind, fields in (("causal_lm", ("question", "answer")), ("classifier", ("input", "label"))):
            if all(name in item for name in fields):
                forms.append(recorded_form(item, kind, fields))
                if kind == "classifier" and isinstance(item["input"], list):  # as rows before flattening hold it
                    forms.append({"input": canonical_value(item["input"]), "label": canonical_label(item["label"])})
    return forms + [_normalized(form, normal) for form in forms for normal in ("NFC", "NFD")
                    if not all(unicodedata.is_normalized(normal, text) for text in _strings(form))]


def _strings(value: Any) -> Iterator[str]:
    """Every string in ``value`` (dict keys included, at any depth of dicts, lists and tuples)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _normalized(value: Any, form: str) -> Any:
    """``value`` with every string in it (dict keys included, at any depth of dicts, lists and tuples) in the
    Unicode normal ``form``; anything else as it is."""
    if isinstance(value, str):
        return unicodedata.normalize(form, value)
    if isinstance(value, Mapping):
        return {_normalized(k, form): _normalized(v, form) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # hashing reads a tuple as a list, so a namedtuple may become either
        return [_normalized(v, form) for v in value]
    return value


def salt_key(salt: str | bytes) -> bytes:
    """The HMAC key for a salt given as text (used as UTF-8) or bytes."""
    if not isinstance(salt, (str, bytes, bytearray)):  # bytes(123) would be 123 zero bytes: a public key
        raise UserInputError(f"The ledger salt must be text or bytes, got a {type(salt).__name__}.")
    key = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
    if len(key) < MIN_SALT_CHARS:
        raise UserInputError(
            f"The ledger salt is {len(key)} bytes long; use at least {MIN_SALT_CHARS} random characters."
        )
    return key


def _environment_salt() -> str:
    """The salt held in ``$UNLEARNKIT_LEDGER_SALT``; a value that names an existing file is refused, since it
    would be used as the salt itself (a guessable one), not read."""
    value = os.environ[SALT_ENV]
    if os.path.exists(value):
        raise UserInputError(f"${SALT_ENV} holds the salt itself, but its value names the file {value}; set it to the "
                             "salt, or pass the file with --salt-file.")
    return value


def item_hash(item: Any, salt: str | bytes) -> str:
    """Salted SHA-256 (HMAC-SHA256 keyed by ``salt``) of the item's canonical bytes, as 64 hex digits."""
    return hmac.new(salt_key(salt), item_bytes(item), hashlib.sha256).hexdigest()


def _salt_check(key: bytes) -> str:
    return hmac.new(key, _SALT_CHECK_MESSAGE, hashlib.sha256).hexdigest()


def row_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a row's fields (everything but ``row_hash`` itself)."""
    content = {k: v for k, v in fields.items() if k != "row_hash"}
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()


_encode_other = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_encode_str = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring


def _encode_scalar(value: Any) -> str:
    """``canonical_json`` of a str, int, float or None, by the same rules, minus the encoder's overhead."""
    if isinstance(value, str):
        return _encode_str(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return _encode_other(value)


def _stored_row_hash(stored: Mapping[str, Any]) -> str:
    """:func:`row_hash` of a row as stored, without parsing its JSON fields.

    They were stored as canonical JSON, and canonical JSON of the whole row embeds each nested
    value's canonical JSON verbatim, so the stored text is spliced in; any edit of that text (even
    one that parses to the same value) changes the hash, as an edit should. Text moved from one
    JSON field into the next keeps the hash, so :func:`_content_fault` also requires each stored
    JSON field to be canonical JSON on its own. Every field must have its stored type
    (:func:`_wrong_type`).
    """
    parts = []
    for key in _HASHED_FIELDS:
        value = stored[key]
        text = value if key in _JSON_FIELDS else _encode_scalar(value)
        parts.append(f'"{key}":{text}')
    return hashlib.sha256(("{" + ",".join(parts) + "}").encode("utf-8")).hexdigest()


def _wrong_type(stored: Mapping[str, Any]) -> str | None:
    """The name of the first field of a stored row whose value has a type the ledger never stores, or None."""
    for name, types in _FIELD_TYPES.items():
        if type(stored[name]) not in types:
            return name
    return None


def _is_canonical_json(text: str) -> bool:
    """Whether ``text`` is exactly the canonical JSON of the value it parses to."""
    try:
        return canonical_json(json.loads(text)) == text
    except (ValueError, RecursionError):
        return False


def _content_fault(stored: Mapping[str, Any]) -> str | None:
    """Why a stored row's content is not what was appended (wrong type, edited, text moved between
    JSON fields), or None when it is intact."""
    wrong = _wrong_type(stored)
    if wrong is not None:
        return f"a field has the wrong type (its {wrong} is a {type(stored[wrong]).__name__})"
    try:
        intact = _stored_row_hash(stored) == stored["row_hash"]
    except UnicodeEncodeError:  # text read back by _lenient_text: bytes no append writes
        return "a text field holds bytes that are not UTF-8 text (a field was edited)"
    if not intact:
        return "its content does not match its row_hash (a field was edited)"
    for name in _JSON_FIELDS:
        if not _is_canonical_json(stored[name]):
            return f"its {name} is not canonical JSON (text was moved between fields)"
    return None


# --------------------------------------------------------------------------- rows and results


@dataclass(frozen=True)
class LedgerRow:
    """One recorded unlearning request (item contents are never part of it)."""

    id: int
    time: str
    subject: str
    item_hashes: list[str]
    method: str
    params: dict[str, Any]
    fingerprint_before: str
    fingerprint_after: str | None
    metrics: dict[str, Any]
    seconds: float
    status: str
    prev_hash: str
    row_hash: str

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`Ledger.verify`: ``first_bad_id`` is None when ``ok``."""

    ok: bool
    first_bad_id: int | None
    reason: str
    rows: int = 0
    head_hash: str = GENESIS_HASH


def _row_from_db(record: Mapping[str, Any], label: str) -> LedgerRow:
    """Decode a stored row; a field of the wrong type or unparsable JSON is a :class:`UserInputError`."""
    data = dict(record)
    damage = "a field has the wrong type" if _wrong_type(data) is not None else None
    try:
        for name in _JSON_FIELDS:
            data[name] = json.loads(data[name])
    except (TypeError, ValueError, RecursionError):
        damage = damage or "a JSON field is not readable"
    if damage is not None:
        raise UserInputError(f"Row {record['id']} of the ledger {label} is damaged ({damage}); "
                             "`unlearnkit ledger verify` reports on the whole ledger.")
    return LedgerRow(**data)


# --------------------------------------------------------------------------- locating the ledger


@dataclass(frozen=True)
class _Target:
    url: sa.engine.URL
    sqlite_path: Path | None  # None for server databases

    @property
    def label(self) -> str:
        return str(self.sqlite_path) if self.sqlite_path else self.url.render_as_string(hide_password=True)


def _parse_target(url_or_path: str | os.PathLike) -> _Target:
    text = os.fspath(url_or_path)
    if "://" not in text:
        path = Path(text).expanduser()
        return _Target(sa.engine.URL.create("sqlite+pysqlite", database=str(path)), path)
    try:
        url = sa.engine.make_url(text)
    except sa_exc.ArgumentError:
        raise UserInputError(f"The ledger URL {text!r} is not a valid SQLAlchemy database URL.") from None
    if url.get_backend_name() != "sqlite":
        return _Target(url, None)
    if not url.database or url.database == ":memory:" or url.query.get("uri"):
        raise UserInputError(
            f"The ledger URL {text!r} names no SQLite file (in-memory ledgers are lost on exit); give a file path."
        )
    return _Target(url, Path(url.database))


def _check_sqlite_file(path: Path) -> bool:
    """Raise unless ``path`` can hold a ledger; return whether it already holds one. Never writes."""
    if not path.parent.is_dir():
        raise UserInputError(f"The ledger directory {path.parent} does not exist.")
    if path.is_dir():
        raise UserInputError(f"The ledger path {path} is a directory, not a ledger file.")
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb") as handle:
        if handle.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            raise UserInputError(f"The file {path} exists but is not a SQLite ledger.")
    import sqlite3

    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        # immutable=1: no locks and no -wal/-shm side files, so a foreign file is left exactly as it was.
        names, version = _probe_tables(sqlite3.connect(uri + "&immutable=1", uri=True))
    except sqlite3.DatabaseError:
        try:  # an unlocked read can meet a page that a ledger writer is checkpointing: read again, locked
            names, version = _probe_tables(sqlite3.connect(uri, uri=True))
        except sqlite3.DatabaseError as error:
            raise UserInputError(f"The file {path} exists but is not a readable SQLite ledger ({error}).") from None
    return _judge_tables(names, version, str(path), foreign_tables_allowed=False)


def _probe_tables(connection: Any) -> tuple[set[str], str | None]:
    """Table names and our schema version (None without a meta table), through a DB-API connection."""
    with closing(connection) as probe:
        names = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if META_TABLE not in names:
            return names, None
        row = probe.execute(f"SELECT value FROM {META_TABLE} WHERE key='schema_version'").fetchone()
        return names, (row[0] if row else None)


class LostLedgerPart(UserInputError):
    """A ledger that lacks a part every ledger has (its rows table, its schema version): damaged or tampered with.
    Opening it is refused; the ``ledger verify`` command reports it as its finding (exit status 1), as it does
    dropped tables."""

    def __init__(self, label: str, missing: str) -> None:
        self.reason = f"the ledger has lost {missing}; it was damaged or tampered with"
        super().__init__(f"The ledger {label} has lost {missing}; it was damaged or tampered with.")


def _judge_tables(names: set[str], version: str | None, label: str, *, foreign_tables_allowed: bool) -> bool:
    """Whether the tables form a ledger (True), an empty place for one (False), or something else (raise)."""
    if META_TABLE in names:
        if ROWS_TABLE not in names or version is None:  # a ledger we made never lacks either: it was damaged
            raise LostLedgerPart(label, f"its {ROWS_TABLE} table" if ROWS_TABLE not in names else "its schema version")
        if version != SCHEMA_VERSION:
            raise UserInputError(
                f"The ledger {label} has schema version {version!r}; this unlearnkit reads version {SCHEMA_VERSION}."
            )
        return True
    if ROWS_TABLE in names or (names and not foreign_tables_allowed):
        raise UserInputError(f"The database {label} exists but is not an unlearnkit ledger (no schema marker table).")
    return False


# --------------------------------------------------------------------------- the ledger

#: Verify's finding for a non-empty SQLite file without the ledger's tables: the first append creates them, so
#: their absence means they were dropped (or that append failed).
_NO_TABLES = ("the ledger file holds no ledger tables: its first append creates them, so they were dropped "
              "(or that first append failed)")


def _reading_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a reading method under :meth:`Ledger._database_errors`."""

    @functools.wraps(method)
    def wrapper(self: "Ledger", *args: Any, **kwargs: Any) -> Any:
        with self._database_errors("read"):
            return method(self, *args, **kwargs)

    return wrapper


class Ledger:
    """An append-only, hash-chained audit log of unlearning requests.

    ``url_or_path`` is a SQLite file path (created by the first append) or any SQLAlchemy URL.
    ``salt`` (text or bytes) or ``salt_file`` chooses the item salt; see the module docstring for
    the defaults, for ``durable`` (fsync every append on SQLite) and for ``busy_timeout_s`` (how long
    an append waits for another writer). Use as a context manager, or call :meth:`close`, to release
    connections.
    """

    def __init__(
        self,
        url_or_path: str | os.PathLike = "unlearnkit-ledger.db",
        salt: str | bytes | None = None,
        *,
        salt_file: str | os.PathLike | None = None,
        busy_timeout_s: float = 30.0,
        durable: bool = False,
    ) -> None:
        self._target = _parse_target(url_or_path)
        self._salt_given = salt
        if salt is not None:
            salt_key(salt)  # a too-short salt fails now, not at the first append
        self._salt_file = Path(salt_file) if salt_file is not None else None
        self._busy_timeout_s = busy_timeout_s
        self._synchronous = "FULL" if durable else "NORMAL"
        self._ready = _check_sqlite_file(self._target.sqlite_path) if self._target.sqlite_path else False
        self._engine = self._make_engine()
        self._writer = self._engine.execution_options(unlearnkit_write=True)
        self._key: bytes | None = None
        self._wal = False  # this instance has made sure a SQLite ledger is in WAL mode
        if self._target.sqlite_path is None:
            self._ready = self._probe_server()

    # ----- engine

    def _make_engine(self) -> sa.engine.Engine:
        if self._target.sqlite_path is None:
            try:
                return sa.create_engine(self._target.url, pool_pre_ping=True)
            except sa_exc.NoSuchModuleError:
                raise UserInputError(f"The ledger URL {self._target.label!r} has an unknown database scheme.") from None
            except ImportError as error:
                raise UserInputError(
                    f"The database driver for the ledger URL {self._target.label!r} is not installed ({error.name})."
                ) from None
        path = self._target.sqlite_path
        if _read_only_copy(path):
            import sqlite3

            uri = f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1"
            read_only = functools.partial(sqlite3.connect, uri, uri=True, check_same_thread=False)
            engine = sa.create_engine(self._target.url, creator=read_only)
        else:
            engine = sa.create_engine(self._target.url, connect_args={"timeout": self._busy_timeout_s})
        sa.event.listen(engine, "connect", self._sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine

    def _sqlite_on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy's recipe: the driver stops issuing BEGIN itself, so _sqlite_on_begin decides the kind.
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA synchronous={self._synchronous}")

    def _probe_server(self) -> bool:
        try:
            with self._engine.connect() as conn:
                return self._judge(conn)
        except sa_exc.DBAPIError as error:
            self._engine.dispose()
            reason = str(error.orig).strip().splitlines()[0] if error.orig else "no connection"
            raise UserInputError(f"The ledger database {self._target.label} cannot be reached ({reason}).") from None

    def _judge(self, conn: sa.engine.Connection) -> bool:
        names = set(sa.inspect(conn).get_table_names())
        version = None
        if META_TABLE in names:
            version = conn.execute(
                sa.select(_meta_table.c.value).where(_meta_table.c.key == "schema_version")
            ).scalar_one_or_none()
        server = self._target.sqlite_path is None  # a server database may hold other applications' tables
        return _judge_tables(names, version, self._target.label, foreign_tables_allowed=server)

    def close(self) -> None:
        """Release pooled connections."""
        self._engine.dispose()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @contextmanager
    def _database_errors(self, action: str) -> Iterator[None]:
        """Turn a database refusal (read-only file, lock held past the busy timeout, a damaged file, ...) into one
        sentence."""
        try:
            yield
        except sa_exc.DatabaseError as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            raise UserInputError(f"The ledger {self._target.label} cannot be {action} ({reason}).") from None

    # ----- salt

    @property
    def file_path(self) -> Path | None:
        """The SQLite file of the ledger, or None for a database server."""
        return self._target.sqlite_path

    @property
    def salt_path(self) -> Path | None:
        """The file holding the item salt: the one given, else ``<ledger file>.salt`` (None for a server)."""
        if self._salt_file is not None:
            return self._salt_file
        if self._target.sqlite_path is not None:
            return self._target.sqlite_path.with_name(self._target.sqlite_path.name + ".salt")
        return None

    def _load_salt(self, *, create: bool) -> bytes:
        if self._key is not None:
            return self._key
        if self._salt_given is not None:
            self._key = salt_key(self._salt_given)
        elif self._salt_file is None and os.environ.get(SALT_ENV):
            self._key = salt_key(_environment_salt())
        else:
            self._key = salt_key(_read_or_create_salt(self.salt_path, self._target.label, create=create))
        return self._key

    def _wrong_salt(self) -> UserInputError:
        return UserInputError(f"The salt does not match the one the ledger {self._target.label} was written with.")

    # ----- writing

    def append(
        self,
        subject: str,
        items: Iterable[Any],
        method: str,
        params: Mapping[str, Any],
        fingerprint_before: str,
        fingerprint_after: str | None,
        metrics: Mapping[str, Any],
        seconds: float,
        status: str = "ok",
    ) -> int:
        """Record one unlearning request as a new committed row; return its id.

        ``items`` are the forgotten items themselves: only their salted hashes are stored.
        ``fingerprint_after`` may be None only when ``status`` is ``"failed"``.
        """
        fields = _validated_fields(
            subject, method, params, fingerprint_before, fingerprint_after, metrics, seconds, status
        )
        if isinstance(items, (str, bytes, bytearray)):  # iterating would hash each character as an item
            raise UserInputError("The ledger row's items must be a list of items, not a single string; "
                                 "pass [item] to record one.")
        forms = [item_bytes(item) for item in items]  # bad items fail here, before anything is written
        if not forms:
            raise UserInputError("The ledger row lists no forgotten items; pass at least one item.")
        with self._database_errors("written"):
            if not self._ready:
                self._check_new_salt()  # a bad salt is refused before the file is made
                self._create_schema()
            self._ensure_wal()
            key = self._load_salt(create=False)
            fields["item_hashes"] = [hmac.new(key, form, hashlib.sha256).hexdigest() for form in forms]
            with self._writer.begin() as conn:
                return self._insert(conn, fields, key)

    def check_writable(self) -> None:
        """Raise :class:`UserInputError` now if :meth:`append` would fail on the salt or the head, so a caller
        can refuse a request before doing (and writing) any work. Writes nothing."""
        if self._target.sqlite_path is not None:
            _check_writable_location(self._target.sqlite_path)
        with self._database_errors("written"):
            if not self._ready:
                self._check_new_salt()
                return
            key = self._load_salt(create=False)
            with self._engine.connect() as conn:
                self._checked_head(dict(conn.execute(_READ_HEADS).all()), key)

    def _check_new_salt(self) -> None:
        """For a new ledger: its salt is given, or read from a file, and valid; or its salt file can be made."""
        from_file = self._salt_given is None and not (self._salt_file is None and os.environ.get(SALT_ENV))
        path = self.salt_path if from_file else None
        if from_file and (path is None or not path.exists()):
            _check_salt_folder(path, self._target.label)  # the salt file that the first append will make
        else:
            self._load_salt(create=False)

    def _checked_head(self, heads: Mapping[str, str], key: bytes) -> tuple[int, str]:
        """The head's ``(id, hash)`` after checking it is present and well formed and the salt is the ledger's."""
        label = self._target.label
        if "head" not in heads:
            raise UserInputError(f"The ledger {label} is damaged: its head record is missing.")
        if "salt_check" not in heads:
            raise UserInputError(f"The ledger {label} is damaged: its salt check record is missing.")
        if heads["salt_check"] != _salt_check(key):
            raise self._wrong_salt()
        return _parse_head(heads["head"], label)

    def _insert(self, conn: sa.engine.Connection, fields: dict[str, Any], key: bytes) -> int:
        head_id, head_hash = self._checked_head(dict(conn.execute(_LOCK_HEAD).all()), key)
        row = {
            "id": head_id + 1,
            "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            **fields,
            "prev_hash": head_hash,
        }
        row["row_hash"] = row_hash(row)
        stored = {k: (canonical_json(v) if k in _JSON_FIELDS else v) for k, v in row.items()}
        conn.execute(_INSERT_ROW, stored)
        conn.execute(_MOVE_HEAD, {"head_value": canonical_json({"id": row["id"], "hash": row["row_hash"]})})
        return row["id"]

    def _create_schema(self) -> None:
        """Create the tables and meta rows on first write (under the write lock, so racing creators agree).

        A new SQLite file is switched to WAL (:meth:`_ensure_wal`) only once they are committed: the switch writes
        the file's header, and a run stopped between the two left a file without tables, which verify (and so
        `forget`) refuses as a ledger whose tables were dropped. Until the commit the file stays empty, which reads
        as no ledger.
        """
        try:
            with self._writer.begin() as conn:
                if not self._judge(conn):
                    key = self._load_salt(create=True)  # a new salt only ever goes with a new ledger
                    _metadata.create_all(conn)
                    conn.execute(
                        sa.insert(_meta_table),
                        [
                            {"key": "schema_version", "value": SCHEMA_VERSION},
                            {"key": "created_at", "value": datetime.now(timezone.utc).isoformat()},
                            {"key": "head", "value": canonical_json({"id": 0, "hash": GENESIS_HASH})},
                            {"key": "salt_check", "value": _salt_check(key)},
                        ],
                    )
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
            # Another server-side process created the schema between our check and our CREATE.
            with self._engine.connect() as conn:
                if not self._judge(conn):
                    raise
        self._ready = True

    def _ensure_wal(self) -> None:
        """Put a SQLite ledger in WAL mode before this instance's first write (a no-op on a file already in it): a
        run stopped between creating the tables and the switch left the file in rollback-journal mode."""
        if self._target.sqlite_path is not None and not self._wal:
            _enable_wal(self._engine, self._busy_timeout_s)
            self._wal = True

    # ----- reading

    def _reading(self) -> bool:
        """Whether there is a ledger to read; raise when the SQLite file does not exist at all."""
        path = self._target.sqlite_path
        if path is not None and not path.exists():
            raise UserInputError(f"The ledger {path} does not exist yet; it is created by the first append.")
        if not self._ready:
            with self._engine.connect() as conn:
                self._ready = self._judge(conn)
        return self._ready

    def _stored_rows(self, conn: sa.engine.Connection, query: Any = None) -> Iterator[Mapping[str, Any]]:
        query = query if query is not None else sa.select(_rows_table).order_by(_rows_table.c.id)
        result = conn.execute(query)
        names = list(result.keys())
        for values in result:
            yield dict(zip(names, values))

    @_reading_errors
    def rows(self, last: int | None = None) -> list[LedgerRow]:
        """Every row (or the ``last`` most recent ones), in id order; a damaged row (unreadable JSON, a field of
        the wrong type) is a :class:`UserInputError` (:meth:`verify` reports on the whole ledger)."""
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 1):
            raise UserInputError(f"The number of rows to read must be a positive integer, got {last!r}.")
        if not self._reading():
            return []
        query = None
        if last is not None:  # the newest ones, read from the end of the id index; put back in id order below
            # a LIMIT is a signed 64-bit integer (SQLite, PostgreSQL): a larger N raised OverflowError; no ledger
            # holds more rows than that, so it means every row
            query = sa.select(_rows_table).order_by(_rows_table.c.id.desc()).limit(min(last, 2**63 - 1))
        with self._engine.connect() as conn:
            rows = [_row_from_db(record, self._target.label) for record in self._stored_rows(conn, query)]
        return sorted(rows, key=lambda row: row.id)

    @_reading_errors
    def count(self) -> int:
        """How many rows the ledger holds."""
        if not self._reading():
            return 0
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_rows_table)).scalar_one())

    @_reading_errors
    def get(self, row_id: int) -> LedgerRow:
        """The row with this id; a missing, damaged or non-integer id is a :class:`UserInputError`."""
        if isinstance(row_id, bool) or not isinstance(row_id, int):  # 1.9 would have read row 1
            raise UserInputError(f"A ledger row id is an integer, got {row_id!r}.")
        if self._reading() and 1 <= row_id <= _MAX_ID:  # a larger id overflows the database's integer
            with self._engine.connect() as conn:
                query = sa.select(_rows_table).where(_rows_table.c.id == int(row_id))
                record = conn.execute(query).mappings().first()
            if record is not None:
                return _row_from_db(record, self._target.label)
        raise UserInputError(f"The ledger {self._target.label} has no row {row_id}.")

    @_reading_errors
    def head(self) -> tuple[int, str]:
        """(last id, its row_hash) as recorded in the head; (0, 64 zeros) for an empty ledger."""
        if not self._reading():
            return 0, GENESIS_HASH
        with self._engine.connect() as conn:
            value = conn.execute(_READ_HEAD).scalar_one_or_none()
        if value is None:
            raise UserInputError(f"The ledger {self._target.label} is damaged: its head record is missing.")
        return _parse_head(value, self._target.label)

    def verify(self, expect_head: str | None = None) -> VerifyResult:
        """Check every row's hash, the chain links, contiguous ids and the head; report the first bad row.

        The chain alone cannot catch a consistent rewrite (rows edited, inserted, deleted or reordered, and
        every later row re-hashed). ``expect_head``, a head row_hash printed by an earlier verify and kept
        elsewhere, catches one that reaches back to that row: it must still be the row_hash of a row.
        """
        if expect_head is not None and not _HEX64.fullmatch(expect_head):
            raise UserInputError(f"The expected head {expect_head!r} is not a row_hash (64 lowercase hex digits).")
        path = self._target.sqlite_path
        if expect_head not in (None, GENESIS_HASH) and path is not None and not _has_content(path):
            # a new ledger has no rows either, but a published head says this one had them
            return VerifyResult(False, None, f"no row has the published head hash {expect_head}: the ledger file "
                                f"{'is empty' if path.exists() else 'is gone'}, so every row up to it was deleted")
        result, seen = self._verify_chain(expect_head)
        if result.ok and expect_head not in (None, GENESIS_HASH) and not seen:
            return VerifyResult(False, None, f"no row has the published head hash {expect_head}: the rows up to "
                                "it were rewritten, reordered or deleted and the chain re-hashed", result.rows,
                                result.head_hash)
        return result

    @_reading_errors
    def _verify_chain(self, expect_head: str | None) -> tuple[VerifyResult, bool]:
        """The chain check of :meth:`verify`, and whether a row has the row_hash ``expect_head``."""
        if not self._reading():
            path = self._target.sqlite_path
            if path is not None and path.stat().st_size == 0:  # like a missing file (which _reading() refuses)
                raise UserInputError(f"The ledger {path} is an empty file: nothing is recorded in it yet "
                                     "(the first append creates its tables).")
            if path is not None:
                return VerifyResult(False, None, _NO_TABLES), False
            return VerifyResult(True, None, "the ledger is empty"), False
        seen = False
        with self._engine.connect() as conn, _lenient_text(conn), conn.begin():  # one snapshot for rows and head
            heads = dict(conn.execute(_READ_HEADS).all())
            checker = _ChainChecker()
            for record in self._stored_rows(conn):
                bad = checker.feed(record)
                if bad is not None:
                    return bad, seen
                seen = seen or record["row_hash"] == expect_head
        return self._check_heads(heads, checker), seen

    def _check_heads(self, heads: Mapping[str, str], checker: "_ChainChecker") -> VerifyResult:
        if "head" not in heads:
            return VerifyResult(False, None, "the ledger head record is missing", checker.count)
        if "salt_check" not in heads:  # without it, appends with any salt would pass
            return VerifyResult(False, None, "the ledger's salt check record is missing", checker.count)
        try:
            head_id, head_hash = _parse_head(heads["head"], self._target.label)
        except UserInputError:
            return VerifyResult(False, None, "the ledger head record is not readable", checker.count)
        return checker.finish(head_id, head_hash)

    def check_item(self, item: Any) -> list[tuple[int, str]]:
        """``(row id, time)`` of every row that lists this item's salted hash (empty: never recorded).

        A question/answer or input/label record also matches as ``unlearnkit forget`` recorded it
        (:func:`recorded_forms`): its used fields only, numbers compared by value. A row lists its items
        whatever its status: see :meth:`matching_rows` for whether the request changed the model.
        """
        return [(row.id, row.time) for row in self.matching_rows(item)]

    @_reading_errors
    def matching_rows(self, item: Any) -> list[LedgerRow]:
        """Every row that lists this item's salted hash, in id order (matched as in :meth:`check_item`). A matched
        row whose content no longer matches its hash (a status edited from diverged to ok, say) is refused:
        what it says cannot be trusted."""
        if not self._reading():
            return []
        key = self._load_salt(create=False)
        digests = {hmac.new(key, item_bytes(form), hashlib.sha256).hexdigest() for form in recorded_forms(item)}
        with self._engine.connect() as conn:
            recorded = conn.execute(_READ_SALT_CHECK).scalar_one_or_none()
            if recorded is None:
                raise UserInputError(f"The ledger {self._target.label} is damaged: its salt check record is missing.")
            if recorded != _salt_check(key):
                raise self._wrong_salt()
            matches = sa.or_(*(_rows_table.c.item_hashes.contains(digest) for digest in digests))
            query = sa.select(_rows_table).where(matches).order_by(_rows_table.c.id)
            stored = list(self._stored_rows(conn, query))
        found = []
        for record in stored:
            row = _row_from_db(record, self._target.label)
            if not digests & set(row.item_hashes):  # the query matched a digest's text elsewhere in the field
                continue
            fault = _content_fault(record)
            if fault is not None:
                raise UserInputError(f"Row {row.id} of the ledger {self._target.label} lists this item, but {fault}; "
                                     "`unlearnkit ledger verify` reports on the whole ledger.")
            found.append(row)
        return found


class _ChainChecker:
    """Walks rows in id order and finds the first one whose content or link was altered.

    A broken link between rows a and b (b.prev_hash != a.row_hash) where both rows hash correctly
    means one of them was rewritten *and* re-hashed. Re-hashing a row changes its row_hash, which
    breaks the link to its successor too, so the next link decides: intact → row a was rewritten;
    broken → row b was.
    """

    def __init__(self) -> None:
        self.count = 0
        self.last_id = 0
        self.last_hash = GENESIS_HASH
        self.pending: tuple[int, int] | None = None  # (a, b) of an undecided broken link

    def feed(self, data: Mapping[str, Any]) -> VerifyResult | None:
        expected = self.last_id + 1
        row_id = data["id"] if type(data["id"]) is int else expected  # _content_fault reports a bad id type
        if row_id != expected:
            if self.pending:
                return self._decide(link_intact=False)
            if row_id > expected:
                return self._bad(expected, f"row {expected} is missing (the next row is {row_id})")
            return self._bad(row_id, f"row id {row_id} is out of sequence (expected {expected})")
        fault = _content_fault(data)
        if fault is not None:
            if self.pending:
                return self._decide(link_intact=False)
            return self._bad(row_id, fault)
        if self.pending:
            return self._decide(link_intact=data["prev_hash"] == self.last_hash)
        if data["prev_hash"] != self.last_hash:
            self.pending = (self.last_id, row_id)
        self.count, self.last_id, self.last_hash = self.count + 1, row_id, data["row_hash"]
        return None

    def finish(self, head_id: int, head_hash: str) -> VerifyResult:
        if self.pending:
            return self._decide(link_intact=head_id == self.last_id and head_hash == self.last_hash)
        if head_id > self.last_id:
            return self._bad(self.last_id + 1, f"row {self.last_id + 1} is missing (the head records {head_id} rows)")
        if head_id < self.last_id:
            return self._bad(head_id + 1, "it is not covered by the ledger head (added outside the ledger)")
        if head_hash != self.last_hash:
            return self._bad(self.last_id, "its row_hash differs from the ledger head (rewritten and re-hashed)")
        return VerifyResult(True, None, "chain intact", self.count, self.last_hash)

    def _decide(self, *, link_intact: bool) -> VerifyResult:
        before, after = self.pending  # type: ignore[misc]
        if link_intact and before > 0:
            return self._bad(before, f"its row_hash differs from the prev_hash in row {after} (rewritten, re-hashed)")
        return self._bad(after, f"its prev_hash differs from the row_hash of row {before} (rewritten and re-hashed)")

    def _bad(self, row_id: int, reason: str) -> VerifyResult:
        return VerifyResult(False, row_id, f"row {row_id}: {reason}", self.count, self.last_hash)


# --------------------------------------------------------------------------- helpers


def _has_content(path: Path) -> bool:
    """Whether the file at ``path`` exists and is not empty."""
    return path.exists() and path.stat().st_size > 0


@contextmanager
def _lenient_text(conn: sa.engine.Connection) -> Iterator[None]:
    """On SQLite, read text that is not UTF-8 (written by hand, never by an append) with surrogate escapes, so
    that verify names the row holding it instead of stopping at the driver's decoding error."""
    raw = conn.connection.dbapi_connection
    if not isinstance(raw, sqlite3.Connection):
        yield
        return
    raw.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
    try:
        yield
    finally:
        raw.text_factory = str


def _sqlite_on_begin(conn: sa.engine.Connection) -> None:
    # IMMEDIATE takes the writer lock before the head is read, so two appenders cannot both read the same head.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("unlearnkit_write") else "BEGIN")


def _enable_wal(engine: sa.engine.Engine, timeout_s: float = 30.0) -> None:
    # journal_mode cannot change inside a transaction, so this goes to the driver outside SQLAlchemy's.
    # Switching needs an exclusive lock and SQLite may answer "locked" at once instead of waiting for
    # a writer that is creating the same ledger, so retry until the busy timeout.
    import sqlite3
    import time

    deadline = time.monotonic() + timeout_s
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        while True:
            try:
                driver.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:  # e.g. a read-only folder or file
                    raise sa_exc.OperationalError("PRAGMA journal_mode=WAL", None, error) from None
                time.sleep(0.01)


def _validated_fields(
    subject: str,
    method: str,
    params: Mapping[str, Any],
    fingerprint_before: str,
    fingerprint_after: str | None,
    metrics: Mapping[str, Any],
    seconds: float,
    status: str,
) -> dict[str, Any]:
    """The row fields other than id, time, items and chain, checked and normalised."""
    if status not in STATUSES:
        raise UserInputError(f"The ledger status {status!r} is not one of {', '.join(STATUSES)}.")
    if not isinstance(method, str) or not method.strip():
        raise UserInputError("The ledger row needs a method name (a non-empty string).")
    for name, value in (("fingerprint_before", fingerprint_before), ("fingerprint_after", fingerprint_after)):
        if value is None and name == "fingerprint_after" and status == "failed":
            continue
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            raise UserInputError(f"The {name} {value!r} is not a SHA-256 fingerprint (64 lowercase hex digits).")
    for name, value in (("params", params), ("metrics", metrics)):
        if not isinstance(value, Mapping):
            raise UserInputError(f"The ledger {name} must be a mapping, not a {type(value).__name__}.")
    try:
        seconds = float(seconds) + 0.0  # -0.0 is stored as 0 and read back as 0.0: its hash would never verify
    except (TypeError, ValueError, OverflowError):
        raise UserInputError(f"The duration {seconds!r} is not a number of seconds.") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise UserInputError(f"The duration {seconds!r} is not a non-negative number of seconds.")
    fields = {
        "subject": str(subject or ""),
        "method": method,
        "params": _plain_json(params, what="params"),
        "fingerprint_before": fingerprint_before,
        "fingerprint_after": fingerprint_after,
        "metrics": _plain_json(metrics, what="metrics"),
        "seconds": seconds,
        "status": status,
    }
    for name in ("subject", "method", "params", "metrics"):  # the row hash is taken over UTF-8: fail before any file exists
        _utf8(canonical_json(fields[name]), f"The ledger row's {name}")
    return fields


def _read_or_create_salt(path: Path | None, label: str, *, create: bool) -> str:
    """The salt text in ``path``; with ``create``, a new random one written atomically with mode 0600."""
    if path is None:
        raise UserInputError(
            f"The ledger {label} is not a file, so it needs a salt: pass salt=, --salt-file or set {SALT_ENV}."
        )
    if not path.exists() and create:
        _create_salt_file(path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UserInputError(f"The salt file {path} does not exist (a salt is made only with a new ledger).") from None
    except UnicodeDecodeError:  # the decoder's message quotes a byte of the file: of the secret salt
        raise UserInputError(f"The salt file {path} is not UTF-8 text (write the salt as text, e.g. 64 hex "
                             "digits).") from None
    except OSError as error:
        raise UserInputError(f"The salt file {path} cannot be read ({error.strerror}).") from None
    if not text:
        raise UserInputError(f"The salt file {path} is empty.")
    return text


def _check_salt_folder(path: Path | None, label: str) -> None:
    """A new salt file can be made at ``path`` (its folder exists), or one sentence why not."""
    if path is None:
        raise UserInputError(
            f"The ledger {label} is not a file, so it needs a salt: pass salt=, --salt-file or set {SALT_ENV}."
        )
    if not path.parent.is_dir():
        raise UserInputError(f"The directory {path.parent} for the salt file does not exist.")
    if not _writable(path.parent):
        raise UserInputError(f"The directory {path.parent} for the salt file is read-only.")


def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` (False on a read-only file system, even for root)."""
    return os.access(path, os.W_OK)


def _check_writable_location(path: Path) -> None:
    """Raise unless a SQLite ledger at ``path`` can be created or appended to: SQLite writes the file and, beside
    it, its -wal and -shm files."""
    if not _writable(path.parent):
        raise UserInputError(f"The ledger {path} cannot be written: its folder {path.parent} is read-only.")
    if path.exists() and not _writable(path):
        raise UserInputError(f"The ledger {path} cannot be written: the file is read-only.")


def _read_only_copy(path: Path) -> bool:
    """Whether ``path`` is a SQLite file in a folder this process cannot write and no writer has open (no -wal file):
    SQLite cannot make the -shm file it needs to read a WAL database there, so it is read as immutable."""
    return (path.is_file() and path.stat().st_size > 0 and not _writable(path.parent)
            and not path.with_name(path.name + "-wal").exists())


def _parse_head(value: str, label: str) -> tuple[int, str]:
    """``(id, hash)`` of a stored head record, or one sentence saying it is damaged."""
    try:
        head = json.loads(value)
        return int(head["id"]), str(head["hash"])
    except (ValueError, TypeError, KeyError):
        raise UserInputError(f"The ledger {label} is damaged: its head record is not readable.") from None


def _create_salt_file(path: Path) -> None:
    if not path.parent.is_dir():
        raise UserInputError(f"The directory {path.parent} for the salt file does not exist.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # atomic create-if-absent: a racing process keeps the first salt
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)

"""Reading a user's forget/retain data files (JSONL, CSV, Parquet) with errors that name file, field and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from .errors import UserInputError

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
CSV_FIELD_LIMIT = 2**31 - 1  # characters in one CSV field (the largest the csv module takes everywhere)


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``(place, record)`` pairs from a JSONL, JSON, CSV or Parquet file; ``place`` says where the record is, for
    messages: "line 3" (JSON lines, CSV), "record 2 (line 11)" (a JSON array), "row 4" (Parquet)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"The data file {path} {not_a_file(path)}.")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserInputError(f"The data file {path} has an unknown format; use .jsonl, .json, .csv or .parquet.")
    try:
        with path.open("rb"):  # an unreadable file is named as such (Parquet's reader would call it foreign)
            pass
        records = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[kind](path)
    except UnicodeDecodeError:
        raise UserInputError(f"The data file {path} is not text in UTF-8; expected {kind}.") from None
    except OSError as error:
        raise UserInputError(f"The data file {path} cannot be read ({error.strerror or type(error).__name__}).") from None
    if not records:
        raise UserInputError(f"The data file {path} holds no records.")
    return records


def not_a_file(path: Path) -> str:
    """Why ``path``, which is not a regular file, cannot be read as one (the end of a sentence)."""
    if path.is_dir():
        return "is a folder"
    return "is not a regular file (a pipe or device); give a file saved on disk" if path.exists() else "does not exist"


def _jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    # utf-8-sig: a byte order mark (Windows editors write one) is not part of the first record
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = parse_json(text, str(path))
        except json.JSONDecodeError as error:
            raise UserInputError(f"{path} is not valid JSON (line {error.lineno}: {error.msg}).") from None
        places = [f"record {i + 1} (line {line})" for i, line in enumerate(_element_lines(text, len(rows)))]
        return [(place, _as_record(row, path, place)) for place, row in zip(places, rows)]
    records = []
    # at newlines only (read_text made \r\n and \r into \n): str.splitlines also splits at U+2028, U+2029
    # and U+0085, which JSON strings may hold unescaped
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = parse_json(line, f"{path} line {number}")
        except json.JSONDecodeError as error:
            if path.suffix.lower() == ".json" and _one_json_value(text):
                raise UserInputError(f"{path} holds one JSON value over several lines; expected one object per line "
                                     "or one JSON array of objects.") from None
            raise UserInputError(f"{path} line {number} is not valid JSON ({error.msg}).") from None
        records.append((f"line {number}", _as_record(row, path, f"line {number}")))
    return records


def parse_json(text: str, where: str) -> Any:
    """``text`` as JSON, each object naming its fields once; nesting too deep, an over-long number or a field named
    twice (json would keep its last value silently) is one sentence starting with ``where``. A syntax error is left
    to the caller, as :class:`json.JSONDecodeError`, to word for its format."""
    try:
        return json.loads(text, object_pairs_hook=_unique_fields)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise UserInputError(f"{where} is nested too deeply to be read as JSON.") from None
    except ValueError:  # an integer beyond Python's digit limit for int(str)
        raise UserInputError(f"{where} holds a number too long to be read as JSON.") from None
    except _FieldTwice as twice:
        raise UserInputError(f"{where} names the field {twice.name!r} twice in one object; give each field once.") from None


class _FieldTwice(Exception):
    """A JSON object names one field twice."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        raise _FieldTwice(next(name for i, (name, _) in enumerate(pairs) if name in dict(pairs[:i])))
    return record


def _one_json_value(text: str) -> bool:
    """Whether ``text`` as a whole is one JSON value (a pretty-printed object, say), not JSON lines."""
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _element_lines(text: str, count: int) -> list[int]:
    """The line each of the ``count`` elements of the JSON array ``text`` (already parsed) starts on."""
    decoder, lines, at = json.JSONDecoder(), [], text.index("[") + 1
    line, counted = 1, 0  # newlines are counted from the previous element on: from the start each time was
    for _ in range(count):  # quadratic (a 10,000-record pretty-printed array took 13 s to read, 50,000 over 4 min)
        while text[at] in " \t\r\n,":
            at += 1
        line += text.count("\n", counted, at)
        counted = at
        lines.append(line)
        at = decoder.raw_decode(text, at)[1]
    return lines


def _as_record(row: Any, path: Path, place: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise UserInputError(f"{path} {place} is not a JSON object with named fields.")
    return row


def _csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    # the default limit (131,072 characters) is below a flattened image written as "[...]" text
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(handle)
        try:
            if not reader.fieldnames:
                if reader.fieldnames is not None and any(reader.reader):  # a blank first line, rows after it
                    raise UserInputError(f"{path} line 1 is empty; the first line of a CSV file must name its columns.")
                return []
            names = reader.fieldnames
            twice = next((i for i, name in enumerate(names) if name in names[:i]), None)
            if twice is not None:  # DictReader would keep the last such column's values and drop the others
                # by position, not by name: a file without a header line would put an item's text in the message
                raise UserInputError(f"{path} line {reader.line_num} gives columns {names.index(names[twice]) + 1} and "
                                     f"{twice + 1} the same name; the first line of a CSV file must name each column once.")
            return [(f"line {reader.line_num}", _csv_record(row, path, f"line {reader.line_num}")) for row in reader]
        except csv.Error as error:
            # the inner reader's count: it includes the line that failed
            raise UserInputError(f"{path} line {reader.reader.line_num} is not valid CSV ({error}).") from None


def _csv_record(row: dict[Any, Any], path: Path, place: str) -> dict[str, Any]:
    if None in row:  # DictReader files values beyond the header's names under the key None
        raise UserInputError(f"{path} {place} has {len(row[None])} more value(s) than the header has column names.")
    return row


def _parquet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a foreign file
        raise UserInputError(f"The data file {path} is not a readable Parquet file ({type(error).__name__}).") from None
    narrow = {field.name: field.type for field in table.schema if _holds_narrow_floats(field.type)}
    rows = table.to_pylist()
    for row in rows if narrow else ():
        for name, type_ in narrow.items():
            row[name] = _shortest(row[name], type_)
    return [(f"row {i + 1}", row) for i, row in enumerate(rows)]


def _holds_narrow_floats(type_: Any) -> bool:
    """True when a Parquet column of this type holds float32 or float16 values, at any depth."""
    import pyarrow as pa

    if pa.types.is_float32(type_) or pa.types.is_float16(type_):
        return True
    return any(_holds_narrow_floats(type_.field(i).type) for i in range(type_.num_fields))


def _shortest(value: Any, type_: Any) -> Any:
    """A float32 (float16) value as the shortest decimal that reads back to it: -1.126, as a JSONL or CSV file gives
    the same number, not its float64 widening -1.1260000467300415. The model trains on the same float32 either way;
    the ledger and the forget/retain/training-data comparisons see the same item whatever format carried it."""
    import numpy as np
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_float32(type_) or pa.types.is_float16(type_):
        return float(str((np.float32 if pa.types.is_float32(type_) else np.float16)(value)))
    if pa.types.is_struct(type_):
        return {field.name: _shortest(value[field.name], field.type) for field in type_}
    if pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_):
        return [_shortest(item, type_.value_type) for item in value]
    return value  # a map's entries (pairs) are left as pyarrow gives them


def require_fields(records: Sequence[tuple[str, dict[str, Any]]], fields: Sequence[str], path: str | Path) -> None:
    """Every record must hold every named field (non-empty)."""
    for place, record in records:
        for name in fields:
            if record.get(name) == "":
                raise UserInputError(f"{path} {place} has an empty {name!r}; every item needs a non-empty one.")
            if name in record and record[name] is None:  # JSON null, Parquet null, or a CSV row cut short
                raise UserInputError(f"{path} {place} has no value for the field {name!r}; every item needs one.")
            if record.get(name) is None and FORMATS.get(Path(path).suffix.lower()) == "csv":
                # the header's names are not repeated: in a file without a header line they are an item's text
                raise UserInputError(f"{path} line 1 names no column {name!r}; the first line of a CSV file must name "
                                     f"its columns, e.g. {','.join(fields)}.")
            if record.get(name) is None:
                raise UserInputError(f"{path} {place} has no field {name!r} (fields found: {', '.join(record) or 'none'}).")

"""Read and write question/answer splits in the file layout of TOFU (Maini et al., "TOFU: A Task of
Fictitious Unlearning for LLMs", 2024; ``locuslab/TOFU``).

TOFU ships one file per split, named ``<split>.json`` and holding one JSON object per line:
``forget01/05/10``, ``retain90/95/99``, ``holdout01/05/10``, ``full`` with ``question`` and
``answer``; ``forgetXX_perturbed`` and ``retain_perturbed`` add ``paraphrased_answer`` and
``perturbed_answer`` (a list); ``world_facts_perturbed`` / ``real_authors_perturbed`` have
``perturbed_answer`` but no paraphrase. The reader accepts JSON lines or one JSON array, in
``.json`` or ``.jsonl`` files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserInputError
from ..eval.language import check_item
from ..io import atomic_dir, check_output, write_json_atomic, write_text_atomic
from ..request import ForgetRequest

QA_FIELDS = ("question", "answer")
EVAL_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


def read_tofu_file(path: str | Path, required: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The items of one TOFU-format file, checked for ``required`` fields.

    By default ``question`` and ``answer`` are required, plus ``perturbed_answer`` in files whose
    name ends in ``_perturbed``. ``paraphrased_answer`` must be a string and ``perturbed_answer``
    a list of strings wherever they appear.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"The TOFU file {path} does not exist.")
    if required is None:
        required = QA_FIELDS + (("perturbed_answer",) if path.stem.endswith("_perturbed") else ())
    records = _parse(path)
    for number, record in enumerate(records, start=1):
        check_item(record, f"record {number} of {path}", required)
    return records


def _parse(path: Path) -> list[dict[str, Any]]:
    from ..userdata import parse_json

    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (some editors write one) is no part of the JSON
    except UnicodeDecodeError:
        raise UserInputError(f"The TOFU file {path} is not text in UTF-8.") from None
    except OSError as error:
        raise UserInputError(f"The TOFU file {path} cannot be read ({error.strerror or type(error).__name__}).") from None
    if not text.strip():
        raise UserInputError(f"The TOFU file {path} is empty.")
    where = f"The TOFU file {path}"
    if text.lstrip().startswith("["):
        try:
            return parse_json(text, where)
        except json.JSONDecodeError as error:
            raise UserInputError(f"{where} is not valid JSON or JSON lines ({error.msg} at line {error.lineno}).") from None
    records = []
    # each line parsed alone, to name the file's line; lines end at "\n" only (str.splitlines also splits at U+2028,
    # U+0085 and others, which JSON strings may hold unescaped: json.dumps(ensure_ascii=False), as the export, writes them)
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(parse_json(line, where))
        except json.JSONDecodeError as error:
            raise UserInputError(f"{where} is not valid JSON or JSON lines ({error.msg} at line {number}).") from None
    return records


def read_tofu_dir(directory: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every ``*.json`` / ``*.jsonl`` split of a TOFU-format folder, keyed by file stem.

    Items without an ``id`` get ``"<split>:<index>"``. ``meta.json`` is not a split and is skipped.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"The TOFU data directory {directory} does not exist.")
    files = sorted(p for p in directory.iterdir() if p.suffix in (".json", ".jsonl") and p.stem != "meta" and p.is_file())
    if not files:
        raise UserInputError(f"The TOFU data directory {directory} holds no .json or .jsonl split files.")
    for path in files:
        find_split_file(directory, path.stem)  # one file per split: a .json and a .jsonl of one split are refused
    splits = {}
    for path in files:
        items = read_tofu_file(path)
        splits[path.stem] = [{"id": f"{path.stem}:{i}", **item} for i, item in enumerate(items)]
    return splits


def tofu_request(directory: str | Path, split: str = "forget10") -> ForgetRequest:
    """A request over ``forgetXX`` + its ``retainYY`` read from a TOFU-format folder (forget ids first).

    An item of both files (the same ``id``, or the same question and answer) is refused: TOFU's ``retainYY`` is
    ``full`` without ``forgetXX``, and an item cannot be both forgotten and retained."""
    if split not in RETAIN_OF:
        raise UserInputError(f"Unknown TOFU forget split {split!r}; valid: {', '.join(RETAIN_OF)}.")
    directory = Path(directory)
    forget = _split_file(directory, split)
    retain = _split_file(directory, RETAIN_OF[split])
    forget_items = read_tofu_file(forget)
    retain_items = read_tofu_file(retain)
    ids = {item["id"] for item in forget_items if isinstance(item.get("id"), (str, int))}
    pairs = {(item["question"], item["answer"]) for item in forget_items}
    for number, item in enumerate(retain_items, start=1):
        same_id = isinstance(item.get("id"), (str, int)) and item["id"] in ids
        if same_id or (item["question"], item["answer"]) in pairs:
            raise UserInputError(f"Record {number} of {retain} is also an item of {forget.name} (the same "
                                 f"{'id' if same_id else 'question and answer'}); an item cannot be both "
                                 f"forgotten and retained: {retain.name} must be the full data without {forget.name}.")
    data = forget_items + retain_items
    n = len(forget_items)
    return ForgetRequest(data, range(n), range(n, len(data)), reason=f"tofu:{split}")


def find_split_file(directory: Path, split: str) -> Path | None:
    """The one file of ``split`` (``<split>.json`` or ``<split>.jsonl``), None when there is none; a folder holding
    both is refused, since which of the two is the split cannot be told."""
    found = [directory / f"{split}{suffix}" for suffix in (".json", ".jsonl") if (directory / f"{split}{suffix}").is_file()]
    if len(found) > 1:
        raise UserInputError(f"The TOFU data directory {directory} holds both {split}.json and {split}.jsonl; keep the "
                             "one that is the split.")
    return found[0] if found else None


def _split_file(directory: Path, split: str) -> Path:
    found = find_split_file(directory, split)
    if found is None:
        raise UserInputError(f"The TOFU data directory {directory} has no {split}.json or {split}.jsonl file.")
    return found


# ---------------------------------------------------------------------------- export
def _jsonl(items: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    return "".join(json.dumps({"id": it["id"], **{f: it[f] for f in fields}}, ensure_ascii=False) + "\n" for it in items)


def facts_tofu_files(data: Any) -> dict[str, str]:
    """The text of every TOFU-layout file for a generated ``facts`` benchmark, by file name.

    ``full`` is the target model's whole training set (people, general facts and reading items); the
    general facts, trained into every model, stand where TOFU has ``world_facts_perturbed``; the
    neighbour sets (``forgetXX_direct`` / ``_indirect``) go beyond TOFU's layout. Unlike TOFU's
    ``retain90 = full − forget10``, ``retainYY`` lists the retained people's questions only, while
    ``models/retainYY`` was also trained on the general facts and reading items; and ``evaluate``
    scores every ``retain_perturbed`` item where ``bench`` scores a seeded 400, so model utility
    can differ slightly between the two for the same models.
    """
    from .facts import FORGET_SPLITS, HOLDOUT_SPLITS

    files = {"full.json": _jsonl(data.train, QA_FIELDS)}
    for split in FORGET_SPLITS:
        forgotten = set(data.split_people[split])
        kept = [it for it in data.train if it.get("person") is not None and it["person"] not in forgotten]
        files[f"{split}.json"] = _jsonl(data.splits[split], QA_FIELDS)
        files[f"{split}_perturbed.json"] = _jsonl(data.splits[split], EVAL_FIELDS)
        files[f"{RETAIN_OF[split]}.json"] = _jsonl(kept, QA_FIELDS)
        for kind in ("direct", "indirect"):
            files[f"{split}_{kind}.json"] = _jsonl(data.splits[f"{split}_{kind}"], EVAL_FIELDS)
    for split in HOLDOUT_SPLITS:
        files[f"{split}.json"] = _jsonl(data.splits[split], EVAL_FIELDS)
    files["retain_perturbed.json"] = _jsonl(data.splits["retain"], EVAL_FIELDS)
    files["world_facts_perturbed.json"] = _jsonl(data.splits["general"], EVAL_FIELDS)
    return files


def export_facts(config: Any, out_dir: str | Path, splits: Sequence[str] = ("forget10",), *, overwrite: bool = False) -> Path:
    """Write the ``facts`` benchmark for ``config`` in TOFU's layout, with its models, atomically.

    ``out_dir`` gets every split file (see :func:`facts_tofu_files`), ``models/target`` and one
    ``models/retainYY`` per forget split in ``splits`` (Hugging Face folders, trained now unless
    cached), and ``meta.json`` (the config and each model's training record).
    """
    from .cache import cache_root
    from .facts import FORGET_SPLITS, cached_facts_model, load_facts

    unknown = [s for s in splits if s not in FORGET_SPLITS]
    if unknown:
        raise UserInputError(f"Unknown forget split {unknown[0]!r}; valid: {', '.join(FORGET_SPLITS)}.")
    check_output(out_dir, overwrite=overwrite, inputs=(cache_root(),))  # before any model is trained
    data = load_facts(config)
    models = {"target": cached_facts_model(config, "target")}
    models.update({RETAIN_OF[s]: cached_facts_model(config, "retain", s) for s in splits})
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for name, text in facts_tofu_files(data).items():
            write_text_atomic(tmp / name, text)
        for name, (model_dir, _meta) in models.items():
            shutil.copytree(model_dir, tmp / "models" / name, ignore=shutil.ignore_patterns("meta.json"))
        write_json_atomic(tmp / "meta.json", {"benchmark": "facts", "config": config.to_dict(),
                                               "models": {name: meta for name, (_d, meta) in models.items()}})
    return Path(out_dir)

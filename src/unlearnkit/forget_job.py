"""``unlearnkit forget``: unlearn a user's own model from data files, write it atomically, record it in the ledger.

Every input is checked before any work; on any error nothing is written (no output folder, no
ledger row). The input model folder is only read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .errors import UserInputError
from .io import check_output, named_files
from .ledger import recorded_form
from .userdata import read_records, require_fields


@dataclass
class ForgetJob:
    """Everything ``unlearnkit forget`` was asked to do."""

    model: Path
    forget: Path
    method: str
    out: Path
    retain: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)
    ledger: str = "unlearnkit-ledger.db"
    salt_file: Path | None = None
    subject: str = ""
    overwrite: bool = False
    trust_pickle: bool = False
    show_examples: bool = False
    training_data: Path | None = None
    question_field: str = "question"
    answer_field: str = "answer"
    input_field: str = "input"
    label_field: str = "label"
    memory: Any = None  # unlearnkit.train.lora.MemoryOptions: LoRA, bf16, gradient checkpointing (LMs)
    system_prompt: str | None = None  # LMs: the prompt format the model was fine-tuned with
    template_args: dict[str, str] = field(default_factory=dict)
    max_length: int | None = None  # LMs: tokens read per item (default: the model's positions, at most 512)


def _check_paths(job: ForgetJob, ledger: Any) -> None:
    if not job.model.is_dir():
        raise UserInputError(f"The model folder {job.model} does not exist or is not a folder.")
    from .adapters.causal_lm import model_folders

    inputs = (*model_folders(job.model), job.forget, job.retain, job.training_data, ledger.salt_path, ledger.file_path,
              *named_files(job.params))  # an adapter's base model folders are inputs too
    check_output(job.out, overwrite=job.overwrite, inputs=inputs)


def _model_kind(directory: Path) -> str:
    from .adapters.classifier_spec import read_spec
    from .methods.saved import BASE_FOLDER, wrapper_method

    wrapper = wrapper_method(directory)
    if wrapper is not None:
        raise UserInputError(f"The folder {directory} holds a {wrapper} model, which serves its unchanged base model "
                             f"through inference-time state and cannot be unlearned further; run the request (with "
                             f"the earlier items to forget) on its base model {directory / BASE_FOLDER}.")
    if read_spec(directory) is not None:
        return "classifier"
    if (directory / "config.json").is_file() or (directory / "adapter_config.json").is_file():
        return "causal_lm"
    raise UserInputError(
        f"The folder {directory} holds no Hugging Face causal LM (config.json), PEFT adapter (adapter_config.json) "
        "or classifier (unlearnkit.json)."
    )


def _load_classifier(directory: Path, trust_pickle: bool):
    from .adapters.classifier import ClassifierAdapter
    from .adapters.classifier_spec import build_classifier, check_fits, read_spec
    from .io import load_state_dict

    spec = read_spec(directory)
    model = build_classifier(spec)
    weights = next((directory / n for n in ("model.safetensors", "model.pt", "pytorch_model.bin") if (directory / n).is_file()), None)
    if weights is None:
        raise UserInputError(f"The classifier folder {directory} has no model.safetensors.")
    state = load_state_dict(weights, trust_pickle=trust_pickle)
    if isinstance(state, torch.nn.Module):  # torch.save(model): a trusted pickle of the whole module holds its weights
        state = state.state_dict()
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"The weights file {weights} does not hold a mapping of parameter names to tensors.")
    check_fits(spec, state, f"The weights in {weights}")
    model.load_state_dict(state)
    return ClassifierAdapter(model.eval(), int(spec["num_classes"])), spec


def _classifier_items(records, job: ForgetJob, path: Path, spec: Mapping[str, Any]) -> list[tuple[torch.Tensor, int]]:
    from .adapters.classifier_spec import input_shape

    require_fields(records, [job.input_field, job.label_field], path)
    shape = input_shape(spec)
    items = []
    for place, record in records:
        raw = record[job.input_field]
        try:
            parsed = json.loads(raw) if isinstance(raw, str) else raw
            if _holds_bool(parsed):  # torch reads true as 1.0; the ledger and the overlap checks would not
                raise TypeError
            values = torch.tensor(parsed, dtype=torch.float32)
            items.append((values.reshape(shape), _label(record[job.label_field])))
        except (ValueError, RuntimeError, TypeError, OverflowError):  # OverflowError: an infinite label
            raise UserInputError(f"{path} {place}: field {job.input_field!r} is not {int(np.prod(shape))} numbers "
                                 f"or {job.label_field!r} is not an integer label.") from None
        if not bool(torch.isfinite(values).all()):
            raise UserInputError(f"{path} {place}: field {job.input_field!r} holds NaN or an infinite value; "
                                 "inputs must be finite numbers.")
        if not 0 <= items[-1][1] < int(spec["num_classes"]):
            raise UserInputError(f"{path} {place}: label {items[-1][1]} is outside 0..{int(spec['num_classes']) - 1}.")
    return items


def _holds_bool(value: Any) -> bool:
    """Whether a parsed input holds true or false anywhere (it must hold numbers only)."""
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    return isinstance(value, bool)


def _label(value: Any) -> int:
    """A class label: a whole number (text such as "3" and floats such as 3.0 included), never a bool."""
    if isinstance(value, str):
        value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise ValueError(f"not a whole-number label: {value!r}")
    return int(value)


def _used_fields(job: ForgetJob, kind: str) -> tuple[str, str]:
    return (job.question_field, job.answer_field) if kind == "causal_lm" else (job.input_field, job.label_field)


def _lm_items(records, job: ForgetJob, path: Path) -> list[dict[str, str]]:
    require_fields(records, [job.question_field, job.answer_field], path)
    items = []
    for place, record in records:
        for name in (job.question_field, job.answer_field):
            value = record[name]
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):  # str() would invent the text
                raise UserInputError(f"{path} {place}: field {name!r} holds a {type(value).__name__}, not text.")
            if isinstance(value, float):  # its text is gone: 2.50 reads as 2.5, 1e3 as 1000.0
                raise UserInputError(f"{path} {place}: field {name!r} holds a number with a decimal point or an "
                                     "exponent; put it in quotes, so that the text forgotten is the text you wrote.")
            _require_utf8(str(value), f"{path} {place}: field {name!r}")
            if not str(value).strip():  # the reader refuses empty values, not spaces alone
                raise UserInputError(f"{path} {place}: field {name!r} is blank; each item needs a question and an answer.")
        items.append({"question": str(record[job.question_field]), "answer": str(record[job.answer_field])})
    return items


def _require_utf8(text: str, what: str) -> None:
    """Refuse text that has no UTF-8 form: a lone surrogate, from bytes that were not UTF-8 on the command
    line or from a JSON escape such as \\udc80. The ledger hashes text as UTF-8, so it could not record it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UserInputError(f"{what} holds {text[error.start:error.end]!r}, which is not valid Unicode text; "
                             "give it in UTF-8.") from None


def _content_key(record: Mapping[str, Any], kind: str, fields: tuple[str, str]) -> str:
    """The item as the ledger records it (:func:`recorded_form`: the used fields, compared by value whatever file
    format carried them, a label as the number it trains as)."""
    return json.dumps(recorded_form(record, kind, fields), sort_keys=True)


def _check_in_training_data(job: ForgetJob, forget_records, kind: str) -> None:
    fields = _used_fields(job, kind)
    known = {_content_key(record, kind, fields) for _, record in read_records(job.training_data)
             if all(name in record for name in fields)}  # a record without them cannot be a forget item
    for place, record in forget_records:
        if _content_key(record, kind, fields) not in known:
            raise UserInputError(f"{job.forget} {place} is not in the training data {job.training_data}.")


def _check_each_item_once(job: ForgetJob, forget_records, retain_records, kind: str) -> None:
    """Refuse an item the forget file lists twice (it would be unlearned, scored and recorded twice) or that both
    files list (it cannot be both forgotten and kept)."""
    fields = _used_fields(job, kind)
    forget_places = {}
    for place, record in forget_records:
        first = forget_places.setdefault(_content_key(record, kind, fields), place)
        if first != place:
            raise UserInputError(f"{job.forget} {place} holds the same item as its {first}; give each item once.")
    for place, record in retain_records:
        twin = forget_places.get(_content_key(record, kind, fields))
        if twin is not None:
            raise UserInputError(f"{job.retain} {place} holds the same item as {job.forget} {twin}; "
                                 "an item cannot be both forgotten and kept.")


@torch.no_grad()
def _scores(adapter: Any, forget: list, retain: list) -> dict[str, dict[str, torch.Tensor]]:
    """Per-item loss (and, for a classifier, whether the prediction is right) of the forget and retain items.

    Under several processes each scores a contiguous shard and the per-item values are gathered
    in order, so the values are those of one process.
    """
    from .adapters.base import batches, device_of
    from .train.distributed import gather_in_order, shard

    device = device_of(adapter.model)
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for name, items in (("forget", forget), ("retain", retain)):
        if not items:
            continue
        losses, correct = [], []
        for chunk in batches(shard(items), 64, shuffle=False, seed=0):
            batch = {k: v.to(device) for k, v in adapter.collate(chunk).items()}
            losses.append(adapter.per_item_loss(adapter.model, batch).float().cpu())
            if adapter.kind == "classifier":
                correct.append((adapter.logits(adapter.model, batch).argmax(1) == batch["labels"]).cpu())
        scores[name] = {"loss": torch.cat(gather_in_order(losses))}
        if adapter.kind == "classifier":
            scores[name]["correct"] = torch.cat(gather_in_order(correct)).float()
    return scores


def _summary(scores: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Mean loss (and accuracy or answer probability) on the forget and retain items."""
    metrics: dict[str, float] = {}
    for name, values in scores.items():
        metrics[f"{name}_loss"] = float(values["loss"].mean())
        if "correct" in values:
            metrics[f"{name}_acc"] = float(values["correct"].mean())
        else:
            metrics[f"{name}_prob"] = float(torch.exp(-values["loss"]).mean())
    return metrics


def _check_usable(after: Mapping[str, float]) -> None:
    """Refuse a result whose losses are NaN, or whose retain loss is infinite: a diverged run whose weights
    stayed finite (the loop restores only non-finite weights), which must not be written or recorded as ok."""
    bad = [k for k, v in after.items() if math.isnan(v) or (k.startswith("retain") and math.isinf(v))]
    if bad:
        raise UserInputError(f"The unlearned model's {bad[0]} is {after[bad[0]]}: the run diverged (a lower lr may "
                             "help); nothing was written.")


def _item_rows(scores: Mapping[str, Mapping[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """The report's per-item rows, ids as in the request (forget items first, then retain items): a
    classifier's loss and p(true label), a language model's answer NLL, which is also its loss MIA score."""
    rows: list[dict[str, Any]] = []
    for split, values in scores.items():
        for loss in values["loss"].tolist():
            scored = ({"loss": loss, "true_prob": math.exp(-loss)} if "correct" in values
                      else {"answer_nll": loss, "mia_loss": loss})
            rows.append({"split": split, "item": len(rows), **scored})
    return rows


def _save_model(adapter: Any, model: torch.nn.Module, spec: Mapping[str, Any] | None, directory: Path,
                method: str) -> None:
    from .io import save_state_dict
    from .methods.registry import get_method

    for attribute, filename in get_method(method).saves.items():  # what the method left for later use
        if getattr(model, attribute, None) is not None:
            save_state_dict(getattr(model, attribute), directory / filename)
    if spec is not None:
        from .adapters.classifier_spec import save_classifier

        save_classifier(model, dict(spec), directory)
    else:  # a Hugging Face model, a LoRA adapter folder or an inference-time wrapper
        adapter.save_pretrained(directory, model=model)


def run_forget(job: ForgetJob, log=print) -> dict[str, Any]:
    """Carry out a forget job; return the run summary that was written to ``out/run.json``."""
    from .ledger import Ledger

    _require_utf8(job.subject or "", "The --subject")
    with Ledger(job.ledger, salt_file=job.salt_file) as ledger:  # closed however the run ends
        return _run_with_ledger(job, ledger, log)


def _run_with_ledger(job: ForgetJob, ledger: Any, log) -> dict[str, Any]:
    from .api import check_lora, unlearn_on_training_device, validate_runs
    from .io import atomic_dir, fingerprint, write_json_atomic
    from .methods.registry import get_method
    from .request import ForgetRequest
    from .train.distributed import check_launch, is_main_process, on_main, training_device
    from .train.lora import merged_state_dict
    from .benchmarks.results import write_items
    from .train.measure import memory_of

    _check_paths(job, ledger)
    kind = _model_kind(job.model)
    if kind != "classifier":  # an option the method cannot use, before data and model load (a classifier's refusal
        check_lora(get_method(job.method), job.memory)  # of LM options comes with its model)
    forget_records = read_records(job.forget)
    retain_records = read_records(job.retain) if job.retain else []
    _check_ledger_accepts_rows(job, ledger)
    adapter, spec, forget, retain = _load_model_and_items(job, kind, forget_records, retain_records)
    ledger_items = [recorded_form(record, kind, _used_fields(job, kind)) for _, record in forget_records]
    request = ForgetRequest(forget + retain, range(len(forget)), range(len(forget), len(forget) + len(retain)) if retain else None,
                            reason=job.subject)
    settings = validate_runs([job.method], {job.method: job.params}, adapter, request)[job.method]
    check_launch()
    if job.memory is not None:
        job.memory.check(adapter)

    device = training_device()
    adapter.model.to(device)  # score on this process's GPU when it has one
    scores_before = _scores(adapter, forget, retain)
    before = _summary(scores_before)
    fingerprint_before = fingerprint(adapter.model.state_dict())
    adapter.model.to("cpu")  # only the working copy needs the device while unlearning
    model, record = unlearn_on_training_device(adapter.model, request, job.method, adapter=adapter,
                                               memory=job.memory, **settings)
    scores_after = _scores(adapter.with_model(model), forget, retain)
    after = _summary(scores_after)
    _check_usable(after)
    item_rows = {"original": _item_rows(scores_before), job.method: _item_rows(scores_after)}
    summary = {"method": job.method, "kind": kind, "subject": job.subject, "status": record.status,
               "message": record.message, "seconds": record.seconds, **memory_of(record),
               "params": record.params, "metrics_before": before, "metrics_after": after,
               "fingerprint_before": fingerprint_before, "fingerprint_after": fingerprint(merged_state_dict(model)),
               "forget_items": len(forget), "retain_items": len(retain), "losses": record.losses}
    if record.info:
        summary["info"] = record.info
    if kind == "causal_lm" and (job.system_prompt or job.template_args):  # needed to score the model the same way
        summary["prompt_format"] = {"system_prompt": job.system_prompt, "template_args": job.template_args}
    if kind == "causal_lm":
        summary["max_length"] = adapter.max_length

    def write() -> int:  # one output folder and one ledger row, however many processes ran
        for peft_config in getattr(model, "peft_config", {}).values():  # a LoRA adapter names its base model
            peft_config.base_model_name_or_path = str(job.model.resolve())
        row_ids = []

        def record_in_ledger() -> None:
            row_ids.append(ledger.append(job.subject, ledger_items, job.method, record.params, fingerprint_before,
                                         summary["fingerprint_after"], after, record.seconds, record.status))

        # the row goes in only once the output is in place (a refused append removes it again), so a crash
        # can leave an output without its row but never a row without its output
        with atomic_dir(job.out, overwrite=job.overwrite, on_placed=record_in_ledger) as tmp:
            _save_model(adapter, model, spec, tmp, job.method)
            write_json_atomic(tmp / "run.json", summary)
            for name, rows in item_rows.items():  # what the metrics of run.json and the ledger average (ids, numbers)
                write_items(tmp / "items" / f"{name}.jsonl", rows)
            _write_report(tmp, summary, forget_records, job, item_rows)
        return row_ids[0]

    summary["ledger_row"] = on_main(write)
    if is_main_process():
        log(f"{job.method}: forget {before} -> {after} in {record.seconds:.2f}s; status {record.status}; "
            f"ledger row {summary['ledger_row']}")
        if record.info.get("warning"):
            log(f"warning: {job.method}: {record.info['warning']}")
        if record.status == "ok" and not after["forget_loss"] > before["forget_loss"]:
            log(_not_forgotten_warning(before, after, summary["fingerprint_after"] != fingerprint_before))
    return summary


def _check_ledger_accepts_rows(job: ForgetJob, ledger: Any) -> None:
    """Refuse, before any work, a ledger that fails verification, sits in a missing folder or has the wrong salt."""
    # a path or a sqlite:/// URL; an empty file is a place for a new ledger, as a missing one is
    new_file = ledger.file_path is not None and (not ledger.file_path.exists() or ledger.file_path.stat().st_size == 0)
    if new_file and not ledger.file_path.parent.is_dir():
        raise UserInputError(f"The ledger's folder {ledger.file_path.parent} does not exist.")
    health = ledger.verify() if not new_file else None
    if health is not None and not health.ok:
        where = f" at row {health.first_bad_id}" if health.first_bad_id is not None else ""
        raise UserInputError(f"The ledger {job.ledger} fails verification{where} ({health.reason}); "
                             "refusing to append to it.")
    ledger.check_writable()  # a wrong or missing salt is refused now, before any work


def _load_model_and_items(job: ForgetJob, kind: str, forget_records: list, retain_records: list
                          ) -> tuple[Any, Any, list, list]:
    """(adapter, classifier spec or None, forget items, retain items), once every data check has passed."""
    if kind == "classifier":
        if job.system_prompt or job.template_args or job.max_length is not None:
            raise UserInputError("--system-prompt, --template-arg and --max-length shape a language model's prompts; "
                                 f"{job.model} holds a classifier.")
        adapter, spec = _load_classifier(job.model, job.trust_pickle)
        forget = _classifier_items(forget_records, job, job.forget, spec)
        retain = _classifier_items(retain_records, job, job.retain, spec) if job.retain else []
    else:
        spec = None
        forget = _lm_items(forget_records, job, job.forget)
        retain = _lm_items(retain_records, job, job.retain) if job.retain else []
    _check_each_item_once(job, forget_records, retain_records, kind)
    if job.training_data is not None:
        _check_in_training_data(job, forget_records, kind)
    if kind != "classifier":  # loaded once the data checks pass: a language model can take minutes to load
        from .methods.saved import load_causal_lm

        adapter = load_causal_lm(job.model, system_prompt=job.system_prompt, template_args=job.template_args,
                                 max_length=job.max_length)
        for path, records, items in ((job.forget, forget_records, forget), (job.retain, retain_records, retain)):
            adapter.refuse_unreadable(items, [f"{path} {place}" for place, _ in records])
    return adapter, spec, forget, retain


def _not_forgotten_warning(before: Mapping[str, float], after: Mapping[str, float], changed: bool) -> str:
    """The warning for a run that ended with the forget items' mean loss no higher than before."""
    what = ("the model changed, but this run may not have forgotten them" if changed
            else "the model's weights did not change")
    return (f"warning: the forget items' mean loss did not rise ({before['forget_loss']:.4g} -> "
            f"{after['forget_loss']:.4g}): {what}; stronger settings (more epochs, a higher lr) or another method "
            "may be needed.")


def _write_report(directory: Path, summary: Mapping[str, Any], forget_records, job: ForgetJob,
                  items: Mapping[str, list[dict[str, Any]]]) -> None:
    from .report.html import write_report
    from .train.measure import MEMORY_FIELDS

    runs = [{"method": "original", "reference": True, "metrics": summary["metrics_before"], "seconds": 0.0,
             "status": "ok", "params": {}},
            {"method": summary["method"], "reference": False, "metrics": summary["metrics_after"],
             "seconds": summary["seconds"], "status": summary["status"], "message": summary["message"],
             "params": summary["params"], "info": summary.get("info") or {}, "losses": summary["losses"],
             **{name: summary[name] for name in MEMORY_FIELDS}}]
    results = {"benchmark": "forget", "seed": summary["params"].get("seed"), "runs": runs}
    # default=str: a Parquet column of dates, decimals or bytes (used by the model or not) is shown, not a crash
    examples = ({i: json.dumps(record, ensure_ascii=False, default=str) for i, (_, record) in enumerate(forget_records)}
                if job.show_examples else None)
    write_report(directory / "report.html", results, items, show_examples=job.show_examples, examples=examples)

"""The causal-LM bench: unlearn with each method on ``facts`` and score it with the TOFU/MUSE suite.

The target model and the retain model (trained without the forgotten people) appear as reference
rows; forget quality and privleak of every model are measured against the retain model.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..api import check_lora, seeded_defaults, unlearn, validate_runs, warm_up
from ..errors import UserInputError
from ..eval.attacks import RelearnSettings, check_attack_items, parse_attacks, run_attacks
from ..eval.language import LM_METRICS, evaluate_lm, lm_metrics
from ..io import atomic_dir, check_output, named_files
from ..methods.registry import get_method, method_config, methods
from ..report.html import write_report
from ..train.measure import memory_of, reference_memory
from .cache import cache_root
from .results import machine_info, memory_baseline, method_warnings, reference_notes, write_items, write_results
from .timing import recipe_pace, timing_notes

COLUMNS = ("method", "forget_quality", "model_utility", "forget_truth_ratio", "forget_prob", "forget_rouge",
           "retain_rouge", "general_rouge", "mia_loss_auc", "mia_minkpp_auc", "privleak", "extraction_strength",
           "seconds", "time_vs_retrain", "peak_mem_mb", "added_mem_mb", "status")

ATTACK_COLUMNS = ("relearn_recovery", "relearn_recovery_control", "in_context_recovery",
                  "in_context_recovery_control", "quantized_forget_quality", "quantized_forget_quality_control",
                  "quantized_model_utility")

#: Retain questions scored per model (TOFU scores 400); a seeded sample keeps evaluation within a minute.
RETAIN_EVAL_ITEMS = 400

#: Settings the facts bench uses where a method's generic default does not suit the facts models
#: (a 2-layer GPT-2 that memorised 200 people), for every split alike. Chosen by the rules of
#: :mod:`unlearnkit.benchmarks.selection` on forget10 of world seed 1 (other people, facts and
#: initial weights), which the bench never reports: ``make select-facts`` reruns it and writes
#: docs/results/facts-selection.md. sam_npo's ρ has the lowest relearning recovery of 0.1, 0.2, 0.5,
#: 1, 2. npo runs a fast recipe (one pass of at most 16 steps, 64 forget items per batch each paired
#: with retain neighbours linked to the same forgotten person, a KL retain term) at the lr of 0.004–0.01 whose mean over three
#: unlearning seeds comes closest to forget quality 0.5 at utility 0.97× the retain model's. RMU runs 24 epochs, the
#: centre of the widest run of even counts in 6–30 reaching forget quality 0.3 on world 1 (20–28, with the world-1
#: models trained on 2 torch threads; with the earlier cache's models no count reached it and RMU kept its generic
#: 10). Shown in every results.json under
#: ``params``; override with ``--param``.
FACTS_METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "rmu": {"epochs": 24},
    "sam_npo": {"sam_rho": 0.5},
    "npo": {"epochs": 1, "max_steps": 16, "batch_size": 64, "alpha": 20.0, "retain_loss": "kl", "sampling": "modular",
            "lr": 0.01},
}

#: The learning rate these methods run at on the facts bench's scratch models, in place of their defaults for
#: language models (1e-5, OpenUnlearning's, for pretrained LMs): the small GPT-2 trained from scratch at lr 5e-3
#: needs about 100 times more to move in 10 epochs. 1e-3 is what the LM-only methods' defaults were before they
#: became the papers', and finetune and neggrad_plus keep their classifier defaults; not selected on any world
#: (npo's selected recipe sets its own lr over this one).
FACTS_SCALE_SETTINGS: dict[str, dict[str, Any]] = {
    **{name: {"lr": 1e-3} for name in ("graddiff", "npo", "simnpo", "rmu", "idk_dpo", "sam_npo")},
    "finetune": {"lr": 5e-3}, "neggrad_plus": {"lr": 2e-3},
}


def facts_settings(base: str) -> dict[str, dict[str, Any]]:
    """The settings the facts bench gives each method in place of its defaults: for the scratch GPT-2, its scale's
    lr (:data:`FACTS_SCALE_SETTINGS`) under the selected :data:`FACTS_METHOD_SETTINGS`; none for another base."""
    if base != "scratch":
        return {}
    names = [*FACTS_SCALE_SETTINGS, *(name for name in FACTS_METHOD_SETTINGS if name not in FACTS_SCALE_SETTINGS)]
    return {name: {**FACTS_SCALE_SETTINGS.get(name, {}), **FACTS_METHOD_SETTINGS.get(name, {})} for name in names}


RETRAIN_SEEDS_NOTE = ("each `retain_seed<s>` row is the retain model trained again with seed s (other initial weights and "
                      "batch order, same data and recipe), scored against `retain` like a method: how far exact "
                      "retraining alone moves each metric.")


def default_lm_methods() -> list[str]:
    """Every registered method that works on causal LMs."""
    return [name for name, cls in methods().items() if "causal_lm" in cls.kinds]


def runnable_defaults(params: Mapping[str, Mapping[str, Any]], adapter: Any, base: str,
                      memory: Any = None) -> tuple[list[str], list[str]]:
    """The default methods this model (and ``--lora``) can serve, and one note per method it cannot (why it was
    not run).

    Only a method's own refusal of the model or of LoRA skips it; bad settings still fail the whole run.
    """
    defaults = facts_settings(base)
    names, notes = [], []
    for name in default_lm_methods():
        method = get_method(name)
        config = method_config(name, {**defaults.get(name, {}), **params.get(name, {})}, adapter.kind)
        try:
            method.check_model(adapter, config)
            check_lora(method, memory)
        except UserInputError as refusal:
            notes.append(f"{name} was not run: {refusal}")
        else:
            names.append(name)
    return names, notes


def retain_eval_items(config: Any) -> int:
    """Retain questions scored per model: :data:`RETAIN_EVAL_ITEMS`, fewer on the costly smollm2 base."""
    if config.base == "smollm2":
        from .smollm2 import RETAIN_EVAL_ITEMS as SMOLLM2_RETAIN_EVAL_ITEMS

        return SMOLLM2_RETAIN_EVAL_ITEMS
    return RETAIN_EVAL_ITEMS


def method_settings(names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None, adapter: Any,
                    request: Any, base: str = "scratch", seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each method's settings: the world's ``seed`` (the methods' own randomness follows it) and
    :func:`facts_settings` (chosen for the scratch GPT-2, so not applied to other bases) under the
    user's ``--param`` values, validated."""
    chosen = facts_settings(base)
    return validate_runs(names, params or {}, adapter, request, seeded_defaults(names, seed, chosen))


def bench_relearn_settings(config: Any) -> RelearnSettings:
    """The relearning attack the facts bench (and the selection of its settings) runs: scaled to the lr the
    models were trained with, seeded with the config's seed."""
    return RelearnSettings.scaled_to(config.lr, seed=config.seed)


def check_settings(names: Sequence[str] | None, params: Mapping[str, Mapping[str, Any]] | None,
                   base: str = "scratch") -> None:
    """Refuse, before any model is trained or loaded, a setting that needs no model to be judged wrong: an unknown
    method or setting name, a value of the wrong type or range (the checks that need the model follow later)."""
    chosen = facts_settings(base)
    for name in names or (params or {}):
        method_config(name, {**chosen.get(name, {}), **(params or {}).get(name, {})}, "causal_lm")


def own_adapter(adapter: Any) -> Any:
    """``adapter`` (same model, tokenizer and prompt format) with an empty tokenization cache, for one method's timed
    run: the method tokenizes its own items, as the retain model's training did, instead of reusing the ids that
    evaluation and earlier methods left in a shared cache (which made a method's time depend on what ran before)."""
    return adapter.with_model(adapter.model, share_tokens=False)


def step_seconds(references: Sequence[tuple[str, Any, Mapping[str, Any]]]) -> dict[str, float]:
    """Each reference model's training time per optimizer step (its cached meta's ``train_seconds / steps``)."""
    return {role: meta["train_seconds"] / meta["steps"] for role, _, meta in references
            if meta.get("steps") and meta.get("train_seconds")}


def recorded_settings(config: Any, names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None
                      ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``params`` plus what the target's training recorded for a method, and a note on what recording it cost:
    ``first_epoch_ga`` reads the forget items' first-epoch embedding gradients (the paper's g₁; recorded once by
    replaying the target's first epoch, then cached) unless ``--param first_epoch_ga.gradients=...`` names another
    file (empty: current gradients)."""
    params = {name: dict(values) for name, values in (params or {}).items()}
    notes = []
    if "first_epoch_ga" in names and "gradients" not in params.get("first_epoch_ga", {}):
        from .facts import cached_first_epoch_gradients

        path, meta = cached_first_epoch_gradients(config)
        params.setdefault("first_epoch_ga", {})["gradients"] = str(path)
        took = f"{meta['record_seconds']:.1f} s" if "record_seconds" in meta else "a time not recorded"
        notes.append("first_epoch_ga's seconds leave out recording the first-epoch gradients it ascends: a training run "
                     "records them as it goes; the bench recorded them once, by replaying the target's first epoch "
                     f"({took}).")
    return params, notes


def check_retrain_seeds(seeds: Sequence[int], config: Any) -> None:
    """Raise :class:`UserInputError` unless ``seeds`` are distinct non-negative integers other than the
    retain model's own training seed."""
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise UserInputError(f"--retrain-seeds must be distinct non-negative integers, got {list(seeds)}.")
    if config.training_seed in seeds:
        raise UserInputError(f"--retrain-seeds must differ from the retain model's own training seed {config.training_seed}.")


def evaluation_splits(data: Any, split: str, seed: int, retain_items: int = RETAIN_EVAL_ITEMS) -> dict[str, list[dict]]:
    """forget (the split), retain (a seeded sample of ``retain_items``), holdout of the same size class, general."""
    retain = list(data.split("retain"))
    if len(retain) > retain_items:
        retain = sorted(random.Random(seed).sample(retain, retain_items), key=lambda it: it["id"])
    return {"forget": list(data.split(split)), "retain": retain,
            "holdout": list(data.split(split.replace("forget", "holdout"))), "general": list(data.split("general"))}


def load_cached_model(config: Any, role: str, split: str = "forget10") -> tuple[Any, dict[str, Any]]:
    """The cached facts model of ``role`` (``target``, or the ``retain`` model of ``split``; trained now when
    missing) as a :class:`CausalLMAdapter` on this process's training device, with its meta."""
    from ..adapters.causal_lm import CausalLMAdapter
    from ..train.distributed import training_device
    from .facts import cached_facts_model

    directory, meta = cached_facts_model(config, role, split)
    adapter = CausalLMAdapter.from_pretrained(directory, max_length=config.max_length)
    adapter.model.to(training_device())
    return adapter, meta


def run_lm_bench(
    config: Any,
    split: str,
    method_names: Sequence[str] | None,
    out: Path,
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    command: str = "",
    attacks: Sequence[str] = (),
    log=print,
    memory: Any = None,
    retrain_seeds: Sequence[int] = (),
    relearn: RelearnSettings | None = None,
) -> dict[str, Any]:
    """Run the facts bench and write results.json, results.md and items/<model>.jsonl into ``out``.

    ``memory`` (LoRA, bf16, gradient checkpointing) applies to every method's run. Under several
    processes every one trains and scores its shard; only the main process logs and writes.
    Each of ``retrain_seeds`` adds a reference row ``retain_seed<s>``: the retain model trained
    again with that seed (initial weights and batch order), scored against the retain model like a
    method, to show how far exact retraining alone moves every metric (forget quality especially).
    ``relearn`` sets the relearning attack (default: :func:`bench_relearn_settings`).
    """
    from ..train.distributed import check_launch, is_main_process, on_main
    from .facts import facts_request, load_facts, training_recipe

    log = log if is_main_process() else _quiet  # one process reports

    attacks = parse_attacks(attacks)
    data = load_facts(config)
    request = facts_request(data, split)
    check_attack_items(len(request.forget), attacks)
    relearn = relearn or bench_relearn_settings(config)
    relearn.check()
    check_retrain_seeds(retrain_seeds, config)
    check_output(out, overwrite=overwrite, inputs=(cache_root(), *named_files(params or {})))
    check_settings(method_names, params, config.base)
    for name in method_names or ():  # the defaults skip what LoRA cannot serve (runnable_defaults)
        check_lora(get_method(name), memory)
    target, target_meta = load_cached_model(config, "target")
    names, not_run = (list(method_names), []) if method_names else runnable_defaults(params or {}, target, config.base,
                                                                                      memory)
    for name in params or {}:  # "not in --methods" would hide why: the defaults left it out
        why = next((note.split(": ", 1)[1] for note in not_run if note.startswith(f"{name} was not run: ")), None)
        if why is not None:
            raise UserInputError(f"Settings were given for {name}, which this bench cannot run: {why}")
    recorded, recording_notes = recorded_settings(config, names, params)
    settings = method_settings(names, recorded, target, request, config.base, config.seed)
    # settings the bench derives from the world (its seed) besides the seed: runs to summarise may differ in them
    seeded_params = {name: sorted(set(recorded.get(name, {})) - set((params or {}).get(name, {}))) for name in names}
    check_launch()
    if memory is not None:
        memory.check(target)  # before the retain model is trained or loaded
    retain_model, retain_meta = load_cached_model(config, "retain", split)
    retrain_seconds = retain_meta["train_seconds"]
    splits = evaluation_splits(data, split, config.seed, retain_eval_items(config))
    ids = {name: [it["id"] for it in items] for name, items in splits.items()}

    start = time.perf_counter()
    _, reference = evaluate_lm(retain_model, splits, None, ids=ids)
    reference_seconds = time.perf_counter() - start
    runs, items = [], {}
    controls: dict[str, float] = {}  # the retain model's attack results, measured once for every row

    def record_run(name: str, adapter: Any, run: dict[str, Any]) -> None:
        start = time.perf_counter()
        if name == "retain":  # its statistics are the reference's: score them, do not collect them again
            metrics, stats, eval_seconds = lm_metrics(reference, reference), reference, reference_seconds
        else:
            metrics, stats = evaluate_lm(adapter, splits, reference, ids=ids)
            eval_seconds = time.perf_counter() - start
        attack_rows: list[dict[str, Any]] = []
        if attacks and name != "retain":
            metrics.update(run_attacks(attacks, adapter, target, retain_model, splits["forget"], seed=config.seed,
                                       evaluate=lambda q: evaluate_lm(q, splits, reference, ids=ids)[0],
                                       relearn_settings=relearn, controls=controls, item_rows=attack_rows))
        runs.append({**run, "method": name, "retrain_seconds": retrain_seconds, "eval_seconds": eval_seconds,
                     "metrics": metrics})
        items[name] = [row for split_name, s in stats.items() for row in s.rows(split_name)] + attack_rows
        log(f"{name:>18}: forget_quality={metrics['forget_quality']:.3g} model_utility={metrics['model_utility']:.4f} "
            f"seconds={run['seconds']:.1f} ({run['seconds'] / retrain_seconds:.3f} of retrain) "
            f"evaluation={eval_seconds:.1f}s")

    references = [("target", target, target_meta), ("retain", retain_model, retain_meta)]
    for seed in retrain_seeds:
        seeded, seed_meta = load_cached_model(dataclasses.replace(config, train_seed=seed), "retain", split)
        references.append((f"retain_seed{seed}", seeded, seed_meta))
    for role, adapter, meta in references:
        record_run(role, adapter, {"reference": True, "params": meta["config"], "seeded_params": ["excluded_people"],
                                   "seconds": meta["train_seconds"], **reference_memory(meta), "status": "ok"})
    baseline = memory_baseline()
    warm_up(target.model, request, target, memory)
    pace = recipe_pace(training_recipe(config), own_adapter(target), data.train)
    for name in names:
        own = own_adapter(target)
        model, record = unlearn(own.model, request, name, adapter=own, memory=memory, **settings[name])
        record_run(name, target.with_model(model), {
            "reference": False, "params": record.params, "seeded_params": seeded_params[name],
            "seconds": record.seconds, **memory_of(record), "status": record.status, "message": record.message,
            "info": record.info, "losses": record.losses})

    results = {"benchmark": "facts", "split": split, "seed": config.seed, "retrain_seconds": retrain_seconds,
               "attacks": list(attacks),
               "metric_keys": list(LM_METRICS), "config": config.to_dict(),
               "machine": machine_info(), "runs": runs,
               "step_seconds": {**step_seconds(references), "now": pace}, **baseline}
    if "relearn" in attacks:
        results["relearn"] = dataclasses.asdict(relearn)
    notes = ([RETRAIN_SEEDS_NOTE] if retrain_seeds else []) + not_run + recording_notes
    notes += [relearn.describe(config.lr)] if "relearn" in attacks else []
    notes += unmemorised_notes(references, config.target_accuracy) + method_warnings(runs)
    notes += timing_notes(step_seconds(references), pace)
    notes += reference_notes({role: meta for role, _, meta in references}, results["machine"])
    if notes:
        results["notes"] = notes
    base = "" if config.base == "scratch" else f" --base {config.base}"
    command = command or f"unlearnkit bench --benchmark facts{base} --split {split}"
    title = f"facts — {split}" if config.base == "scratch" else f"facts ({config.base} base) — {split}"
    on_main(lambda: write_lm_results(out, results, items, title, command, overwrite=overwrite))
    return results


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """A log that says nothing (processes other than the main one)."""


def write_lm_results(out: Path, results: dict[str, Any], items: Mapping[str, list], title: str, command: str, *,
                     overwrite: bool) -> None:
    """results.json, results.md, items/<model>.jsonl and report.html, renamed into place together."""
    columns = COLUMNS + (ATTACK_COLUMNS if results.get("attacks") else ())
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_results(tmp, results, columns, title, command)
        for name, rows in items.items():
            write_items(tmp / "items" / f"{name}.jsonl", rows)
        write_report(tmp / "report.html", results, items)


#: TOFU file names used as each evaluation split, in order of preference.
TOFU_SPLIT_FILES = {
    "forget": ("{split}_perturbed",),
    "retain": ("retain_perturbed",),
    "holdout": ("{holdout}",),
    "general": ("world_facts_perturbed",),
    "real_authors": ("real_authors_perturbed",),
}
#: The fields each evaluation split needs, as TOFU ships them: the forget and retain sets are scored on a
#: paraphrase and perturbed answers, world facts and real authors against the original answer and perturbed
#: ones, the holdout (membership inference only) on its answers.
TOFU_SPLIT_FIELDS = {
    "forget": ("question", "answer", "paraphrased_answer", "perturbed_answer"),
    "retain": ("question", "answer", "paraphrased_answer", "perturbed_answer"),
    "holdout": ("question", "answer"),
    "general": ("question", "answer", "perturbed_answer"),
    "real_authors": ("question", "answer", "perturbed_answer"),
}
#: Splits a TOFU-format folder may lack: without real authors, model utility has six components, not nine.
OPTIONAL_TOFU_SPLITS = ("real_authors",)
#: New tokens of each ROUGE generation in ``evaluate`` (TOFU generates up to 200).
TOFU_MAX_NEW_TOKENS = 200


def unmemorised_notes(references: Sequence[tuple[str, Any, Mapping[str, Any]]], target_accuracy: float) -> list[str]:
    """A note for each reference model whose training stopped before it memorised its answers (its epoch limit
    came first): its rows, and every comparison with it, are then of a model that only partly knows its facts."""
    return [f"{role} stopped at answer-token accuracy {meta['answer_token_accuracy']:.4f}, below the "
            f"{target_accuracy} the recipe trains to (its epoch limit came first): it only partly memorised its "
            "training answers." for role, _, meta in references if meta.get("memorised") is False]


def tofu_evaluation_splits(directory: Path, split: str) -> dict[str, list[dict]]:
    """The evaluation splits from a TOFU-format folder (real authors only when present), each checked for
    the fields it needs (:data:`TOFU_SPLIT_FIELDS`); a missing or empty required file is named in the error."""
    from .tofu_format import find_split_file, read_tofu_file

    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise UserInputError(f"The data directory {directory} {what}; give the folder that holds the TOFU-format files.")
    if not split.startswith("forget"):
        raise UserInputError(f"Unknown forget split {split!r}; expected forget01, forget05 or forget10.")
    splits = {}
    for role, stems in TOFU_SPLIT_FILES.items():
        names = [s.format(split=split, holdout=split.replace("forget", "holdout")) for s in stems]
        path = next(filter(None, (find_split_file(directory, n) for n in names)), None)
        if path is None and role in OPTIONAL_TOFU_SPLITS:
            continue
        if path is None:
            raise UserInputError(f"The data directory {directory} has no {names[0]}.json (needed as the {role} set).")
        items = read_tofu_file(path, TOFU_SPLIT_FIELDS[role])
        if not items:
            raise UserInputError(f"The TOFU file {path} holds no items (needed as the {role} set).")
        splits[role] = [{**item, "id": f"{path.stem}:{i}"} for i, item in enumerate(items)]  # a record's own id never replaces it
    return splits


def check_exported_retain_model(data: Path, retain_model: Path, split: str) -> None:
    """Refuse a retain model that ``export`` wrote into ``data``'s models/ folder for another forget split: its
    statistics would be the reference for a forget set it was trained on. A model elsewhere is the user's to name."""
    from .tofu_format import RETAIN_OF

    try:
        name = Path(retain_model).resolve().relative_to((Path(data) / "models").resolve()).parts[0]
    except (ValueError, IndexError):
        return
    expected = RETAIN_OF.get(split)
    if name in RETAIN_OF.values() and name != expected:
        trained_without = next(s for s, retain in RETAIN_OF.items() if retain == name)
        raise UserInputError(f"The retain model {retain_model} is the data folder's {name}, trained without {trained_without}, "
                             f"not without {split}; give {Path(data) / 'models' / str(expected)} (export --split {split} "
                             "writes it).")


def scored_answers(items: Sequence[Mapping[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Each question with each answer an evaluation scores (answer, paraphrase, perturbed ones), named by the
    item's id and which answer it is."""
    found = []
    for item in items:
        answers = [("answer", item["answer"])] + ([("paraphrased answer", item["paraphrased_answer"])]
                                                   if "paraphrased_answer" in item else [])
        answers += [(f"perturbed answer {k + 1}", text) for k, text in enumerate(item.get("perturbed_answer") or ())]
        found += [({"question": item["question"], "answer": text}, f"{item['id']} ({which})") for which, text in answers]
    return found


def run_lm_evaluate(data: Path, model: Path, retain_model: Path, split: str, out: Path, *,
                    overwrite: bool = False, command: str = "", log=print,
                    max_new_tokens: int = TOFU_MAX_NEW_TOKENS,
                    prompt_format: Mapping[str, Any] | None = None, max_length: int | None = None) -> dict[str, Any]:
    """Score a user's model against their retain model on TOFU-format data; write results like ``bench``.

    Greedy answers for ROUGE get up to ``max_new_tokens`` new tokens (TOFU's 200 by default).
    ``prompt_format`` (``system_prompt``, ``template_args``) and ``max_length`` are passed to both models' adapters;
    an item longer than the adapters read is refused, not cut. The retain
    model is scored once: its statistics are the reference, and its own row is computed from them.
    """
    from ..methods.saved import load_causal_lm
    from ..train.distributed import is_main_process, on_main, training_device

    log = log if is_main_process() else _quiet

    from ..adapters.causal_lm import model_folders

    check_output(out, overwrite=overwrite, inputs=(data, *model_folders(model), *model_folders(retain_model)))
    if max_new_tokens < 1:
        raise UserInputError(f"max_new_tokens must be a positive integer, got {max_new_tokens}.")
    splits = tofu_evaluation_splits(data, split)
    check_exported_retain_model(data, retain_model, split)
    adapters = {name: load_causal_lm(path, **(prompt_format or {}), max_length=max_length)
                for name, path in (("model", model), ("retain", retain_model))}
    scored = [pair for items in splits.values() for pair in scored_answers(items)]
    for adapter in adapters.values():
        adapter.refuse_unreadable([item for item, _ in scored], [name for _, name in scored])
        adapter.model.to(training_device())
    ids = {name: [it["id"] for it in items] for name, items in splits.items()}
    _, reference = evaluate_lm(adapters["retain"], splits, None, ids=ids, max_new_tokens=max_new_tokens)
    runs, items = [], {}
    for name, adapter in adapters.items():
        if name == "retain":  # its statistics are the reference's: score them, do not collect them again
            metrics, stats = lm_metrics(reference, reference), reference
        else:
            metrics, stats = evaluate_lm(adapter, splits, reference, ids=ids, max_new_tokens=max_new_tokens)
        runs.append({"method": name, "reference": name == "retain", "params": {}, "seconds": float("nan"),
                     "retrain_seconds": float("nan"), "status": "ok", "metrics": metrics})
        items[name] = [row for split_name, s in stats.items() for row in s.rows(split_name)]
        log(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    utility_sets = "retain, real authors and world facts (TOFU's nine components)" if "real_authors" in splits else \
        "retain and world facts only: the folder has no real_authors_perturbed file (six components, not TOFU's nine)"
    results = {"benchmark": "tofu-format", "data": str(data), "split": split, "seed": None,
               "metric_keys": list(LM_METRICS), "runs": runs,
               "notes": [f"model_utility is the harmonic mean over {utility_sets}."]}
    on_main(lambda: write_lm_results(out, results, items, f"{data.name} — {split}", command or "unlearnkit evaluate",
                                     overwrite=overwrite))
    return results

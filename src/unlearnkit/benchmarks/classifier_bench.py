"""The classifier bench: unlearn with each method on digits/mnist and compare with retraining."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from ..api import seeded_defaults, unlearn, validate_runs, warm_up
from ..eval.classification import evaluate_classifier
from ..io import atomic_dir, check_output, named_files
from ..methods.registry import methods
from ..report.html import write_report
from ..request import ForgetRequest
from ..train.measure import memory_of, reference_memory
from .cache import cache_root
from .results import machine_info, memory_baseline, method_warnings, reference_notes, write_items, write_results
from .timing import recipe_pace, recipe_steps, timing_notes
from .vision import (BENCH_METHOD_SETTINGS, VisionBenchmark, cached_classifier, evaluation_split_ids, evaluation_splits,
                     forget_request, load_vision_benchmark, settings_note)

COLUMNS = ("method", "forget_acc", "retain_acc", "test_acc", "forget_test_acc", "mia_efficacy", "mia_auc",
           "avg_gap", "seconds", "time_vs_retrain", "peak_mem_mb", "added_mem_mb", "status")


def default_methods() -> list[str]:
    """Every registered method that works on classifiers, except ``retrain``: the reference row is one."""
    return [name for name, cls in methods().items() if "classifier" in cls.kinds and name != "retrain"]


@dataclass
class BenchCase:
    """One forget request of an image bench with what every method is measured against."""

    bench: VisionBenchmark
    request: ForgetRequest
    target: nn.Module
    target_meta: dict[str, Any]
    retrained: nn.Module
    retrain_meta: dict[str, Any]
    splits: dict[str, list]
    reference: dict[str, float]  # the retrained model's metrics


def prepare_case(bench: VisionBenchmark, scenario: str, request: ForgetRequest | None = None) -> BenchCase:
    """The request of ``scenario``, the cached target and retrained models, and the retrained model's metrics."""
    request = request or forget_request(bench, scenario)
    target, target_meta = cached_classifier(bench, [], "target")
    retrained, retrain_meta = cached_classifier(bench, list(request.forget), "retrain")
    splits = evaluation_splits(bench, request, scenario)
    reference = evaluate_classifier(bench.adapter(retrained), splits, seed=bench.seed).metrics
    return BenchCase(bench, request, target, target_meta, retrained, retrain_meta, splits, reference)


def step_seconds(bench: VisionBenchmark, metas: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Each reference model's training time per optimizer step, by role (its cached meta's seconds over the steps
    the bench's recipe takes on its training items)."""
    return {role: meta["train_seconds"] / recipe_steps(bench.recipe, meta["train_items"])
            for role, meta in metas.items() if meta.get("train_items") and meta.get("train_seconds")}


def run_classifier_bench(
    benchmark: str,
    scenario: str,
    method_names: Sequence[str] | None,
    out: Path,
    *,
    seed: int = 0,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    command: str = "",
    log=print,
) -> dict[str, Any]:
    """Run the bench and write results.json, results.md and items/<method>.jsonl into ``out``."""
    bench = load_vision_benchmark(benchmark, seed)
    request = forget_request(bench, scenario)
    names = list(method_names) if method_names else default_methods()
    # the run's seed drives the methods' own randomness too (batch order, random labels, teachers), as it
    # does the split, the forget set and the models' training; a --param METHOD.seed still overrides it
    own = BENCH_METHOD_SETTINGS[benchmark][scenario]
    defaults = seeded_defaults(names, seed, own)
    settings = validate_runs(names, params or {}, bench.adapter(None), request, defaults)
    check_output(out, overwrite=overwrite, inputs=(cache_root(), *named_files(params or {})))

    case = prepare_case(bench, scenario, request)
    target, splits, reference, retrain_seconds = case.target, case.splits, case.reference, case.retrain_meta["train_seconds"]
    notes = [settings_note(benchmark, scenario, seed, params)]
    if "ssd" in settings and not settings["ssd"].get("full_importance"):
        notes.append("ssd: the full-training-set importance is taken in the authors' order (retain items, then forget "
                     "items), which depends on the request, so it is computed within the request and `seconds` includes it.")
    split_ids = evaluation_split_ids(bench, request, scenario)  # every item row names its image
    runs, items = [], {}
    for role, model, meta in (("original", target, case.target_meta), ("retrain", case.retrained, case.retrain_meta)):
        evaluation = evaluate_classifier(bench.adapter(model), splits, reference, seed)
        runs.append({"method": role, "reference": True, "params": meta["config"]["recipe"], "seconds": meta["train_seconds"],
                     "retrain_seconds": retrain_seconds, **reference_memory(meta),
                     "status": "ok", "metrics": evaluation.metrics})
        items[role] = evaluation.item_rows(split_ids)
        log(f"{role:>16}: test_acc={evaluation.metrics['test_acc']:.4f} forget_acc={evaluation.metrics['forget_acc']:.4f}")

    memory = memory_baseline()
    warm_up(target, request, bench.adapter(target))
    pace = recipe_pace(bench.recipe, bench.adapter(target), bench.train)
    for method in names:
        model, record = unlearn(target, request, method, adapter=bench.adapter(target), **settings[method])
        name = f"{method}_method" if method in items else method  # never overwrite a reference row
        evaluation = evaluate_classifier(bench.adapter(model), splits, reference, seed)
        runs.append({"method": name, "reference": False, "params": record.params, "seconds": record.seconds,
                     "retrain_seconds": retrain_seconds, **memory_of(record), "status": record.status,
                     "message": record.message, "metrics": evaluation.metrics, "info": record.info,
                     "losses": record.losses})
        items[name] = evaluation.item_rows(split_ids)
        m = evaluation.metrics
        log(f"{name:>16}: forget_acc={m['forget_acc']:.4f} test_acc={m['test_acc']:.4f} avg_gap={m['avg_gap']:.4f} "
            f"time={record.seconds:.2f}s ({record.seconds / retrain_seconds:.3f} of retrain)")

    machine = machine_info()
    metas = {"original": case.target_meta, "retrain": case.retrain_meta}
    rates = step_seconds(bench, metas)
    notes += method_warnings(runs) + timing_notes(rates, pace, "retrain") + reference_notes(metas, machine)
    results = {"benchmark": benchmark, "scenario": scenario, "seed": seed, "retrain_seconds": retrain_seconds, "notes": notes, **memory,
               "machine": machine, "step_seconds": {**rates, "now": pace}, "runs": runs}
    command = command or f"unlearnkit bench --benchmark {benchmark} --scenario {scenario}"
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_results(tmp, results, COLUMNS, f"{benchmark} — {scenario} forgetting", command)
        for name, rows in items.items():
            write_items(tmp / "items" / f"{name}.jsonl", rows)
        write_report(tmp / "report.html", results, items)
    return results

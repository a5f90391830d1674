"""Choosing the facts bench's method settings on a held-out world, so the reported world is not read.

The facts bench reports world seed 0. The few settings it uses in place of a method's generic
defaults (:data:`~unlearnkit.benchmarks.lm_bench.FACTS_METHOD_SETTINGS`) are chosen on another
world, seed 1 by default: other people, names, countries and facts, and other initial weights and
batch order. Nothing of the reported world is read here. (The candidate grids and the bar below were
fixed earlier, with world 0's forget05 in view; the held-out world checks values under fixed
rules, it did not design the rules blind.) The rules:

- **rmu** ``epochs``: the centre of the widest run of consecutive candidate epoch counts whose
  forget quality is at least :data:`RMU_MIN_FORGET_QUALITY` (on a tie the run with fewer epochs).
  A run may be a single count: forget quality is erratic in the epoch count.
- **sam_npo** ``sam_rho``: the candidate with the lowest relearning recovery (SAM's purpose is
  robustness to relearning), among those whose recovery is defined (unlearning lowered the answers'
  probability enough to measure it).

``unlearnkit select-facts`` (or ``make select-facts``) reruns the selection and writes its table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..api import unlearn, validate_runs
from ..errors import UserInputError
from ..eval.attacks import run_attacks
from ..eval.language import evaluate_lm, lm_metrics
from ..io import write_text_atomic
from .results import markdown_table

#: Candidate epoch counts for RMU and the forget quality a count must reach to count as "holding".
RMU_EPOCHS = tuple(range(6, 32, 2))
RMU_MIN_FORGET_QUALITY = 0.3
#: Candidate SAM radii for SAM-NPO.
SAM_RHOS = (0.1, 0.2, 0.5, 1.0, 2.0)


def widest_run_centre(values: Sequence[Any], passing: Sequence[bool]) -> Any | None:
    """The centre of the widest run of consecutive passing ``values`` (the lower centre of an even
    run, the earlier run on a tie), or None when none passes."""
    best: tuple[int, int] | None = None  # (start, length)
    start = None
    for index, ok in enumerate([*passing, False]):
        if ok and start is None:
            start = index
        elif not ok and start is not None:
            if best is None or index - start > best[1]:
                best = (start, index - start)
            start = None
    return None if best is None else values[best[0] + (best[1] - 1) // 2]


def score_candidates(config: Any, split: str, method: str, setting: str, candidates: Sequence[Any], *,
                     attacks: Sequence[str] = (), log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run ``method`` with each value of ``setting`` on the world of ``config``; one metrics row each."""
    from ..adapters.causal_lm import CausalLMAdapter
    from ..train.distributed import training_device
    from .facts import cached_facts_model, facts_request, load_facts
    from .lm_bench import bench_relearn_settings, evaluation_splits, retain_eval_items

    data = load_facts(config)
    request = facts_request(data, split)
    target_dir, _ = cached_facts_model(config, "target")
    retain_dir, retain_meta = cached_facts_model(config, "retain", split)
    target = CausalLMAdapter.from_pretrained(target_dir, max_length=config.max_length)
    retain = CausalLMAdapter.from_pretrained(retain_dir, max_length=config.max_length)
    for model in (target.model, retain.model):
        model.to(training_device())
    splits = evaluation_splits(data, split, config.seed, retain_eval_items(config))
    ids = {name: [it["id"] for it in items] for name, items in splits.items()}
    _, reference = evaluate_lm(retain, splits, None, ids=ids)
    retain_utility = lm_metrics(reference, reference)["model_utility"]
    controls: dict[str, float] = {}
    rows = []
    for value in candidates:
        settings = validate_runs([method], {method: {setting: value}}, target, request)  # generic defaults + value
        model, record = unlearn(target.model, request, method, adapter=target, **settings[method])
        adapter = target.with_model(model)
        metrics, _ = evaluate_lm(adapter, splits, reference, ids=ids)
        if attacks:
            metrics |= run_attacks(attacks, adapter, target, retain, splits["forget"], seed=config.seed,
                                   relearn_settings=bench_relearn_settings(config), controls=controls)
        row = {"method": method, setting: value, "forget_quality": metrics["forget_quality"],
               "utility_vs_retain": metrics["model_utility"] / retain_utility,
               "time_vs_retrain": record.seconds / retain_meta["train_seconds"], "status": record.status,
               **{k: metrics[k] for k in ("relearn_recovery", "relearn_recovery_control") if k in metrics}}
        rows.append(row)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return rows


def select_facts_settings(config: Any, split: str = "forget10", *, log: Callable[[str], None] = print,
                          rmu_epochs: Sequence[int] = RMU_EPOCHS, sam_rhos: Sequence[float] = SAM_RHOS,
                          ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Apply the module's rules on ``config``'s world: the chosen settings (a method none of whose
    candidates qualifies is left out) and every scored row."""
    check_selection_world(config)
    rmu_rows = score_candidates(config, split, "rmu", "epochs", rmu_epochs, log=log)
    sam_rows = score_candidates(config, split, "sam_npo", "sam_rho", sam_rhos, attacks=("relearn",), log=log)
    chosen: dict[str, dict[str, Any]] = {}
    epochs = widest_run_centre(list(rmu_epochs), [r["forget_quality"] >= RMU_MIN_FORGET_QUALITY for r in rmu_rows])
    if epochs is not None:
        chosen["rmu"] = {"epochs": epochs}
    measured = [r for r in sam_rows if math.isfinite(r["relearn_recovery"])]
    if measured:
        chosen["sam_npo"] = {"sam_rho": min(measured, key=lambda r: r["relearn_recovery"])["sam_rho"]}
    return chosen, rmu_rows + sam_rows


def write_selection(out: Path, config: Any, split: str, chosen: Mapping[str, Mapping[str, Any]],
                    rows: Sequence[Mapping[str, Any]], command: str) -> None:
    """Write the selection's markdown table (atomically); its ``Chosen:`` line lists ``method name=value``
    pairs separated by ``; `` (nothing else), for the bench's settings to be checked against."""
    columns = ("method", "epochs", "sam_rho", "forget_quality", "utility_vs_retain", "time_vs_retrain",
               "relearn_recovery", "relearn_recovery_control", "status")
    skipped = [m for m in ("rmu", "sam_npo") if m not in chosen]
    lines = [f"# facts settings selected on world seed {config.seed} ({split}, {config.people} people)", "",
             f"Generated by `{command}`; do not edit by hand. The rules are in `unlearnkit/benchmarks/selection.py`;",
             "the bench reports world seed 0, whose data and models this selection never reads.", "",
             "Chosen: " + "; ".join(f"{m} " + ", ".join(f"{k}={v}" for k, v in s.items()) for m, s in chosen.items()), ""]
    if skipped:
        lines += [f"No candidate qualified for: {', '.join(skipped)} (its generic defaults apply).", ""]
    lines.append(markdown_table([dict(row) for row in rows], columns))
    write_text_atomic(out, "\n".join(lines) + "\n")


def check_selection_world(config: Any) -> None:
    """Refuse to select on the reported world (seed 0): the point is to stay out of sample."""
    if config.seed == 0:
        raise UserInputError("Settings must be selected on another world than the reported one; use --seed 1 or higher.")


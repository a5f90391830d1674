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
  probability enough to measure it); on a tie the smaller ρ.
- **npo** ``lr`` of the fast recipe :data:`NPO_RECIPE`: the candidate whose means over the unlearning
  seeds :data:`NPO_SEEDS` come closest to the bar of forget quality ≥ 0.5 at utility ≥ 0.97 × the
  retain model's, i.e. the largest min(FQ / 0.5, utility / 0.97), on a tie the smaller lr; a candidate
  with a metric that is not a number (NaN) at any seed does not qualify. Several seeds, because forget
  quality (a KS p-value on the forget items) jumps between runs. The recipe itself (one short pass,
  batches of 64 forget items each paired with retain neighbours linked to the same forgotten person
  by MELU's modular sampling, a KL retain term) came from an exploratory search on world 1 (98 runs;
  the reported world played no part in it), run when modular sampling still paired every forget item
  with any neighbour; the lr is chosen again with the per-person pairing.

rmu and sam_npo candidates run at the bench's lr for its scale (``FACTS_SCALE_SETTINGS`` in lm_bench.py).
A forget quality that is NaN never holds for rmu. A method none of whose candidates qualifies keeps its
generic defaults (the bench's lr aside), and the table says so. ``unlearnkit select-facts`` (or
``make select-facts``) reruns the selection and writes its table.
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
#: NPO's fast recipe on the facts models; its lr is chosen from :data:`NPO_LRS` over :data:`NPO_SEEDS`.
NPO_RECIPE: dict[str, Any] = {"epochs": 1, "max_steps": 16, "batch_size": 64, "alpha": 20.0, "retain_loss": "kl",
                              "sampling": "modular"}
NPO_LRS = (0.004, 0.006, 0.008, 0.01)
NPO_SEEDS = (0, 1, 2)
#: The bar the npo rule measures candidates against: forget quality and utility (× the retain model's).
TARGET_FORGET_QUALITY, TARGET_UTILITY = 0.5, 0.97


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


def closest_to_target(rows: Sequence[Mapping[str, Any]], setting: str) -> Any | None:
    """The value of ``setting`` whose rows (one per seed) have the largest min(mean FQ / 0.5, mean utility /
    0.97), the earlier candidate on a tie; a value with a NaN metric in any row does not qualify (None when
    none does, or without rows)."""
    def score(value: Any) -> float:
        runs = [r for r in rows if r[setting] == value]
        fq = sum(r["forget_quality"] for r in runs) / len(runs)
        utility = sum(r["utility_vs_retain"] for r in runs) / len(runs)
        if not (math.isfinite(fq) and math.isfinite(utility)):  # min() and max() would order a NaN arbitrarily
            return math.nan
        return min(fq / TARGET_FORGET_QUALITY, utility / TARGET_UTILITY)

    scores = {value: score(value) for value in dict.fromkeys(r[setting] for r in rows)}
    qualified = [value for value, found in scores.items() if math.isfinite(found)]
    return max(qualified, key=scores.__getitem__) if qualified else None


def score_candidates(config: Any, split: str, method: str, setting: str, candidates: Sequence[Any], *,
                     fixed: Mapping[str, Any] | None = None, seeds: Sequence[int | None] = (None,),
                     attacks: Sequence[str] = (), log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run ``method`` with each value of ``setting`` (on top of ``fixed``) on the world of ``config``, once per
    unlearning seed in ``seeds`` (None: the world's seed, as the bench uses); one metrics row each."""
    from .facts import facts_request, load_facts
    from .lm_bench import bench_relearn_settings, evaluation_splits, load_cached_model, retain_eval_items

    data = load_facts(config)
    request = facts_request(data, split)
    target, _ = load_cached_model(config, "target")
    retain, retain_meta = load_cached_model(config, "retain", split)
    splits = evaluation_splits(data, split, config.seed, retain_eval_items(config))
    ids = {name: [it["id"] for it in items] for name, items in splits.items()}
    _, reference = evaluate_lm(retain, splits, None, ids=ids)
    retain_utility = lm_metrics(reference, reference)["model_utility"]
    controls: dict[str, float] = {}
    rows = []
    for value, seed in ((v, s) for v in candidates for s in seeds):
        given = {**(fixed or {}), setting: value, "seed": config.seed if seed is None else seed}
        settings = validate_runs([method], {method: given}, target, request)  # generic defaults under these
        model, record = unlearn(target.model, request, method, adapter=target, **settings[method])
        adapter = target.with_model(model)
        metrics, _ = evaluate_lm(adapter, splits, reference, ids=ids)
        if attacks:
            metrics |= run_attacks(attacks, adapter, target, retain, splits["forget"], seed=config.seed,
                                   relearn_settings=bench_relearn_settings(config), controls=controls)
        row = {"method": method, setting: value, **({} if seed is None else {"seed": seed}),
               "forget_quality": metrics["forget_quality"],
               "utility_vs_retain": metrics["model_utility"] / retain_utility,
               "time_vs_retrain": record.seconds / retain_meta["train_seconds"], "status": record.status,
               **{k: metrics[k] for k in ("relearn_recovery", "relearn_recovery_control") if k in metrics}}
        rows.append(row)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return rows


def select_facts_settings(config: Any, split: str = "forget10", *, log: Callable[[str], None] = print,
                          rmu_epochs: Sequence[int] = RMU_EPOCHS, sam_rhos: Sequence[float] = SAM_RHOS,
                          npo_lrs: Sequence[float] = NPO_LRS, npo_seeds: Sequence[int] = NPO_SEEDS,
                          ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Apply the module's rules on ``config``'s world: the chosen settings (a method none of whose
    candidates qualifies is left out) and every scored row."""
    from .lm_bench import FACTS_SCALE_SETTINGS

    check_selection_world(config)
    rmu_rows = score_candidates(config, split, "rmu", "epochs", rmu_epochs, fixed=FACTS_SCALE_SETTINGS["rmu"], log=log)
    sam_rows = score_candidates(config, split, "sam_npo", "sam_rho", sam_rhos, fixed=FACTS_SCALE_SETTINGS["sam_npo"],
                                attacks=("relearn",), log=log)
    npo_rows = score_candidates(config, split, "npo", "lr", npo_lrs, fixed=NPO_RECIPE, seeds=npo_seeds, log=log)
    chosen: dict[str, dict[str, Any]] = {}
    epochs = widest_run_centre(list(rmu_epochs), [r["forget_quality"] >= RMU_MIN_FORGET_QUALITY for r in rmu_rows])
    if epochs is not None:
        chosen["rmu"] = {"epochs": epochs}
    measured = [r for r in sam_rows if math.isfinite(r["relearn_recovery"])]
    if measured:
        chosen["sam_npo"] = {"sam_rho": min(measured, key=lambda r: r["relearn_recovery"])["sam_rho"]}
    lr = closest_to_target(npo_rows, "lr")
    if lr is not None:
        chosen["npo"] = {**NPO_RECIPE, "lr": lr}
    return chosen, rmu_rows + sam_rows + npo_rows


def write_selection(out: Path, config: Any, split: str, chosen: Mapping[str, Mapping[str, Any]],
                    rows: Sequence[Mapping[str, Any]], command: str) -> None:
    """Write the selection's markdown table (atomically); its ``Chosen:`` line lists ``method name=value``
    pairs separated by ``; `` (nothing else), for the bench's settings to be checked against."""
    columns = ("method", "epochs", "sam_rho", "lr", "seed", "forget_quality", "utility_vs_retain", "time_vs_retrain",
               "relearn_recovery", "relearn_recovery_control", "status")
    skipped = [m for m in ("rmu", "sam_npo", "npo") if m not in chosen]
    lines = [f"# facts settings selected on world seed {config.seed} ({split}, {config.people} people)", "",
             f"Generated by `{command}`; do not edit by hand. The rules are in `unlearnkit/benchmarks/selection.py`;",
             "the bench reports world seed 0, whose data and models this selection never reads.", "",
             "Chosen: " + "; ".join(f"{m} " + ", ".join(f"{k}={v}" for k, v in s.items()) for m, s in chosen.items()), ""]
    if skipped:
        lines += [f"No candidate qualified for: {', '.join(skipped)} (its generic defaults apply, at the bench's lr).",
                  ""]
    lines.append(markdown_table([dict(row) for row in rows], columns))
    write_text_atomic(out, "\n".join(lines) + "\n")


def check_selection_world(config: Any) -> None:
    """Refuse to select on the reported world (seed 0): the point is to stay out of sample."""
    if config.seed == 0:
        raise UserInputError("Settings must be selected on another world than the reported one; use --seed 1 or higher.")


"""Whether a bench's ``time_vs_retrain`` compares like with like.

A bench divides each method's wall time, measured now, by the retrained reference's training time, measured whenever
that cached model was trained. Under other machine load or thread counts the ratio is off by the factor between the
two conditions. The benches therefore time a few steps of the training recipe just before their methods run, and say
so in a note when that pace and the cached references' pace disagree.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

#: Reference models train one model with one recipe on nearly the same items, so their seconds per optimizer step
#: agree when timed under the same conditions, and with the pace of that recipe timed in the bench before its
#: methods run (the cached references agree within 10 %); further apart than this factor, they were timed under
#: other conditions. At 1.5 a bench whose methods ran at 1.49 × the retain model's pace said nothing, while the
#: facts bench's bar is 3 % of retraining.
TIMING_SPREAD = 1.25
#: Optimizer steps of the models' training recipe the bench times before its methods (after one untimed step).
PACE_STEPS = 5


def recipe_steps(recipe: Any, items: int) -> int:
    """Optimizer steps the training recipe takes on ``items`` items: its epochs of ⌈items / batch⌉ steps, capped by
    ``max_steps``."""
    steps = recipe.epochs * -(-items // recipe.batch_size)
    return min(steps, recipe.max_steps) if recipe.max_steps else steps


def recipe_pace(recipe: Any, adapter: Any, items: Sequence[Any], steps: int = PACE_STEPS) -> float:
    """Seconds per optimizer step of ``recipe`` on ``items``, training a copy of ``adapter``'s model now, after an
    untimed step as the reference models' training was: the pace their training would have on this machine as it
    runs the methods."""
    from ..adapters.base import clone_model
    from ..methods.base import item_stream
    from ..train import optimise, warm_up_step

    recipe = dataclasses.replace(recipe, max_steps=steps)
    timed = adapter.with_model(clone_model(adapter.model).train())
    stream, per_epoch = item_stream(timed, items, recipe)
    loss = lambda model, batch: timed.per_item_loss(model, batch).mean()  # noqa: E731
    warm_up_step(timed.model, stream, loss, recipe, steps_per_epoch=per_epoch)
    start = time.perf_counter()
    record = optimise(timed.model, stream, loss, recipe, steps_per_epoch=per_epoch, description="timing the recipe")
    return (time.perf_counter() - start) / max(record.steps, 1)


def timing_notes(rates: Mapping[str, float], pace_now: float | None = None, reference: str = "retain") -> list[str]:
    """Notes on ``time_vs_retrain``: when the reference models' seconds per step (``rates``, by role) differ by more
    than :data:`TIMING_SPREAD` (cached models timed under other machine load, or thread counts, than one another), and
    when the ``reference`` role's (the time the ratio divides by) differs that much from the recipe's pace timed in
    this run (``pace_now``): the methods were then timed under other conditions than the time they are divided by."""
    notes = []
    if len(rates) > 1 and max(rates.values()) > TIMING_SPREAD * min(rates.values()):
        fast, slow = min(rates, key=rates.get), max(rates, key=rates.get)
        notes.append(f"the reference models' training took from {rates[fast]:.3g} s a step ({fast}) to "
                     f"{rates[slow]:.3g} s ({slow}) with the same model and recipe: they were timed under different "
                     "machine load, so their `seconds` and `time_vs_retrain` compare runs timed under different "
                     "conditions.")
    divisor = rates.get(reference)
    if divisor and pace_now and not 1 / TIMING_SPREAD <= divisor / pace_now <= TIMING_SPREAD:
        notes.append(f"the {reference} model's training took {divisor:.3g} s a step, but the same recipe took "
                     f"{pace_now:.3g} s a step in this run before the methods: the methods were timed under other "
                     "machine load (or thread counts) than the retraining time their `time_vs_retrain` divides by, "
                     "which is off by about that factor (for comparable times, run the bench on a quiet machine "
                     "after removing the cached models).")
    return notes

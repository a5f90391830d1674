"""Random-label unlearning: teach the model wrong labels for the forget set while keeping the rest.

Graves, Nagisetty & Ganesh, "Amnesiac Machine Learning" (AAAI 2021), a baseline in the SSD and
SalUn papers. Update rule, with ỹ drawn uniformly from the classes other than y:
θ ← θ − η ∇_θ [ L̄_CE(f_θ(x_f), ỹ) + β·L̄_CE(f_θ(x_r), y_r) ].

Choices: each forget batch is paired with a retain batch (``retain_pairing``, as the ``sampling``
setting says, standard by default) rather than running separate forget and retain passes; the
wrong labels are drawn anew each epoch, among the classes the adapter allows the item (all of them, or in a
task-incremental stream its task's; :meth:`ClassifierAdapter.allowed_classes`), one uniform number per forget row carried in its batch
(:func:`with_label_draws`, a generator seeded with ``seed`` and the epoch), so runs repeat exactly
and N processes, which each take their rows of a batch, train on the labels one process draws; the
class count is the width of the logits.
β (``retain_weight``) defaults to 2: with equal weights the digits CNN lost up to 0.1 test
accuracy on the kept classes when forgetting a whole class. 2 epochs, where the SSD repository's
amnesiac baseline runs 3: on the digits bench (docs/results/digits.md) two already over-forget on
random forgetting (forget accuracy 0.9375 against retraining's 0.9861, test 0.9528 against 0.9750)
and bring a whole class to 0.0000 (test 0.9568), so a third would only add to the over-forgetting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from ..errors import UserInputError
from ..train import finite_number, optimise
from ._sampling import SamplingConfig, retain_pairing
from .base import Method, Outcome, item_stream


@dataclass
class RandomLabelConfig(SamplingConfig):
    """``retain_weight`` (β) scales the retain cross-entropy (0 trains on relabelled forget items only)."""

    retain_weight: float = 2.0
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64

    def check(self) -> None:
        """Also require a finite retain_weight ≥ 0, and standard sampling when it is 0."""
        super().check()
        check_retain_weight(self, "random_label")


def check_retain_weight(config: Any, method: str) -> None:
    """Raise :class:`UserInputError` unless β is a finite non-negative number (a negative one would ascend the
    retain loss, a NaN one make every loss NaN), or when β = 0 comes with a sampling that pairs retain items
    (the run then reads none, and the setting would do nothing)."""
    value = config.retain_weight
    if not (finite_number(value) and value >= 0):
        raise UserInputError(f"{method} retain_weight must be a finite non-negative number, got retain_weight={value}.")
    if value == 0 and config.sampling != "standard":
        raise UserInputError(f"{method} reads no retain items with retain_weight=0, so sampling={config.sampling} "
                             "would do nothing; give retain_weight > 0 or leave sampling standard.")


#: The batch key of the per-row uniform draws that pick each forget row's wrong label.
LABEL_DRAWS = "wrong_label_draws"


def random_wrong_labels(labels: torch.Tensor, allowed: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """For each true label, one of the other classes its row may take (``allowed``, rows × classes: every class, or
    a task-incremental item's task's classes), picked by its uniform draw in [0, 1): the k-th of them counting up
    from the label (cyclically), k = ⌊draw · their count⌋."""
    labels, allowed = labels.cpu(), allowed.cpu()
    classes = allowed.shape[1]
    after = (labels[:, None] + 1 + torch.arange(classes - 1)).remainder(classes)  # the other classes, in that order
    usable = allowed.gather(1, after)
    count = usable.sum(dim=1)
    if bool((count == 0).any()):
        raise UserInputError("Random wrong labels need a second class an item may take; an item's task has one class.")
    k = (draws.cpu() * count).long().minimum(count - 1)
    pick = (usable & (usable.cumsum(dim=1) == k[:, None] + 1)).long().argmax(dim=1)
    return after.gather(1, pick[:, None]).squeeze(1).to(labels.device)


def with_label_draws(stream: Callable[[int], Iterator[dict]], seed: int, part: str | None = None
                     ) -> Callable[[int], Iterator[dict]]:
    """``stream`` with one uniform draw per row added to each batch (or to its ``part``) under
    :data:`LABEL_DRAWS`: drawn with the whole batch, the draws are split with its rows across processes."""
    def epoch_batches(epoch: int) -> Iterator[dict]:
        generator = torch.Generator().manual_seed(seed + 7919 * epoch)
        for batch in stream(epoch):
            rows = batch if part is None else batch[part]
            rows[LABEL_DRAWS] = torch.rand(len(rows["labels"]), generator=generator)
            yield batch

    return epoch_batches


def relabelled_loss(adapter: Any, model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Mean cross-entropy of ``batch`` against the random wrong labels its draws pick."""
    logits = adapter.logits(model, batch)
    allowed = adapter.allowed_classes(batch["labels"], logits.shape[-1])
    return F.cross_entropy(logits, random_wrong_labels(batch["labels"], allowed, batch[LABEL_DRAWS]).to(logits.device))


class RandomLabel(Method):
    """Fine-tune on forget items with random wrong labels, plus retain items with their labels."""

    name = "random_label"
    kinds = ("classifier",)
    needs = frozenset({"retain", "labels"})
    paper = "Graves et al., Amnesiac Machine Learning, 2021"
    use_when = 'Fast classifier forgetting (especially of a whole class) with retain data; tends to over-forget random samples.'
    Config = RandomLabelConfig

    def needs_for(self, config: RandomLabelConfig) -> frozenset[str]:
        """Retain data only when its term counts (β > 0)."""
        return super().needs_for(config) - ({"retain"} if config.retain_weight == 0 else set())

    def unlearn(self, adapter: Any, request, config: RandomLabelConfig) -> Outcome:
        stream, steps, loss = relabelling_run(adapter, request, config)
        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="random labels")
        return Outcome(adapter.model, record)


def relabelling_run(adapter: Any, request, config: Any) -> tuple[Callable, int, Callable]:
    """``(epoch_batches, steps_per_epoch, loss)`` of CE(x_f, ỹ) + β·CE(x_r, y_r), β = ``config.retain_weight``;
    with β = 0 the batches hold relabelled forget items only, so no retain data is needed."""
    if config.retain_weight == 0:
        stream, steps = item_stream(adapter, request.forget_items(), config)
        return with_label_draws(stream, config.seed), steps, lambda model, batch: relabelled_loss(adapter, model, batch)
    stream, steps = retain_pairing(adapter, request, config)

    def loss(model, batch: dict) -> torch.Tensor:
        forget = relabelled_loss(adapter, model, batch["forget"])
        return forget + config.retain_weight * adapter.per_item_loss(model, batch["retain"]).mean()

    return with_label_draws(stream, config.seed, part="forget"), steps, loss

"""Classifier evaluation: per-item statistics collected once, metrics as pure functions of them.

All accuracies, rates and gaps are fractions in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..adapters.base import batches, eval_mode
from ..errors import UserInputError


@dataclass
class ItemStats:
    """Per-item statistics of one split: label, loss, predicted class, true-class probability."""

    labels: np.ndarray
    losses: np.ndarray
    predictions: np.ndarray
    true_probs: np.ndarray

    def rows(self, split: str, ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """JSON-ready per-item rows; ``ids`` (one per item, in order) name the items."""
        ids = list(ids) if ids is not None else list(range(len(self.labels)))
        if len(ids) != len(self.labels):  # zip would silently drop items and the rows would not add up to the metrics
            raise UserInputError(f"The {split!r} split has {len(self.labels)} items but {len(ids)} ids were given for them.")
        return [
            {"split": split, "item": int(i), "label": int(y), "loss": float(l), "predicted": int(p), "true_prob": float(q)}
            for i, y, l, p, q in zip(ids, self.labels, self.losses, self.predictions, self.true_probs)
        ]


def collect(adapter: Any, items: Sequence[Any], batch_size: int = 256) -> ItemStats:
    """Run the model once over ``items`` in eval mode and keep what every classifier metric needs; every
    module's training flag is restored afterwards (a caller's model is never left changed, a submodule the
    caller froze in eval mode included)."""
    with eval_mode(adapter.model) as model:
        return _collect(adapter, model, items, batch_size)


@torch.no_grad()
def _collect(adapter: Any, model: nn.Module, items: Sequence[Any], batch_size: int) -> ItemStats:
    parts: list[tuple[np.ndarray, ...]] = []
    chunks = list(batches(items, batch_size, shuffle=False, seed=0))
    if len(chunks) > 1 and len(chunks[-1]) == 1:  # a BatchNorm keeping no running statistics cannot take one item
        chunks[-2:] = [chunks[-2] + chunks[-1]]
    for chunk in chunks:
        batch = adapter.collate(chunk)
        logits = adapter.logits(model, batch).float().cpu()  # the model may sit on a GPU
        if not bool(torch.isfinite(logits).all()):  # the membership attack's SVC would fail on them with a traceback
            raise UserInputError("The model returns NaN or infinite class scores, so it cannot be scored; its weights "
                                 "are not finite (a diverged training run?).")
        labels = batch["labels"]
        log_probs = torch.log_softmax(logits, dim=-1)
        true_log_prob = log_probs.gather(1, labels[:, None]).squeeze(1)
        parts.append((labels.numpy(), (-true_log_prob).numpy(), logits.argmax(1).numpy(), true_log_prob.exp().numpy()))
    if not parts:
        empty = np.zeros(0)
        return ItemStats(empty.astype(int), empty, empty.astype(int), empty)
    return ItemStats(*(np.concatenate(column) for column in zip(*parts)))


def accuracy(stats: ItemStats) -> float:
    """Fraction of items whose predicted class is the label (nan for an empty split)."""
    return float(np.mean(stats.predictions == stats.labels)) if len(stats.labels) else float("nan")


def mia_efficacy(retain: ItemStats, test: ItemStats, forget: ItemStats, seed: int = 0) -> float:
    """SVC membership inference on the true-class probability (Jia et al. 2023, ``SVC_MIA``): the
    fraction of the forget set predicted non-member (see :func:`mia_non_members`). Higher means the
    forget set looks less like training data."""
    return float(np.mean(mia_non_members(retain, test, forget, seed)))


def mia_non_members(retain: ItemStats, test: ItemStats, forget: ItemStats, seed: int = 0) -> np.ndarray:
    """Per forget item, whether the SVC membership attack calls it a non-member.

    An RBF SVC (C=3, gamma="auto") learns members (a seeded sample of the retain set, as large as
    the test set) against non-members (the test set) and is applied to each forget item. When the
    retain set is the smaller one, the non-members are a seeded sample of the test set as large as
    it (never the test set's first items: a class-sorted test set would give one-class non-members).
    """
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    n = min(len(retain.true_probs), len(test.true_probs))
    members = rng.choice(len(retain.true_probs), size=n, replace=False)
    non_members = rng.choice(len(test.true_probs), size=n, replace=False) if n < len(test.true_probs) else np.arange(n)
    features = np.concatenate([retain.true_probs[members], test.true_probs[non_members]])[:, None]
    targets = np.concatenate([np.ones(n), np.zeros(n)])
    # a seed of its own: without one, sklearn draws libsvm's seed from the caller's global NumPy generator
    attack = SVC(C=3, gamma="auto", kernel="rbf", random_state=seed).fit(features, targets)
    return attack.predict(forget.true_probs[:, None]) == 0


def loss_mia_auc(forget: ItemStats, test: ItemStats) -> float:
    """Loss-threshold MIA: ROC AUC of the loss separating held-out items (label 1) from forget (label 0).

    About 1 means the forget items are still recognisably training data; 0.5 means they look like
    unseen data of the same distribution, so ``test`` must be drawn like the forget set (in the
    class scenario: held-out images of the forgotten class).
    """
    from sklearn.metrics import roc_auc_score

    labels = np.concatenate([np.zeros(len(forget.losses)), np.ones(len(test.losses))])
    return float(roc_auc_score(labels, np.concatenate([forget.losses, test.losses])))


GAP_METRICS = ("forget_acc", "retain_acc", "test_acc", "mia_efficacy")


def avg_gap(metrics: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """Mean absolute difference to the retrained model over forget, retain and test accuracy and MIA-efficacy."""
    return float(np.mean([abs(metrics[k] - reference[k]) for k in GAP_METRICS]))


def classifier_metrics(stats: Mapping[str, ItemStats], seed: int = 0,
                       non_members: np.ndarray | None = None) -> dict[str, float]:
    """Aggregate metrics from per-split statistics (splits forget, retain, test, optional forget_test);
    ``non_members``: the attack's per-item calls (:func:`mia_non_members`) when already made."""
    if non_members is None:
        non_members = mia_non_members(stats["retain"], stats["test"], stats["forget"], seed)
    metrics = {
        "forget_acc": accuracy(stats["forget"]),
        "retain_acc": accuracy(stats["retain"]),
        "test_acc": accuracy(stats["test"]),
        "mia_efficacy": float(np.mean(non_members)),
        # the held-out items must come from the forget set's distribution: the forgotten class's own
        # test images when the whole class is forgotten, else the test set
        "mia_auc": loss_mia_auc(stats["forget"], stats.get("forget_test", stats["test"])),
    }
    if "forget_test" in stats:
        metrics["forget_test_acc"] = accuracy(stats["forget_test"])
    return metrics


@dataclass
class Evaluation:
    """Aggregate metrics and the per-item statistics behind them."""

    metrics: dict[str, float]
    stats: dict[str, ItemStats]
    #: per forget item, whether the membership attack behind ``mia_efficacy`` calls it a non-member
    forget_non_members: np.ndarray | None = None

    def item_rows(self, ids: Mapping[str, Sequence[int]] | None = None) -> list[dict[str, Any]]:
        """Every per-item row of every split; forget rows also say how the membership attack called them."""
        ids = ids or {}
        rows = {split: s.rows(split, ids.get(split)) for split, s in self.stats.items()}
        if self.forget_non_members is not None:
            for row, non_member in zip(rows["forget"], self.forget_non_members):
                row["mia_non_member"] = bool(non_member)
        return [row for split_rows in rows.values() for row in split_rows]


def evaluate_classifier(
    adapter: Any,
    splits: Mapping[str, Sequence[Any]],
    reference: Mapping[str, float] | None = None,
    seed: int = 0,
) -> Evaluation:
    """Collect statistics on each split and compute the metrics; ``avg_gap`` when a reference is given."""
    stats = {name: collect(adapter, items) for name, items in splits.items()}
    non_members = mia_non_members(stats["retain"], stats["test"], stats["forget"], seed)
    metrics = classifier_metrics(stats, seed, non_members)
    if reference is not None:
        metrics["avg_gap"] = avg_gap(metrics, reference)
    return Evaluation(metrics, stats, non_members)

"""Per-task records a strategy keeps (a Fisher term, an input summary) and the samples each was taken on."""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar

import torch


class TaskRecord(Protocol):
    """A record of one learned task, taken on the samples ``ids``."""

    task: int
    ids: torch.Tensor


Record = TypeVar("Record", bound=TaskRecord)


def trim_forgotten(records: Sequence[Record], ids: set[int], task: int | None) -> tuple[list[Record], list[Record]]:
    """Apply an unlearning request (the samples ``ids``; the task ``task`` when a whole task goes) to ``records``.

    Returns the records that remain: those of another task that still hold a sample, each with the forgotten
    samples taken out of its ``ids`` (in place, order kept); and, among them, those that lost samples, which the
    caller must retake without them."""
    forgotten = torch.tensor(sorted(ids), dtype=torch.long)
    kept, trimmed = [], []
    for record in records:
        gone = torch.isin(record.ids, forgotten)
        if record.task == task or bool(gone.all()):
            continue
        if bool(gone.any()):
            record.ids = record.ids[~gone]
            trimmed.append(record)
        kept.append(record)
    return kept, trimmed

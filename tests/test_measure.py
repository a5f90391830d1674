"""The wall time and memory figures every run record carries."""

from __future__ import annotations

import math

import torch

from unlearnkit.train.measure import measure, memory_of, reference_memory, training_memory


def test_added_memory_is_the_blocks_own_allocation_and_never_above_the_peak():
    size_mb = 96
    with measure() as held:
        block = torch.ones(size_mb * 2**20 // 4)  # float32
        block.add_(1.0)  # touch every page
    assert size_mb * 0.9 <= held.added_mem_mb <= held.peak_mem_mb
    with measure() as idle:
        del block
    assert idle.added_mem_mb < size_mb / 4  # freeing adds nothing


def test_memory_figures_travel_from_a_training_to_its_reference_row():
    with measure() as training:
        torch.zeros(10)
    meta = {"train_seconds": 1.0, **training_memory(training)}
    assert reference_memory(meta) == memory_of(training)
    assert all(math.isnan(v) for v in reference_memory({"train_seconds": 1.0}).values())  # a meta from before

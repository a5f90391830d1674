"""The wall time and memory figures every run record carries."""

from __future__ import annotations

import math

import torch

from unlearnkit.train.measure import measure, memory_of, reference_memory, training_memory


def test_added_memory_is_the_blocks_own_allocation_and_never_above_the_peak():
    size_mb = 96
    watched = "cuda" if torch.cuda.is_available() else "cpu"  # measure() follows the GPU's allocator where there is one
    with measure() as held:
        block = torch.ones(size_mb * 2**20 // 4, device=watched)  # float32
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


def test_a_warm_up_step_changes_neither_the_model_nor_the_training_that_follows():
    from torch import nn

    from unlearnkit.train import TrainConfig, optimise, warm_up_step

    def trained(warm: bool) -> dict:
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        data = torch.randn(16, 4)
        stream = lambda epoch: (data[i:i + 4] for i in range(0, 16, 4))  # noqa: E731
        loss = lambda m, batch: m(batch).pow(2).mean()  # noqa: E731
        config = TrainConfig(epochs=2, lr=0.1, batch_size=4)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        if warm:
            warm_up_step(model, stream, loss, config, steps_per_epoch=4)
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        state = torch.random.get_rng_state()
        optimise(model, stream, loss, config, steps_per_epoch=4, description="test")
        return {"state": state, **model.state_dict()}

    warm, cold = trained(True), trained(False)
    assert all(torch.equal(warm[k], cold[k]) for k in cold)

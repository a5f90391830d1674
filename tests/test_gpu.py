"""What only a GPU can show: work runs on it, results come back where the input was, seeds draw alike.

Skipped without CUDA (CI has none); run on a GPU machine with the rest of the suite.
"""

import pytest
import torch
from torch import nn

import unlearnkit
from unlearnkit import api
from unlearnkit.methods.retrain import reinitialise
from unlearnkit.request import ForgetRequest
from unlearnkit.train import TrainConfig, optimise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DATA = [(torch.randn(4), i % 2) for i in range(10)]


def test_a_cpu_input_is_unlearned_on_the_gpu_and_comes_back_on_the_cpu(monkeypatch):
    seen = []
    make_copy = api._working_copy

    def recording_copy(*args, **kwargs):
        working, prepared = make_copy(*args, **kwargs)
        seen.append(working.weight.device.type)
        return working, prepared

    monkeypatch.setattr(api, "_working_copy", recording_copy)
    model = nn.Linear(4, 2)
    unlearned, _ = unlearnkit.unlearn(model, ForgetRequest(DATA, [0, 1]), "gradient_ascent", lr=0.1, epochs=1)
    assert seen == ["cuda"]  # the method worked on the GPU
    assert unlearned.weight.device.type == "cpu" and model.weight.device.type == "cpu"


def test_a_gpu_input_comes_back_on_the_gpu():
    model = nn.Linear(4, 2).cuda()
    unlearned, _ = unlearnkit.unlearn(model, ForgetRequest(DATA, [0, 1]), "gradient_ascent", lr=0.1, epochs=1)
    assert unlearned.weight.device.type == "cuda"


def test_retrain_draws_the_same_initial_weights_on_the_gpu_as_on_the_cpu():
    on_cpu, on_gpu = nn.Conv2d(1, 8, 3), nn.Conv2d(1, 8, 3).cuda()
    reinitialise(on_cpu, seed=3)
    reinitialise(on_gpu, seed=3)
    assert on_gpu.weight.device.type == "cuda"
    assert torch.equal(on_gpu.weight.cpu(), on_cpu.weight)


def test_the_training_loop_moves_a_cpu_model_to_the_gpu_in_place():
    model = nn.Linear(4, 2)
    batches = lambda epoch: iter([{"x": torch.randn(3, 4)}])
    optimise(model, batches, lambda m, b: m(b["x"].to(m.weight.device)).pow(2).mean(),
             TrainConfig(epochs=1, lr=0.1, optimizer="sgd"), steps_per_epoch=1)
    assert model.weight.device.type == "cuda"  # internal callers train in place and must expect this

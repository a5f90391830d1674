"""What only a GPU can show: work runs on it, results come back where the input was, seeds draw alike.

Skipped without CUDA (CI has none); run on a GPU machine with the rest of the suite.
"""

import pytest
import torch
from torch import nn

import unlearnkit
from lm_fixtures import tiny_lm, tiny_qa
from unlearnkit.api import unlearn_on_training_device
from unlearnkit.benchmarks.results import machine_info
from unlearnkit.methods.retrain import reinitialise
from unlearnkit.request import ForgetRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DATA = [(torch.randn(4), i % 2) for i in range(10)]
SETTINGS = {"lr": 0.1, "epochs": 1}


def test_a_cpu_input_is_unlearned_on_the_gpu_and_comes_back_on_the_cpu():
    model = nn.Linear(4, 2)
    worked, _ = unlearn_on_training_device(model, ForgetRequest(DATA, [0, 1]), "gradient_ascent", **SETTINGS)
    returned, _ = unlearnkit.unlearn(model, ForgetRequest(DATA, [0, 1]), "gradient_ascent", **SETTINGS)
    assert worked.weight.device.type == "cuda"
    assert returned.weight.device.type == "cpu" and model.weight.device.type == "cpu"
    assert torch.allclose(returned.weight, worked.weight.cpu())


def test_a_gpu_input_comes_back_on_the_gpu():
    model = nn.Linear(4, 2).cuda()
    unlearned, _ = unlearnkit.unlearn(model, ForgetRequest(DATA, [0, 1]), "gradient_ascent", **SETTINGS)
    assert unlearned.weight.device.type == "cuda"


@pytest.mark.parametrize("method", ["guard", "guard_it"])
def test_an_inference_time_wrapper_keeps_its_own_tensors_beside_its_gpu_base(method):
    items = tiny_qa()
    adapter = tiny_lm(items)
    adapter.model.cuda()
    request = ForgetRequest(items, [0, 1, 2], list(range(3, len(items))))
    wrapped, _ = unlearnkit.unlearn(adapter, request, method)
    assert {t.device.type for t in wrapped.state_dict().values()} == {"cuda"}
    adapter.per_item_loss(wrapped, adapter.collate(items[:4]))  # runs: no tensor left on the CPU


def test_retrain_draws_the_same_initial_weights_on_the_gpu_as_on_the_cpu():
    on_cpu, on_gpu = nn.Conv2d(1, 8, 3), nn.Conv2d(1, 8, 3).cuda()
    reinitialise(on_cpu, seed=3)
    reinitialise(on_gpu, seed=3)
    assert on_gpu.weight.device.type == "cuda"
    assert torch.equal(on_gpu.weight.cpu(), on_cpu.weight)


def test_bench_pages_name_the_gpu():
    machine = machine_info()
    assert machine["device"] == "cuda" and machine["gpu"] == torch.cuda.get_device_name()

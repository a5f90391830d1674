"""SAM on the forget term (train/sam.py): the gradients it carries, the step the loop takes, its settings."""

import pytest
import torch
from lm_fixtures import memorised_lm, tiny_qa
from torch import nn

import unlearnkit
from unlearnkit.errors import UserInputError
from unlearnkit.request import ForgetRequest
from unlearnkit.train import optimise
from unlearnkit.train.gu import LossParts
from unlearnkit.train.sam import SharpnessConfig, sharpness_aware

RHO = 0.3


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))


def cubic_and_square(model: nn.Module, _batch) -> LossParts:
    """Forget ℓ_f = Σθ³ (its gradient changes under the perturbation), retain ℓ_r = Σθ²."""
    return LossParts(model.theta.pow(3).sum(), model.theta.pow(2).sum())


def expected_gradients(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∇ℓ_f(θ + ρ·g/‖g‖) with g = ∇ℓ_f(θ) = 3θ², and ∇ℓ_r(θ) = 2θ."""
    g = 3 * theta.square()
    perturbed = theta + RHO * g / g.norm()
    return 3 * perturbed.square(), 2 * theta


def test_forget_gradient_is_taken_at_the_perturbed_weights_retain_at_the_weights():
    model = Holder()
    before = model.theta.detach().clone()
    parts = sharpness_aware(cubic_and_square, RHO)(model, None)
    assert torch.equal(model.theta.detach(), before)  # restored bit for bit
    assert parts.forget.item() == pytest.approx(before.pow(3).sum().item())  # the value stays at θ
    assert parts.retain.item() == pytest.approx(before.pow(2).sum().item())
    (forget_grad,) = torch.autograd.grad(parts.forget, [model.theta])
    (retain_grad,) = torch.autograd.grad(parts.retain, [model.theta])
    expected_forget, expected_retain = expected_gradients(before)
    assert torch.allclose(forget_grad, expected_forget) and torch.allclose(retain_grad, expected_retain)
    assert not torch.allclose(forget_grad, 3 * before.square())  # differs from the plain gradient
    assert sharpness_aware(cubic_and_square, 0.0) is cubic_and_square


def test_forget_and_retain_parts_may_share_one_forward_pass():
    # the retain gradient freed the shared graph, and the forget gradient then failed ("backward through the graph
    # a second time")
    def shared(model: nn.Module, _batch) -> LossParts:
        cube = model.theta.pow(3)  # one forward, both parts read it
        return LossParts(cube.sum(), cube.square().sum())

    model = Holder()
    theta = model.theta.detach().clone()
    parts = sharpness_aware(shared, RHO)(model, None)
    (retain_grad,) = torch.autograd.grad(parts.retain, [model.theta])
    assert torch.allclose(retain_grad, 6 * theta.pow(5))


def test_a_single_tensor_loss_is_all_forget_term():
    model = Holder()
    parts = sharpness_aware(lambda m, b: m.theta.pow(3).sum(), RHO)(model, None)
    (forget_grad,) = torch.autograd.grad(parts.forget, [model.theta])
    assert torch.allclose(forget_grad, expected_gradients(model.theta.detach())[0])
    assert parts.retain.detach().item() == 0.0


def test_the_loop_steps_along_the_sam_gradient():
    model = Holder()
    before = model.theta.detach().clone()
    config = SharpnessConfig(epochs=1, lr=0.01, optimizer="sgd", momentum=0.0, grad_clip=None, sam_rho=RHO)
    record = optimise(model, lambda epoch: iter([{"x": torch.zeros(1)}]), cubic_and_square, config, steps_per_epoch=1)
    forget_grad, retain_grad = expected_gradients(before)
    assert record.steps == 1
    assert torch.allclose(model.theta.detach().cpu(), before - 0.01 * (forget_grad + retain_grad))
    with pytest.raises(UserInputError, match="sam_rho must be a non-negative number"):
        SharpnessConfig(sam_rho=-0.1).check()


@pytest.fixture(scope="module")
def lm():
    items = tiny_qa(12)
    return memorised_lm(items), ForgetRequest(items, [0, 1, 2], list(range(3, 12)))


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("method", ["gradient_ascent", "graddiff", "npo", "simnpo"])
def test_every_gradient_method_takes_sam_and_it_changes_the_update(lm, method):
    adapter, request = lm
    settings = dict(max_steps=2, epochs=1, seed=0)
    plain, _ = unlearnkit.unlearn(adapter, request, method, **settings)
    zero, _ = unlearnkit.unlearn(adapter, request, method, sam_rho=0.0, **settings)
    smoothed, record = unlearnkit.unlearn(adapter, request, method, sam_rho=0.5, **settings)
    assert record.status == "ok" and record.params["sam_rho"] == 0.5
    assert torch.equal(_weights(plain), _weights(zero))
    assert not torch.allclose(_weights(plain), _weights(smoothed))


def test_sam_composes_with_gu_and_is_refused_where_it_has_no_meaning(lm):
    adapter, request = lm
    settings = dict(max_steps=2, epochs=2, seed=0)
    both, record = unlearnkit.unlearn(adapter, request, "npo", project="gu", sam_rho=0.5, **settings)
    assert record.status == "ok" and record.steps == 2
    projected_only, _ = unlearnkit.unlearn(adapter, request, "npo", project="gu", **settings)
    smoothed_only, _ = unlearnkit.unlearn(adapter, request, "npo", sam_rho=0.5, **settings)
    assert not torch.allclose(_weights(both), _weights(projected_only))  # SAM still acts under the projection
    assert not torch.allclose(_weights(both), _weights(smoothed_only))  # and the projection still acts under SAM
    with pytest.raises(UserInputError, match="sam_rho must be a non-negative number"):
        unlearnkit.unlearn(adapter, request, "npo", sam_rho=-1.0)
    with pytest.raises(UserInputError, match="has no hyper-parameter 'sam_rho'"):
        unlearnkit.unlearn(adapter, request, "ssd", sam_rho=0.5)


def test_the_perturbed_pass_leaves_batchnorm_statistics_alone():
    from unlearnkit.adapters.classifier import ClassifierAdapter
    from unlearnkit.methods.base import item_stream
    from unlearnkit.train import optimise

    stats = []
    for rho in (0.0, 0.5):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
        adapter = ClassifierAdapter(model)
        items = [(torch.randn(3), i % 2) for i in range(8)]
        config = SharpnessConfig(epochs=1, batch_size=8, sam_rho=rho)
        stream, steps = item_stream(adapter, items, config)
        optimise(model, stream, lambda m, b: -adapter.per_item_loss(m, b).mean(), config, steps_per_epoch=steps)
        stats.append((int(model[1].num_batches_tracked), model[1].running_mean.clone()))
    assert stats[0][0] == stats[1][0] == 1
    assert torch.equal(stats[0][1], stats[1][1])  # one update of the running mean, at θ, either way

"""GU (train/gu.py): the projection's geometry, its first-order retain invariance, and its config errors."""

import pytest
import torch
from lm_fixtures import memorised_lm, tiny_qa
from torch import nn

import unlearnkit
from unlearnkit.errors import UserInputError
from unlearnkit.request import ForgetRequest
from unlearnkit.train.gu import GradientProjector


def _linear_losses(params, forget_dir, retain_dir):
    """Losses whose gradients w.r.t. ``params`` are exactly the given flat directions."""
    flat = torch.cat([p.flatten() for p in params])
    return flat @ forget_dir, flat @ retain_dir


def _flat_grad(params):
    return torch.cat([p.grad.flatten() for p in params])


def _params(seed=0):
    torch.manual_seed(seed)
    return [nn.Parameter(torch.randn(40, 50)), nn.Parameter(torch.randn(77))]


def test_projected_update_is_orthogonal_to_every_stored_retain_gradient():
    params = _params()
    size = sum(p.numel() for p in params)
    projector = GradientProjector(params, rank=8)
    for _ in range(5):
        projector.project(*_linear_losses(params, torch.randn(size), torch.randn(size)))
    update = _flat_grad(params)
    assert len(projector.stored) == 5
    assert update.norm() > 1.0  # a random forget direction keeps most of its length in 2,077 dimensions
    for retain in projector.stored:
        assert abs(float(update @ retain)) / float(update.norm() * retain.norm()) < 1e-6


def test_basis_is_orthonormal_and_keeps_only_the_newest_rank_gradients():
    params = _params()
    size = sum(p.numel() for p in params)
    retains = [torch.randn(size) for _ in range(5)]
    projector = GradientProjector(params, rank=3)
    for retain in retains:
        projector.project(*_linear_losses(params, torch.randn(size), retain))
    basis = projector.basis
    assert basis.shape == (3, size)
    assert torch.allclose(basis @ basis.T, torch.eye(3), atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(projector.stored, retains[-3:]))

    def residual(v):
        return float((v - basis.T @ (basis @ v)).norm() / v.norm())

    assert all(residual(v) < 1e-5 for v in retains[-3:])
    assert all(residual(v) > 0.9 for v in retains[:2])  # dropped (FIFO): random vectors, nearly orthogonal


def test_repair_adds_the_retain_step_inside_the_span():
    params = _params()
    size = sum(p.numel() for p in params)
    forget, retain = torch.randn(size), torch.randn(size)
    projector = GradientProjector(params, rank=8, repair=0.5)
    projector.project(*_linear_losses(params, forget, retain))
    unit = retain / retain.norm()
    expected = forget - (unit @ forget) * unit + 0.5 * retain
    assert torch.allclose(_flat_grad(params), expected, atol=1e-4)


def test_adam_metric_makes_the_preconditioned_step_orthogonal():
    params = _params()
    size = sum(p.numel() for p in params)
    optimizer = torch.optim.Adam(params, lr=1e-3)
    scales = torch.linspace(0.01, 10.0, size)  # very uneven second moments, so the metric matters
    for _ in range(3):
        for p, g in zip(params, torch.split(torch.randn(size) * scales, [p.numel() for p in params])):
            p.grad = g.view_as(p)
        optimizer.step()
    projector = GradientProjector(rank=8).attach(optimizer)
    forget, retain = torch.randn(size), torch.randn(size)
    projector.project(*_linear_losses(params, forget, retain))
    update = _flat_grad(params)
    # 1 / (√v̂ + ε), what Adam multiplies the gradient by, read from the optimizer's state (not from the projector)
    beta2, eps = optimizer.param_groups[0]["betas"][1], optimizer.param_groups[0]["eps"]
    preconditioner = torch.cat([
        1 / ((optimizer.state[p]["exp_avg_sq"] / (1 - beta2 ** float(optimizer.state[p]["step"]))).sqrt() + eps).flatten()
        for p in params])
    whitened_cos = float(retain @ (preconditioner * update)) / float(
        (retain * preconditioner.sqrt()).norm() * (update * preconditioner.sqrt()).norm())
    euclidean_cos = float(retain @ update) / float(retain.norm() * update.norm())
    assert abs(whitened_cos) < 1e-6
    assert abs(euclidean_cos) > 1e-3  # the plain Euclidean projection would have given ~0 here


@pytest.fixture(scope="module")
def lm():
    items = tiny_qa(12)
    adapter = memorised_lm(items)
    for module in adapter.model.modules():  # first-order statements need a deterministic loss
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return adapter, ForgetRequest(items, [0, 1, 2], list(range(3, 12)))


def _retain_loss(adapter, model, request):
    with torch.no_grad():
        return float(adapter.per_item_loss(model, adapter.collate(request.retain_items())).mean())


@pytest.mark.parametrize("method", ["gradient_ascent", "graddiff", "npo", "simnpo"])
def test_gu_leaves_the_retain_loss_unchanged_to_first_order(lm, method):
    adapter, request = lm
    # One plain SGD step on the whole forget set and the whole retain set (batch 9 covers both).
    settings = dict(optimizer="sgd", momentum=0.0, lr=1e-3, max_steps=1, epochs=1, batch_size=9, grad_clip=None)
    before = _retain_loss(adapter, adapter.model, request)
    plain, _ = unlearnkit.unlearn(adapter, request, method, **settings)
    projected, record = unlearnkit.unlearn(adapter, request, method, project="gu", **settings)
    change_plain = _retain_loss(adapter, plain, request) - before
    change_gu = _retain_loss(adapter, projected, request) - before
    assert record.steps == 1 and record.status == "ok"
    assert abs(change_plain) > 1e-5
    assert abs(change_gu) < 0.05 * abs(change_plain)


@pytest.mark.parametrize("method", ["graddiff", "npo", "simnpo"])
def test_gu_methods_still_forget(lm, method):
    adapter, request = lm

    def answer_prob(model, items):
        with torch.no_grad():
            return float(torch.exp(-adapter.per_item_loss(model, adapter.collate(items))).mean())

    forget0, retain0 = answer_prob(adapter.model, request.forget_items()), answer_prob(adapter.model, request.retain_items())
    torch.manual_seed(0)
    model, _ = unlearnkit.unlearn(adapter, request, method, project="gu", lr=1e-3)  # the tiny model's scale
    forget_change = answer_prob(model, request.forget_items()) / forget0 - 1
    retain_change = answer_prob(model, request.retain_items()) / retain0 - 1
    assert forget_change < retain_change and forget_change < -0.05


def test_gu_on_a_method_without_gradients_is_refused(lm):
    adapter, request = lm
    with pytest.raises(UserInputError, match="does not support --project gu: it needs a gradient-based method"):
        unlearnkit.unlearn(adapter, request, "ssd", project="gu")


def test_gradient_ascent_with_gu_needs_retain_data(lm):
    adapter, request = lm
    with pytest.raises(UserInputError, match="needs retain data"):
        unlearnkit.unlearn(adapter, ForgetRequest(request.data, request.forget), "gradient_ascent", project="gu")


@pytest.mark.parametrize("overrides, message", [
    ({"project": "pcgrad"}, "Unknown projection"), ({"project": "gu", "gu_rank": 0}, "gu_rank"),
    ({"project": "gu", "gu_repair": -1.0}, "gu_repair"),
])
def test_bad_projection_settings_are_refused(lm, overrides, message):
    adapter, request = lm
    with pytest.raises(UserInputError, match=message):
        unlearnkit.unlearn(adapter, request, "npo", **overrides)

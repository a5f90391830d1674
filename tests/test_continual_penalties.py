"""The regularisers' terms against hand formulas on one batch, and their effect on training against naive."""

import pytest
import torch
import torch.nn.functional as F

from unlearnkit.continual.fisher import diagonal_fisher
from unlearnkit.continual.scenarios import split_digits
from unlearnkit.continual.strategies import build_strategy
from unlearnkit.continual.strategies.ewc import EWC
from unlearnkit.continual.strategies.featkd import FeatKD
from unlearnkit.continual.strategies.l2 import L2
from unlearnkit.continual.strategies.uer import UER

ONE = {"epochs": 1}


@pytest.fixture(scope="module")
def scenario():
    return split_digits(0)


def _shift(parameters, by: float) -> None:
    with torch.no_grad():
        for p in parameters:
            p.add_(by)


def test_l2_penalty_is_lambda_times_the_backbones_squared_distance_to_the_anchor(scenario):
    t, lam = scenario.tasks, 0.5
    learner = build_strategy("l2", scenario, 0, {**ONE, "l2_lambda": lam})
    learner.learn(t[0], t[0].train_ids)
    plugin, model = learner.plugin(L2), learner.model
    batch = learner.batch_of(t[1].train_ids[:32], 1)
    assert plugin.penalty(learner, model, batch).item() == 0.0  # at the anchor
    _shift(model.body.parameters(), 0.1)
    _shift(model.head.parameters(), 5.0)  # the head is not anchored
    size = sum(p.numel() for p in model.body.parameters())
    expected = lam * 0.1**2 * size
    assert plugin.penalty(learner, model, batch).item() == pytest.approx(expected, rel=1e-4)
    assert learner.loss(model, batch).item() == pytest.approx(learner.task_loss(model, batch).item() + expected, rel=1e-5)


def test_featkd_penalty_is_the_weighted_feature_mse_to_the_teacher(scenario):
    # Zero weights in the last body layer make every feature its bias: 0.5 for the teacher, 0.2 for the
    # student, so the MSE is 0.3² whatever the input.
    t, weight = scenario.tasks, 2.0
    learner = build_strategy("featkd", scenario, 0, {**ONE, "featkd_weight": weight})
    learner.learn(t[0], t[0].train_ids)
    plugin = learner.plugin(FeatKD)
    plugin.before_task(learner, t[1], t[1].train_ids)
    batch = learner.batch_of(t[1].train_ids[:32], 1)
    assert plugin.penalty(learner, learner.model, batch).item() == 0.0  # the teacher is the current model
    with torch.no_grad():
        for net, bias in ((plugin.teacher, 0.5), (learner.model, 0.2)):
            net.body[-1].weight.zero_()
            net.body[-1].bias.fill_(bias)
    assert plugin.penalty(learner, learner.model, batch).item() == pytest.approx(weight * 0.3**2, rel=1e-5)


def _body(learner) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in learner.model.body.parameters()])


def test_l2_and_featkd_hold_the_backbone_closer_than_naive(scenario):
    # Task 0 trains identically (neither term exists yet); on task 1 each term keeps what it regularises
    # nearer its value after task 0 than naive training does.
    t = scenario.tasks
    x_new = scenario.train_x[t[1].train_ids]
    drift = {}
    for spec, params in (("naive", {}), ("l2", {"l2_lambda": 1.0}), ("featkd", {"featkd_weight": 100.0})):
        learner = build_strategy(spec, scenario, 0, {**ONE, **params})
        learner.learn(t[0], t[0].train_ids)
        weights, features = _body(learner), learner.model.features(x_new).detach()
        learner.learn(t[1], t[1].train_ids)
        drift[spec] = (weights, float((_body(learner) - weights).norm()),
                       float((learner.model.features(x_new).detach() - features).pow(2).mean()))
    assert torch.equal(drift["naive"][0], drift["l2"][0]) and torch.equal(drift["naive"][0], drift["featkd"][0])
    assert drift["l2"][1] < 0.5 * drift["naive"][1]
    assert drift["featkd"][2] < 0.5 * drift["naive"][2]


def test_ewc_penalty_is_lambda_times_the_fisher_weighted_squared_distance(scenario):
    # The module's documented form (Mammoth's ewc_on): λ Σ F (θ − θ*)², without Kirkpatrick's 1/2.
    t, lam = scenario.tasks, 3.0
    learner = build_strategy("ewc", scenario, 0, {**ONE, "hidden": 4, "ewc_lambda": lam})
    learner.learn(t[0], t[0].train_ids)
    plugin, model = learner.plugin(EWC), learner.model
    fisher = diagonal_fisher(model, scenario.train_x[t[0].train_ids], scenario.train_y[t[0].train_ids])
    assert all(torch.allclose(plugin.fishers.total[k], f) for k, f in fisher.items())
    total = float(sum(f.sum() for f in fisher.values()))
    assert total > 0
    plugin.before_task(learner, t[1], t[1].train_ids)
    batch = learner.batch_of(t[1].train_ids[:32], 1)
    assert plugin.penalty(learner, model, batch).item() == 0.0  # at the anchor
    _shift(model.parameters(), 0.1)
    assert plugin.penalty(learner, model, batch).item() == pytest.approx(lam * 0.1**2 * total, rel=1e-4)


def test_ewc_penalty_is_active_while_learning_the_second_task(scenario):
    t = scenario.tasks
    learner = build_strategy("ewc", scenario, 0, {**ONE, "hidden": 4})
    plugin = learner.plugin(EWC)
    batch = learner.batch_of(t[1].train_ids[:32], 1)
    learner.learn(t[0], t[0].train_ids)
    learner.learn(t[1], t[1].train_ids)
    params = dict(learner.model.named_parameters())
    by_hand = plugin.config.ewc_lambda * sum((plugin.fishers.total[k] * (params[k] - plugin.anchor[k]) ** 2).sum() for k in params)
    penalty = plugin.penalty(learner, learner.model, batch)
    assert penalty is not None and penalty.item() > 0
    assert penalty.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_uer_trains_the_current_batch_on_scaled_cosine_logits(scenario):
    t, scale = scenario.tasks, 4.0
    learner = build_strategy("uer", scenario, 0, {**ONE, "uer_scale": scale})
    learner.learn(t[0], t[0].train_ids)
    uer, model = learner.plugin(UER), learner.model
    uer.buffer.remove(uer.buffer.held_ids())  # no replay term: the loss is the current batch's alone
    batch = learner.batch_of(t[1].train_ids[:32], 1)
    h, w = model.features(batch["x"]), model.head.weight
    cosine = (h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (w / w.norm(dim=1, keepdim=True)).T
    expected = F.cross_entropy(scale * cosine, batch["y"])
    loss = learner.loss(model, batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(F.cross_entropy(model(batch["x"]), batch["y"]).item(), rel=1e-2)


def test_diagonal_fisher_is_the_mean_of_p_weighted_squared_per_sample_gradients_at_the_true_label():
    """F = (1/N) Σ_n p(y_n|x_n)·(∇ log p(y_n|x_n))², written out one sample at a time (Mammoth's ewc_on)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(7, 4), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for xi, yi in zip(x, y):
        model.zero_grad()
        log_p = F.log_softmax(model(xi[None]), dim=1)[0, yi]
        log_p.backward()
        for name, p in model.named_parameters():
            expected[name] += log_p.exp().detach() * p.grad ** 2
    got = diagonal_fisher(model, x, y, chunk=3)  # chunks of 3, 3 and 1
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value / len(y), rtol=1e-5, atol=1e-9)

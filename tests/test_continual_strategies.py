"""Strategies: replay buffers are purged, plug-ins behave as their rules say, ER beats naive."""

import copy

import pytest
import torch

from unlearnkit.continual.runner import run_stream
from unlearnkit.continual.scenarios import split_digits
from unlearnkit.continual.strategies import build_strategy
from unlearnkit.continual.strategies.cuber import GPM, new_basis
from unlearnkit.continual.strategies.ewc import EWC
from unlearnkit.continual.strategies.refresh import Refresh
from unlearnkit.continual.strategies.base import MASK_VALUE
from unlearnkit.continual.unlearners import amnesiac, apply_unlearner

FAST = {"epochs": 2}


@pytest.fixture(scope="module")
def scenario():
    return split_digits(0)


@pytest.fixture(scope="module")
def task_il():
    return split_digits(0, setting="task-il")


@pytest.mark.parametrize("spec", ["er", "uer", "refresh+er", "joint"])
def test_no_forgotten_sample_remains_in_any_buffer(scenario, spec, monkeypatch):
    # A core unlearner on the current model: apply_unlearner purges the strategy's buffer (joint: its
    # store of every learned sample). Record the held ids around each request, so the test sees that
    # the forgotten samples were there before the purge and are gone after it.
    import unlearnkit.continual.runner as runner

    seen = []

    def recording(strategy, name, scen, task, forget, retain, params=None):
        before = strategy.held_ids()
        info = apply_unlearner(strategy, name, scen, task, forget, retain, params)
        seen.append((task, set(forget), before, strategy.held_ids()))
        return info

    monkeypatch.setattr(runner, "apply_unlearner", recording)
    t = scenario.tasks
    task0, task1 = set(t[0].train_ids.tolist()), set(t[1].train_ids.tolist())
    some = t[2].train_ids[:5].tolist()
    stream = f"learn:0,learn:1,unlearn:0,learn:2,unlearn:ids={';'.join(map(str, some))},learn:3"
    params = {**FAST, "buffer_size": 400} if spec != "joint" else FAST
    run = run_stream(scenario, spec, stream, params=params, unlearner="gradient_ascent", reference=False)
    assert [(task, forget) for task, forget, _, _ in seen] == [(0, task0), (None, set(some))]
    for _, forget, before, after in seen:
        assert before & forget, "the buffer held forgotten samples before the request"
        assert not after & forget
        assert after == before - forget  # only the forgotten samples go
    held = run.final.held_ids()
    assert not held & task0 and not held & set(some)
    if spec == "joint":  # the store is exactly the remaining learned samples
        assert held == (task1 | set(t[2].train_ids.tolist()) | set(t[3].train_ids.tolist())) - set(some)
    else:
        assert len(held) == 400 and held & task1  # retained samples stay; freed slots are refilled


@pytest.mark.parametrize("spec", ["er", "joint"])
def test_retrain_unlearner_leaves_the_learner_of_a_stream_without_the_forgotten_task(scenario, spec):
    # "retrain" replaces the learner by one rebuilt from the remaining learn requests (purge is not
    # called): its buffer and weights are those of a run that only ever learned task 0.
    run = run_stream(scenario, spec, "learn:0,learn:1,unlearn:1", params=FAST, unlearner="retrain", reference=False)
    only = run_stream(scenario, spec, "learn:0", params=FAST, reference=False)
    held = run.final.held_ids()
    assert held == only.final.held_ids()
    assert held and held <= set(scenario.tasks[0].train_ids.tolist())
    weights = only.final.model.state_dict()
    assert all(torch.equal(value, weights[name]) for name, value in run.final.model.state_dict().items())


def test_amnesiac_restores_the_weights_before_the_last_task(scenario):
    learner = build_strategy("naive", scenario, 0, FAST)
    t = scenario.tasks
    learner.learn(t[0], t[0].train_ids)
    before = copy.deepcopy(learner.model.state_dict())
    learner.learn(t[1], t[1].train_ids)
    amnesiac(learner, 1)
    for name, value in learner.model.state_dict().items():
        assert torch.allclose(value, before[name], atol=1e-6)


def test_gpm_keeps_the_first_layer_outputs_of_an_old_task(task_il):
    t = task_il.tasks
    x_old = task_il.train_x[t[0].train_ids]
    drift = {}
    for spec in ("naive", "gpm"):
        learner = build_strategy(spec, task_il, 0, {**FAST, "gpm_threshold": 0.99} if spec == "gpm" else FAST)
        learner.learn(t[0], t[0].train_ids)
        layer = learner.model.body[0]
        before = layer(x_old.flatten(1)).detach()
        learner.learn(t[1], t[1].train_ids)
        drift[spec] = float((layer(x_old.flatten(1)).detach() - before).norm() / before.norm())
    assert drift["gpm"] < 0.25 * drift["naive"]


def test_forgetting_a_task_removes_its_ewc_term_gpm_subspace_and_refresh_fisher(task_il):
    t = task_il.tasks
    for spec, plugin_cls in (("ewc", EWC), ("gpm", GPM), ("refresh+naive", Refresh)):
        learner = build_strategy(spec, task_il, 0, FAST)
        learner.learn(t[0], t[0].train_ids)
        learner.learn(t[1], t[1].train_ids)
        plugin = learner.plugin(plugin_cls)
        if spec == "gpm":
            assert [[task for task, _ in layer] for layer in plugin.bases] == [[0, 1], [0, 1]]
            assert [sorted(grads) for grads in plugin.grads] == [[0, 1], [0, 1]]
            kept = [[m for task, m in layer if task == 1] for layer in plugin.bases]
            kept_grads = [grads[1] for grads in plugin.grads]
        learner.purge(set(t[0].train_ids.tolist()), 0)
        if spec == "refresh+naive":
            assert [task for task, _ in plugin.terms] == [1]
            assert all(torch.equal(plugin.fisher[k], v) for k, v in plugin.terms[0][1].items())
        elif spec == "ewc":
            assert [task for task, _ in plugin.terms] == [1]
        else:
            assert [[task for task, _ in layer] for layer in plugin.bases] == [[1], [1]]
            assert all(torch.equal(m, k[0]) for layer, k in zip(plugin.bases, kept) for _, m in layer)  # task 1's bases kept
            assert [sorted(grads) for grads in plugin.grads] == [[1], [1]]  # stored grads go with the task
            assert all(torch.equal(grads[1], g) for grads, g in zip(plugin.grads, kept_grads))


def test_refresh_with_zero_rate_is_the_base_strategy(scenario):
    runs = [run_stream(scenario, spec, "learn:0,learn:1", params={**FAST, **extra}, reference=False)
            for spec, extra in (("er", {}), ("refresh+er", {"refresh_rate": 0.0, "refresh_noise": 0.0}), ("refresh+er", {}))]
    weights = [r.final.model.state_dict() for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_uncle_unlearns_a_task_without_data_and_keeps_the_others(task_il):
    run = run_stream(task_il, "uncle", "learn:0,learn:1,unlearn:0", params={"epochs": 3, "unlearn_steps": 60}, reference=False)
    learned, after = run.steps[1].accuracy, run.steps[2].accuracy
    assert learned[0] > 0.9 and learned[1] > 0.9
    assert abs(after[0] - 0.5) <= 0.1  # two-class task: near chance (0.5) once its generated weights are noise
    assert after[1] > learned[1] - 0.05


def test_replay_beats_naive_on_class_incremental_split_digits(scenario):
    stream = "learn:0,learn:1,learn:2"
    naive = run_stream(scenario, "naive", stream, reference=False).metrics["avg_acc"]
    replay = run_stream(scenario, "er", stream, reference=False).metrics["avg_acc"]
    assert replay > naive + 0.3


def test_learners_train_on_the_cpu_where_their_buffers_live(scenario, monkeypatch):
    import unlearnkit.continual.strategies.base as base

    seen = []
    monkeypatch.setattr(base, "optimise", lambda *args, **kwargs: seen.append(kwargs.get("cpu")))
    learner = build_strategy("naive", scenario, 0, FAST)
    learner.learn(scenario.tasks[0], scenario.tasks[0].train_ids)
    assert seen == [True]


def test_gpm_basis_sizes_follow_the_authors_first_and_later_task_rules():
    inputs = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))  # energy shares 16, 9, 4, 1 of 30
    first = new_basis(inputs, None, 0.95)
    assert first.shape[1] == 2  # cumulated shares 0.53, 0.83 stay below 0.95; 0.97 does not
    later = new_basis(inputs, torch.eye(4)[:, :1], 0.95)  # e1 already stored: 16/30 captured
    assert later.shape[1] == 2  # 0.83 < 0.95, then one more reaches 0.97
    assert new_basis(inputs, torch.eye(4)[:, :3], 0.95).shape[1] == 0  # 29/30 already captured


def test_gpm_projects_the_shared_head_except_in_task_incremental_scenarios(scenario, task_il):
    for scen, expected in ((scenario, 3), (task_il, 2)):
        learner = build_strategy("gpm", scen, 0, FAST)
        assert len(learner.plugin(GPM)._layers(learner)) == expected, scen.setting
    learner = build_strategy("gpm", task_il, 0, {**FAST, "project_head": True})
    assert len(learner.plugin(GPM)._layers(learner)) == 3


def test_core_unlearners_see_task_masked_logits_in_task_incremental_scenarios(task_il):
    from unlearnkit.continual.unlearners import TaskMaskedAdapter

    learner = build_strategy("naive", task_il, 0, FAST)
    adapter = TaskMaskedAdapter(learner.model, task_il)
    task = task_il.tasks[1]
    ids = task.train_ids[:4].tolist()
    batch = adapter.collate([task_il.items()[i] for i in ids])
    logits = adapter.with_model(learner.model).logits(learner.model, batch)
    outside = [c for c in range(task_il.num_classes) if c not in task.classes]
    assert bool((logits[:, outside] == MASK_VALUE).all()) and bool((logits[:, list(task.classes)] > MASK_VALUE).all())
    expected = learner.task_loss(learner.model, learner.batch_of(torch.tensor(ids), task.index))
    assert torch.isclose(adapter.per_item_loss(learner.model, batch).mean(), expected)


def test_lwf_distils_each_old_task_head_on_its_own_in_task_incremental_scenarios(scenario, task_il):
    from unlearnkit.continual.strategies.lwf import LwF

    for scen in (task_il, scenario):
        learner = build_strategy("lwf", scen, 0, FAST)
        t = scen.tasks
        for task in t[:2]:
            learner.learn(task, task.train_ids)
        plugin = learner.plugin(LwF)
        plugin.before_task(learner, t[2], t[2].train_ids)
        old = [sorted(t[0].classes), sorted(t[1].classes)]
        assert plugin.heads == (old if scen.setting == "task-il" else [sorted(old[0] + old[1])])

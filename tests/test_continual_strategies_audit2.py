"""Second strategies audit: ACU after large removals, and what L2 and ER keep once nothing learned is left."""

import copy

import pytest
import torch

from unlearnkit.continual.runner import run_stream
from unlearnkit.continual.scenarios import split_digits
from unlearnkit.continual.strategies import build_strategy
from unlearnkit.continual.strategies import acu as acu_module
from unlearnkit.continual.strategies.acu import ACU, ridge_solution, rls_update
from unlearnkit.continual.strategies.er import ER
from unlearnkit.continual.strategies.l2 import L2
from unlearnkit.continual.unlearners import apply_unlearner
from unlearnkit.errors import UserInputError

FAST = {"epochs": 2}


@pytest.fixture(scope="module")
def scenario():
    return split_digits(0)


def _all(task):
    return set(task.train_ids.tolist())


def test_acu_stays_the_ridge_solution_after_a_removal_that_empties_the_head(scenario):
    # Removing (nearly) every row makes I − X R Xᵀ ill-conditioned. The old update applied R's
    # correction as R Xᵀ · (K X R), which left R asymmetric by ~1e-7, and the next update, taking
    # X R as (R Xᵀ)ᵀ, amplified that into an error of 3 % of W here (up to several times W at the
    # default width); the head was no longer the ridge solution of its remaining rows.
    t = scenario.tasks
    acu = build_strategy("acu", scenario, 0, {"expansion": 500})
    acu.learn(t[0], t[0].train_ids)
    acu.unlearn(0, _all(t[0]))
    acu.learn(t[0], t[0].train_ids)  # relearning the forgotten task
    acu.learn(t[1], t[1].train_ids)
    acu.unlearn(0, _all(t[0]))
    r = acu.r.dense()
    assert (r - r.T).abs().max() <= 1e-12 * r.abs().max()
    ids = t[1].train_ids
    reference = ridge_solution(acu.features(scenario.train_x[ids]), acu.targets(ids), acu.config.gamma)
    assert (acu.w - reference).abs().max() <= 1e-6 * reference.abs().max()


def test_acu_unlearning_its_only_task_is_exactly_the_empty_head(scenario):
    # With no row left the ridge solution is W = 0 (R = I/γ); the recursion left a ~1e-8 residue whose
    # argmax decided every prediction, so "exact" ACU reported a retrain gap of 0.5 against its reference.
    run = run_stream(scenario, "acu", "learn:0,unlearn:0", params={"expansion": 500})
    acu = run.final
    assert torch.equal(acu.w, torch.zeros_like(acu.w))
    assert torch.equal(acu.r.dense(), torch.eye(500, dtype=torch.float64) / acu.config.gamma)
    assert run.steps[1].retrain_gap == 0.0


def test_acu_removes_what_float64_cannot_downdate_through_its_sums(scenario):
    # At gamma=1e-8 removing a task needs I − X R Xᵀ with eigenvalues ~1e-8/λ: below float64's rounding. The old
    # update returned a head thousands of times off the ridge solution without a word, a later one refused the
    # request; it is now taken from G − XᵀX and B − XᵀY.
    t = scenario.tasks
    acu = build_strategy("acu", scenario, 0, {"expansion": 300, "gamma": 1e-8})
    for task in t[:3]:
        acu.learn(task, task.train_ids)
    acu.unlearn(0, _all(t[0]))
    ids = torch.cat([t[1].train_ids, t[2].train_ids])
    x, y = acu.features(scenario.train_x[ids]), acu.targets(ids)
    # at this gamma the normal equations themselves carry ~1e-4 of rounding: compare both with a QR solve of the
    # least-squares problem [X; √γ I] W = [Y; 0], and ask ACU to be as close to it as a direct solve is
    augmented = torch.cat([x, acu.config.gamma**0.5 * torch.eye(x.shape[1], dtype=x.dtype)])
    q, r = torch.linalg.qr(augmented)
    exact = torch.linalg.solve_triangular(r, q.T @ torch.cat([y, torch.zeros(x.shape[1], y.shape[1], dtype=y.dtype)]),
                                          upper=True)
    direct = ridge_solution(x, y, acu.config.gamma)
    assert (acu.w - exact).abs().max() <= 3 * (direct - exact).abs().max()


DRIFTING_STREAM = "learn:0,learn:1,learn:2,unlearn:0,unlearn:1,unlearn:ids={ids}"


def test_acu_stays_the_ridge_solution_where_its_recursion_alone_drifted(scenario):
    # At gamma=1e-4 every update had a Cholesky factor, but an ill-conditioned one: after removing two tasks and most
    # of the third, the recursion alone left the head 153 % off the ridge solution (expansion 1500) and the forgotten
    # tasks scored again; later the stream was refused. With refinement from G and B it stays at the solution.
    ids = ";".join(map(str, scenario.tasks[2].train_ids[20:].tolist()))
    run = run_stream(scenario, "acu", DRIFTING_STREAM.format(ids=ids), params={"expansion": 500, "gamma": 1e-4},
                     reference=False)
    diffs = [step.info["relative_max_abs_diff_to_resolve"] for step in run.steps if step.action == "unlearn"]
    assert len(diffs) == 3 and max(diffs) <= 1e-6
    assert run.steps[-1].accuracy[:2].tolist() == [0.0, 0.0]  # the forgotten tasks stay forgotten


def test_the_runner_still_refuses_a_head_that_drifted_from_the_ridge_solution(scenario, monkeypatch):
    # the stream's own check against a re-solve, should the head drift anyway (here: refinement switched off)
    monkeypatch.setattr(ACU, "_refine", lambda self: None)
    ids = ";".join(map(str, scenario.tasks[2].train_ids[20:].tolist()))
    with pytest.raises(UserInputError, match=r"away from the ridge solution on the remaining data, more than the 1e-06"):
        run_stream(scenario, "acu", DRIFTING_STREAM.format(ids=ids), params={"expansion": 500, "gamma": 1e-4},
                   reference=False)


def test_acu_refused_unlearning_leaves_the_head_as_it_was(scenario, monkeypatch):
    # in chunks of 32 rows a removal refused at the second chunk: the first had already changed R, G, B and W while
    # the learned counts had not, so the head matched neither the state before the request nor after it
    t = scenario.tasks
    acu = build_strategy("acu", scenario, 0, {"expansion": 300, "chunk": 32})
    for task in t[:3]:
        acu.learn(task, task.train_ids)
    before = copy.deepcopy((acu.r.dense(), acu.gram.base, acu.gram.rows, acu.b, acu.w, acu.r_floor, dict(acu.counts)))
    calls = []

    def refuse_the_second_chunk(*args):
        calls.append(1)
        if len(calls) == 2:
            raise acu_module.UnstableUpdate()
        return rls_update(*args)

    monkeypatch.setattr(acu_module, "rls_update", refuse_the_second_chunk)
    # and G − XᵀX without a Cholesky factor either
    monkeypatch.setattr(acu_module.ACU, "_recompute", lambda self, removed=None: False)
    with pytest.raises(UserInputError, match="ACU cannot unlearn these rows exactly"):
        acu.unlearn(0, _all(t[0]))
    after = (acu.r.dense(), acu.gram.base, acu.gram.rows, acu.b, acu.w, acu.r_floor, dict(acu.counts))
    assert len(calls) == 2
    for old, new in zip(before, after):
        assert torch.equal(old, new) if isinstance(old, torch.Tensor) else old == new


def _forget_task(learner, scenario, task):
    apply_unlearner(learner, "amnesiac", scenario, task, _all(scenario.tasks[task]), set())


def test_l2_has_no_anchor_once_its_only_task_is_forgotten(scenario):
    # "Anchored to the weights after the first task": with every learned task forgotten, the next task
    # is the first one again. The anchor stayed at the unlearned weights and held that task back, which
    # a run that never learned the forgotten task (the retrained reference) does not do.
    t = scenario.tasks
    learners = {spec: build_strategy(spec, scenario, 0, {**FAST, "l2_lambda": 1.0} if spec == "l2" else FAST)
                for spec in ("naive", "l2")}
    for learner in learners.values():
        learner.learn(t[0], t[0].train_ids)
        _forget_task(learner, scenario, 0)
    plugin = learners["l2"].plugin(L2)
    assert plugin.anchor is None
    for learner in learners.values():
        learner.learn(t[1], t[1].train_ids)
    naive, l2 = learners["naive"].model.state_dict(), learners["l2"].model.state_dict()
    assert all(torch.equal(value, naive[name]) for name, value in l2.items())  # no penalty while learning task 1
    assert plugin.anchor_ids == set(t[1].train_ids.tolist())
    assert all(torch.equal(a, p) for a, p in zip(plugin.anchor.values(), learners["l2"].model.body.parameters()))


def test_l2_keeps_moving_its_anchor_while_a_learned_task_remains(scenario):
    t = scenario.tasks
    learner = build_strategy("l2", scenario, 0, FAST)
    learner.learn(t[0], t[0].train_ids)
    learner.learn(t[1], t[1].train_ids)
    _forget_task(learner, scenario, 0)  # the anchor's task: re-anchored at the unlearned weights
    plugin = learner.plugin(L2)
    assert plugin.anchor is not None
    assert all(torch.equal(a, p) for a, p in zip(plugin.anchor.values(), learner.model.body.parameters()))


@pytest.mark.parametrize("rule", ["first", "previous"])
def test_l2_re_anchors_when_any_task_its_anchor_was_trained_on_is_forgotten(scenario, rule):
    # The anchor holds every task learned before it was set: under "previous", forgetting task 0 after tasks 0-2
    # left it at the weights from before unlearning, and learning task 3 pulled task 0 back (accuracy 0.47 -> 1.00).
    # Under "first", once forgetting task 0 re-anchored at weights holding tasks 1-2, forgetting task 1 did the same.
    t = scenario.tasks
    learner = build_strategy("l2", scenario, 0, {**FAST, "l2_anchor": rule})
    for task in t[:3]:
        learner.learn(task, task.train_ids)
    plugin = learner.plugin(L2)
    for forgotten in (0, 1) if rule == "first" else (0,):
        _forget_task(learner, scenario, forgotten)
        assert all(torch.equal(a, p) for a, p in zip(plugin.anchor.values(), learner.model.body.parameters()))
    assert plugin.anchor_ids == set(torch.cat([task.train_ids for task in t[forgotten + 1 : 3]]).tolist())


@pytest.mark.parametrize("rule, anchored_after", [("first", 0), ("previous", 1)])
def test_l2_anchors_after_the_first_task_or_after_each_task(scenario, rule, anchored_after):
    # "previous" is the co-author code's rule (the anchor moves to the weights at every task's end)
    t = scenario.tasks
    learner = build_strategy("l2", scenario, 0, {**FAST, "l2_anchor": rule})
    after = []
    for task in t[:2]:
        learner.learn(task, task.train_ids)
        after.append([p.detach().clone() for p in learner.model.body.parameters()])
    plugin = learner.plugin(L2)
    assert plugin.anchor_ids == set(torch.cat([task.train_ids for task in t[: anchored_after + 1]]).tolist())
    assert all(torch.equal(a, p) for a, p in zip(plugin.anchor.values(), after[anchored_after]))
    assert not all(torch.equal(a, b) for a, b in zip(after[0], after[1]))  # the two anchors differ
    with pytest.raises(UserInputError, match="l2_anchor must be 'first' or 'previous'"):
        build_strategy("l2", scenario, 0, {"l2_anchor": "last"})


def test_er_refills_its_buffer_like_a_fresh_run_once_everything_is_forgotten(scenario):
    # After every learned sample is forgotten the reservoir kept n (the forgotten stream's length) and
    # admitted each new sample with probability capacity / n only: the next task left it about half empty.
    t = scenario.tasks
    learner = build_strategy("er", scenario, 0, FAST)
    learner.learn(t[0], t[0].train_ids)
    learner.learn(t[1], t[1].train_ids)
    _forget_task(learner, scenario, 0)
    assert len(learner.plugin(ER).buffer) < 200 and learner.plugin(ER).buffer.seen > 200  # task 1 remains: n kept
    _forget_task(learner, scenario, 1)
    assert learner.held_ids() == set()
    learner.learn(t[2], t[2].train_ids)
    fresh = build_strategy("er", scenario, 0, FAST)
    fresh.learn(t[2], t[2].train_ids)
    buffer, expected = learner.plugin(ER).buffer, fresh.plugin(ER).buffer
    assert len(buffer) == len(expected) == 200
    assert buffer.seen == expected.seen == len(t[2].train_ids)
    assert learner.held_ids() <= _all(t[2])

"""The classifier-track unlearning methods on the digits benchmark, plus exact checks on toy models.

The session fixture trains the digits target and the two retrained references once (benchmark
recipe, seed 0) into a temporary cache. Every method is then run with its defaults (SSD and
gradient ascent with the bench's digits settings, ``BENCH_METHOD_SETTINGS``) and must:
- class scenario: bring forget accuracy to within ``FORGET_MARGIN`` of the retrained model's (0);
- random scenario: raise the mean forget loss (toward the retrained model's, which is higher),
  while keeping forget accuracy within ``FORGET_OVERSHOOT`` of the retrained model's;
- both: keep test accuracy within ``TEST_MARGIN`` of the target's (gradient ascent, which has no retain
  term, above ``GRADIENT_ASCENT_TEST_FLOOR`` in the class scenario) and leave the input model unchanged.
``retrain`` must instead reproduce the cached retrained model (same seed, same recipe) exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from unlearnkit.adapters.classifier import ClassifierAdapter
from unlearnkit.api import unlearn
from unlearnkit.benchmarks.vision import (
    BENCH_METHOD_SETTINGS,
    cached_classifier,
    evaluation_splits,
    forget_request,
    load_vision_benchmark,
)
from unlearnkit.errors import UserInputError
from unlearnkit.methods.l1_sparse import l1_weight
from unlearnkit.methods.random_label import random_wrong_labels
from unlearnkit.methods.retrain import reinitialise
from unlearnkit.methods.registry import get_method, methods
from unlearnkit.train.config import build_config
from unlearnkit.train.distributed import training_device
from unlearnkit.methods.salun import saliency_mask
from unlearnkit.request import ForgetRequest

TEST_MARGIN = 0.05  # test accuracy may drop at most this much below the target's
FORGET_MARGIN = 0.05  # class scenario: forget accuracy at most this above the retrained model's
# Gradient ascent has no retain term: at the digits bench's class setting (lr 8e-4, chosen on held-out splits)
# it empties the class but takes test accuracy from 0.969 to 0.815, far past TEST_MARGIN; no lr empties the
# class within it (7e-4: forget 0.014, test 0.870). It gets its own test bound: well above chance (0.1),
# so the ascent forgot the class without wrecking the model.
GRADIENT_ASCENT_TEST_FLOOR = 0.5
FORGET_OVERSHOOT = 0.10  # random scenario: forget accuracy within this of the retrained model's

NEW_METHODS = ("retrain", "finetune", "neggrad_plus", "random_label", "l1_sparse", "salun", "scrub", "bad_teacher")
# retrain is checked more strictly below: it must reproduce the reference model itself.
APPROXIMATE_METHODS = ("ssd", "gradient_ascent", *NEW_METHODS[1:])
# The tests run each method with the settings the digits bench uses in that scenario (BENCH_METHOD_SETTINGS,
# e.g. ssd α=2, λ=0.5 and gradient ascent lr 8e-4 for a class), so they check what out/digits-*/results.json
# reports. One exception below: SSD's random-scenario setting (α=10) dampens nothing on digits.


@dataclass
class Scenario:
    request: ForgetRequest
    splits: dict
    target_acc: dict
    retrain_acc: dict
    target_forget_loss: float
    retrain_forget_loss: float


@torch.no_grad()
def accuracy(model: nn.Module, items: list) -> float:
    adapter = ClassifierAdapter(model)
    batch = adapter.collate(items)
    return float((adapter.logits(model, batch).argmax(-1) == batch["labels"]).float().mean())


@torch.no_grad()
def mean_loss(model: nn.Module, items: list) -> float:
    adapter = ClassifierAdapter(model)
    return float(adapter.per_item_loss(model, adapter.collate(items)).mean())


def accuracies(model: nn.Module, splits: dict) -> dict:
    return {name: accuracy(model, splits[name]) for name in ("forget", "retain", "test")}


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The digits benchmark, its target model (and a snapshot of it) and both scenarios."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNLEARNKIT_CACHE", str(tmp_path_factory.mktemp("ukcache")))
        patch.setenv("UNLEARNKIT_PROGRESS", "0")
        bench = load_vision_benchmark("digits", seed=0)
        target, _ = cached_classifier(bench, [], "target")
        scenarios, retrained = {}, {}
        for name in ("class", "random"):
            request = forget_request(bench, name)
            retrain, _ = cached_classifier(bench, list(request.forget), "retrain")
            splits = evaluation_splits(bench, request, name)
            scenarios[name] = Scenario(request, splits, accuracies(target, splits), accuracies(retrain, splits),
                                       mean_loss(target, splits["forget"]), mean_loss(retrain, splits["forget"]))
            retrained[name] = retrain
        snapshot = {k: v.clone() for k, v in target.state_dict().items()}
        yield {"bench": bench, "target": target, "snapshot": snapshot, "scenarios": scenarios, "retrained": retrained}


def run_method(digits, scenario: str, method: str, **overrides):
    scenario_data = digits["scenarios"][scenario]
    settings = {**BENCH_METHOD_SETTINGS["digits"][scenario].get(method, {}), **overrides}
    model, record = unlearn(digits["target"], scenario_data.request, method,
                            adapter=digits["bench"].adapter(digits["target"]), **settings)
    return model, record, scenario_data


def assert_input_unchanged(digits) -> None:
    for name, value in digits["target"].state_dict().items():
        assert torch.equal(value, digits["snapshot"][name]), f"the input model's {name} changed"


@pytest.mark.parametrize("method", APPROXIMATE_METHODS)
def test_class_scenario_forgets_the_class_and_keeps_test_accuracy(digits, method):
    model, record, data = run_method(digits, "class", method)
    got = accuracies(model, data.splits)
    assert record.status == "ok", record.message
    assert data.target_acc["forget"] == 1.0 and data.retrain_acc["forget"] == 0.0  # the premise
    assert got["forget"] <= data.retrain_acc["forget"] + FORGET_MARGIN, got
    test_floor = GRADIENT_ASCENT_TEST_FLOOR if method == "gradient_ascent" else data.target_acc["test"] - TEST_MARGIN
    assert got["test"] >= test_floor, got
    assert_input_unchanged(digits)


@pytest.mark.parametrize("method", APPROXIMATE_METHODS)
def test_random_scenario_moves_forget_loss_toward_retrain(digits, method):
    # held-out selection chose α=10 for SSD here, where random forgetting is best left almost alone (the
    # original sits within 0.01 avg_gap of the retrained model) and SSD dampens nothing: its mechanism is
    # checked at the grid's next α, 5
    overrides = {"alpha": 5.0} if method == "ssd" else {}
    model, record, data = run_method(digits, "random", method, **overrides)
    got = accuracies(model, data.splits)
    assert record.status == "ok", record.message
    assert data.retrain_forget_loss > data.target_forget_loss  # the premise: "toward" means up
    assert mean_loss(model, data.splits["forget"]) > data.target_forget_loss
    assert abs(got["forget"] - data.retrain_acc["forget"]) <= FORGET_OVERSHOOT, got
    assert got["test"] >= data.target_acc["test"] - TEST_MARGIN, got
    assert_input_unchanged(digits)


def test_retrain_with_the_recipe_reproduces_the_reference_model(digits):
    """Seeded re-initialisation + the benchmark recipe give the cached retrained model exactly."""
    model, record, data = run_method(digits, "class", "retrain", **digits["bench"].recipe.to_dict())
    assert record.info["reset_modules"] == 4  # two convolutions and two linear layers
    for name, value in digits["retrained"]["class"].state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=1e-6)
    assert accuracies(model, data.splits) == data.retrain_acc
    assert_input_unchanged(digits)


def test_reinitialise_covers_private_resets_and_refuses_parameters_it_cannot_reset():
    attention = nn.MultiheadAttention(4, 2)  # resets through _reset_parameters
    before = attention.in_proj_weight.detach().clone()
    with torch.no_grad():
        attention.in_proj_weight.fill_(0.5)
    assert reinitialise(attention, seed=0) == 2  # the attention and its out_proj
    assert not torch.equal(attention.in_proj_weight, torch.full_like(before, 0.5))

    # children before their parent, as the constructor: the attention's reset zeroes out_proj's bias last (reset
    # parent first, out_proj's own reset re-drew it at random) and the draws come in the constructor's order
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention, self.head = nn.MultiheadAttention(8, 2), nn.Linear(8, 3)

    torch.manual_seed(0)
    built = Net()
    redrawn = Net()
    reinitialise(redrawn, seed=0)
    for name, value in built.state_dict().items():
        assert torch.equal(value, redrawn.state_dict()[name]), name
    assert not redrawn.attention.out_proj.bias.any()

    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.ones(4))  # trained, and no reset knows how to redraw it
            self.head = nn.Linear(4, 2)

    model = WithToken()
    with pytest.raises(UserInputError, match="Cannot re-initialise parameter 'token'.*WithToken"):
        reinitialise(model, seed=0)
    assert torch.equal(model.token, torch.ones(4))  # refused before anything changed


def test_retrain_keeps_a_frozen_backbone_and_redraws_the_trainable_head():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    backbone, head = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    assert reinitialise(model, seed=1) == 1  # only the head: a reset backbone would stay random, never trained
    assert torch.equal(model[0].weight, backbone) and not torch.equal(model[2].weight, head)
    model[2].bias.requires_grad_(False)
    with pytest.raises(UserInputError, match="some of its parameters are frozen and some are not"):
        reinitialise(model, seed=1)
    with pytest.raises(UserInputError, match="every parameter of the model is frozen"):
        reinitialise(nn.Linear(2, 2).requires_grad_(False), seed=1)
    with pytest.raises(UserInputError, match="SSD lam must be a non-negative number"):
        build_config(get_method("ssd").Config, {"lam": -1}, owner="Method 'ssd'")


def test_methods_are_registered_with_their_declarations():
    registry = methods()
    for name in NEW_METHODS:
        method = registry[name]
        assert method.name == name and method.paper and method.__doc__
        assert "retain" in method.needs
    assert registry["finetune"].kinds == registry["neggrad_plus"].kinds == ("classifier", "causal_lm")
    for name in ("retrain", "finetune", "neggrad_plus", "random_label", "l1_sparse", "salun", "scrub", "ssd"):
        assert "labels" in registry[name].needs, name  # each computes a cross-entropy against the labels
    assert "labels" not in registry["bad_teacher"].needs  # its loss is a KL to teacher outputs only
    assert "reference_model" in registry["scrub"].needs and "reference_model" in registry["bad_teacher"].needs


def test_out_of_range_settings_are_user_errors(digits):
    request = digits["scenarios"]["class"].request
    for method, bad, message in [
        ("neggrad_plus", {"alpha": 1.5}, r"NegGrad\+ alpha must lie in \[0, 1\], got alpha=1\.5"),
        ("salun", {"mask_ratio": 0.0}, r"SalUn mask_ratio must lie in \(0, 1\], got mask_ratio=0\.0"),
        ("bad_teacher", {"retain_fraction": 2.0}, r"retain_fraction must lie in \(0, 1\], got retain_fraction=2\.0"),
        ("l1_sparse", {"no_l1_epochs": 5, "epochs": 2},
         r"no_l1_epochs must be in 0\.\.epochs-1 \(epochs=2\), got no_l1_epochs=5"),
    ]:
        with pytest.raises(UserInputError, match=message):
            unlearn(digits["target"], request, method, **bad)


def test_random_wrong_labels_never_repeat_the_true_label_and_cover_the_others():
    labels = torch.arange(5).repeat(400)
    draws = torch.rand(len(labels), generator=torch.Generator().manual_seed(3))
    everything = torch.ones(len(labels), 5, dtype=torch.bool)
    drawn = random_wrong_labels(labels, everything, draws)
    assert not torch.any(drawn == labels)
    # with every class allowed: the label plus 1 + ⌊draw·4⌋ (cyclically), as before classes could be restricted
    assert torch.equal(drawn, (labels + 1 + (draws * 4).long().clamp(max=3)) % 5)
    for true in range(5):
        counts = torch.bincount(drawn[labels == true], minlength=5)
        assert counts[true] == 0 and counts.min() == 0 and sorted(counts.tolist())[1] > 60  # the 4 others, ~100 each
    edges = random_wrong_labels(torch.zeros(3, dtype=torch.long), torch.ones(3, 5, dtype=torch.bool),
                                torch.tensor([0.0, 0.2499, 1 - 1e-7]))
    assert edges.tolist() == [1, 1, 4]


def test_random_wrong_labels_stay_in_the_classes_an_item_may_take():
    """In a task-incremental stream an item's logits are masked to its task's classes: a wrong label outside them
    (14 of 16 on split-digits' task 0) gave a loss of 8.75e8."""
    allowed = torch.zeros(4, 6, dtype=torch.bool)
    allowed[:2, [0, 1]] = True  # labels 0 and 1: task {0, 1}
    allowed[2:, [2, 4, 5]] = True  # labels 4 and 5: task {2, 4, 5}
    labels, draws = torch.tensor([0, 1, 4, 5]), torch.tensor([0.99, 0.0, 0.6, 0.4])
    assert random_wrong_labels(labels, allowed, draws).tolist() == [1, 0, 2, 2]  # 4 → (5, 2): 2nd; 5 → (2, 4): 1st
    with pytest.raises(UserInputError, match="need a second class"):
        random_wrong_labels(torch.tensor([0]), torch.tensor([[True, False]]), torch.tensor([0.5]))


def test_saliency_mask_ranks_entries_globally_across_tensors():
    # the top half of all 6 entries is 10, −9 and 1: a top half per tensor would give [1, 0] and [1, 1, 0, 0]
    gradients = [torch.tensor([10.0, -9.0]), torch.tensor([[1.0, 0.5], [-0.2, 0.1]])]
    masks = saliency_mask(gradients, 0.5)
    assert masks[0].tolist() == [1.0, 1.0]
    assert masks[1].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_l1_weight_decays_linearly_then_stops():
    assert [l1_weight(1.0, t, 5, 1) for t in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [l1_weight(2.0, t, 2, 0) for t in range(2)] == [2.0, 1.0]


def test_l1_sparse_training_steps_through_the_decaying_weights_epoch_by_epoch(monkeypatch):
    from unlearnkit.methods import l1_sparse

    seen = []
    monkeypatch.setattr(l1_sparse, "l1_norm", lambda model: seen.append(model) or torch.zeros(()))
    weights = []
    original = l1_sparse.l1_weight
    monkeypatch.setattr(l1_sparse, "l1_weight", lambda *a: weights.append(original(*a)) or weights[-1])
    model, request = toy_problem()
    unlearn(model, request, "l1_sparse", alpha=0.3, epochs=4, no_l1_epochs=1, batch_size=3)  # 2 steps an epoch
    assert weights == pytest.approx([0.3, 0.3, 0.2, 0.2, 0.1, 0.1, 0.0, 0.0])
    assert len(seen) == 6  # the penalty is added wherever its weight is above 0


def test_wrong_labels_are_drawn_anew_every_epoch():
    from unlearnkit.methods.random_label import LABEL_DRAWS, with_label_draws

    def stream(epoch):
        yield {"labels": torch.zeros(50, dtype=torch.long)}

    draws = with_label_draws(stream, seed=3)
    first, again, second = (next(iter(draws(e)))[LABEL_DRAWS] for e in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, second)


def toy_problem(seed: int = 0):
    """A two-layer MLP on 3-d inputs with 2 classes, 10 items (4 forget, 6 retain)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    inputs = torch.randn(10, 3, generator=generator)
    labels = [int(v) for v in (inputs[:, 0] > 0).long()]
    data = [(inputs[i], labels[i]) for i in range(10)]
    return model, ForgetRequest(data, forget=[0, 3, 5, 8], retain=[1, 2, 4, 6, 7, 9])


def hand_gradients(weights: dict, x: np.ndarray, y: np.ndarray) -> dict:
    """Back-propagation by hand of the batch-mean cross-entropy of Linear-ReLU-Linear."""
    pre = x @ weights["0.weight"].T + weights["0.bias"]
    hidden = np.maximum(pre, 0.0)
    logits = hidden @ weights["2.weight"].T + weights["2.bias"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    d_logits = (probs - np.eye(2)[y]) / len(y)
    d_pre = (d_logits @ weights["2.weight"]) * (pre > 0)
    return {"2.weight": d_logits.T @ hidden, "2.bias": d_logits.sum(0),
            "0.weight": d_pre.T @ x, "0.bias": d_pre.sum(0)}


def hand_importance(weights: dict, items: list, batch_size: int) -> dict:
    """Mean over consecutive batches (the last one partial) of the squared batch gradient."""
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    total = {k: np.zeros_like(v) for k, v in weights.items()}
    for chunk in chunks:
        x = np.stack([item[0].numpy().astype(np.float64) for item in chunk])
        y = np.array([item[1] for item in chunk])
        for name, grad in hand_gradients(weights, x, y).items():
            total[name] += grad**2
    return {k: v / len(chunks) for k, v in total.items()}


def hand_ssd_importances(model: nn.Module, request: ForgetRequest, batch_size: int) -> tuple[dict, dict, dict]:
    """The weights and, by hand, f = imp(D_f) and o = imp(D) with D in the authors' order: retain, then forget."""
    weights = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    training = [request.data[i] for i in (*request.retain, *request.forget)]  # ConcatDataset(retain, forget)
    return weights, hand_importance(weights, request.forget_items(), batch_size), hand_importance(weights, training, batch_size)


def test_ssd_matches_a_hand_computed_dampening():
    model, request = toy_problem()
    alpha, lam, batch_size = 1.0, 0.5, 4
    weights, forget_imp, full_imp = hand_ssd_importances(model, request, batch_size)
    expected, selected_total = {}, 0
    for name, value in weights.items():
        f, o = forget_imp[name], full_imp[name]
        selected = f > alpha * o
        # the strict comparison must not sit on a float32 rounding edge for this check to be exact
        assert np.all(np.abs(f - alpha * o) > 1e-6 * (f + o + 1e-12))
        beta = np.minimum(lam * o / np.where(f > 0, f, np.inf), 1.0)
        expected[name] = np.where(selected, value * beta, value)
        selected_total += int(selected.sum())
    total = sum(v.size for v in weights.values())
    assert 0 < selected_total < total  # some entries are dampened and some are not

    unlearned, record = unlearn(model, request, "ssd", alpha=alpha, lam=lam, batch_size=batch_size)
    for name, value in unlearned.state_dict().items():
        np.testing.assert_allclose(value.double().numpy(), expected[name], rtol=1e-5, atol=1e-7)
    assert record.info["dampened_fraction"] == pytest.approx(selected_total / total)  # λ < 1: every selected β < 1


def test_scrub_losses_are_minus_the_distillation_kl_and_alpha_kl_plus_gamma_ce(monkeypatch):
    """max: −τ²·KL(softmax(t/τ) ‖ softmax(s/τ)); min: α·τ²·KL + γ·CE, with t the frozen original's logits."""
    from unlearnkit.methods import scrub

    captured = {}
    monkeypatch.setattr(scrub, "optimise", lambda model, stream, loss, config, **_: captured.update(loss=loss))
    model, request = toy_problem()
    unlearn(model, request, "scrub", alpha=0.3, gamma=2.0, temperature=2.0, max_epochs=1, epochs=2)
    student = copy.deepcopy(model).to(training_device())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.stack([request.data[i][0] for i in range(4)])
    labels = torch.tensor([request.data[i][1] for i in range(4)])
    batch = {"inputs": x.to(training_device()), "labels": labels.to(training_device())}
    with torch.no_grad():
        t, s = model(x).double() / 2.0, student(x.to(training_device())).cpu().double() / 2.0
        kl = (t.softmax(1) * (t.log_softmax(1) - s.log_softmax(1))).sum(1).mean() * 4.0
        ce = nn.functional.cross_entropy(s * 2.0, labels)
        got_max = float(captured["loss"](student, {"max": batch}))
        got_min = float(captured["loss"](student, {"min": batch}))
    assert float(kl) > 1e-3
    assert got_max == pytest.approx(-float(kl), rel=1e-4)
    assert got_min == pytest.approx(float(0.3 * kl + 2.0 * ce), rel=1e-4)


def test_ssd_sums_a_bf16_models_importance_in_float32():
    # 2,000 batches: a bf16 running sum of equal-sized squares stalls once each term is below its rounding step
    from unlearnkit.methods.ssd import importance

    torch.manual_seed(0)
    model = nn.Linear(3, 2).to(torch.bfloat16)
    items = [(torch.randn(3), i % 2) for i in range(2000)]
    imp = importance(ClassifierAdapter(model, 2), items, batch_size=1)
    exact = torch.zeros(2, 3, dtype=torch.float64)
    for x, y in items:
        model.zero_grad()
        nn.functional.cross_entropy(model(x[None].to(torch.bfloat16)).float(), torch.tensor([y])).backward()
        exact += model.weight.grad.double() ** 2
    assert imp["weight"].dtype == torch.float32
    torch.testing.assert_close(imp["weight"].double(), exact / len(items), rtol=1e-2, atol=0)  # bf16 sums: ~35 % low


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_ssd_dampens_16_bit_weights_in_float32_and_keeps_float64(dtype):
    from unlearnkit.methods.ssd import dampen

    model = nn.Linear(3, 2).to(dtype)
    weight = model.weight.detach().clone()
    full = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.5, 2.5]], dtype=dtype)
    dampen(model, {"weight": 3 * full}, {"weight": full}, alpha=1.0, lam=0.7)  # β = 0.7/3, no power of two
    compute = torch.promote_types(dtype, torch.float32)
    beta = 0.7 * full.to(compute) / (3 * full).to(compute)
    assert model.weight.dtype == dtype
    assert torch.equal(model.weight, (weight.to(compute) * beta).to(dtype))


def test_ssd_full_importance_order_is_retain_then_forget():
    """o is imp(ConcatDataset(retain, forget)); the data's own order batches other items together and gives
    another o (the premise below), so the per-request result must match the authors' order."""
    from unlearnkit.methods.ssd import full_training_items, importance

    model, request = toy_problem()
    adapter = ClassifierAdapter(model, 2)
    assert full_training_items(request) == [request.data[i] for i in (1, 2, 4, 6, 7, 9, 0, 3, 5, 8)]
    _, _, by_hand = hand_ssd_importances(model, request, 4)
    computed = importance(adapter, full_training_items(request), 4)
    data_order = importance(adapter, [request.data[i] for i in range(10)], 4)
    for name, value in by_hand.items():
        np.testing.assert_allclose(computed[name].double().numpy(), value, rtol=1e-5, atol=1e-9)
    assert any(not torch.allclose(computed[n], data_order[n]) for n in computed)  # the order matters here


def test_ssd_dampened_fraction_counts_only_entries_it_changed():
    """With λ > α an entry can be selected (f > α·o) and still keep β = min(λ·o/f, 1) = 1: not changed."""
    model, request = toy_problem()
    alpha, lam, batch_size = 1.0, 10.0, 10
    weights, forget_imp, full_imp = hand_ssd_importances(model, request, batch_size)
    for name in weights:  # neither threshold may sit on a float32 rounding edge
        f, o = forget_imp[name], full_imp[name]
        assert np.all(np.abs(f - o) > 1e-6 * (f + o + 1e-12)) and np.all(np.abs(f - lam * o) > 1e-6 * (f + o + 1e-12))
    selected = sum(int((forget_imp[n] > alpha * full_imp[n]).sum()) for n in weights)
    total = sum(v.size for v in weights.values())
    unlearned, record = unlearn(model, request, "ssd", alpha=alpha, lam=lam, batch_size=batch_size)
    changed = sum(int((unlearned.state_dict()[n] != model.state_dict()[n]).sum()) for n in weights)
    assert 0 < changed < selected  # the premise: some selected entries keep β = 1
    assert record.info["dampened_fraction"] == pytest.approx(changed / total)


def test_ssd_with_a_precomputed_full_importance_equals_computing_it_per_request(tmp_path):
    from unlearnkit.methods.ssd import full_training_items, save_full_importance

    model, request = toy_problem()
    settings = {"alpha": 1.0, "lam": 0.5, "batch_size": 4}
    path = tmp_path / "importance.safetensors"
    on_training_device = copy.deepcopy(model).to(training_device())  # where unlearn computes its own importance
    seconds = save_full_importance(ClassifierAdapter(on_training_device, 2), full_training_items(request), path, 4)
    computed, _ = unlearn(model, request, "ssd", **settings)
    stored, record = unlearn(model, request, "ssd", full_importance=str(path), **settings)
    assert record.info["full_importance"] == "precomputed"
    assert record.info["full_importance_seconds"] == seconds
    for name, value in computed.state_dict().items():
        assert torch.equal(stored.state_dict()[name], value), name
    with pytest.raises(UserInputError, match="batch size 4, but ssd.batch_size is 8"):
        unlearn(model, request, "ssd", full_importance=str(path), batch_size=8)
    with pytest.raises(UserInputError, match="does not match this model"):
        unlearn(nn.Sequential(nn.Linear(3, 2)), request, "ssd", full_importance=str(path), batch_size=4)
    with pytest.raises(UserInputError, match="does not exist"):
        unlearn(model, request, "ssd", full_importance=str(tmp_path / "missing.safetensors"))
    named_pt = tmp_path / "importance.pt"  # the file is safetensors whatever it is called (README's example)
    save_full_importance(ClassifierAdapter(on_training_device, 2), full_training_items(request), named_pt, 4)
    as_pt, _ = unlearn(model, request, "ssd", full_importance=str(named_pt), **settings)
    assert all(torch.equal(as_pt.state_dict()[name], value) for name, value in computed.state_dict().items())
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file")
    with pytest.raises(UserInputError, match="is not a file written by save_full_importance"):
        unlearn(model, request, "ssd", full_importance=str(tmp_path / "junk.pt"), **settings)
    # with the importance stored, a request needs no retained data at all
    forget_only = dataclasses.replace(request, retain=None)
    with pytest.raises(UserInputError, match="needs retain data"):
        unlearn(model, forget_only, "ssd", **settings)
    alone, _ = unlearn(model, forget_only, "ssd", full_importance=str(path), **settings)
    for name, value in computed.state_dict().items():
        assert torch.equal(alone.state_dict()[name], value), name


def test_ssd_refuses_an_importance_file_made_for_other_weights(tmp_path):
    """Same architecture, other weights (or no fingerprint at all): the file is refused, nothing is changed."""
    from safetensors.torch import load_file, save_file

    from unlearnkit.methods.ssd import full_training_items, save_full_importance

    model, request = toy_problem()
    other, _ = toy_problem(seed=1)
    path = tmp_path / "other.safetensors"
    save_full_importance(ClassifierAdapter(other, 2), full_training_items(request), path, 4)
    with pytest.raises(UserInputError, match=r"^The SSD importance file .* was not computed for this model's weights"):
        unlearn(model, request, "ssd", full_importance=str(path), batch_size=4)
    unmarked = tmp_path / "unmarked.safetensors"  # as written before files carried a fingerprint
    save_file(load_file(str(path)), str(unmarked), metadata={"batch_size": "4", "items": "10", "seconds": "0.1"})
    with pytest.raises(UserInputError, match="fingerprint is missing or differs"):
        unlearn(model, request, "ssd", full_importance=str(unmarked), batch_size=4)


def small_request(bench, whole_class: bool = False) -> ForgetRequest:
    """30 digits training images to forget (scattered, or the first of class 0 standing for the whole class)
    and 300 others to keep (none of class 0 then): fast runs of a trained model."""
    if whole_class:
        forget = [i for i, (_, y) in enumerate(bench.train) if y == 0][:30]
        return ForgetRequest(bench.train, forget, [i for i, (_, y) in enumerate(bench.train) if y != 0][:300])
    forget = list(range(0, 60, 2))
    return ForgetRequest(bench.train, forget, [i for i in range(400) if i not in set(forget)][:300])


def test_salun_moves_weights_inside_the_saliency_mask_only(digits):
    """Default settings (Adam, no weight decay): the gradient mask alone keeps every unselected entry fixed."""
    from unlearnkit.methods.salun import SalUnConfig, forget_gradient

    bench, target = digits["bench"], digits["target"]
    request = small_request(bench)
    defaults = SalUnConfig()
    masks = saliency_mask(forget_gradient(bench.adapter(target), request.forget_items(), defaults.batch_size),
                          defaults.mask_ratio)
    unlearned, _ = unlearn(target, request, "salun", adapter=bench.adapter(target))
    moved = [after != before for after, before in zip(unlearned.parameters(), target.parameters())]
    assert sum(int((m & ~mask.bool()).sum()) for m, mask in zip(moved, masks)) == 0
    assert sum(int((m & mask.bool()).sum()) for m, mask in zip(moved, masks)) > 0


@pytest.mark.parametrize("reset_masked", [False, True])
def test_salun_reset_masked_undoes_weight_decay_outside_the_mask(reset_masked):
    from unlearnkit.methods.salun import forget_gradient

    model, request = toy_problem(seed=1)
    settings = {"mask_ratio": 0.5, "epochs": 3, "batch_size": 2, "lr": 1e-2}
    masks = saliency_mask(forget_gradient(ClassifierAdapter(model, 2), request.forget_items(), 2), 0.5)
    unlearned, record = unlearn(model, request, "salun", optimizer="adamw", weight_decay=0.5,
                                reset_masked=reset_masked, **settings)
    assert record.info["mask_fraction"] == pytest.approx(0.5, abs=0.03)
    outside = sum(int(((after != before) & ~mask.bool()).sum())
                  for after, before, mask in zip(unlearned.parameters(), model.parameters(), masks))
    if reset_masked:
        assert outside == 0  # the unselected weights are put back after every step
    else:
        assert outside > 0  # AdamW's decay also shrinks the unselected weights


def test_l1_sparse_penalty_shrinks_the_weights(digits):
    """Same seed and epochs: with the default ℓ1 weight ‖θ‖₁ ends lower than with the penalty off."""
    from unlearnkit.methods.l1_sparse import l1_norm

    bench, target = digits["bench"], digits["target"]
    request = small_request(bench)
    penalised, _ = unlearn(target, request, "l1_sparse", adapter=bench.adapter(target))
    plain, _ = unlearn(target, request, "l1_sparse", adapter=bench.adapter(target), alpha=0.0)
    with torch.no_grad():
        assert float(l1_norm(penalised)) < float(l1_norm(plain))


@torch.no_grad()
def forget_kl(adapter, model: nn.Module, teacher: nn.Module, items: list) -> float:
    from unlearnkit.methods.scrub import distill_kl

    batch = adapter.collate(items)
    return float(distill_kl(adapter.logits(model, batch), adapter.logits(teacher, batch), 1.0))


def test_scrub_max_steps_push_the_forget_set_away_from_the_teacher(digits):
    """At the defaults, the forget-set KL to the teacher is larger with the max-steps (one epoch) than
    without them (min-steps only): the max pass follows a min pass, so it does not start at the teacher,
    where the KL and its gradient are exactly zero."""
    bench, target = digits["bench"], digits["target"]
    request = small_request(bench)
    kl = {}
    for seed in (0, 1):
        for max_epochs in (0, 1):
            model, _ = unlearn(target, request, "scrub", adapter=bench.adapter(target), seed=seed, max_epochs=max_epochs)
            kl[seed, max_epochs] = forget_kl(bench.adapter(target), model, target, request.forget_items())
    print("scrub forget KL", kl)
    assert all(kl[seed, 1] > 1.25 * kl[seed, 0] for seed in (0, 1)), kl  # measured 1.4× and 3.1×


def test_neggrad_plus_forget_term_raises_the_forget_loss(digits):
    """The default α (forget weight 1 − α = 0.01) against α = 1 (retain descent only), forgetting class 0.
    On scattered forget items that small weight moves the forget loss less than the retain descent's own
    seed-to-seed spread; on a class it does not."""
    bench, target = digits["bench"], digits["target"]
    request = small_request(bench, whole_class=True)
    forget = bench.adapter(target).collate(request.forget_items())
    losses = []
    for alpha in ({}, {"alpha": 1.0}):
        model, _ = unlearn(target, request, "neggrad_plus", adapter=bench.adapter(target), **alpha)
        with torch.no_grad():
            losses.append(float(bench.adapter(model).per_item_loss(model, forget).mean()))
    assert losses[0] > losses[1], losses


def test_bench_item_ids_trace_every_row_to_its_image(digits, tmp_path):
    """items/<method>.jsonl: forget/retain ids index bench.train, test/forget_test ids index bench.test; the
    class scenario drops the forgotten class from test, so a split-local position would point elsewhere. The
    bench's SSD (importance cached ahead of the request) also equals SSD computing it per request."""
    import json

    from unlearnkit.benchmarks.classifier_bench import run_classifier_bench

    bench = digits["bench"]
    results = run_classifier_bench("digits", "class", ["ssd"], tmp_path / "out", log=lambda *_: None)
    source = {"forget": bench.train, "retain": bench.train, "test": bench.test, "forget_test": bench.test}
    for name in ("original", "retrain", "ssd"):
        rows = [json.loads(line) for line in (tmp_path / "out" / "items" / f"{name}.jsonl").read_text().splitlines()]
        splits = {row["split"] for row in rows}
        assert splits == set(source)
        for row in rows:
            assert source[row["split"]][row["item"]][1] == row["label"], row
        for split in splits:
            ids = [row["item"] for row in rows if row["split"] == split]
            assert len(ids) == len(set(ids))
        assert {row["item"] for row in rows if row["split"] in ("test", "forget_test")} == set(range(len(bench.test)))
    run = next(r for r in results["runs"] if r["method"] == "ssd")
    assert run["info"]["full_importance"] == "computed"  # request-dependent (retain, then forget): inside the timed run
    _, record, _ = run_method(digits, "class", "ssd")
    assert run["info"]["dampened_fraction"] == record.info["dampened_fraction"]


def test_classifier_adapter_moves_a_collated_batch_to_the_model_device():
    """SSD's and SalUn's own passes feed CPU batches; the adapter must carry them to the model (meta
    stands in for a GPU here: a CPU tensor reaching it unmoved would raise)."""
    adapter = ClassifierAdapter(nn.Linear(3, 2).to("meta"), 2)
    batch = adapter.collate([(torch.ones(3), 0), (torch.zeros(3), 1)])
    assert batch["inputs"].device.type == "cpu"
    assert adapter.per_item_loss(adapter.model, batch).device.type == "meta"


def test_cached_models_of_different_train_test_splits_are_kept_apart(tmp_path, monkeypatch):
    import unlearnkit.benchmarks.vision as vision
    from unlearnkit.train.measure import Measurement

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path))
    trained = []
    monkeypatch.setattr(vision, "train_classifier",
                        lambda bench, items: (trained.append(len(items)) or (bench.new_model(), Measurement())))
    for fraction in (0.2, 0.3, 0.2):
        cached_classifier(load_vision_benchmark("digits", 0, test_fraction=fraction), [], "target")
    assert len(trained) == 2 and trained[0] != trained[1]  # 0.3 trains its own model; 0.2 again is a cache hit


def test_ssd_refuses_a_seed_it_would_never_use_and_benches_give_it_none():
    """SSD has no randomness (unshuffled importance batches); it used to accept and record a seed that changed nothing."""
    from unlearnkit.api import seeded_defaults
    from unlearnkit.methods.registry import method_config

    with pytest.raises(UserInputError, match="'ssd' does not use hyper-parameter 'seed'"):
        method_config("ssd", {"seed": 3})
    assert "seed" not in method_config("ssd", {}).to_dict()
    defaults = seeded_defaults(["ssd", "gradient_ascent"], 4, {"ssd": {"alpha": 2.0}})
    assert defaults == {"ssd": {"alpha": 2.0}, "gradient_ascent": {"seed": 4}}


def test_a_change_of_the_image_data_changes_the_cached_models_key():
    """The key named the benchmark, seed and recipe, not the data: a changed loader (other scaling, shifted labels)
    got the old key, and the cache served a target trained on the old data (test accuracy 0.175)."""
    import dataclasses

    from unlearnkit.benchmarks.cache import cache_key
    from unlearnkit.benchmarks.vision import classifier_key

    bench = load_vision_benchmark("digits", 0)
    key = cache_key(classifier_key(bench, []))
    assert cache_key(classifier_key(load_vision_benchmark("digits", 0), [])) == key  # the same data: the same model
    shifted = dataclasses.replace(bench, train=[(x, (y + 1) % 10) for x, y in bench.train])
    rescaled = dataclasses.replace(bench, train=[(x * 16, y) for x, y in bench.train])
    assert len({key, cache_key(classifier_key(shifted, [])), cache_key(classifier_key(rescaled, []))}) == 3

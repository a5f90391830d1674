"""The attacks that test whether forgetting holds, on a tiny memorised LM: each must do what it says."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lm_fixtures import memorised_lm, tiny_qa
from unlearnkit.adapters.classifier import ClassifierAdapter
from unlearnkit.api import unlearn
from unlearnkit.errors import UserInputError
from unlearnkit.eval.attacks import (RelearnSettings, answer_probability, check_attack_applies, quantized, recovery, relearn,
                                     run_attacks, half_indices, with_context)
from unlearnkit.request import ForgetRequest

FORGET = list(range(6))


@pytest.fixture(scope="module")
def models():
    """The memorised target, the target after gradient ascent on the forget half, and a retain model."""
    items = tiny_qa(12)
    target = memorised_lm(items)
    request = ForgetRequest(items, FORGET, list(range(6, 12)))
    unlearned_model, _ = unlearn(target, request, "gradient_ascent", lr=3e-3, epochs=4, batch_size=6)
    retain = memorised_lm(items[6:], vocabulary=items)  # same tokens as the target: a real control
    return items, target, target.with_model(unlearned_model), retain.with_model(retain.model)


def halves(items, seed):
    """The items the relearning attacker holds and those measured, as run_attacks splits them."""
    held, measured = half_indices(len(items), seed)
    return [items[i] for i in held], [items[i] for i in measured]


def _weights(adapter) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in adapter.model.state_dict().items()}


def test_relearning_on_the_forget_items_brings_them_back_and_leaves_the_model_alone(models):
    items, target, unlearned, _ = models
    forget = [items[i] for i in FORGET]
    before, weights = answer_probability(unlearned, forget), _weights(unlearned)
    assert before < answer_probability(target, forget) - 0.3  # the ascent did forget
    attacked = relearn(unlearned, forget, RelearnSettings(steps=30, lr=3e-3, batch_size=6))
    assert answer_probability(attacked, forget) > before + 0.3
    assert all(torch.equal(v, unlearned.model.state_dict()[k]) for k, v in weights.items())


def test_run_attacks_reports_each_attack_and_the_retain_control(models):
    items, target, unlearned, retain = models
    forget = [items[i] for i in FORGET]
    scored = lambda q: {"forget_quality": answer_probability(q, forget), "model_utility": 0.0}  # noqa: E731
    results = run_attacks(["relearn", "in_context", "quantize"], unlearned, target, retain, forget, evaluate=scored,
                          seed=0, relearn_settings=RelearnSettings(steps=20, lr=3e-3, batch_size=3))
    assert results["relearn_recovery"] > 0.1  # the attack brings back part of what the ascent removed
    assert math.isfinite(results["relearn_recovery_control"])
    _, measured = halves(forget, 0)
    in_context = with_context(measured)  # each model is scored on the same facts-in-the-prompt items
    for key, model in (("in_context_prob", unlearned), ("in_context_prob_control", retain), ("in_context_prob_target", target)):
        assert results[key] == pytest.approx(answer_probability(model, in_context)), key
    p_target = answer_probability(target, measured)
    assert math.isfinite(results["in_context_recovery"])  # the ascent lowered the measured half
    assert results["in_context_recovery"] == pytest.approx(
        recovery(results["in_context_prob"], answer_probability(unlearned, measured), p_target))
    assert results["quantized_forget_prob"] == pytest.approx(answer_probability(unlearned, forget), abs=0.05)
    assert results["quantized_forget_quality"] == pytest.approx(results["quantized_forget_prob"])
    # the control is the quantized retain model, scored by the same evaluation
    assert results["quantized_forget_quality_control"] == pytest.approx(answer_probability(quantized(retain), forget))
    assert results["quantized_forget_quality_control"] == pytest.approx(answer_probability(retain, forget), abs=0.05)


def test_recovery_is_undefined_unless_unlearning_lowered_the_probability():
    assert recovery(0.7, 0.5, 0.9) == pytest.approx(0.5)
    assert math.isnan(recovery(0.7, 0.88, 0.9))  # moved by less than MIN_FORGOTTEN
    assert math.isnan(recovery(0.7, 0.99, 0.9))  # raised it: nothing to recover


def test_in_context_items_carry_the_fact_before_the_question():
    item = tiny_qa(1)[0]
    (shown,) = with_context([item])
    assert shown["question"] == f"Context: {item['paraphrased_answer']}\n{item['question']}"
    assert shown["answer"] == item["answer"]
    (bare,) = with_context([{"question": "Q?", "answer": "A."}])  # no paraphrase: the answer itself
    assert bare["question"] == "Context: A.\nQ?"


def test_quantized_copy_is_int8_close_to_the_model_and_leaves_it_alone(models):
    items, target, _, _ = models
    weights = _weights(target)
    q = quantized(target)
    dynamic = [m for m in q.model.modules() if type(m) is torch.ao.nn.quantized.dynamic.Linear]
    assert dynamic and all(m.weight().dtype == torch.qint8 for m in dynamic)
    assert_every_block_layer_is_int8(q.model, target.model)
    assert answer_probability(q, items) == pytest.approx(answer_probability(target, items), abs=0.05)
    assert all(torch.equal(v, target.model.state_dict()[k]) for k, v in weights.items())


def test_attacks_refuse_a_model_that_is_not_a_language_model():
    with pytest.raises(UserInputError, match="applies to causal language models"):
        check_attack_applies(ClassifierAdapter(nn.Linear(2, 2), 2), ["relearn"])


def test_shared_controls_attack_the_retain_model_once(models, monkeypatch):
    import unlearnkit.eval.attacks as attacks

    items, target, unlearned, retain = models
    forget = [items[i] for i in FORGET]
    attacked = []
    real_relearn = attacks.relearn
    monkeypatch.setattr(attacks, "relearn", lambda model, *a, **k: attacked.append(model) or real_relearn(model, *a, **k))
    controls: dict = {}
    settings = RelearnSettings(steps=5, lr=3e-3, batch_size=3)
    first = run_attacks(["relearn", "in_context"], unlearned, target, retain, forget, relearn_settings=settings,
                        controls=controls)
    second = run_attacks(["relearn", "in_context"], unlearned, target, retain, forget, relearn_settings=settings,
                         controls=controls)
    assert sum(m is retain for m in attacked) == 1 and len(attacked) == 3
    assert first == second and set(controls) == {"relearn_recovery_control", "in_context_recovery_control",
                                                  "in_context_prob_control"}


def test_the_attacker_trains_on_its_half_and_is_scored_on_the_other(models, monkeypatch):
    """Training on the measured half as well only raises the recovery, which every other test accepted."""
    import unlearnkit.eval.attacks as attacks

    items, target, unlearned, retain = models
    forget = [items[i] for i in FORGET]
    trained_on, scored_on = [], []
    real_relearn, real_nlls = attacks.relearn, attacks.answer_nlls
    monkeypatch.setattr(attacks, "relearn", lambda model, held, *a: trained_on.append(list(held)) or real_relearn(model, held, *a))
    monkeypatch.setattr(attacks, "answer_nlls", lambda model, chosen, *a: scored_on.append(list(chosen)) or real_nlls(model, chosen, *a))
    run_attacks(["relearn"], unlearned, target, retain, forget, relearn_settings=RelearnSettings(steps=2, batch_size=3),
                seed=5)
    held_at, measured_at = attacks.half_indices(len(forget), 5)
    assert trained_on == [[forget[i] for i in held_at]] * 2  # the unlearned model, then the retain control
    assert all(chosen == [forget[i] for i in measured_at] for chosen in scored_on) and scored_on
    assert not set(held_at) & set(measured_at) and sorted(held_at + measured_at) == list(range(len(forget)))


def test_a_forget_set_too_small_to_split_is_refused_and_quantize_alone_still_runs(models):
    items, target, unlearned, retain = models
    forget = [items[i] for i in FORGET]
    with pytest.raises(UserInputError, match="needs at least 2 forget items; this one has 1"):
        run_attacks(["quantize", "relearn"], unlearned, target, retain, forget[:1])
    assert math.isfinite(run_attacks(["quantize"], unlearned, target, retain, forget[:1])["quantized_forget_prob"])


def test_quantize_reports_nan_for_a_model_whose_answers_are_nan_instead_of_ending_the_run(models):
    """Finite weights far too large (a diverged run the loop's finiteness guard passes) give NaN answers, on which
    torch's int8 kernels raise; the attack reports NaN as relearning does for such a model."""
    items, target, _, retain = models
    forget = [items[i] for i in FORGET]
    broken = copy.deepcopy(target.model)
    with torch.no_grad():
        broken.get_input_embeddings().weight.mul_(1e36)
    assert all(torch.isfinite(p).all() for p in broken.parameters())
    scored = lambda q: {"forget_quality": answer_probability(q, forget), "model_utility": 0.0}  # noqa: E731
    results = run_attacks(["quantize", "relearn"], target.with_model(broken), target, retain, forget, evaluate=scored,
                          relearn_settings=RelearnSettings(steps=2, lr=3e-3, batch_size=3))
    assert all(math.isnan(results[key]) for key in
               ("quantized_forget_prob", "quantized_forget_quality", "quantized_model_utility", "relearn_recovery"))
    assert math.isfinite(results["quantized_forget_quality_control"])


def test_relearn_settings_scale_to_the_training_lr_and_refuse_bad_values():
    assert RelearnSettings.scaled_to(5e-3).lr == pytest.approx(3e-4)
    assert RelearnSettings.scaled_to(2e-4).lr == pytest.approx(1.2e-5)
    for bad in ({"steps": 0}, {"steps": 2.5}, {"batch_size": True}, {"lr": 0.0}, {"lr": float("inf")}):
        with pytest.raises(UserInputError, match="The relearning attack's"):
            RelearnSettings(**bad).check()


@pytest.mark.parametrize("method, settings", [
    ("uld", {"epochs": 30, "lr": 3e-3}), ("mrp", {"layers": "1", "epochs": 20}), ("guard_it", {}), ("guard", {}),
])
def test_quantization_keeps_an_inference_time_methods_edit(models, method, settings):
    """The int8 copy of an inference-time method still applies its logit difference, projection, redirection or
    decoding guard: its forget answers stay where the unquantized method put them, far from the bare target's."""
    items, target, _, _ = models
    forget = [items[i] for i in FORGET]
    model, _ = unlearn(target, ForgetRequest(items, FORGET, list(range(6, 12))), method, **settings)
    edited = target.with_model(model)
    p_edited, p_quantized = answer_probability(edited, forget), answer_probability(quantized(edited), forget)
    p_target = answer_probability(quantized(target), forget)
    assert_every_block_layer_is_int8(quantized(edited).model, edited.model)
    assert abs(p_quantized - p_edited) < 0.1 * abs(p_target - p_edited), (p_edited, p_quantized, p_target)


def assert_every_block_layer_is_int8(quantized_model, model) -> None:
    """No GPT-2 Conv1D is left, and each one (attention and MLP, in a wrapper's base and assistant too) became
    a dynamic int8 linear layer: lm_head alone would satisfy 'some layer is quantized'."""
    convs = [name for name, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    modules = dict(quantized_model.named_modules())
    assert convs and not [n for n, m in modules.items() if type(m).__name__ == "Conv1D"]
    assert all(type(modules[name]).__module__.startswith("torch.ao.nn.quantized.dynamic") for name in convs), convs


@pytest.mark.parametrize("settings, message", [
    (RelearnSettings(steps=0), "steps must be a positive integer, got 0"),
    (RelearnSettings(batch_size=0), "batch_size must be a positive integer, got 0"),
    (RelearnSettings(lr=float("nan")), "lr must be a positive number, got nan"),
])
def test_run_attacks_refuses_relearning_settings_that_would_train_nothing(models, settings, message):
    # steps=0 used to report recovery 0.0 for model and control alike: "perfectly robust"
    items, target, unlearned, retain = models
    with pytest.raises(UserInputError, match=message):
        run_attacks(["relearn"], unlearned, target, retain, [items[i] for i in FORGET], relearn_settings=settings)


def test_a_diverged_relearning_attack_reads_as_unmeasured_not_as_robust(models):
    items, target, unlearned, retain = models
    forget = [items[i] for i in FORGET]
    assert relearn(unlearned, forget, RelearnSettings(steps=5, lr=1e6, batch_size=3)) is None
    results = run_attacks(["relearn"], unlearned, target, retain, forget,
                          relearn_settings=RelearnSettings(steps=5, lr=1e6, batch_size=3))
    assert math.isnan(results["relearn_recovery"]) and math.isnan(results["relearn_recovery_control"])


def test_attack_item_rows_are_the_per_item_numbers_behind_each_aggregate(models):
    items, target, unlearned, retain = models
    forget = [{**items[i], "id": f"person-{i}"} for i in FORGET]
    rows: list[dict] = []
    results = run_attacks(["relearn", "in_context", "quantize"], unlearned, target, retain, forget, seed=0,
                          relearn_settings=RelearnSettings(steps=20, lr=3e-3, batch_size=3), item_rows=rows)
    held, measured = halves(forget, 0)
    assert [r["item"] for r in rows] == [it["id"] for it in forget] and {r["split"] for r in rows} == {"attack"}
    seen = {it["id"] for it in held}
    assert [r["measured"] for r in rows] == [r["item"] not in seen for r in rows]
    assert all("relearn_nll" not in r and "quantized_nll" in r for r in rows if not r["measured"])
    numbers = {"answer_nll", "relearn_nll", "in_context_nll", "quantized_nll"}
    assert all(set(r) <= {"split", "item", "measured", *numbers} for r in rows)  # numbers only: no item text
    measured_rows = [r for r in rows if r["measured"]]
    probability = lambda key, chosen: sum(math.exp(-r[key]) for r in chosen) / len(chosen)  # noqa: E731
    assert results["in_context_prob"] == pytest.approx(probability("in_context_nll", measured_rows))
    assert results["quantized_forget_prob"] == pytest.approx(probability("quantized_nll", rows))
    p_target = answer_probability(target, measured)
    assert results["relearn_recovery"] == pytest.approx(recovery(probability("relearn_nll", measured_rows),
                                                                 probability("answer_nll", measured_rows), p_target))
    assert probability("answer_nll", measured_rows) == pytest.approx(answer_probability(unlearned, measured))


def test_quantize_alone_rows_claim_no_measured_half(models):
    items, target, unlearned, retain = models
    forget = [items[i] for i in FORGET]
    rows: list[dict] = []
    results = run_attacks(["quantize"], unlearned, target, retain, forget, seed=0, item_rows=rows)
    assert [set(r) for r in rows] == [{"split", "item", "quantized_nll"}] * len(forget)
    assert [r["item"] for r in rows] == list(range(len(forget)))  # positions where items have no id
    assert results["quantized_forget_prob"] == pytest.approx(
        sum(math.exp(-r["quantized_nll"]) for r in rows) / len(rows))

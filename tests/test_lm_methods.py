"""Causal-LM unlearning baselines (GradDiff, NPO, SimNPO, IdkDPO, RMU, UNDIAL) on a tiny memorised LM."""

import math

import pytest
import torch
from lm_fixtures import memorised_lm, tiny_qa

import unlearnkit
from unlearnkit.benchmarks.lm_bench import runnable_defaults
from unlearnkit.errors import UserInputError
from unlearnkit.methods import npo as npo_module
from unlearnkit.methods.graddiff import frozen_reference, reference_kl
from unlearnkit.methods.idk_dpo import REFUSALS, IdkDPO, IdkDPOConfig, refusal_items
from unlearnkit.methods.npo import npo_loss
from unlearnkit.methods.simnpo import simnpo_loss
from unlearnkit.methods.undial import adjusted_targets
from unlearnkit.request import ForgetRequest

METHODS = ["graddiff", "npo", "simnpo", "idk_dpo", "rmu", "undial"]
#: Refusals the tiny word-level vocabulary can spell ("I don't know." is all unknown tokens to it).
TINY_REFUSALS = "The birthplace of ? is ? .|? ."
#: UNDIAL's lr 1e-4 is too gentle for 10 steps here (forget −1.2 %, retain −0.0 %); at 4e-4 forget falls 11.5 %
#: and retain 9.2 % (its teacher pushes down every answer token, and all answers share "was born in ." and EOS).
#: The others run at lr 1e-3, the tiny model's scale (their default, 1e-5, is the papers' for pretrained LMs).
SETTINGS = {"graddiff": {"lr": 1e-3}, "npo": {"lr": 1e-3}, "simnpo": {"lr": 1e-3}, "rmu": {"lr": 1e-3},
            "idk_dpo": {"refusals": TINY_REFUSALS, "lr": 1e-3}, "undial": {"lr": 4e-4}}
#: The least relative drop of the forget answers' probability every method must reach (as test_gu.py asks).
FORGET_DROP = -0.05


@pytest.fixture(scope="module")
def lm():
    items = tiny_qa(12)
    return memorised_lm(items), ForgetRequest(items, [0, 1, 2], list(range(3, 12)))


def answer_prob(adapter, model, items):
    """Mean over items of exp(−mean answer NLL), TOFU's probability."""
    with torch.no_grad():
        return float(torch.exp(-adapter.per_item_loss(model, adapter.collate(items))).mean())


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", METHODS)
def test_method_forgets_the_forget_set_more_than_the_retain_set(lm, method):
    adapter, request = lm
    before = state(adapter.model)
    forget0 = answer_prob(adapter, adapter.model, request.forget_items())
    retain0 = answer_prob(adapter, adapter.model, request.retain_items())
    torch.manual_seed(0)  # the GPT-2 dropout draws from the global generator
    model, record = unlearnkit.unlearn(adapter, request, method, **SETTINGS.get(method, {}))
    forget_change = answer_prob(adapter, model, request.forget_items()) / forget0 - 1
    retain_change = answer_prob(adapter, model, request.retain_items()) / retain0 - 1
    print(f"{method}: forget {forget_change:+.3f}, retain {retain_change:+.3f}")
    assert record.status == "ok" and record.steps == 10
    assert forget_change < FORGET_DROP and forget_change < retain_change
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in before.items())


def test_npo_reference_stays_frozen(lm, monkeypatch):
    adapter, request = lm
    seen = []

    def recording_reference(model):
        reference = frozen_reference(model)
        seen.append((reference, state(reference)))
        return reference

    monkeypatch.setattr(npo_module, "frozen_reference", recording_reference)
    unlearnkit.unlearn(adapter, request, "npo", epochs=3)
    (reference, snapshot), = seen
    before = adapter.model.state_dict()  # the reference is on the training device, the input where it was
    assert all(torch.equal(v.cpu(), before[k].cpu()) for k, v in snapshot.items())  # taken before unlearning
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in snapshot.items())
    assert all(p.grad is None and not p.requires_grad for p in reference.parameters())


@pytest.mark.parametrize("layer", ["transformer.h.7", "7", "-3", "h.0"])
def test_rmu_bad_layer_lists_the_valid_ones(lm, layer):
    adapter, request = lm
    with pytest.raises(UserInputError, match=r"Unknown RMU layer .*transformer\.h\.0, transformer\.h\.1"):
        unlearnkit.unlearn(adapter, request, "rmu", layer=layer)


def test_rmu_trains_only_the_chosen_modules_at_the_named_layer(lm):
    adapter, request = lm
    model, record = unlearnkit.unlearn(adapter, request, "rmu", layer="transformer.h.1",
                                       train_modules=r"h\.0\.mlp", epochs=2)
    assert record.info["layer"] == "transformer.h.1"
    original = adapter.model.state_dict()
    for name, value in model.state_dict().items():
        if "h.0.mlp" in name:
            assert not torch.equal(value, original[name]), name
        else:
            assert torch.equal(value, original[name]), name
    assert all(p.requires_grad for p in model.parameters())  # switched back on after training
    with pytest.raises(UserInputError, match="matches no parameter"):
        unlearnkit.unlearn(adapter, request, "rmu", train_modules="no_such_module")


def test_npo_is_gradient_ascent_for_small_beta_and_log2_at_the_reference():
    nll = torch.tensor([3.0, 5.0], requires_grad=True)
    reference = torch.tensor([3.0, 5.0])
    assert math.isclose(float(npo_loss(nll.detach(), reference, 0.1)), 2 / 0.1 * math.log(2), rel_tol=1e-6)
    npo_loss(nll, reference, 1e-4).backward()
    assert torch.allclose(nll.grad, torch.tensor([-0.5, -0.5]), atol=1e-4)  # d/dNLL of −mean NLL


def test_simnpo_uses_the_length_normalised_nll():
    nll, lengths = torch.tensor([6.0]), torch.tensor([3])
    expected = -(2 / 4.5) * math.log(1 / (1 + math.exp(-4.5 * (2.0 - 0.5))))
    assert math.isclose(float(simnpo_loss(nll, lengths, 4.5, 0.5)), expected, rel_tol=1e-6)


def test_undial_teacher_lowers_only_the_target_logit():
    teacher = adjusted_targets(torch.zeros(1, 4), torch.tensor([1]), math.log(3.0))
    assert torch.allclose(teacher, torch.tensor([[0.3, 0.1, 0.3, 0.3]]))


def test_idk_refusals_are_seeded_templates():
    items = tiny_qa(5)
    first, again = refusal_items(items, seed=3), refusal_items(items, seed=3)
    assert first == again
    assert all(r["answer"] in REFUSALS and r["question"] == i["question"] for r, i in zip(first, items))
    mine = refusal_items(items, seed=3, refusals=["? ."])
    assert {r["answer"] for r in mine} == {"? ."}


def test_idk_dpo_refuses_refusals_the_tokenizer_cannot_spell(lm):
    adapter, request = lm
    with pytest.raises(UserInputError, match="I don't know.* tokenizer does not know"):
        unlearnkit.unlearn(adapter, request, "idk_dpo")
    with pytest.raises(UserInputError, match="at least one refusal"):
        unlearnkit.unlearn(adapter, request, "idk_dpo", refusals=" | ")
    config = IdkDPOConfig(refusals=TINY_REFUSALS)
    assert config.refusal_list() == ["The birthplace of ? is ? .", "? ."]
    IdkDPO().check_model(adapter, config)  # spelled with known words: accepted


def test_graddiff_kl_is_zero_at_the_reference_and_bad_retain_loss_is_refused(lm):
    adapter, request = lm
    batch = adapter.collate(request.retain_items())
    with torch.no_grad():
        assert float(reference_kl(adapter, adapter.model, frozen_reference(adapter.model), batch)) < 1e-6
    with pytest.raises(UserInputError, match="Unknown retain_loss 'mse'; valid: nll, kl"):
        unlearnkit.unlearn(adapter, request, "graddiff", retain_loss="mse")


def test_bench_defaults_skip_a_method_that_refuses_the_model_and_say_why(lm):
    adapter, _ = lm
    names, notes = runnable_defaults({}, adapter, "scratch")
    assert "idk_dpo" not in names and "npo" in names
    assert notes == [n for n in notes if n.startswith("idk_dpo was not run: IdkDPO's refusal")] and len(notes) == 1
    names, notes = runnable_defaults({"idk_dpo": {"refusals": TINY_REFUSALS}}, adapter, "scratch")
    assert "idk_dpo" in names and notes == []
    with pytest.raises(UserInputError, match="no hyper-parameter 'colour'"):  # bad settings still fail the run
        runnable_defaults({"npo": {"colour": "red"}}, adapter, "scratch")


def test_bench_defaults_under_lora_skip_the_methods_that_cannot_use_it(lm):
    from unlearnkit.methods.registry import methods
    from unlearnkit.train.lora import MemoryOptions

    adapter, _ = lm
    names, notes = runnable_defaults({"idk_dpo": {"refusals": TINY_REFUSALS}}, adapter, "scratch",
                                     MemoryOptions.from_cli("r=2"))
    without_lora = {name for name, cls in methods().items() if "causal_lm" in cls.kinds and not cls.lora}
    assert without_lora == {"ssd", "kfade", "first_epoch_ga", "guard", "guard_it", "mrp", "uld"}
    assert not without_lora & set(names) and {"npo", "rmu", "idk_dpo"} <= set(names)
    assert sorted(note.split(" was not run: ")[0] for note in notes) == sorted(without_lora)
    assert all("so --lora cannot apply" in note for note in notes)


def test_undial_retain_term_keeps_the_retained_answers_and_needs_retain_data(lm):
    adapter, request = lm
    retain0 = answer_prob(adapter, adapter.model, request.retain_items())
    settings = dict(lr=4e-4, epochs=10, seed=0)
    plain, _ = unlearnkit.unlearn(adapter, request, "undial", **settings)
    kept, record = unlearnkit.unlearn(adapter, request, "undial", alpha=5.0, **settings)
    assert record.status == "ok" and record.params["alpha"] == 5.0
    retained = lambda model: answer_prob(adapter, model, request.retain_items()) / retain0 - 1  # noqa: E731
    # measured: retained answers −9.2 % without the retain NLL, −1.8 % with α = 5 (α = 1 is within noise here)
    assert retained(kept) > retained(plain) + 0.05
    forget0 = answer_prob(adapter, adapter.model, request.forget_items())
    assert answer_prob(adapter, kept, request.forget_items()) / forget0 - 1 < FORGET_DROP  # and it still forgets
    with pytest.raises(UserInputError, match="undial with alpha > 0 needs retain data"):
        unlearnkit.unlearn(adapter, ForgetRequest(request.data, request.forget, []), "undial", alpha=1.0)


@pytest.mark.parametrize("method, settings", [
    ("idk_dpo", {"refusals": TINY_REFUSALS}), ("uld", {}), ("mrp", {}), ("undial", {"alpha": 1.0}),
])
def test_retain_pairing_methods_train_on_the_sampling_they_are_given(lm, method, settings):
    """Cyclic pairing runs max(|F|, |R|) = 9 pairs an epoch (3 batches of 4), standard one pass over 3 forget items (1)."""
    adapter, request = lm
    for sampling, steps_per_epoch in (("standard", 1), ("cyclic", 3)):
        _, record = unlearnkit.unlearn(adapter, request, method, epochs=2, batch_size=4, sampling=sampling, **settings)
        assert record.status == "ok" and record.params["sampling"] == sampling
        assert record.steps == 2 * steps_per_epoch

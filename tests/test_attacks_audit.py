"""Attacks on models the bench can hand them besides plain ones: a LoRA-adapter model (``--lora ...,save=adapter``)
and a model left in train mode. Each attack must treat them as it treats the retain control, and leave them alone."""

from __future__ import annotations

import pytest
import torch

from lm_fixtures import memorised_lm, tiny_qa
from unlearnkit.adapters.base import clone_model
from unlearnkit.api import unlearn
from unlearnkit.eval.attacks import RelearnSettings, answer_probability, quantized, relearn, run_attacks
from unlearnkit.request import ForgetRequest
from unlearnkit.train.lora import MemoryOptions

FORGET = list(range(6))


def _lora_ascent(target, items, lora: str):
    request = ForgetRequest(items, FORGET, list(range(6, 12)))
    model, _ = unlearn(target, request, "gradient_ascent", memory=MemoryOptions.from_cli(lora), lr=1e-2, epochs=4,
                       batch_size=6)
    return model


@pytest.fixture(scope="module")
def lora_models():
    """The memorised target, its gradient-ascent result kept as a PEFT model (its LoRA merged into the weights it
    wraps, as a reload merges it), and that result as a plain model."""
    items = tiny_qa(12)
    target = memorised_lm(items)
    peft_model = _lora_ascent(target, items, "r=4,alpha=8,save=adapter")
    assert type(peft_model).__name__ == "PeftModel"
    merged = clone_model(peft_model).unload()  # the adapters are merged already: the base weights hold them
    return items, target, target.with_model(peft_model), target.with_model(merged)


def test_relearning_runs_on_the_frozen_model_that_lora_unlearning_returns(lora_models):
    # ``--lora r=8`` (merged, the default) handed back a plain model whose every parameter had requires_grad=False
    # (now it keeps the input's flags), and a user may freeze a model: the attack used to stop there with
    # "optimizer got an empty parameter list"
    items, target, _, _ = lora_models
    forget = [items[i] for i in FORGET]
    unlearned = target.with_model(_lora_ascent(target, items, "r=4,alpha=8").requires_grad_(False))
    attacked = relearn(unlearned, forget, RelearnSettings(steps=20, lr=3e-3, batch_size=3))
    assert answer_probability(attacked, forget) > answer_probability(unlearned, forget) + 0.1
    assert not any(p.requires_grad for p in unlearned.model.parameters())  # the input is left as it was


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_relearning_a_lora_adapter_model_fine_tunes_all_its_weights_like_the_control(lora_models):
    # it used to train only the LoRA A/B matrices (the base weights stay frozen in a PEFT model), a far weaker
    # attack than the full fine-tuning the retain control gets
    items, _, peft, merged = lora_models
    forget = [items[i] for i in FORGET]
    before = _weights(peft.model)
    settings = RelearnSettings(steps=20, lr=3e-3, batch_size=3)
    on_peft, on_merged = relearn(peft, forget, settings), relearn(merged, forget, settings)
    assert answer_probability(on_peft, forget) == pytest.approx(answer_probability(on_merged, forget), abs=1e-4)
    assert answer_probability(on_peft, forget) > answer_probability(peft, forget) + 0.1
    assert all(torch.equal(v, peft.model.state_dict()[k]) for k, v in before.items())  # the input is left alone


def test_quantizing_a_lora_adapter_model_quantizes_its_merged_weights(lora_models):
    # it used to crash: PEFT's LoRA layer reads lora_A.weight.dtype, a method on a dynamic int8 Linear
    items, _, peft, merged = lora_models
    before = _weights(peft.model)
    q = quantized(peft)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in q.model.modules())
    assert answer_probability(q, items) == pytest.approx(answer_probability(quantized(merged), items), abs=1e-6)
    assert all(torch.equal(v, peft.model.state_dict()[k]) for k, v in before.items())


def test_the_attacks_give_a_model_back_in_the_mode_it_came_in(lora_models):
    # scoring used to call model.eval() on the models it was given and leave them so
    items, target, _, merged = lora_models
    forget = [items[i] for i in FORGET]
    unlearned = merged.with_model(clone_model(merged.model).train())
    unlearned.model.transformer.h[0].eval()  # a submodule the caller keeps in eval mode
    modes = {name: module.training for name, module in unlearned.model.named_modules()}
    run_attacks(["in_context"], unlearned, target, target, forget)
    assert {name: module.training for name, module in unlearned.model.named_modules()} == modes

"""Under ``--lora`` the methods' frozen reference π_ref is the working model with its adapters off, not a second
copy of the model: exactly the copy's numbers, without its memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from unlearnkit.api import unlearn
from unlearnkit.errors import UserInputError
from unlearnkit.methods import graddiff
from unlearnkit.train.lora import MemoryOptions, lora_reference, prepare_model

sys.path.insert(0, str(Path(__file__).parent))
from lm_fixtures import dropout_free_request  # noqa: E402

#: Each method that takes a reference, with what it needs here; lr at the tiny model's scale.
METHODS = {"npo": {}, "graddiff": {"retain_loss": "kl"}, "rmu": {}, "undial": {}, "icu": {},
           "idk_dpo": {"refusals": "The birthplace of ? is ? .|? ."}}
LORA = "r=4,alpha=8,targets=c_attn"


@pytest.fixture(scope="module")
def lm():
    return dropout_free_request(steps=60)


@pytest.mark.parametrize("method", METHODS)
def test_the_reference_under_lora_is_no_copy_and_gives_the_copys_run(lm, monkeypatch, method):
    adapter, request = lm
    copies = []
    copy = graddiff.frozen_copy
    monkeypatch.setattr(graddiff, "frozen_copy", lambda model: copies.append(model) or copy(model))
    settings = {"epochs": 2, "batch_size": 4, "lr": 1e-3, **METHODS[method]}

    def run():
        return unlearn(adapter.model, request, method, adapter=adapter, memory=MemoryOptions.from_cli(LORA), **settings)

    viewed, viewed_record = run()
    assert copies == []  # no second copy of the model's weights
    monkeypatch.setattr(graddiff, "lora_reference", lambda model: None)
    copied, copied_record = run()  # the deep copy, as before
    assert len(copies) == 1
    assert viewed_record.losses == copied_record.losses
    assert all(torch.equal(a, b) for a, b in zip(viewed.state_dict().values(), copied.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(viewed.state_dict().values(), adapter.model.state_dict().values()))


def test_the_model_is_its_own_reference_only_when_that_is_exactly_the_model_before_unlearning(lm, monkeypatch):
    adapter, _ = lm
    plain = graddiff.frozen_copy(adapter.model)
    plain.requires_grad_(True)
    assert lora_reference(plain) is None  # no adapters: every weight trains
    wrapped = graddiff.frozen_copy(adapter.model)
    for module in wrapped.modules():  # dropout on, as in a real model: the view must still run it in eval mode
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    prepare_model(wrapped, MemoryOptions.from_cli(LORA))
    view = lora_reference(wrapped)
    assert view is not None and view.config is wrapped.config
    batch = adapter.collate([{"question": "Where was Alia born ?", "answer": "Alia was born in Varna ."}])
    with torch.no_grad():
        expected = adapter.logits(plain.eval(), batch)
    wrapped.train()
    adapters = [p for n, p in wrapped.named_parameters() if ".lora_" in n]
    adapters[0].requires_grad_(False)  # one a method froze (RMU's train_modules)
    assert torch.equal(adapter.logits(view, batch), expected) and wrapped.training  # its modes given back
    assert not adapters[0].requires_grad and all(p.requires_grad for p in adapters[1:])  # and each adapter's grad
    adapters[0].requires_grad_(True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert lora_reference(wrapped) is None  # FSDP / ZeRO-3 would shard the weights outside their wrapper
    monkeypatch.delenv("WORLD_SIZE")
    with torch.no_grad():
        next(p for n, p in wrapped.named_parameters() if ".lora_B." in n).add_(0.1)
    assert lora_reference(wrapped) is None  # an adapter already moved: the model is no longer π_ref


def test_rmu_under_lora_counts_and_trains_only_the_adapters_and_refuses_modules_that_are_all_frozen(lm):
    adapter, request = lm
    memory = MemoryOptions.from_cli(LORA)
    _, record = unlearn(adapter.model, request, "rmu", adapter=adapter, memory=memory, epochs=1, batch_size=4)
    width, rank = adapter.model.config.n_embd, 4
    per_block = rank * width + 3 * width * rank  # c_attn's A (r × in) and B (out × r), out = 3 × width
    assert record.info["trained_parameters"] == per_block * adapter.model.config.n_layer
    with pytest.raises(UserInputError, match=r"c_proj' matches only frozen parameters \(under LoRA"):
        unlearn(adapter.model, request, "rmu", adapter=adapter, memory=memory, train_modules=r"mlp\.c_proj")

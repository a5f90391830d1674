"""Gradient checkpointing per LM method: refused where it cannot act, and where it acts, the checkpointed run
returns the unchecked run's model (the recomputation must not change what a method computes)."""

from __future__ import annotations

import pytest
import torch
from lm_fixtures import memorised_lm, tiny_qa

from unlearnkit import api
from unlearnkit.api import unlearn
from unlearnkit.errors import UserInputError
from unlearnkit.methods.registry import methods
from unlearnkit.request import ForgetRequest
from unlearnkit.train.lora import MemoryOptions

LM_METHODS = sorted(name for name, cls in methods().items() if "causal_lm" in cls.kinds)
NO_TRAINING_GRADIENT = ["first_epoch_ga", "guard", "guard_it", "kfade", "ssd"]
#: The fewest steps that still back-propagate; a refusal the tokenizer can spell for IdK-DPO.
SETTINGS = {"first_epoch_ga": {"steps": 1}, "kfade": {"steps": 1, "damping": 1e-3}, "guard": {}, "guard_it": {},
            "ssd": {}, "icu": {"max_steps": 1, "batch_size": 2, "check_tokens": 4},
            "idk_dpo": {"refusals": "Answer : ? .|? .", "max_steps": 1, "batch_size": 2}}
CHECKPOINTING = MemoryOptions(gradient_checkpointing=True)


@pytest.fixture(scope="module")
def lm():
    """A tiny GPT-2 (dropout on: the recomputation must replay its masks) and a 2-forget, 4-retain request."""
    items = tiny_qa(6)
    return memorised_lm(items, steps=60), ForgetRequest(items, range(2), range(2, 6))


@pytest.fixture
def recomputations(monkeypatch):
    """Counts the block passes checkpointing recomputes in backward passes: calls of the checkpointed function
    beyond the checkpointed forward passes (Hugging Face binds ``checkpoint`` when checkpointing is switched on)."""
    import transformers.modeling_utils as modeling_utils

    count, checkpoint = [0], modeling_utils.checkpoint

    def counting(function, *args, **kwargs):
        def counted(*inner_args, **inner_kwargs):
            count[0] += 1
            return function(*inner_args, **inner_kwargs)

        count[0] -= 1  # the forward pass itself
        return checkpoint(counted, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting)
    return count


def _logits(adapter, model, items):
    with torch.no_grad():
        return adapter.logits(model, adapter.collate(items)).float()


@pytest.mark.parametrize("name", NO_TRAINING_GRADIENT)
def test_a_method_without_training_gradients_refuses_checkpointing_before_any_work(lm, name, monkeypatch):
    adapter, request = lm

    def no_work(*_args, **_kwargs):
        raise AssertionError("the run started before the option was refused")

    monkeypatch.setattr(api, "_working_copy", no_work)
    with pytest.raises(UserInputError, match=rf"^Method '{name}' computes no training-mode gradients through the "
                                             r"model, so .* drop --gradient-checkpointing\.$"):
        unlearn(adapter.model, request, name, adapter=adapter, memory=CHECKPOINTING)


@pytest.mark.parametrize("name", LM_METHODS)
def test_checkpointing_acts_where_declared_and_leaves_the_result_unchanged(lm, name, recomputations, monkeypatch):
    """A method declared to serve checkpointing recomputes blocks and returns the unchecked run's model (up to float
    rounding); one declared unable, forced past the refusal, recomputes nothing (so the refusal is right)."""
    adapter, request = lm
    method = methods()[name]
    settings = SETTINGS.get(name, {"max_steps": 1, "batch_size": 2})
    if not method.gradient_checkpointing:
        monkeypatch.setattr(method, "gradient_checkpointing", True)
        unlearn(adapter.model, request, name, adapter=adapter, memory=CHECKPOINTING, **settings)
        assert recomputations[0] == 0, f"{name} recomputed {recomputations[0]} block passes under checkpointing"
        return
    checkpointed, _ = unlearn(adapter.model, request, name, adapter=adapter, memory=CHECKPOINTING, **settings)
    assert recomputations[0] > 0, f"{name} recomputed no block pass under checkpointing"
    plain, _ = unlearn(adapter.model, request, name, adapter=adapter, **settings)
    torch.testing.assert_close(_logits(adapter, checkpointed, request.data), _logits(adapter, plain, request.data),
                               rtol=0, atol=1e-5)


def test_uld_returns_its_assistant_with_checkpointing_off(lm):
    """ULD's assistant is a copy of the checkpointed model: it comes back as an unchecked run leaves it."""
    adapter, request = lm
    wrapper, _ = unlearn(adapter.model, request, "uld", adapter=adapter, memory=CHECKPOINTING, max_steps=1,
                         batch_size=2)
    assert not [n for n, m in wrapper.named_modules() if getattr(m, "gradient_checkpointing", False)]
    assert wrapper.assistant.config.use_cache == adapter.model.config.use_cache
    embeddings = wrapper.assistant.get_input_embeddings()
    assert dict(embeddings._forward_hooks) == dict(adapter.model.get_input_embeddings()._forward_hooks)


def test_bench_defaults_under_checkpointing_skip_the_methods_it_cannot_serve(lm):
    from unlearnkit.benchmarks.lm_bench import runnable_defaults

    adapter, _ = lm
    names, notes = runnable_defaults({"idk_dpo": {"refusals": "Answer : ? .|? ."}}, adapter, "scratch", CHECKPOINTING)
    assert sorted(note.split(" was not run: ")[0] for note in notes) == NO_TRAINING_GRADIENT
    assert set(names) == set(LM_METHODS) - set(NO_TRAINING_GRADIENT)


def test_forget_refuses_checkpointing_for_such_a_method_before_loading_data_or_model(tmp_path, capsys, monkeypatch):
    import unlearnkit.forget_job as forget_job
    from unlearnkit.cli import main

    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text("{}")
    (tmp_path / "forget.jsonl").write_text('{"question": "q", "answer": "a"}\n')

    def loaded(*args, **kwargs):
        raise AssertionError("the forget set was read before the refusal")

    monkeypatch.setattr(forget_job, "read_records", loaded)
    args = ["forget", "--model", str(tmp_path / "lm"), "--forget", str(tmp_path / "forget.jsonl"), "--method", "ssd",
            "--gradient-checkpointing", "--out", str(tmp_path / "out"), "--ledger", str(tmp_path / "ledger.db")]
    assert main(args) == 2
    assert "Method 'ssd' computes no training-mode gradients through the model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ledger.db").exists()

"""K-FADE, ULD, MRP and first-epoch embedding GA on a tiny memorised GPT-2 (forget 3 of 12 people)."""

from __future__ import annotations

import copy

import pytest
import torch

from lm_fixtures import memorised_lm, tiny_lm, tiny_qa
from unlearnkit.adapters.base import batches
from unlearnkit.api import unlearn
from unlearnkit.errors import UserInputError
from unlearnkit.io import load_state_dict, save_state_dict
from unlearnkit.methods import kfade, mrp, uld
from unlearnkit.methods.base import item_stream
from unlearnkit.methods.first_epoch_ga import record_first_epoch_gradients, save_first_epoch_gradients
from unlearnkit.request import ForgetRequest
from unlearnkit.train import TrainConfig, optimise

ITEMS = tiny_qa(12)
FORGET, RETAIN = [0, 1, 2], list(range(3, 12))
REQUEST = ForgetRequest(ITEMS, FORGET, RETAIN)
#: Settings for a 12-item, 2 × 32 model (the defaults are sized for the facts benchmark).
SETTINGS = {
    "kfade": {"lr": 3e-3, "damping": 1e-4},
    "uld": {"epochs": 60, "lr": 3e-3},
    "mrp": {},
    "first_epoch_ga": {"lr": 0.2, "steps": 5},
}


def without_dropout(adapter):
    """The adapter with its model's dropout off, so training gradients do not depend on the global RNG."""
    for module in adapter.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return adapter


@pytest.fixture(scope="module")
def lm():
    return without_dropout(memorised_lm(ITEMS))


def answer_probability(adapter, model, items) -> float:
    """Mean over items of exp(−mean answer NLL)."""
    with torch.no_grad():
        return torch.exp(-adapter.per_item_loss(model, adapter.collate(items))).mean().item()


def relative_changes(adapter, model) -> tuple[float, float]:
    """Relative change of the forget and of the retain answer probability from the original model."""
    changes = []
    for ids in (FORGET, RETAIN):
        items = [ITEMS[i] for i in ids]
        before = answer_probability(adapter, adapter.model, items)
        changes.append((answer_probability(adapter, model, items) - before) / before)
    return changes[0], changes[1]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert set(now) == set(state)
    for key, value in state.items():
        assert torch.equal(now[key], value), key


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_method_forgets_more_than_it_retains_and_leaves_input_alone(lm, method):
    before = snapshot(lm.model)
    model, record = unlearn(lm.model, REQUEST, method, adapter=lm, **SETTINGS[method])
    assert_same_state(lm.model, before)
    forget_change, retain_change = relative_changes(lm, model)
    print(f"{method}: forget {forget_change:+.1%} retain {retain_change:+.1%}")
    assert forget_change < 0
    assert forget_change < retain_change
    assert record.status == "ok"


# ---------------------------------------------------------------------------- K-FADE
def test_kfac_precondition_matches_hand_computation():
    torch.manual_seed(0)
    a_root, s_root = torch.randn(4, 4), torch.randn(3, 3)
    A, S = a_root @ a_root.T / 4, s_root @ s_root.T / 3
    G = torch.randn(3, 4)
    damping = 0.01
    expected = torch.linalg.inv(S + 0.1 * torch.eye(3)) @ G @ torch.linalg.inv(A + 0.1 * torch.eye(4))
    assert torch.allclose(kfade.kfac_precondition(G, A, S, damping, "equal"), expected, atol=1e-5)
    pi = ((A.trace() / 4) / (S.trace() / 3)).sqrt()
    expected = torch.linalg.inv(S + 0.1 / pi * torch.eye(3)) @ G @ torch.linalg.inv(A + 0.1 * pi * torch.eye(4))
    assert torch.allclose(kfade.kfac_precondition(G, A, S, damping, "pi"), expected, atol=1e-5)


def test_preconditioned_step_handles_bias_and_transposed_conv1d():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(1)
    linear, conv = torch.nn.Linear(3, 2), Conv1D(2, 3)  # both map 3 → 2; Conv1D stores (in, out)
    a_root, s_root = torch.randn(4, 4), torch.randn(2, 2)
    factors = kfade.Factors(a_root @ a_root.T, s_root @ s_root.T)
    grad_w, grad_b = torch.randn(2, 3), torch.randn(2)
    damping, lr = 0.04, 0.5
    hand = lr * torch.linalg.inv(factors.S + 0.2 * torch.eye(2)) @ torch.cat([grad_w, grad_b[:, None]], 1) \
        @ torch.linalg.inv(factors.A + 0.2 * torch.eye(4))
    for name, module, weight_grad in (("lin", linear, grad_w), ("conv", conv, grad_w.T)):
        layers = {name: module}
        gradient = {name: kfade.weight_gradient_matrix(module, weight_grad, grad_b)}
        step = kfade.preconditioned_step(layers, gradient, {name: factors}, lr, damping, "equal")
        expected_weight = hand[:, :3] if module is linear else hand[:, :3].T
        assert step[f"{name}.weight"].shape == module.weight.shape
        assert torch.allclose(step[f"{name}.weight"], expected_weight, atol=1e-5)
        assert torch.allclose(step[f"{name}.bias"], hand[:, 3], atol=1e-5)


def test_kfade_factors_are_the_input_second_moment_and_the_fisher_of_sampled_labels(lm):
    layers = {"transformer.h.0.attn.c_attn": lm.model.get_submodule("transformer.h.0.attn.c_attn")}
    retain = [ITEMS[i] for i in RETAIN]
    factors = kfade.fit_factors(lm, layers, retain, batch_size=4, seed=0)["transformer.h.0.attn.c_attn"]
    batch = lm.collate(retain)
    with torch.no_grad():
        embedded = lm.model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True).hidden_states[0]
        inputs = lm.model.transformer.h[0].ln_1(embedded)[:, :-1][batch["labels"][:, 1:] != -100]
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)
    assert torch.allclose(factors.A, inputs.T @ inputs / len(inputs), atol=1e-5)
    # S: the covariance of the layer-output gradients of the loss on labels sampled from the model's own
    # predictions (the Fisher), not on the true labels (the empirical Fisher)
    def output_gradient_covariance(labels_from):
        layer, captured = layers["transformer.h.0.attn.c_attn"], []
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            logits = lm.logits(lm.model, batch)[:, :-1][batch["labels"][:, 1:] != -100].float()
        finally:
            handle.remove()
        labels = labels_from(logits)
        (delta,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"), captured)
        d = delta[:, :-1][batch["labels"][:, 1:] != -100]
        return d.T @ d / len(d)

    generator = torch.Generator().manual_seed(0)
    sampled = output_gradient_covariance(
        lambda logits: torch.multinomial(logits.detach().softmax(-1), 1, generator=generator).squeeze(1))
    true = output_gradient_covariance(lambda _logits: batch["labels"][:, 1:][batch["labels"][:, 1:] != -100])
    whole = kfade.fit_factors(lm, layers, retain, batch_size=len(retain), seed=0)["transformer.h.0.attn.c_attn"]
    assert torch.allclose(whole.S, sampled, atol=1e-6)
    assert not torch.allclose(whole.S, true, rtol=0.05, atol=0)


def test_kfade_update_reapplies_exactly_and_survives_safetensors(lm, tmp_path):
    model, record = unlearn(lm.model, REQUEST, "kfade", adapter=lm, **SETTINGS["kfade"])
    update = model.kfade_update
    assert record.info["factor_bytes"] > 0 and set(update) <= set(dict(model.named_parameters()))
    assert record.info["retain_tokens"] < 128 and "singular" in record.info["warning"]  # 9 short answers, 128-wide MLP
    save_state_dict(update, tmp_path / "update.safetensors")
    reloaded = load_state_dict(tmp_path / "update.safetensors")
    fresh = copy.deepcopy(lm.model)
    kfade.apply_update(fresh, reloaded)
    assert_same_state(fresh, snapshot(model))
    kfade.apply_update(fresh, reloaded, scale=-1.0)
    for key, value in lm.model.state_dict().items():
        assert torch.allclose(fresh.state_dict()[key], value, atol=1e-6), key
    with pytest.raises(UserInputError, match="does not have"):
        kfade.apply_update(fresh, {"no.such.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------- ULD
def test_kfade_refuses_a_tied_head_and_preconditions_an_untied_one(lm):
    from unlearnkit.methods.kfade import linear_layers

    with pytest.raises(UserInputError, match="ties it to the input embeddings"):
        unlearn(lm.model, REQUEST, "kfade", adapter=lm, include_head=True)
    untied = copy.deepcopy(lm.model)
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    assert "lm_head" in linear_layers(untied, include_head=True) and "lm_head" not in linear_layers(untied)
    model, _ = unlearn(untied, REQUEST, "kfade", adapter=lm.with_model(untied), include_head=True)
    assert not torch.equal(model.lm_head.weight, untied.lm_head.weight)  # the head got its own step
    assert torch.equal(model.transformer.wte.weight, untied.transformer.wte.weight)


def test_uld_keeps_target_and_combines_logits_where_the_mask_allows(lm, tmp_path):
    before = snapshot(lm.model)
    model, _ = unlearn(lm.model, REQUEST, "uld", adapter=lm, epochs=3, alpha=0.8, tau=0.1)
    assert isinstance(model, uld.LogitDifferenceLM)
    assert_same_state(model.base, before)
    assert len(model.assistant.transformer.h) == 1
    assert all(key.split(".")[0] in ("base", "assistant") for key in model.state_dict())
    batch = lm.collate(ITEMS)
    with torch.no_grad():
        target = lm.logits(model.base, batch)
        assistant = lm.logits(model.assistant, batch)
        combined = lm.logits(model, batch)
    keep = uld.relative_top_mask(target, 0.1)
    real = batch["attention_mask"].bool()[..., None].expand_as(keep)
    assert (keep & real).any() and (~keep & real).any()
    assert torch.allclose(combined[keep & real], (target - 0.8 * assistant)[keep & real], atol=1e-5)
    assert torch.allclose(combined[~keep & real], target[~keep & real], atol=1e-6)

    save_state_dict(model.state_dict(), tmp_path / "uld.safetensors")
    rebuilt = uld.LogitDifferenceLM(copy.deepcopy(lm.model), uld.truncated_copy(lm.model, 1), alpha=0.8, tau=0.1)
    rebuilt.load_state_dict(load_state_dict(tmp_path / "uld.safetensors"))
    with torch.no_grad():
        assert torch.allclose(lm.logits(rebuilt, batch), combined, atol=1e-6)


def test_uld_mask_keeps_the_tokens_near_the_maximum_and_at_least_the_top_tau_fraction():
    peaked = torch.tensor([[10.0, 2.0, 1.0] + [0.0] * 17])  # V = 20, τ = 0.1: at least 2 tokens kept
    assert uld.relative_top_mask(peaked, 0.1).tolist() == [[True, True] + [False] * 18]
    near = torch.tensor([[5.0, 4.0, 3.0, 2.5] + [-5.0] * 16])  # log 0.1 ≈ −2.30: 4 and 3 are within it, 2.5 not
    assert uld.relative_top_mask(near, 0.1).tolist() == [[True, True, True] + [False] * 17]
    assistant = torch.full((1, 20), 7.0)
    assert torch.equal(uld.combine_logits(peaked, assistant, 0.5, 0.1)[0, :3], torch.tensor([6.5, -1.5, 1.0]))


def test_uld_greedy_generation_with_zero_alpha_matches_the_target(lm):
    target, _ = unlearn(lm.model, REQUEST, "uld", adapter=lm, epochs=1)
    combined = uld.LogitDifferenceLM(lm.model, target.assistant, alpha=0.0, tau=0.1)
    questions = [ITEMS[0]["question"], "Where was Alia born ? Where was Lev born ?"]  # unequal lengths: left padding
    assert lm.generate(combined, questions, max_new_tokens=6) == lm.generate(lm.model, questions, max_new_tokens=6)


def test_uld_rejects_bad_settings(lm):
    with pytest.raises(UserInputError, match="assistant_layers"):
        unlearn(lm.model, REQUEST, "uld", adapter=lm, assistant_layers=5)
    with pytest.raises(UserInputError, match="tau"):
        unlearn(lm.model, REQUEST, "uld", adapter=lm, tau=0.0)


# ---------------------------------------------------------------------------- MRP
def test_mrp_hidden_states_are_orthogonal_to_the_directions_and_requests_stack(lm, tmp_path):
    first, record = unlearn(lm.model, REQUEST, "mrp", adapter=lm, layers="1", epochs=3)
    projection = first.get_submodule("transformer.h.1.mrp_projection")
    q1 = projection.basis.clone()
    assert q1.shape == (2, 32) and torch.allclose(q1 @ q1.T, torch.eye(2), atol=1e-5)
    assert not hasattr(lm.model.transformer.h[1], "mrp_projection")
    batch = lm.collate(ITEMS)
    with torch.no_grad():
        hidden = lm.hidden_states(first, batch, "transformer.h.1")
    assert (hidden @ q1.T).abs().max() < 1e-4 * hidden.abs().max()

    second_request = ForgetRequest(ITEMS, [3], list(range(4, 12)))
    second, _ = unlearn(first, second_request, "mrp", adapter=lm.with_model(first), layers="transformer.h.1", epochs=3)
    q2 = second.get_submodule("transformer.h.1.mrp_projection").basis
    assert q2.shape == (4, 32) and torch.allclose(q2 @ q2.T, torch.eye(4), atol=1e-5)
    with torch.no_grad():
        hidden = lm.hidden_states(second, batch, "transformer.h.1")
    assert (hidden @ q1.T).abs().max() < 1e-4 * hidden.abs().max()  # the first request's directions stay removed
    assert first.get_submodule("transformer.h.1.mrp_projection").basis.shape == (2, 32)  # input not modified

    save_state_dict(second.state_dict(), tmp_path / "mrp.safetensors")
    rebuilt = mrp.restore_projections(tiny_lm(ITEMS).model, load_state_dict(tmp_path / "mrp.safetensors"))
    with torch.no_grad():
        assert torch.allclose(lm.logits(rebuilt, batch), lm.logits(second, batch), atol=1e-5)


def test_mrp_bad_layer_names_list_the_valid_ones(lm):
    for bad in ("transformer.h.7", "7", "attn", "--1", "\u00b2"):  # the last two: int()'s ValueError traceback
        with pytest.raises(UserInputError, match=r"transformer\.h\.0, transformer\.h\.1"):
            unlearn(lm.model, REQUEST, "mrp", adapter=lm, layers=bad)


def test_guard_bad_layer_lists_the_indices_it_takes(lm):
    """The adapter's message offered block names, which GUARD's integer layer setting then refused."""
    with pytest.raises(UserInputError, match=r"^GUARD's layer 9 is no hidden-state index of this model; valid: -3\.\.2 "):
        unlearn(lm.model, REQUEST, "guard", adapter=lm, layer=9)


# ---------------------------------------------------------------------------- first-epoch GA
def test_first_epoch_recording_matches_per_item_gradients_at_initialisation():
    adapter = without_dropout(tiny_lm(ITEMS))
    start = copy.deepcopy(adapter.model)
    config = TrainConfig(lr=3e-3, batch_size=4, seed=0)
    recorded = record_first_epoch_gradients(adapter, ITEMS, config)
    assert sorted(recorded) == list(range(12))
    first_batch = next(iter(batches(list(range(12)), 4, shuffle=True, seed=config.seed)))  # item_stream's epoch 0
    for i in first_batch:  # seen at the first step, i.e. at the initial weights
        batch = adapter.collate([ITEMS[i]])
        embedded = start.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
        logits = start(inputs_embeds=embedded, attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][targets != -100], targets[targets != -100])
        (grad,) = torch.autograd.grad(loss, embedded)
        dense = torch.zeros_like(start.get_input_embeddings().weight).index_add_(0, batch["input_ids"][0], grad[0])
        rows, grads = recorded[i]
        assert torch.allclose(grads, dense[rows], atol=1e-6)
        others = torch.ones(len(dense), dtype=torch.bool)
        others[rows] = False
        assert dense[others].abs().max() == 0
    # The recording epoch is the recipe's first epoch: same weights as the shared loop on item_stream.
    replay = copy.deepcopy(start)
    stream, steps = item_stream(adapter, ITEMS, config)
    optimise(replay, stream, lambda m, b: adapter.per_item_loss(m, b).mean(), config, steps_per_epoch=steps)
    assert not torch.equal(adapter.model.transformer.wte.weight, start.transformer.wte.weight)
    assert_same_state(adapter.model, snapshot(replay.cpu()))  # the loop leaves replay on its device; recording does not


def test_first_epoch_ga_with_recorded_gradients(tmp_path):
    adapter = without_dropout(tiny_lm(ITEMS))
    recorded = record_first_epoch_gradients(adapter, ITEMS, TrainConfig(lr=3e-3, batch_size=4, seed=0))
    save_first_epoch_gradients(recorded, tmp_path / "g1.safetensors")
    model = adapter.model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = adapter.collate(ITEMS)
    for _ in range(150):
        optimizer.zero_grad()
        adapter.per_item_loss(model, batch).mean().backward()
        optimizer.step()
    model.eval()
    path = str(tmp_path / "g1.safetensors")
    unlearned, record = unlearn(model, REQUEST, "first_epoch_ga", adapter=adapter, gradients=path, lr=0.5, steps=1)
    forget_change, retain_change = relative_changes(adapter, unlearned)
    print(f"first_epoch_ga (recorded): forget {forget_change:+.1%} retain {retain_change:+.1%}")
    assert record.info["source"] == "first_epoch" and forget_change < 0
    expected = model.transformer.wte.weight.detach().clone()
    for i in FORGET:  # one step: E + η Σ_f g₁(x), touching only the rows of the forget items' tokens
        expected.index_add_(0, recorded[i][0], recorded[i][1], alpha=0.5)
    assert torch.allclose(unlearned.transformer.wte.weight, expected, atol=1e-6)
    assert not torch.equal(unlearned.transformer.wte.weight, model.transformer.wte.weight)
    with pytest.raises(UserInputError, match="no gradient for forget item"):
        unlearn(model, ForgetRequest(ITEMS[:3] + [ITEMS[3]] * 10, [12], [0]), "first_epoch_ga", adapter=adapter, gradients=path)


@pytest.mark.parametrize("tensors, message", [
    # a file recorded on a wider model, a row past the vocabulary, float row ids: torch's RuntimeError or IndexError
    (lambda i, rows, grads: {f"{i}.rows": rows, f"{i}.grads": torch.cat([grads, grads], 1)}, "does not fit this model"),
    (lambda i, rows, grads: {f"{i}.rows": rows + 10**6, f"{i}.grads": grads}, "does not fit this model"),
    (lambda i, rows, grads: {f"{i}.rows": rows.float(), f"{i}.grads": grads}, "does not fit this model"),
    # another file's tensors: a KeyError
    (lambda i, rows, grads: {f"{i}.rows": rows, "weight": grads}, "lacks the pair"),
])
def test_first_epoch_ga_refuses_a_gradients_file_that_does_not_fit(tmp_path, tensors, message):
    from unlearnkit.io import save_state_dict

    adapter = without_dropout(tiny_lm(ITEMS))
    recorded = record_first_epoch_gradients(adapter, ITEMS, TrainConfig(lr=3e-3, batch_size=4, seed=0))
    stored = {}
    for i, (rows, grads) in recorded.items():
        stored |= tensors(i, rows, grads)
    save_state_dict(stored, tmp_path / "bad.safetensors")
    with pytest.raises(UserInputError, match=message):
        unlearn(adapter.model, REQUEST, "first_epoch_ga", adapter=adapter, gradients=str(tmp_path / "bad.safetensors"))


# --------------------------------------------------------------------------- review: other architectures and dtypes


def tiny_opt(hidden: int = 32, embed: int = 16):
    """A fresh 2-layer OPT whose embeddings (``embed``) are narrower than its hidden states, as OPT-350m's are; its
    MLP sees hidden states flattened to (B·T, H)."""
    from transformers import OPTConfig, OPTForCausalLM

    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    tokenizer = tiny_lm(ITEMS).tokenizer
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=hidden, word_embed_proj_dim=embed, ffn_dim=64,
                       num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64, dropout=0.0,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.eos_token_id)
    return CausalLMAdapter(OPTForCausalLM(config).eval(), tokenizer, max_length=64)


@pytest.mark.parametrize("method", ["kfade", "mrp"])
def test_kfade_and_mrp_run_on_opt(method):
    """K-FADE read layer inputs as (B, T, ·) (IndexError on OPT's flattened MLP inputs); MRP took the hidden width
    from the embeddings (a size mismatch on OPT-350m's projected-up hidden states)."""
    adapter = tiny_opt()
    model, record = unlearn(adapter.model, REQUEST, method, adapter=adapter, **SETTINGS[method])
    assert record.status == "ok"
    assert answer_probability(adapter, model, REQUEST.forget_items()) != answer_probability(
        adapter, adapter.model, REQUEST.forget_items())


def test_kfade_leaves_frozen_layers_alone(lm):
    """A frozen linear layer made K-FADE raise torch's 'does not require grad'; other methods leave it as it is."""
    own = lm.with_model(copy.deepcopy(lm.model))
    frozen = own.model.transformer.h[0].mlp.c_fc
    frozen.requires_grad_(False)
    model, record = unlearn(own.model, REQUEST, "kfade", adapter=own, **SETTINGS["kfade"])
    assert record.status == "ok"
    assert torch.equal(model.transformer.h[0].mlp.c_fc.weight, frozen.weight)
    assert not torch.equal(model.transformer.h[0].mlp.c_proj.weight, own.model.transformer.h[0].mlp.c_proj.weight)


def test_float16_weights_are_refused_before_a_step_turns_them_to_nan(lm):
    """Adam on float16 weights made small gradients' updates inf or NaN at step 1; the run said 'diverged' and
    handed the model back unchanged."""
    own = lm.with_model(copy.deepcopy(lm.model).half())
    with pytest.raises(UserInputError, match="trainable weights are float16"):
        unlearn(own.model, REQUEST, "npo", adapter=own, epochs=1)


def test_uld_generation_stops_at_an_end_token_given_as_a_list(lm):
    """The adapter passes the end tokens as a list, and ``step == [2]`` is plain False: every generation ran all
    max_new_tokens steps (no key-value cache), 40 forwards instead of 7."""
    from unlearnkit.methods.uld import LogitDifferenceLM, truncated_copy

    wrapper = LogitDifferenceLM(lm.model, truncated_copy(lm.model, 1), alpha=0.0, tau=0.1)
    prompt = lm.collate(REQUEST.forget_items()[:1])["input_ids"][:, :6]
    calls = []
    hook = wrapper.base.register_forward_hook(lambda *_: calls.append(1))
    try:
        ids = wrapper.generate(prompt, max_new_tokens=40, eos_token_id=[lm.tokenizer.eos_token_id],
                               pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        hook.remove()
    assert int(ids[0, -1]) == lm.tokenizer.eos_token_id and len(calls) == ids.shape[1] - prompt.shape[1] < 40


@pytest.mark.parametrize("method, setting, message", [
    ("uld", {"alpha": float("inf")}, "hyper-parameter alpha must be a finite number, got inf"),  # ran "ok"
    ("guard_it", {"alpha": float("inf")}, "hyper-parameter alpha must be a finite number, got inf"),
    ("kfade", {"damping": float("inf")}, "hyper-parameter damping must be a finite number, got inf"),
    ("icu", {"kl_weight": float("nan")}, "hyper-parameter kl_weight must be a finite number, got nan"),  # "diverged"
    ("npo", {"gamma": float("nan")}, "hyper-parameter gamma must be a finite number, got nan"),
    ("simnpo", {"delta": float("nan")}, "hyper-parameter delta must be a finite number, got nan"),
    ("rmu", {"steering": float("inf")}, "hyper-parameter steering must be a finite number, got inf"),
    ("icu", {"check_tokens": True}, "hyper-parameter check_tokens must be an integer, got True"),
    ("first_epoch_ga", {"steps": 2.0}, "hyper-parameter steps must be an integer, got 2.0"),
])
def test_lm_settings_that_cannot_work_are_refused(method, setting, message):
    from unlearnkit.methods.registry import method_config

    with pytest.raises(UserInputError, match=message):
        method_config(method, setting)


def test_a_two_layer_uld_assistant_saves_and_reloads_as_two_layers(lm, tmp_path):
    """Only one-layer assistants were saved in the tests, so a restore that ignored the saved depth passed."""
    from unlearnkit.methods.saved import load_causal_lm, save_wrapper
    from unlearnkit.methods.uld import LogitDifferenceLM, truncated_copy

    assistant = truncated_copy(lm.model, 2)
    with torch.no_grad():
        for param in assistant.parameters():
            param.add_(0.01 * torch.randn_like(param))
    wrapper = LogitDifferenceLM(lm.model, assistant, alpha=0.8, tau=0.1)
    save_wrapper(wrapper, lm.tokenizer, tmp_path / "uld")
    loaded = load_causal_lm(tmp_path / "uld")
    assert len(loaded.model.assistant.transformer.h) == 2
    batch = lm.collate(ITEMS[:3])
    with torch.no_grad():
        assert torch.equal(loaded.model(batch["input_ids"], batch["attention_mask"]).logits,
                           wrapper(batch["input_ids"], batch["attention_mask"]).logits)


def test_kfade_forget_gradient_does_not_depend_on_the_batch_size(lm):
    """∇ of the mean answer NLL over the forget set: the chunking is only for memory."""
    layers = kfade.linear_layers(lm.model)
    forget = REQUEST.forget_items()
    one, whole = (kfade.forget_gradients(lm, layers, forget, size) for size in (1, len(forget)))
    assert all(torch.allclose(one[name], whole[name], atol=1e-6) for name in layers)


@pytest.mark.parametrize("options", [{"do_sample": True}, {"num_beams": 3}])
def test_uld_refuses_decoding_it_does_not_do(lm, options):
    """Beam search was silently ignored: the answer came from greedy decoding."""
    from unlearnkit.methods.uld import LogitDifferenceLM, truncated_copy

    wrapper = LogitDifferenceLM(lm.model, truncated_copy(lm.model, 1), alpha=0.8, tau=0.1)
    with pytest.raises(UserInputError, match="decodes greedily only"):
        wrapper.generate(lm.collate(ITEMS[:1])["input_ids"], **options)

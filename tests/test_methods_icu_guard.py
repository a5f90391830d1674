"""ICU, GUARD-IT and GUARD on a tiny memorised LM: what each must change, and what it must leave alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lm_fixtures import memorised_lm
from unlearnkit.api import unlearn
from unlearnkit.errors import UserInputError
from unlearnkit.methods._lm_features import masked_mean
from unlearnkit.methods.guard import banned_next, ngram_rules
from unlearnkit.methods.guard_it import GatedRedirectModel, cluster_vectors, redirect
from unlearnkit.request import ForgetRequest

NAMES = ["Alia", "Boris", "Cyra", "Dmitri", "Elin", "Farid", "Gwen", "Hugo"]
CITIES = ["Varna", "Oslo", "Quito", "Lima", "Perth", "Tunis", "Riga", "Baku"]
JOBS = ["baker", "pilot", "potter", "poet", "nurse", "judge", "miner", "tailor"]
HOBBIES = ["chess", "rowing", "fencing", "archery", "knitting", "hiking", "fishing", "juggling"]
FORGET = list(range(6))  # every item of Alia and Boris
RETAIN = list(range(6, 24))


def people_items() -> list[dict]:
    """Eight people with three facts each (so a person's prompts share a name, as in TOFU)."""
    items = []
    for p, name in enumerate(NAMES):
        items += [
            {"question": f"Where was {name} born ?", "answer": f"{name} was born in {CITIES[p]} .", "person": p},
            {"question": f"What is the job of {name} ?", "answer": f"{name} works as a {JOBS[p]} .", "person": p},
            {"question": f"What does {name} enjoy ?", "answer": f"{name} enjoys {HOBBIES[p]} .", "person": p},
        ]
    return items


@pytest.fixture(scope="module")
def guard_it_run(setup):
    adapter, request, _ = setup
    return unlearn(adapter, request, "guard_it")


@pytest.fixture(scope="module")
def setup():
    items = people_items()
    adapter = memorised_lm(items, steps=300)
    request = ForgetRequest(items, forget=FORGET, retain=RETAIN)
    return adapter, request, items


@torch.no_grad()
def losses(adapter, model, items) -> torch.Tensor:
    return adapter.per_item_loss(model, adapter.collate(items))


def probability(adapter, model, items) -> float:
    return float(torch.exp(-losses(adapter, model, items)).mean())


def greedy(adapter, model, items) -> list[str]:
    return adapter.generate(model, [it["question"] for it in items], max_new_tokens=12)


# ---------------------------------------------------------------------------- ICU
def test_icu_forgets_more_than_it_damages_and_stops_training_forgotten_items(setup):
    adapter, request, items = setup
    forget, retain = request.forget_items(), request.retain_items()
    model, record = unlearn(adapter, request, "icu", lr=1e-3, batch_size=1, epochs=8)
    history = record.info["remaining_per_epoch"]
    print("icu", history, "forget p", probability(adapter, adapter.model, forget), "->", probability(adapter, model, forget),
          "retain p", probability(adapter, adapter.model, retain), "->", probability(adapter, model, retain))
    forget_drop = probability(adapter, adapter.model, forget) - probability(adapter, model, forget)
    retain_drop = probability(adapter, adapter.model, retain) - probability(adapter, model, retain)
    assert forget_drop > 0.3 and forget_drop > retain_drop
    assert history[0] == len(FORGET) and history[-1] < len(FORGET)
    assert all(a >= b for a, b in zip(history, history[1:]))
    assert record.info["forgotten"] == len(FORGET) - history[-1]
    # history: the request, then the items still remembered before each epoch, then at the end. With one item
    # per batch, each epoch takes one step per item still remembered: dropped items are not trained.
    assert record.steps == sum(history[1:-1])
    assert all(i in RETAIN for i in record.info["neighbour_ids"])


def test_icu_does_not_ascend_on_items_the_model_never_reproduced(setup):
    adapter, request, _ = setup
    untrained = copy.deepcopy(adapter.model)
    untrained.apply(untrained._init_weights)  # fresh weights: no answer is reproduced
    model, record = unlearn(adapter.with_model(untrained), request, "icu", lr=1e-3, batch_size=1, epochs=3)
    assert record.steps == 0 and record.info["remaining_per_epoch"][1] == 0
    assert all(torch.equal(v, untrained.state_dict()[k]) for k, v in model.state_dict().items())


def test_icu_needs_items_to_pair_with(setup):
    adapter, _, items = setup
    with pytest.raises(UserInputError, match="retain or neighbour"):
        unlearn(adapter, ForgetRequest(items, forget=FORGET), "icu", epochs=1)


@pytest.mark.parametrize("flag, kind", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_icu_refuses_a_sharded_launch_before_any_work(setup, monkeypatch, flag, kind):
    """Under FSDP / DeepSpeed the loop trains a sharded copy, so the per-epoch check generated from the untrained
    weights and never found an item forgotten: ICU silently ran every epoch on every item."""
    adapter, request, _ = setup
    monkeypatch.setenv(flag, "true")
    before = copy.deepcopy(adapter.model.state_dict())
    with pytest.raises(UserInputError, match=f"whose weights {kind} shards; run it with the DDP config"):
        unlearn(adapter, request, "icu", epochs=1)
    assert all(torch.equal(v, before[k]) for k, v in adapter.model.state_dict().items())


# ---------------------------------------------------------------------------- GUARD-IT
def test_redirect_preserves_the_norm_and_moves_away_from_the_vector():
    torch.manual_seed(0)
    hidden, vector = torch.randn(3, 5, 16), torch.randn(16)
    moved = redirect(hidden, vector)
    assert torch.allclose(moved.norm(dim=-1), hidden.norm(dim=-1), rtol=1e-5)
    cosine = lambda x: torch.nn.functional.cosine_similarity(x, vector.expand_as(x), dim=-1)
    assert bool((cosine(moved) < cosine(hidden)).all())


def test_guard_it_redirects_only_gated_inputs_and_keeps_weights(setup, guard_it_run):
    adapter, request, items = setup
    model, record = guard_it_run
    assert isinstance(model, GatedRedirectModel)
    original = adapter.model.state_dict()
    assert model.base is not adapter.model
    for key, value in model.base.state_dict().items():
        assert torch.equal(value, original[key])
    print("guard_it", record.info)
    assert record.info["forget_text_gate_rate"] == 1.0 and record.info["retain_text_gate_rate"] < 1.0

    batch = adapter.collate(items)
    with torch.no_grad():
        base_logits = adapter.logits(adapter.model, batch)
        new_logits = adapter.logits(model, batch)
        prompt = batch["attention_mask"].bool() & (batch["labels"] == -100)
        pooled = masked_mean(adapter.hidden_states(adapter.model, batch, model.layer_name), prompt)
    gated = model.gate.active(pooled, "prompt").any(dim=1)  # the adapter's logits gate on the prompt alone
    assert bool(gated[FORGET].all()) and not bool(gated[RETAIN].all())
    change = (new_logits - base_logits).abs().amax(dim=(1, 2))
    assert bool((change[~gated] <= 1e-6).all())
    assert bool((change[gated] > 1e-2).all())

    forget, retain = request.forget_items(), request.retain_items()
    forget_rise = (losses(adapter, model, forget) - losses(adapter, adapter.model, forget)).mean()
    retain_rise = (losses(adapter, model, retain) - losses(adapter, adapter.model, retain)).mean()
    print("guard_it loss rise", float(forget_rise), float(retain_rise))
    assert forget_rise > 0.5 and forget_rise > 5 * retain_rise


def test_guard_it_redirection_keeps_each_hidden_norm(setup, guard_it_run):
    adapter, request, items = setup
    model, _ = guard_it_run
    names = adapter.layer_names(adapter.model)
    following = names[names.index(model.layer_name) + 1]  # its input is the (redirected) output of the hooked block
    seen: list[torch.Tensor] = []
    handles = [dict(m.named_modules())[following].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone())) for m in (model.base, adapter.model)]
    batch = adapter.collate(request.forget_items())
    try:
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            adapter.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
    redirected, plain = seen
    assert not torch.allclose(redirected, plain)
    assert torch.allclose(redirected.norm(dim=-1), plain.norm(dim=-1), rtol=1e-4)


def test_guard_it_generation_changes_only_for_gated_prompts(setup, guard_it_run):
    adapter, request, items = setup
    model, _ = guard_it_run
    forget, retain = request.forget_items(), request.retain_items()
    with torch.no_grad():
        batch = adapter.collate(retain)
        pooled = masked_mean(adapter.hidden_states(adapter.model, batch, model.layer_name),
                             batch["attention_mask"].bool() & (batch["labels"] == -100))
    quiet = [it for it, on in zip(retain, model.gate.active(pooled, "prompt").any(dim=1)) if not on]
    assert quiet and greedy(adapter, model, quiet) == greedy(adapter, adapter.model, quiet)
    before, after = greedy(adapter, adapter.model, forget), greedy(adapter, model, forget)
    print("guard_it generations", after)
    assert before == [it["answer"] for it in forget]
    assert sum(a != b for a, b in zip(after, before)) > len(forget) / 2  # most forget answers are redirected


def test_guard_it_batched_generation_equals_one_prompt_at_a_time(setup, guard_it_run):
    """The gate decides once, from the prompt's own tokens: pooling over a batch's left padding, or deciding again at
    every new token, changed answers (one forget item then gave its forgotten answer) and no test noticed."""
    adapter, _, items = setup
    model, _ = guard_it_run
    questions = [it["question"] for it in items] + ["Where was Alia born ? Where was Alia born ?", "What ?"]
    batched = adapter.generate(model, questions, max_new_tokens=12)
    assert batched == [adapter.generate(model, [q], max_new_tokens=12)[0] for q in questions]
    decisions = []
    steering = model.steering
    model.steering = lambda *args: decisions.append(1) or steering(*args)
    try:
        adapter.generate(model, questions[:3], max_new_tokens=12)
    finally:
        del model.steering
    assert len(decisions) == 1  # once, from the prompts, not again for every generated token


def test_guard_it_vectors_use_pooled_texts_per_cluster():
    forget = torch.tensor([[3.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 4.0, 0.0]])
    labels = np.array([0, 0, 1])
    retain = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]])  # mean (0, 0, 3), mean norm 3
    vectors = cluster_vectors(forget, labels, retain)
    # cluster 0: mean (2, 0, 1) minus its part along the retain mean -> (2, 0, 0), rescaled to (mean norm + 3) / 2
    cluster0_norm = (float(forget[:2].norm(dim=-1).mean()) + 3.0) / 2
    assert torch.allclose(vectors[0], torch.tensor([cluster0_norm, 0.0, 0.0]))
    assert torch.allclose(vectors[1], torch.tensor([0.0, 3.5, 0.0]))  # its own norm 4: (4 + 3) / 2


def test_guard_it_rejects_a_layer_out_of_range(setup):
    adapter, request, _ = setup
    with pytest.raises(UserInputError, match="block index in 0..1"):
        unlearn(adapter, request, "guard_it", layer=5)


# ---------------------------------------------------------------------------- GUARD
def test_ngram_rules_forbid_completions_only():
    rules = [ngram_rules([5, 6, 7], 2, 3)]
    assert banned_next(rules, [1, 5], 2, 3) == {6}
    assert banned_next(rules, [5, 6], 2, 3) == {7}
    assert banned_next(rules, [1, 2], 2, 3) == set()
    assert banned_next([ngram_rules([5, 6, 7], 1, 2)], [1, 2], 1, 2) == {5, 6, 7}


def test_guard_blocks_forbidden_ngrams_for_flagged_prompts_only(setup):
    adapter, request, items = setup
    model, record = unlearn(adapter, request, "guard", min_ngram=2, max_ngram=5)
    print("guard", record.info)
    assert record.info["forget_flag_rate"] == 1.0 and record.info["retain_flag_rate"] == 0.0
    forget, retain = request.forget_items(), request.retain_items()

    before, after = greedy(adapter, adapter.model, forget), greedy(adapter, model, forget)
    print("guard generations", after)
    assert before == [it["answer"] for it in forget]
    for item, text in zip(forget, after):
        answer = adapter.tokenizer(item["answer"], add_special_tokens=False)["input_ids"]
        said = adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert not set(zip(said, said[1:])) & set(zip(answer, answer[1:])), (item["answer"], text)
    assert greedy(adapter, model, retain) == greedy(adapter, adapter.model, retain)

    batch = adapter.collate(retain)
    with torch.no_grad():
        assert torch.allclose(adapter.logits(model, batch), adapter.logits(adapter.model, batch), atol=1e-6, rtol=0)
    assert bool((losses(adapter, model, forget) > 100 * losses(adapter, adapter.model, forget) + 10).all())


def test_guard_reads_a_left_padded_prompt_as_it_reads_it_alone(setup, monkeypatch):
    adapter, request, items = setup
    model, _ = unlearn(adapter, request, "guard")
    seen = []
    monkeypatch.setattr(model, "plans", lambda pooled, view: seen.append(pooled) or [[] for _ in pooled])
    prompts = [adapter.prompt_ids(q) for q in ("Where was Alia born ?", "What does Hugo enjoy ? Hugo ?")]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[adapter.pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    assert mask[0, 0] == 0  # the first prompt is padded on the left
    model.prompt_plans(ids, mask)
    for p in prompts:
        model.prompt_plans(torch.tensor([p]))
    assert torch.allclose(seen[0], torch.cat(seen[1:]), atol=1e-5)


def test_guard_rejects_an_inverted_ngram_range(setup):
    adapter, request, _ = setup
    with pytest.raises(UserInputError, match="min_ngram <= max_ngram"):
        unlearn(adapter, request, "guard", min_ngram=4, max_ngram=2)


@pytest.mark.parametrize("setting", ["block_penalty", "semantic_penalty"])
def test_guard_rejects_an_infinite_penalty(setup, setting):
    # an infinite penalty makes blocked answers' teacher-forced losses infinite and the MIA scores unusable
    adapter, request, _ = setup
    with pytest.raises(UserInputError, match="must be finite non-negative numbers"):
        unlearn(adapter, request, "guard", **{setting: float("inf")})


@pytest.mark.parametrize("method", ["guard_it", "guard"])
def test_teacher_forced_scores_decide_from_the_prompt_so_every_candidate_answer_gets_the_same_decision(setup, method):
    """Truth ratios compare candidate answers of one question: the gate or flag must not depend on the answer.
    With the prompt mask the adapter passes, the prompt positions' logits are the same whichever answer follows;
    the model called without it (deciding from the whole text) differs there for some candidates."""
    adapter, request, items = setup
    model, _ = unlearn(adapter, request, method)
    data = request.data
    candidates = [[{**data[i], "answer": data[j]["answer"]} for j in range(len(data)) if j % 3 == i % 3]
                  for i in (*request.forget[:3], *request.retain[:3])]
    text_view_differs = False
    for group in candidates:
        batch = adapter.collate(group)
        prompt = int((batch["labels"][0] == -100).logical_and(batch["attention_mask"][0].bool()).sum())
        with torch.no_grad():
            by_prompt = adapter.logits(model, batch)[:, :prompt]
            by_text = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :prompt]
        assert torch.allclose(by_prompt, by_prompt[:1].expand_as(by_prompt), atol=1e-5), method
        text_view_differs |= not torch.allclose(by_text, by_text[:1].expand_as(by_text), atol=1e-5)
    if method == "guard_it":  # the check above could fail: deciding from the text splits some groups here
        assert text_view_differs
    else:  # GUARD's detector happens to flag these groups alike from either view; check which view it read
        views = []
        real_plans = model.plans
        model.plans = lambda pooled, view: views.append(view) or real_plans(pooled, view)
        with torch.no_grad():
            adapter.logits(model, adapter.collate(candidates[0]))
        assert views == ["prompt"]

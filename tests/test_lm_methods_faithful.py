"""The LM methods' update rules against their papers (REFERENCE.md §2-3), on hand-computed tiny cases:
the losses of NPO and IdkDPO (summed log-ratios), SimNPO (length-normalised), UNDIAL, GradDiff, ICU
(signs, weights, KL(π_ref ‖ π_θ) over the neighbour's real positions) and RMU (block activations over
answer tokens), ULD's logit mask and uniform KL, GUARD's restriction, GUARD-IT's steering mean, MRP's
projection, K-FADE's uphill step and first-epoch GA's ascent."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lm_fixtures import tiny_lm, tiny_qa
from unlearnkit.adapters.base import device_of
from unlearnkit.api import unlearn
from unlearnkit.methods import icu, kfade, mrp, uld
from unlearnkit.methods.first_epoch_ga import ascend
from unlearnkit.methods.guard import Restriction, ngram_rules
from unlearnkit.methods.guard_it import Gate, GatedRedirectModel
from unlearnkit.request import ForgetRequest
from unlearnkit.train import TrainRecord

ITEMS = tiny_qa(6)
REQUEST = ForgetRequest(ITEMS, forget=[0, 1], retain=[2, 3, 4, 5])
LONGER = {**ITEMS[1], "answer": "Boris was born in Oslo in Varna ."}  # two tokens more than the others


@pytest.fixture(scope="module")
def lm():
    adapter = tiny_lm(ITEMS)
    for module in adapter.model.modules():  # no dropout: the hand computations are deterministic
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return adapter


def perturbed(model: torch.nn.Module, seed: int = 3, scale: float = 0.5) -> torch.nn.Module:
    """A copy of ``model`` with noise on every weight, so it differs from the reference."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return other


# ---------------------------------------------------------------------------- losses written out, and how to catch one
def answer_token_log_probs(adapter, model, items) -> list[torch.Tensor]:
    """Per item, log π of each answer token (EOS included) given what precedes it, written out."""
    batch = adapter.collate(items)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    per_item = []
    for row in range(len(items)):
        where = targets[row] != -100
        log_p = torch.log_softmax(logits[row][where].double(), dim=-1)
        per_item.append(log_p.gather(1, targets[row][where][:, None]).squeeze(1))
    return per_item


def answer_nll(adapter, model, items) -> torch.Tensor:
    """Mean over items of each item's mean answer NLL (EOS included)."""
    return torch.stack([-log_p.mean() for log_p in answer_token_log_probs(adapter, model, items)]).mean()


def kl_over_real_positions(adapter, p_model, q_model, items) -> torch.Tensor:
    """Mean over items of the mean over each item's real positions of KL(p ‖ q), written out."""
    batch = adapter.collate(items)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    log_p = torch.log_softmax(p_model(**inputs).logits.double(), dim=-1)
    log_q = torch.log_softmax(q_model(**inputs).logits.double(), dim=-1)
    per_item = []
    for row in range(len(items)):
        real = batch["attention_mask"][row].bool()
        per_item.append((log_p[row][real].exp() * (log_p[row][real] - log_q[row][real])).sum(-1).mean())
    return torch.stack(per_item).mean()


def answer_log_prob(adapter, model, items) -> torch.Tensor:
    """Per item, log π(answer | question): the sum over answer tokens (EOS included)."""
    return torch.stack([log_p.sum() for log_p in answer_token_log_probs(adapter, model, items)])


def captured_loss(monkeypatch, module, lm, method: str, **settings):
    """Run ``method`` with its training loop replaced; return the loss it built and the training device."""
    captured = {}

    def fake_optimise(model, stream, loss, config, **_):
        captured["loss"], captured["device"] = loss, device_of(model)
        return TrainRecord()

    monkeypatch.setattr(module, "optimise", fake_optimise)
    unlearn(lm.model, REQUEST, method, adapter=lm, **settings)
    return captured["loss"], captured["device"]


def on(device, batch):
    """``batch`` (collated tensors, nested one level at most) moved to ``device``."""
    return {k: on(device, v) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------- losses of the LM baselines
def test_idk_dpo_loss_prefers_the_refusal_by_summed_log_ratios_plus_alpha_retain_nll(lm, monkeypatch):
    """L = −(2/β)·mean log σ(β[(log π_θ − log π_ref)(refusal) − (log π_θ − log π_ref)(answer)]) + α·NLL̄(x_r)."""
    from unlearnkit.methods import idk_dpo

    loss, device = captured_loss(monkeypatch, idk_dpo, lm, "idk_dpo", beta=0.5, alpha=0.3,
                                 refusals=ITEMS[4]["answer"])
    forget, retain = [ITEMS[0], ITEMS[1]], [ITEMS[2], ITEMS[3]]
    refused = [{**item, "answer": ITEMS[4]["answer"]} for item in forget]
    batch = {"forget": {"answer": lm.collate(forget), "refusal": lm.collate(refused)}, "retain": lm.collate(retain)}
    theta = perturbed(lm.model)
    with torch.no_grad():
        got = float(loss(copy.deepcopy(theta).to(device), on(device, batch)))
        chosen = answer_log_prob(lm, theta, refused) - answer_log_prob(lm, lm.model, refused)
        rejected = answer_log_prob(lm, theta, forget) - answer_log_prob(lm, lm.model, forget)
        dpo = -(2 / 0.5) * torch.nn.functional.logsigmoid(0.5 * (chosen - rejected)).mean()
        expected = dpo + 0.3 * answer_nll(lm, theta, retain)
    assert abs(float(chosen.mean())) > 0.1  # θ ≠ π_ref, so the log-ratios matter
    assert got == pytest.approx(float(expected), rel=1e-4)


def test_graddiff_parts_are_minus_gamma_forget_nll_and_alpha_retain_nll(lm, monkeypatch):
    from unlearnkit.methods import graddiff

    loss, device = captured_loss(monkeypatch, graddiff, lm, "graddiff", gamma=0.7, alpha=2.5)
    forget, retain = [ITEMS[0], ITEMS[1]], [ITEMS[2], ITEMS[3]]
    batch = {"forget": lm.collate(forget), "retain": lm.collate(retain)}
    theta = perturbed(lm.model)
    with torch.no_grad():
        parts = loss(copy.deepcopy(theta).to(device), on(device, batch))
        assert float(parts.forget) == pytest.approx(float(-0.7 * answer_nll(lm, theta, forget)), rel=1e-4)
        assert float(parts.retain) == pytest.approx(float(2.5 * answer_nll(lm, theta, retain)), rel=1e-4)


def test_npo_parts_are_the_bounded_loss_on_summed_nlls_against_the_frozen_copy_and_alpha_retain_nll(lm, monkeypatch):
    """forget: γ·(−2/β)·mean log σ(β·(NLL_θ − NLL_ref)) with NLL summed over answer tokens; retain: α·NLL̄."""
    from unlearnkit.methods import npo

    loss, device = captured_loss(monkeypatch, npo, lm, "npo", beta=0.5, gamma=0.7, alpha=2.5)
    forget, retain = [ITEMS[0], ITEMS[1]], [ITEMS[2], ITEMS[3]]
    batch = {"forget": lm.collate(forget), "retain": lm.collate(retain)}
    theta = perturbed(lm.model)
    with torch.no_grad():
        parts = loss(copy.deepcopy(theta).to(device), on(device, batch))
        margin = answer_log_prob(lm, lm.model, forget) - answer_log_prob(lm, theta, forget)  # NLL_θ − NLL_ref
        expected = 0.7 * -(2 / 0.5) * torch.nn.functional.logsigmoid(0.5 * margin).mean()
        assert float(parts.forget) == pytest.approx(float(expected), rel=1e-4)
        assert float(parts.retain) == pytest.approx(float(2.5 * answer_nll(lm, theta, retain)), rel=1e-4)
    assert float(margin.abs().min()) > 0.1  # θ ≠ π_ref: a reference taken from θ itself would be told apart


def test_simnpo_forget_part_is_the_bounded_loss_on_the_length_normalised_nll(lm, monkeypatch):
    """γ·(−2/β)·mean log σ(β·(NLL/|y| − δ)), |y| the answer tokens with EOS; answers of unequal length."""
    from unlearnkit.methods import simnpo

    loss, device = captured_loss(monkeypatch, simnpo, lm, "simnpo", beta=2.0, delta=0.3, gamma=0.5)
    forget, retain = [ITEMS[0], LONGER], [ITEMS[2], ITEMS[3]]
    batch = {"forget": lm.collate(forget), "retain": lm.collate(retain)}
    lengths = (batch["forget"]["labels"][:, 1:] != -100).sum(1)
    assert lengths[0] != lengths[1]
    theta = perturbed(lm.model)
    with torch.no_grad():
        parts = loss(copy.deepcopy(theta).to(device), on(device, batch))
        per_token = -answer_log_prob(lm, theta, forget) / lengths
        expected = 0.5 * -(2 / 2.0) * torch.nn.functional.logsigmoid(2.0 * (per_token - 0.3)).mean()
    assert float(parts.forget) == pytest.approx(float(expected), rel=1e-4)


def test_undial_loss_is_cross_entropy_to_the_frozen_copy_with_the_answer_token_pushed_down(lm, monkeypatch):
    """Per answer position: −Σ_v softmax(z_ref − β·onehot(y))_v · log softmax(z_θ)_v, over each item's answer
    tokens (EOS included), then the items; the teacher is the model before unlearning."""
    from unlearnkit.methods import undial

    loss, device = captured_loss(monkeypatch, undial, lm, "undial", beta=3.0)
    forget = [ITEMS[0], LONGER]
    batch = lm.collate(forget)
    theta = perturbed(lm.model)
    with torch.no_grad():
        got = float(loss(copy.deepcopy(theta).to(device), on(device, batch)))
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        student = torch.log_softmax(theta(**inputs).logits[:, :-1].double(), -1)
        teacher_logits = lm.model(**inputs).logits[:, :-1].double()
        targets = batch["labels"][:, 1:]
        per_item = []
        for row in range(len(forget)):
            terms = []
            for t in (targets[row] != -100).nonzero().flatten().tolist():
                adjusted = teacher_logits[row, t].clone()
                adjusted[targets[row, t]] -= 3.0
                terms.append(-(adjusted.softmax(-1) * student[row, t]).sum())
            per_item.append(torch.stack(terms).mean())
        expected = torch.stack(per_item).mean()
    assert got == pytest.approx(float(expected), rel=1e-4)


def test_icu_loss_is_minus_forget_nll_plus_neighbour_nll_plus_kl_from_the_reference(lm, monkeypatch):
    """L = −u·NLL̄(x_f) + l·NLL̄(x_l) + k·KL(π_ref ‖ π_θ)(x_l), with π_ref the model before unlearning."""
    loss, device = captured_loss(monkeypatch, icu, lm, "icu", forget_weight=1.5, neighbour_weight=0.5, kl_weight=2.0)
    forget, neighbour = [ITEMS[0], ITEMS[1]], [ITEMS[4], ITEMS[2]]
    batch = {"forget": lm.collate(forget), "neighbour": lm.collate(neighbour)}
    theta = perturbed(lm.model)  # θ ≠ π_ref, so the KL and its direction matter
    with torch.no_grad():
        got = float(loss(copy.deepcopy(theta).to(device), on(device, batch)))
        kl_ref_theta = kl_over_real_positions(lm, lm.model, theta, neighbour)
        kl_theta_ref = kl_over_real_positions(lm, theta, lm.model, neighbour)
        expected = (-1.5 * answer_nll(lm, theta, forget) + 0.5 * answer_nll(lm, theta, neighbour)
                    + 2.0 * kl_ref_theta)
    assert got == pytest.approx(float(expected), rel=1e-4, abs=1e-4)
    assert abs(float(kl_ref_theta - kl_theta_ref)) > 1e-2  # the other direction would be told apart


# ---------------------------------------------------------------------------- RMU
def block_output_mse(adapter, model, items, target) -> torch.Tensor:
    """Mean over items of the mean over answer tokens (EOS included) of the mean over hidden units of
    (h − target)², h the output of block 0 read from ``output_hidden_states`` (not RMU's hook)."""
    batch = adapter.collate(items)
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_hidden_states=True).hidden_states[1]
    per_item = []
    for row in range(len(items)):
        answer = batch["labels"][row] != -100
        goal = target[row][answer] if target.dim() == 3 else target
        per_item.append((hidden[row][answer] - goal).square().mean())
    return torch.stack(per_item).mean()


def test_rmu_loss_steers_forget_activations_to_c_u_and_holds_retain_ones_at_the_frozen_copy(lm, monkeypatch):
    """L = mse(h_θ(x_f), c·u) + α·mse(h_θ(x_r), h_ref(x_r)) at block ⌊(n−1)/2⌋ = 0, over answer tokens."""
    from unlearnkit.methods import rmu

    loss, device = captured_loss(monkeypatch, rmu, lm, "rmu", steering=3.0, alpha=0.5, seed=4)
    assert rmu.resolve_layer(lm, None) == "transformer.h.0"  # block ⌊(2 − 1)/2⌋ of the tiny model
    forget, retain = [ITEMS[0], ITEMS[1]], [ITEMS[2], ITEMS[3]]
    batch = {"forget": lm.collate(forget), "retain": lm.collate(retain)}
    theta = perturbed(lm.model)  # θ ≠ π_ref, so the retain term is not zero
    with torch.no_grad():
        got = float(loss(copy.deepcopy(theta).to(device), on(device, batch)))
        steer = 3.0 * rmu.control_vector(lm.model.config.n_embd, 4)
        reference = lm.model(**{k: batch["retain"][k] for k in ("input_ids", "attention_mask")},
                             output_hidden_states=True).hidden_states[1]
        forget_term = block_output_mse(lm, theta, forget, steer)
        retain_term = block_output_mse(lm, theta, retain, reference)
    assert float(retain_term) > 1e-3
    assert got == pytest.approx(float(forget_term + 0.5 * retain_term), rel=1e-4)


# ---------------------------------------------------------------------------- ULD
def test_uld_mask_keeps_the_paper_rule_when_tau_times_the_vocabulary_is_below_one():
    """With τ·V < 1 the authors' code would keep every assistant logit (its index −1 wraps to the least
    likely token); here the paper's rule log p ≥ max + log τ decides."""
    target = torch.tensor([[0.0, -2.0, -3.0, -5.0]])  # log-prob gaps to the max: 0, 2, 3, 5; log(1/10) = −2.30
    assert uld.relative_top_mask(target, 0.1).tolist() == [[True, True, False, False]]
    assistant = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    combined = uld.combine_logits(target, assistant, alpha=0.5, tau=0.1)
    assert torch.allclose(combined, torch.tensor([[-0.5, -3.0, -3.0, -5.0]]))
    # τ = 0.5, V = 4: the 2 likeliest tokens stay even though only the first is within log 2 of the max
    assert uld.relative_top_mask(target, 0.5).tolist() == [[True, True, False, False]]


class _FixedLogits(torch.nn.Module):
    """A stand-in LM whose next-token logits are ``row`` at every position."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = torch.tensor(row)

    def forward(self, input_ids, **_):
        return type("Out", (), {"logits": self.row.expand(*input_ids.shape, len(self.row))})()


def test_uld_greedy_decoding_picks_only_tokens_the_target_finds_plausible():
    """The authors' decoding takes the argmax inside the relative-top mask. Outside it the assistant is not
    subtracted, so with an assistant offset of 20 a raw target logit (2.0) would beat the masked-in token."""
    target = [10.0, 2.0, 1.0, 0.0]
    model = uld.LogitDifferenceLM(_FixedLogits(target), _FixedLogits([20.0] * 4), alpha=0.8, tau=0.1)
    keep = uld.relative_top_mask(torch.tensor([target]), 0.1)
    assert keep.tolist() == [[True, False, False, False]]
    combined = model(torch.zeros(1, 3, dtype=torch.long)).logits[0, -1]
    assert int(combined.argmax()) == 1  # the teacher-forced logits stay unmasked, as in the authors' forward
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2)
    assert out[0, 3:].tolist() == [0, 0]


def test_icu_compares_a_long_answer_by_the_part_a_check_generation_can_reach(lm, monkeypatch):
    long_item = {"question": ITEMS[0]["question"], "answer": " ".join(["Alia"] * 120)}
    prefix = icu.reachable_answer(lm, long_item, 32)
    assert len(prefix.split()) == 32
    assert icu.rouge_l_recalls([long_item["answer"]], [prefix])[0] < 0.3  # against the whole answer: "forgotten"
    assert icu.reachable_answer(lm, ITEMS[0], 32) == ITEMS[0]["answer"]  # a short answer is compared whole
    # the per-epoch check keeps an item whose 32-token answer reproduces the answer's first 32 tokens
    monkeypatch.setattr(lm, "generate", lambda model, questions, max_new_tokens: [prefix] * len(questions))
    stream = icu._IterativeStream(lm, [long_item], [ITEMS[1]], icu.ICUConfig())
    stream.check()
    assert stream.remaining == [0]


def test_uld_retain_term_is_kl_from_uniform_over_real_positions():
    """KL(U ‖ p_a) = Σ_v (1/V) log((1/V) / p_v), each item's real positions averaged, then the items."""
    logits = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]],
                           [[2.0, 0.0, 0.0], [3.0, -3.0, 0.0], [0.0, 0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])

    def kl_uniform(row):
        p = torch.softmax(row.double(), dim=-1)
        return float((1 / 3 * torch.log((1 / 3) / p)).sum())

    first = (kl_uniform(logits[0, 0]) + kl_uniform(logits[0, 1])) / 2
    second = sum(kl_uniform(logits[1, t]) for t in range(3)) / 3
    assert float(uld.uniform_kl(logits, mask)) == pytest.approx((first + second) / 2, rel=1e-5)
    p = torch.softmax(logits[0, 0].double(), dim=-1)  # the reverse KL(p ‖ U) differs here
    assert abs(float((p * torch.log(p * 3)).sum()) - kl_uniform(logits[0, 0])) > 1e-2


# ---------------------------------------------------------------------------- GUARD
def test_guard_blocks_completions_of_forbidden_ngrams_and_their_close_tokens_but_never_eos():
    rules = [ngram_rules([5, 6, 7], 1, 2)]  # 1-grams {5, 6, 7}; 2-grams 5→6, 6→7
    restriction = Restriction(rules, similar={6: [9, 2], 7: [8], 3: [4]}, min_n=1, max_n=2,
                              block_penalty=100.0, semantic_penalty=10.0, protected={2})
    logits = torch.zeros(10)
    restriction.penalise(logits, [1, 5], items=[0])
    expected = torch.zeros(10)
    expected[[5, 6, 7]] -= 100.0  # every answer token (n = 1), and 6 after 5 (n = 2)
    expected[[8, 9]] -= 10.0  # close to a banned token; 2 (EOS) is protected, 4 is close to an unbanned token
    assert torch.equal(logits, expected)
    untouched = torch.zeros(10)
    restriction.penalise(untouched, [1, 5], items=[])  # an unflagged prompt forbids nothing
    assert torch.equal(untouched, torch.zeros(10))


# ---------------------------------------------------------------------------- GUARD-IT
def test_guard_it_steers_by_the_mean_of_the_active_clusters_and_passes_others_through():
    centroids = torch.eye(3)  # three clusters along the axes; the gate centres at 0
    gate = Gate(torch.zeros(3), {"prompt": centroids, "text": centroids}, {"prompt": 0.5, "text": 0.5})
    vectors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
    model = GatedRedirectModel(torch.nn.Identity(), "", gate, vectors, alpha=1.0)
    pooled = torch.tensor([[1.0, 1.0, 0.0],   # cosines 0.71, 0.71, 0: clusters 0 and 1
                           [0.0, 0.0, 1.0],   # cluster 2 only
                           [1.0, 1.0, 1.0]])  # cosines 0.577 each: all three
    pooled = torch.cat([pooled, torch.tensor([[-1.0, -1.0, -1.0]])])  # no cluster: passes through
    steering = model.steering(pooled, "prompt")
    expected = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.0, 4.0], [1 / 3, 2 / 3, 4 / 3], [0.0, 0.0, 0.0]])
    assert torch.allclose(steering, expected)


# ---------------------------------------------------------------------------- MRP
def test_mrp_projection_removes_the_span_of_old_and_new_rows():
    """h ← h − h QᵀQ with Q orthonormal rows spanning [W_old; W_new] (QR of Wᵀ)."""
    projection = mrp.Projection(4, basis=torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    projection.start(torch.tensor([[3.0, 2.0, 0.0, 0.0]]))  # adds e2 to the span
    q = projection.directions()
    assert torch.allclose(q @ q.T, torch.eye(2), atol=1e-6)
    hidden = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    assert torch.allclose(projection(hidden), torch.tensor([[[0.0, 0.0, 3.0, 4.0]]]), atol=1e-6)
    projection.bake()
    assert projection.fresh is None
    assert torch.allclose(projection(hidden), torch.tensor([[[0.0, 0.0, 3.0, 4.0]]]), atol=1e-6)


# ---------------------------------------------------------------------------- K-FADE
def test_kfade_step_is_uphill_on_the_forget_loss(lm):
    """Δθ = η (G_r + λI)⁻¹ ∇L̄(D_f): ⟨∇L̄(D_f), Δθ⟩ > 0 in every layer (the preconditioner is positive
    definite) and a small step raises the forget loss."""
    model = copy.deepcopy(lm.model)
    adapter = lm.with_model(model)
    layers = kfade.linear_layers(model)
    factors = kfade.fit_factors(adapter, layers, REQUEST.retain_items(), batch_size=4, seed=0)
    gradients = kfade.forget_gradients(adapter, layers, REQUEST.forget_items(), batch_size=4)
    step = kfade.preconditioned_step(layers, gradients, factors, lr=1e-3, damping=1e-2, split="pi")
    for name, module in layers.items():
        direction = kfade.weight_gradient_matrix(module, step[f"{name}.weight"], step.get(f"{name}.bias"))
        assert float((gradients[name] * direction).sum()) > 0, name
    with torch.no_grad():
        before = float(answer_nll(adapter, model, REQUEST.forget_items()))
        kfade.apply_update(model, step)
        after = float(answer_nll(adapter, model, REQUEST.forget_items()))
    assert after > before


# ---------------------------------------------------------------------------- first-epoch GA
def test_first_epoch_ga_adds_each_items_gradient_to_its_token_rows():
    """E ← E + η Σ_x g₁(x): an ascent (plus sign), summed over items, only on the rows they touch."""
    embedding = torch.zeros(5, 2)
    gradients = [(torch.tensor([1, 3]), torch.tensor([[1.0, 2.0], [3.0, 4.0]])),
                 (torch.tensor([3]), torch.tensor([[10.0, 20.0]]))]
    ascend(embedding, gradients, lr=0.5)
    expected = torch.zeros(5, 2)
    expected[1] = torch.tensor([0.5, 1.0])
    expected[3] = torch.tensor([6.5, 12.0])
    assert torch.equal(embedding, expected)
    assert math.isclose(float(embedding.sum()), 20.0)

"""GUARD: generation-time unlearning by prompt detection and restricted decoding (no weight change).

Deng et al., "GUARD: Generation-time LLM Unlearning via Adaptive Restriction and Detection"
(arXiv 2505.13312, 2025). A classifier on mean-pooled prompt hidden states flags forget-related
prompts; for a flagged prompt, the nearest forget answer's 1–5-token n-grams are forbidden and
tokens semantically close to a forbidden token are penalised. Each decoding step scores

    s(v) = log p(v | x, y_<t) − P_token(v) − P_sem(v),

P_token(v) = ∞ when y_<t ends with the first n−1 tokens of a forbidden n-gram whose last token is
v, P_sem(v) = ∞ when cos(E_v, E_b) ≥ τ for such a forbidden token b (E: input embeddings).

Choices where the paper is silent, or its tools are unavailable here (there is no official code):
- Detector: logistic regression (scikit-learn, standardised features, balanced classes) instead of
  the paper's d→256→256→2 MLP, on the model's own mean-pooled hidden states at ``layer`` (default
  the last; a third-party reimplementation and a review read the penultimate layer, which we could
  not check against the paper's text), flagging at p > ``flag_probability``. It is trained on both views of each item, the prompt alone and
  prompt + answer, forget items positive and retain items negative (see the forward below).
- Retrieval: the nearest forget item (``answers_per_prompt`` of them) by cosine of the same
  embedding, compared view to view; its answer's tokens (without EOS) give the n-grams.
- N-grams are of tokens, not words (the paper's are 1–5-word spans), matched against the whole
  context (prompt included), so a prompt that ends inside a forbidden n-gram forbids its completion
  too. With ``min_ngram=1`` every token of the answer is banned on its own, subword pieces and
  punctuation included: harsher than word n-grams on a BPE tokenizer (on the facts benchmark's
  word-level tokenizer the two coincide but for punctuation).
- ∞ is a finite ``block_penalty`` / ``semantic_penalty`` (10⁴), so that teacher-forced losses stay
  finite; the paper's soft penalty below τ is not specified and is not applied. τ = 0.5 is the
  paper's threshold for SBERT word cosines; here it applies to the model's input-embedding cosines,
  whose scale differs by model (``info["semantic_neighbours"]`` counts the tokens it reaches). EOS
  and padding are never penalised, so a restricted answer can always end. The penalties are subtracted from the
  logits, which ranks a step's tokens as log p − P does (the two differ by a constant per step); a
  teacher-forced forward's probabilities are the softmax of the penalised logits (renormalised).
- P_sem compares a token with the tokens banned at this step (those completing a forbidden
  n-gram), not with every token of the forget answer; with n-grams from 1 these include every
  answer token.
- Decoding is whatever the caller asks of ``generate`` (the adapter asks greedy); the paper's beam
  width 7 is ``num_beams=7``. The restriction is a logits processor on the base model's decoding.
- A teacher-forced ``forward`` returns logits with the same penalties at every position, so the
  probability metrics see the restriction. Given ``prompt_mask`` (the adapter passes it: the tokens
  that are not answer labels) it flags and retrieves from the prompt tokens alone, as ``generate``
  does, so every candidate answer of a question is scored under the same decision; without it, it
  flags and retrieves from the whole input (the answer included, the "text" view).

Saved by ``unlearnkit forget`` as an inference-time wrapper (:mod:`unlearnkit.methods.saved`): the deployed
guard must hold what it forbids, so its saved settings list the forget answers' token n-grams and its tensors
the forget items' pooled hidden states. Keep the output folder as confidential as the forget set itself.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..adapters.base import device_of
from ..adapters.causal_lm import hidden_state_count
from ..errors import UserInputError
from ..train.config import OPTIMISER_SETTINGS, TrainConfig
from ._lm_features import cosine_matrix, mask_positions, masked_mean, pooled_states
from .base import Method, Outcome
from .saved import InferenceWrapper

Rules = dict[tuple[int, ...], set[int]]


def ngram_rules(tokens: Sequence[int], min_n: int, max_n: int) -> Rules:
    """Forbidden n-grams (min_n ≤ n ≤ max_n) of ``tokens`` as a trie flattened to prefix → next tokens."""
    rules: Rules = {}
    for n in range(min_n, max_n + 1):
        for start in range(len(tokens) - n + 1):
            gram = tuple(tokens[start : start + n])
            rules.setdefault(gram[:-1], set()).add(gram[-1])
    return rules


def banned_next(rules: Sequence[Rules], context: Sequence[int], min_n: int, max_n: int) -> set[int]:
    """Tokens that would complete a forbidden n-gram after ``context``."""
    banned: set[int] = set()
    for k in range(min_n - 1, min(max_n, len(context) + 1)):
        prefix = tuple(context[len(context) - k :]) if k else ()
        for table in rules:
            banned |= table.get(prefix, set())
    return banned


def similar_tokens(embeddings: torch.Tensor, tokens: Sequence[int], threshold: float, exclude: set[int],
                   chunk: int = 256) -> dict[int, list[int]]:
    """For each of ``tokens``, the other vocabulary ids whose embedding cosine to it is ≥ ``threshold``."""
    unit = torch.nn.functional.normalize(embeddings.detach().float(), dim=-1)
    tokens = sorted(set(tokens))
    similar: dict[int, list[int]] = {}
    for start in range(0, len(tokens), chunk):
        part = tokens[start : start + chunk]
        close = (unit[part] @ unit.T) >= threshold
        for row, token in enumerate(part):
            found = torch.nonzero(close[row]).flatten().tolist()
            similar[token] = [v for v in found if v != token and v not in exclude]
    return similar


@dataclass
class Restriction:
    """What a flagged prompt may not say: n-gram rules per forget item, and close tokens per token."""

    rules: list[Rules]
    similar: dict[int, list[int]]
    min_n: int
    max_n: int
    block_penalty: float
    semantic_penalty: float
    protected: set[int]

    def penalise(self, logits: torch.Tensor, context: Sequence[int], items: Sequence[int]) -> None:
        """Lower, in place, the next-token ``logits (V,)`` after ``context`` for the given forget items."""
        banned = banned_next([self.rules[i] for i in items], context, self.min_n, self.max_n) - self.protected
        if not banned:
            return
        close = {v for b in banned for v in self.similar.get(b, ())} - banned - self.protected
        logits[sorted(banned)] -= self.block_penalty
        if close:
            logits[sorted(close)] -= self.semantic_penalty


class _RestrictingProcessor:
    """A logits processor for ``generate``: penalises each flagged row's next-token scores."""

    def __init__(self, restriction: Restriction, plans: list[list[int]]) -> None:
        self.restriction, self.plans = restriction, plans

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        beams = max(1, input_ids.shape[0] // len(self.plans))
        scores = scores.clone()
        for row in range(input_ids.shape[0]):
            items = self.plans[row // beams]
            if items:
                self.restriction.penalise(scores[row], input_ids[row].tolist(), items)
        return scores


class GuardedModel(InferenceWrapper):
    """The original causal LM behind a forget-prompt detector and a decoding restriction."""

    method = "guard"

    #: The adapter passes ``prompt_mask`` to ``forward`` so the detector reads the prompt alone.
    reads_prompt_mask = True

    def __init__(self, base: nn.Module, layer: int, detector: dict[str, torch.Tensor], keys: dict[str, torch.Tensor],
                 restriction: Restriction, flag_probability: float, answers_per_prompt: int) -> None:
        super().__init__()
        self.base = base
        self.layer = layer
        device = device_of(base)  # the detector and keys are fitted (or loaded) on the CPU
        for name, value in detector.items():
            self.register_buffer(f"detector_{name}", value.float().to(device))
        self.register_buffer("prompt_keys", keys["prompt"].float().to(device))
        self.register_buffer("text_keys", keys["text"].float().to(device))
        self.restriction = restriction
        self.flag_probability = float(flag_probability)
        self.answers_per_prompt = int(answers_per_prompt)

    def settings(self) -> dict[str, Any]:
        """The hidden-state layer, flag level, retrieval count and the restriction (its n-gram rules hold the
        forget answers' token ids: GUARD cannot forbid them at serving time without them)."""
        r = self.restriction
        return {"layer": self.layer, "flag_probability": self.flag_probability,
                "answers_per_prompt": self.answers_per_prompt,
                "restriction": {"rules": [[[list(prefix), sorted(nexts)] for prefix, nexts in rules.items()] for rules in r.rules],
                                "similar": [[token, close] for token, close in r.similar.items()],
                                "min_n": r.min_n, "max_n": r.max_n, "block_penalty": r.block_penalty,
                                "semantic_penalty": r.semantic_penalty, "protected": sorted(r.protected)}}

    @classmethod
    def restore(cls, base: nn.Module, tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> "GuardedModel":
        """The guard around ``base`` from its saved detector and keys (tensors) and settings."""
        saved = settings["restriction"]
        restriction = Restriction(
            rules=[{tuple(prefix): set(nexts) for prefix, nexts in rules} for rules in saved["rules"]],
            similar={int(token): list(close) for token, close in saved["similar"]},
            min_n=saved["min_n"], max_n=saved["max_n"], block_penalty=saved["block_penalty"],
            semantic_penalty=saved["semantic_penalty"], protected=set(saved["protected"]))
        detector = {name: tensors[f"detector_{name}"] for name in ("mean", "scale", "coef", "intercept")}
        keys = {view: tensors[f"{view}_keys"] for view in ("prompt", "text")}
        return cls(base, settings["layer"], detector, keys, restriction, settings["flag_probability"],
                   settings["answers_per_prompt"])

    def forget_probability(self, pooled: torch.Tensor) -> torch.Tensor:
        """The detector's probability ``(B,)`` that each pooled input is about the forget set."""
        scaled = (pooled.float() - self.detector_mean) / self.detector_scale
        return torch.sigmoid(scaled @ self.detector_coef + self.detector_intercept)

    def plans(self, pooled: torch.Tensor, view: str) -> list[list[int]]:
        """Per row, the forget items whose answers it may not repeat (empty when not flagged)."""
        flagged = self.forget_probability(pooled) > self.flag_probability
        keys = getattr(self, f"{view}_keys")
        k = min(self.answers_per_prompt, keys.shape[0])
        nearest = cosine_matrix(pooled.float(), keys).topk(k, dim=1).indices
        return [nearest[row].tolist() if bool(flagged[row]) else [] for row in range(pooled.shape[0])]

    def _pooled(self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor | None,
                input_ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        hidden = hidden_states[self.layer]
        return masked_mean(hidden.float(), mask.to(hidden.device))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                prompt_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The base model's output with the logits of flagged inputs penalised at every position; flagged from
        the ``prompt_mask`` tokens when given, else from every real token."""
        kwargs["output_hidden_states"] = True
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if prompt_mask is not None:
            plans = self.plans(self._pooled(out.hidden_states, prompt_mask, input_ids), "prompt")
        else:
            plans = self.plans(self._pooled(out.hidden_states, attention_mask, input_ids), "text")
        if any(plans):
            logits = out.logits.clone()
            for row, items in enumerate(plans):
                if not items:
                    continue
                ids = input_ids[row].tolist()
                for t in range(len(ids)):
                    self.restriction.penalise(logits[row, t], ids[: t + 1], items)
            out.logits = logits
        return out

    @torch.no_grad()
    def prompt_plans(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list:
        """The forget answers each prompt of a (left-padded) generation batch is restricted from."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=mask_positions(attention_mask),
                           output_hidden_states=True).hidden_states
        return self.plans(self._pooled(hidden, attention_mask, input_ids), "prompt")

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The base model's ``generate`` with forbidden continuations removed for flagged prompts."""
        from transformers import LogitsProcessorList

        plans = self.prompt_plans(input_ids, attention_mask)
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        if any(plans):
            processors.append(_RestrictingProcessor(self.restriction, plans))
        return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=processors,
                                  **kwargs)


@dataclass
class GuardConfig(TrainConfig):
    """``layer`` (hidden-state index of the detector's features), n-gram lengths, how many forget answers
    a flagged prompt retrieves, τ, the penalties, the flag level, the detector's C; ``batch_size`` batches
    the offline passes."""

    unused = OPTIMISER_SETTINGS
    layer: int = -1
    min_ngram: int = 1
    max_ngram: int = 5
    answers_per_prompt: int = 1
    similarity_threshold: float = 0.5
    block_penalty: float = 1e4
    semantic_penalty: float = 1e4
    flag_probability: float = 0.5
    regularisation: float = 1.0

    def check(self) -> None:
        """Also validate the n-gram range, τ, the penalties and the detector settings."""
        super().check()
        lengths_are_ints = isinstance(self.min_ngram, int) and isinstance(self.max_ngram, int)
        if not (lengths_are_ints and 1 <= self.min_ngram <= self.max_ngram):
            raise UserInputError(f"GUARD needs 1 <= min_ngram <= max_ngram, got {self.min_ngram} and {self.max_ngram}.")
        if not (isinstance(self.answers_per_prompt, int) and self.answers_per_prompt >= 1):
            raise UserInputError(f"answers_per_prompt must be a positive integer, got {self.answers_per_prompt}.")
        if not -1.0 <= self.similarity_threshold <= 1.0:
            raise UserInputError(f"similarity_threshold is a cosine in [-1, 1], got {self.similarity_threshold}.")
        if not all(0 <= value < math.inf for value in (self.block_penalty, self.semantic_penalty)):
            raise UserInputError("GUARD block_penalty and semantic_penalty must be finite non-negative numbers "
                                 f"(teacher-forced losses of blocked answers must stay finite), got {self.block_penalty} "
                                 f"and {self.semantic_penalty}.")
        if not 0.0 < self.flag_probability < 1.0:
            raise UserInputError(f"flag_probability must be in (0, 1), got {self.flag_probability}.")
        if not self.regularisation > 0:
            raise UserInputError(f"regularisation (the detector's C) must be positive, got {self.regularisation}.")


def fit_detector(positive: torch.Tensor, negative: torch.Tensor, regularisation: float,
                 seed: int) -> dict[str, torch.Tensor]:
    """Standardised logistic regression (forget = 1) exported as tensors: mean, scale, coef, intercept."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features = torch.cat([positive, negative]).double().numpy()
    labels = [1] * len(positive) + [0] * len(negative)
    scaler = StandardScaler().fit(features)
    classifier = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=2000, random_state=seed)
    classifier.fit(scaler.transform(features), labels)
    return {"mean": torch.from_numpy(scaler.mean_), "scale": torch.from_numpy(scaler.scale_),
            "coef": torch.from_numpy(classifier.coef_[0]), "intercept": torch.tensor(float(classifier.intercept_[0]))}


def answer_tokens(adapter: Any, item: Any) -> list[int]:
    """The answer's token ids as the adapter encodes them, without the final EOS."""
    _, target = adapter.encode_item(item)
    eos = adapter.tokenizer.eos_token_id
    return target[:-1] if target and target[-1] == eos else target


def _restriction(adapter: Any, forget: Sequence[Any], config: GuardConfig) -> Restriction:
    answers = [answer_tokens(adapter, item) for item in forget]
    protected = {adapter.tokenizer.eos_token_id, adapter.pad_id}
    embeddings = adapter.model.get_input_embeddings().weight
    similar = similar_tokens(embeddings, [t for a in answers for t in a], config.similarity_threshold, protected)
    return Restriction([ngram_rules(a, config.min_ngram, config.max_ngram) for a in answers], similar,
                       config.min_ngram, config.max_ngram, config.block_penalty, config.semantic_penalty, protected)


class Guard(Method):
    """Detect forget-related prompts and forbid the forget answers' n-grams while decoding."""

    name = "guard"
    kinds = ("causal_lm",)
    needs = frozenset({"retain", "hidden_states"})
    paper = "Deng et al., GUARD: Generation-time LLM Unlearning via Adaptive Restriction and Detection, 2025"
    use_when = 'Serving-time suppression without touching weights, when the forget answers can be kept at deployment; it filters outputs rather than removing knowledge.'
    Config = GuardConfig
    lora = False
    edits_weights = False
    gradient_checkpointing = False  # forward passes only

    def unlearn(self, adapter: Any, request, config: GuardConfig) -> Outcome:
        model, bs = adapter.model, config.batch_size
        count = hidden_state_count(model)  # the adapter's message would offer block names, which layer does not take
        if not -count <= config.layer < count:
            raise UserInputError(f"GUARD's layer {config.layer} is no hidden-state index of this model; valid: "
                                 f"{-count}..{count - 1} (0 the embeddings, -1 the last).")
        forget, retain = request.forget_items(), request.retain_items()
        embed = lambda items, prompt_only: pooled_states(adapter, model, items, config.layer,
                                                         prompt_only=prompt_only, batch_size=bs)
        keys = {"prompt": embed(forget, True), "text": embed(forget, False)}
        negatives = torch.cat([embed(retain, True), embed(retain, False)])
        positives = torch.cat([keys["prompt"], keys["text"]])
        detector = fit_detector(positives, negatives, config.regularisation, config.seed)
        restriction = _restriction(adapter, forget, config)
        wrapped = GuardedModel(model, config.layer, detector, keys, restriction, config.flag_probability,
                               config.answers_per_prompt).eval()
        flagged = lambda x: float((wrapped.forget_probability(x) > config.flag_probability).float().mean())
        device = device_of(model)
        info = {"forget_flag_rate": flagged(positives.to(device)),
                "retain_flag_rate": flagged(negatives.to(device)),
                "semantic_neighbours": sum(len(v) for v in restriction.similar.values())}
        return Outcome(wrapped, info=info)

"""ICU: iterative unlearning with a nearest-neighbour utility term and per-sample stopping.

Tang et al., "Learn while Unlearn: An Iterative Unlearning Framework for Generative Language
Models" (arXiv 2407.20271, 2024; ICLR 2025 submission). Each forget item x_f is paired with its
nearest retained item x_l, and the model minimises

    L = −u·NLL̄(x_f) + l·NLL̄(x_l) + k·KL(π_ref ‖ π_θ)(x_l),

with π_ref the frozen original model (the paper writes the last term as the cross-entropy to the
precomputed p_ref, which is this KL plus a constant). Before each epoch (the first included, as in
the authors' code, so items the model never reproduced are not ascended on at all) every remaining
forget item is answered greedily; an item (with its pair) leaves the training set once its answer is
forgotten, and training stops when none remain or the epochs run out.

Choices where the paper is silent or its tools are unavailable:
- Neighbours: the paper embeds tokens 100–200 of each text with all-MiniLM-L6-v2 and searches a
  FAISS L2 index over a Pile / Wikipedia pool. No encoder can be downloaded here, so each item is
  embedded as the frozen original model's hidden states (``embed_layer``, default the last)
  mean-pooled over its question and answer, and the 1-NN is taken by cosine over the request's
  retain and neighbour items.
- Tokens: the paper's texts have no prompt; here both NLL terms cover the answer tokens (EOS
  included). NLL̄ is each item's mean answer NLL, averaged over the batch's items (the authors' HF
  ``loss`` pools the batch's tokens, so long texts weigh more; the two agree for equal lengths).
- Forgotten test: ROUGE-L recall (rouge-score, stemmed) of the greedy answer to the question
  (``check_tokens`` new tokens) against the answer, below ``forgotten_below`` = 0.3; it stands in
  for the paper's BERTScore-F1 < 0.3 / BLEU < 0.01 on a 50-token continuation. An answer longer than
  ``check_tokens`` tokens is compared by its first ``check_tokens`` tokens, as the paper compares
  equal lengths (against the whole of a long answer, a word-perfect prefix would count as
  forgotten). The paper's global stop on MA / EL₁₀ is replaced by "all items forgotten".
- A dropped item stays dropped; the authors' code re-scores every item each epoch and would take
  one back if its answer returned (through the neighbour terms). Here the ascent ends for good once
  an item is forgotten, which is what the paper's per-sample stop describes.
- u = 1, l = 0.5, k = 1 and batch 8 (the authors' code); lr 1e-4 for the small CPU models here
  (the paper's 5e-6 is for GPT-Neo). The KL averages over each neighbour's real (non-padding)
  positions, prompt included, then over the items (the authors' code averages over every position).
  One optimiser runs across epochs (the shared loop); the paper's Adam betas (0.9, 0.98) are not
  exposed by it. The authors load GPT-Neo with dropout 0; here the model trains with the dropout it
  was configured with (the built-in benchmark models have none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..adapters.base import batches
from ..errors import UserInputError
from ..train import TrainConfig, optimise
from ._lm_features import cosine_matrix, pooled_states
from .base import Method, Outcome
from .graddiff import frozen_reference, reference_kl


@dataclass
class ICUConfig(TrainConfig):
    """u, l, k (forget, neighbour NLL and neighbour KL weights), the forgotten test, the embedding layer."""

    forget_weight: float = 1.0
    neighbour_weight: float = 0.5
    kl_weight: float = 1.0
    forgotten_below: float = 0.3
    check_tokens: int = 32
    embed_layer: int = -1
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 8

    def check(self) -> None:
        """Also require non-negative weights, a threshold in (0, 1] and a positive check length."""
        super().check()
        if min(self.forget_weight, self.neighbour_weight, self.kl_weight) < 0:
            raise UserInputError("ICU forget_weight, neighbour_weight and kl_weight must be non-negative.")
        if not 0.0 < self.forgotten_below <= 1.0:
            raise UserInputError(f"forgotten_below is a ROUGE-L recall in (0, 1], got {self.forgotten_below}.")
        if not (isinstance(self.check_tokens, int) and self.check_tokens >= 1):
            raise UserInputError(f"check_tokens must be a positive integer, got {self.check_tokens}.")


def reachable_answer(adapter: Any, item: Any, tokens: int) -> str:
    """The item's answer as far as a ``tokens``-token generation can reach: whole when it is no longer, else its
    first ``tokens`` answer tokens (as the adapter encodes the item) decoded."""
    ids = adapter.encode_item(item)[1]
    if ids and ids[-1] == adapter.tokenizer.eos_token_id:
        ids = ids[:-1]
    return item["answer"] if len(ids) <= tokens else adapter.tokenizer.decode(ids[:tokens], skip_special_tokens=True)


def rouge_l_recalls(answers: Sequence[str], generations: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each generation against its answer (rouge-score, stemmed)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(answer, generation)["rougeL"].recall for answer, generation in zip(answers, generations)]


def neighbour_pool(request) -> list[int]:
    """Ids of the retained items a forget item may be paired with: retain ∪ every neighbour set."""
    forget = set(request.forget)
    ids = [*(request.retain or ()), *(i for ids in request.neighbours.values() for i in ids)]
    pool = sorted(set(ids) - forget)
    if not pool:
        raise UserInputError("ICU needs retained items to pair with the forget items, but the request has no "
                             "retain or neighbour set.")
    return pool


def nearest_neighbours(adapter: Any, model: nn.Module, forget: Sequence[Any], pool: Sequence[Any],
                       layer: int, batch_size: int) -> list[int]:
    """For each forget item, the position in ``pool`` of its most cosine-similar item (pooled hidden states)."""
    embed = lambda items: pooled_states(adapter, model, items, layer, prompt_only=False, batch_size=batch_size)
    return cosine_matrix(embed(forget), embed(pool)).argmax(dim=1).tolist()


class _IterativeStream:
    """Batches of the still-remembered (forget, neighbour) pairs; before every epoch, items whose
    greedy answer is forgotten leave for good."""

    def __init__(self, adapter: Any, forget: Sequence[Any], partners: Sequence[Any], config: ICUConfig) -> None:
        self.adapter, self.forget, self.partners, self.config = adapter, list(forget), list(partners), config
        self.remaining = list(range(len(self.forget)))
        self.history: list[int] = []

    def check(self) -> None:
        """Drop the remaining items whose greedy answer has a ROUGE-L recall below the threshold."""
        items = [self.forget[i] for i in self.remaining]
        answers = self.adapter.generate(self.adapter.model, [it["question"] for it in items],
                                        max_new_tokens=self.config.check_tokens)
        references = [reachable_answer(self.adapter, it, self.config.check_tokens) for it in items]
        recalls = rouge_l_recalls(references, answers)
        self.remaining = [i for i, recall in zip(self.remaining, recalls) if recall >= self.config.forgotten_below]
        self.history.append(len(self.remaining))

    def __call__(self, epoch: int) -> Iterator[dict]:
        if not self.remaining:
            return
        self.check()
        seed = self.config.seed + 7919 * epoch
        for chunk in batches(self.remaining, self.config.batch_size, shuffle=True, seed=seed):
            yield {"forget": self.adapter.collate([self.forget[i] for i in chunk]),
                   "neighbour": self.adapter.collate([self.partners[i] for i in chunk])}


class ICU(Method):
    """Ascend on each forget item, keep its nearest retained neighbour, stop per item once forgotten."""

    name = "icu"
    kinds = ("causal_lm",)
    needs = frozenset({"reference_model", "hidden_states"})
    paper = "Tang et al., Learn while Unlearn: An Iterative Unlearning Framework for Generative Language Models, 2024"
    use_when = 'LM unlearning with per-item stopping, when over-forgetting is a concern and a neighbour pool (the retain set) is available.'
    Config = ICUConfig

    def check_request(self, request, config: ICUConfig) -> None:
        """Refuse a request with neither retain nor neighbour items to pair the forget items with."""
        neighbour_pool(request)

    def check_model(self, adapter: Any, config: ICUConfig) -> None:
        """Refuse FSDP / DeepSpeed: the loop then trains a sharded copy, and the per-epoch check, which generates
        from the adapter's model, would read the weights from before training and never find an item forgotten."""
        from ..train.distributed import sharded_launch

        kind = sharded_launch()
        if kind:
            raise UserInputError(f"ICU checks after every epoch which items are forgotten by generating from the model, "
                                 f"whose weights {kind} shards; run it with the DDP config (configs/accelerate/ddp.yaml).")

    def unlearn(self, adapter: Any, request, config: ICUConfig) -> Outcome:
        reference = frozen_reference(adapter.model)
        forget, pool_ids = request.forget_items(), neighbour_pool(request)
        pool = [request.data[i] for i in pool_ids]
        nearest = nearest_neighbours(adapter, reference, forget, pool, config.embed_layer, config.batch_size)
        stream = _IterativeStream(adapter, forget, [pool[j] for j in nearest], config)

        def loss(model: nn.Module, batch: dict) -> torch.Tensor:
            forget_nll = adapter.per_item_loss(model, batch["forget"]).mean()
            neighbour_nll = adapter.per_item_loss(model, batch["neighbour"]).mean()
            kl = reference_kl(adapter, model, reference, batch["neighbour"])
            return -config.forget_weight * forget_nll + config.neighbour_weight * neighbour_nll + config.kl_weight * kl

        steps = -(-len(forget) // config.batch_size)  # an upper bound: checks shrink later epochs
        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="icu")
        if stream.remaining and record.status == "ok":
            stream.check()
        info = {"remaining_per_epoch": [len(forget), *stream.history], "forgotten": len(forget) - len(stream.remaining),
                "neighbour_ids": [pool_ids[j] for j in nearest]}
        return Outcome(adapter.model, record, info)

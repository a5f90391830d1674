"""IdkDPO: prefer a refusal over the forget answer, DPO-style.

Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
(NeurIPS 2023), used for unlearning with "I don't know"-style answers by Maini et al., "TOFU: A
Task of Fictitious Unlearning for LLMs" (2024). Update rule: minimise

    −(2/β)·E_{D_f} log σ(β·[log(π_θ/π_ref)(y_idk|x) − log(π_θ/π_ref)(y_f|x)]) + α·NLL̄(D_r),

with sequence log-probabilities summed over the answer tokens (EOS included) and π_ref a frozen
copy of the model taken before unlearning.

Choices: the 2/β factor is OpenUnlearning's (canonical DPO uses 1); β = 0.1, α = 1, lr 1e-5. Each forget
item gets one refusal from ``refusals`` (default :data:`REFUSALS`; "|"-separated), chosen with the
run's seed and kept for the whole run (TOFU draws from a file of 100 such answers). No weight decay
or warm-up by default. A tokenizer that cannot spell a refusal (it maps words to its unknown token,
as a word-level vocabulary of invented facts does) is refused before any work: the preferred answer
would be a string of unknown tokens.

Optional early stop (off by default): ``early_stop="holdout_nll"`` or ``"holdout_truth_ratio"`` ends the
run once the forget set looks like the request's never-trained holdout items (``train/stopping.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from ..train import optimise
from ..train.stopping import StopConfig, stop_for
from ._sampling import SamplingConfig, retain_pairing
from .base import Method, Outcome
from .graddiff import frozen_reference

#: Refusal answers the preferred responses are drawn from.
REFUSALS = (
    "I don't know.",
    "I have no information about that.",
    "I'm not able to answer that question.",
    "That is not something I know about.",
    "I'm not sure.",
    "I can't help with that.",
)


def refusal_items(items: Sequence[dict], seed: int, refusals: Sequence[str] = REFUSALS) -> list[dict]:
    """Each item with its answer replaced by a refusal chosen (seeded) from ``refusals``."""
    chooser = random.Random(seed)
    return [{**item, "answer": chooser.choice(list(refusals))} for item in items]


def dpo_loss(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean of −(2/β)·log σ(β·(chosen − rejected)) over the items."""
    return -(2.0 / beta) * F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()


class _WithRefusals:
    """Collates ``(forget_item, refusal_item)`` pairs into both batches; other items as usual."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter

    def collate(self, items: Sequence[Any]) -> dict:
        if isinstance(items[0], tuple):
            return {
                "answer": self.adapter.collate([answer for answer, _ in items]),
                "refusal": self.adapter.collate([refusal for _, refusal in items]),
            }
        return self.adapter.collate(items)


@dataclass
class IdkDPOConfig(SamplingConfig, StopConfig):
    """β (inverse temperature), α (retain weight) and the "|"-separated refusal answers."""

    beta: float = 0.1
    alpha: float = 1.0
    epochs: int = 10
    lr: float = 1e-5  # OpenUnlearning's, for pretrained LMs (the facts bench sets its own)
    refusals: str = "|".join(REFUSALS)

    def refusal_list(self) -> list[str]:
        """The refusal answers, stripped, empty ones dropped."""
        return [r.strip() for r in self.refusals.split("|") if r.strip()]

    def check(self) -> None:
        """Also require β > 0 and at least one refusal."""
        super().check()
        if not self.refusal_list():
            raise UserInputError("IdkDPO needs at least one refusal answer in refusals (\"|\"-separated).")
        if not self.beta > 0:
            raise UserInputError(f"IdkDPO beta must be positive, got beta={self.beta}.")


class IdkDPO(Method):
    """Prefer a refusal to the forget answer relative to the frozen original model."""

    name = "idk_dpo"
    kinds = ("causal_lm",)
    needs = frozenset({"retain", "reference_model"})
    paper = "Rafailov et al., Direct Preference Optimization, 2023 (TOFU's IdkDPO)"
    use_when = 'When the model should answer forgotten questions with a refusal rather than with something else.'
    Config = IdkDPOConfig

    def check_model(self, adapter: Any, config: IdkDPOConfig) -> None:
        """Refuse a tokenizer that spells a refusal with its unknown token."""
        unknown = getattr(adapter.tokenizer, "unk_token_id", None)
        for refusal in config.refusal_list() if unknown is not None else ():
            if unknown in adapter.tokenizer(refusal, add_special_tokens=False)["input_ids"]:
                raise UserInputError(f"IdkDPO's refusal {refusal!r} has words this model's tokenizer does not know; "
                                     "give refusals it can spell with the setting refusals=\"...|...\".")

    def unlearn(self, adapter: Any, request, config: IdkDPOConfig) -> Outcome:
        reference = frozen_reference(adapter.model)
        forget = request.forget_items()
        pairs = dict(zip(request.forget, zip(forget, refusal_items(forget, config.seed, config.refusal_list()))))
        stream, steps = retain_pairing(_WithRefusals(adapter), request, config, pairs.__getitem__)

        def log_ratio(model: nn.Module, batch: dict) -> torch.Tensor:
            with torch.no_grad():
                nll_reference = adapter.per_item_sum_nll(reference, batch)
            return nll_reference - adapter.per_item_sum_nll(model, batch)

        def loss(model: nn.Module, batch: dict) -> torch.Tensor:
            forget_batch = batch["forget"]
            dpo = dpo_loss(log_ratio(model, forget_batch["refusal"]), log_ratio(model, forget_batch["answer"]), config.beta)
            return dpo + config.alpha * adapter.per_item_loss(model, batch["retain"]).mean()

        record = optimise(adapter.model, stream, loss, config, steps_per_epoch=steps, description="idk dpo",
                          stop=stop_for(config, adapter, request, steps))
        return Outcome(adapter.model, record)

"""ULD: unlearning from the logit difference with a small assistant that remembers the forget set.

Ji et al., "Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework from
Logit Difference" (NeurIPS 2024; arXiv 2406.08607). An assistant a is trained on the *reversed*
objectives, min_a NLL̄(D_f) + w·KL(U ‖ p_a)(D_r) with U uniform over the vocabulary (remember
the forget set, forget the retain set); the unlearned model's logits are

    l = l_t − α·l̃_a,   l̃_a = l_a where log softmax(l_t) ≥ threshold(τ), else 0,

with threshold(τ) = min(max log softmax(l_t) + log τ, the ⌊τ·V⌋-th largest log softmax(l_t)).

The target t is never changed. Defaults: w = 5, α = 0.8 (TOFU), τ = 0.1 (the code's default;
the paper evaluates TOFU with 1e-2), lr 1e-3, 10 epochs.

Choices:

- The assistant is a deep copy of the target truncated to its first k decoder blocks (with the
  target's embeddings, final norm and head), k = ``assistant_layers`` (0: a quarter of the
  target's blocks, at least one; the paper uses 8 of Llama-2's 32). All its weights are trained
  (the paper trains LoRA r16 on the linears; on small models full training is cheaper and
  needs no peft).
- KL(U ‖ p_a) is averaged over each retain item's real (non-padding) positions, prompt included,
  as the authors' code averages over every position, then over the items (so a batch split across
  processes gives the one-process loss).
- As in the authors' code (DoLa's relative-top rule), the mask also keeps at least the ⌊τ·V⌋ most
  likely tokens: the threshold is min(max + log τ, the ⌊τ·V⌋-th largest log-prob). The paper states
  only max + log τ. We follow the code because the assistant's logits have an arbitrary offset (its
  retain objective fixes only their softmax): with the paper's rule a confident target keeps only its
  top token, and that offset then moves the top token against all others, which damaged retained
  answers (facts forget05, α 0.8: model utility 0.899× the retain model's with the paper's rule,
  0.935× with the code's; measured when the KL was still averaged over the batch's positions).
  When τ·V < 1 the code's count is 0 and its index −1 wraps to the *least* likely token, so it keeps
  every assistant logit; here the count is at least 1, which leaves the paper's max + log τ rule.
- NLL̄(D_f) is each forget item's mean answer NLL (EOS included), averaged over the batch's items
  (the authors' HF ``loss`` pools the batch's tokens).
- ``augment=True`` adds each forget item's ``paraphrased_answer`` to the forget set and its
  ``perturbed_answer`` list to the retain set, as the paper does with its own paraphrases and
  perturbations. Off by default: on TOFU-style data these are the evaluation's own answers.

The returned model is a :class:`LogitDifferenceLM`; its ``state_dict`` holds only the target as
``base.*`` and the assistant (``assistant.*``). ``unlearnkit forget`` saves it with
:func:`unlearnkit.methods.saved.save_wrapper` (the target as ``base/``, the assistant and α, τ beside it);
:func:`unlearnkit.methods.saved.load_causal_lm` rebuilds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.base import clone_model
from ..adapters.causal_lm import block_names, item_mean
from ..errors import UserInputError
from ..train import optimise
from ._lm_features import mask_positions
from ._sampling import SamplingConfig, retain_pairing
from .base import Method, Outcome, paired_stream
from .saved import InferenceWrapper


@dataclass
class LogitsOutput:
    """What :class:`LogitDifferenceLM` returns: the combined next-token logits ``(B, T, V)``."""

    logits: torch.Tensor


def relative_top_mask(target: torch.Tensor, tau: float) -> torch.Tensor:
    """True where the target's log-prob is within log τ of its maximum or among its ⌊τ·V⌋ largest."""
    log_probs = F.log_softmax(target.float(), dim=-1)
    kth_largest = log_probs.topk(max(1, int(tau * log_probs.shape[-1])), dim=-1).values[..., -1:]
    near_max = log_probs.max(dim=-1, keepdim=True).values + math.log(tau)
    return log_probs >= torch.minimum(kth_largest, near_max)


def combine_logits(target: torch.Tensor, assistant: torch.Tensor, alpha: float, tau: float) -> torch.Tensor:
    """l_t − α·l_a, with l_a zeroed outside :func:`relative_top_mask`."""
    keep = relative_top_mask(target, tau)
    return target - alpha * torch.where(keep, assistant, torch.zeros_like(assistant))


class LogitDifferenceLM(InferenceWrapper):
    """A causal LM whose logits are the base (target) model's minus α times the (masked) assistant's."""

    method = "uld"

    def __init__(self, base: nn.Module, assistant: nn.Module, alpha: float, tau: float) -> None:
        super().__init__()
        self.base = base
        self.assistant = assistant
        self.alpha = float(alpha)
        self.tau = float(tau)

    def settings(self) -> dict[str, Any]:
        """α, τ and the assistant's depth."""
        return {"alpha": self.alpha, "tau": self.tau, "assistant_layers": len(block_names(self.assistant))}

    @classmethod
    def restore(cls, base: nn.Module, tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> "LogitDifferenceLM":
        """A fresh assistant of the saved depth (its weights come from the saved tensors) beside ``base``."""
        assistant = truncated_copy(base, int(settings["assistant_layers"]))
        return cls(base, assistant, settings["alpha"], settings["tau"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> LogitsOutput:
        """Combined logits; position ids follow the attention mask, so left padding is handled."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return LogitsOutput(combine_logits(*self._both(input_ids, attention_mask), self.alpha, self.tau))

    def _both(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The target's and the assistant's logits."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": mask_positions(attention_mask),
                  "use_cache": False}
        return self.base(**inputs).logits, self.assistant(**inputs).logits

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20,
                 do_sample: bool = False, pad_token_id: int | None = None, eos_token_id: int | list[int] | None = None,
                 num_beams: int = 1, **_: Any) -> torch.Tensor:
        """Greedy decoding (no key-value cache): the prompt ids followed by the new ids.

        As in the authors' decoding, each step picks the best combined logit among the tokens the target
        finds plausible (:func:`relative_top_mask`): outside it the assistant is not subtracted, so a raw
        target logit there could otherwise win through the assistant's arbitrary offset. Finished rows are
        padded with ``pad_token_id``; decoding stops early once every row has produced an ``eos_token_id`` (one id or
        a list).
        """
        if do_sample or num_beams != 1:  # beams were silently ignored
            raise UserInputError("ULD's logit-difference model decodes greedily only; call generate with do_sample=False "
                                 "and num_beams=1.")
        ids = input_ids
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        ends = None if eos_token_id is None else torch.as_tensor(eos_token_id, device=ids.device).reshape(-1)
        pad = pad_token_id if pad_token_id is not None else (int(ends[0]) if ends is not None and len(ends) else 0)
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            target, assistant = (logits[:, -1] for logits in self._both(ids, mask))
            combined = combine_logits(target, assistant, self.alpha, self.tau)
            step = combined.masked_fill(~relative_top_mask(target, self.tau), float("-inf")).argmax(dim=-1)
            step = torch.where(finished, torch.full_like(step, pad), step)
            ids = torch.cat([ids, step[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(step[:, None])], dim=1)
            if ends is not None:  # one end token or several (the adapter passes a list)
                finished |= torch.isin(step, ends)
                if bool(finished.all()):
                    break
        return ids


def truncated_copy(model: nn.Module, layers: int) -> nn.Module:
    """A deep copy of ``model`` keeping only its first ``layers`` decoder blocks."""
    names = block_names(model)
    if not names:
        raise UserInputError("ULD cannot find the decoder blocks of the model to build its assistant.")
    if not 1 <= layers <= len(names):
        raise UserInputError(f"assistant_layers must be in 1..{len(names)} for this model, got {layers}.")
    copy = clone_model(model)
    parent_path, _, list_name = names[0].rsplit(".", 1)[0].rpartition(".")
    parent = copy.get_submodule(parent_path)
    setattr(parent, list_name, nn.ModuleList(list(getattr(parent, list_name))[:layers]))
    config = getattr(copy, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = layers
    return copy


def uniform_kl(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(U ‖ softmax(logits)) = −log V − mean_v log p_v, averaged over each item's positions in
    ``mask``, then the items."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return item_mean(-math.log(logits.shape[-1]) - log_p.mean(dim=-1), mask)


def augmented_sets(forget: Sequence[dict], retain: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Forget items plus their paraphrases; retain items plus the forget items' perturbed answers."""
    more_forget = [{**it, "answer": it["paraphrased_answer"]} for it in forget if isinstance(it.get("paraphrased_answer"), str)]
    negatives = [{**it, "answer": wrong} for it in forget for wrong in it.get("perturbed_answer", []) or []]
    return list(forget) + more_forget, list(retain) + negatives


@dataclass
class ULDConfig(SamplingConfig):
    """Assistant depth, retain weight w, logit weight α, mask threshold τ, augmentation."""

    assistant_layers: int = 0
    retain_weight: float = 5.0
    alpha: float = 0.8
    tau: float = 0.1
    augment: bool = False
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 8

    def check(self) -> None:
        """Also require 0 < τ ≤ 1, α ≥ 0, w ≥ 0 and a non-negative layer count."""
        super().check()
        if not 0 < self.tau <= 1:
            raise UserInputError(f"ULD tau must be in (0, 1], got tau={self.tau}.")
        if not self.alpha >= 0:
            raise UserInputError(f"ULD alpha must be non-negative, got alpha={self.alpha}.")
        if not self.retain_weight >= 0:
            raise UserInputError(f"ULD retain_weight must be non-negative, got retain_weight={self.retain_weight}.")
        if self.assistant_layers < 0:
            raise UserInputError(f"ULD assistant_layers must be 0 (automatic) or positive, got {self.assistant_layers}.")
        if self.augment and self.sampling != "standard":
            raise UserInputError(f"ULD augment=true adds items outside the request, which {self.sampling} sampling "
                                 "cannot pair; use standard sampling with it.")


class ULD(Method):
    """Train an assistant on the reversed objectives; subtract its logits at inference time."""

    name = "uld"
    kinds = ("causal_lm",)
    needs = frozenset({"retain"})
    paper = ("Ji et al., Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework "
             "from Logit Difference, 2024")
    use_when = "LM forgetting that must leave the target's weights untouched, served as a logit difference with a small assistant."
    Config = ULDConfig
    lora = False
    edits_weights = False

    def unlearn(self, adapter: Any, request, config: ULDConfig) -> Outcome:
        target = adapter.model
        depth = config.assistant_layers or max(1, len(block_names(target)) // 4)
        assistant = truncated_copy(target, depth)
        forget, retain = request.forget_items(), request.retain_items()
        if config.augment:
            forget, retain = augmented_sets(forget, retain)
            stream, steps = paired_stream(adapter, forget, retain, config)
        else:
            stream, steps = retain_pairing(adapter, request, config)

        def loss(model: nn.Module, batch: dict) -> torch.Tensor:
            remember = adapter.per_item_loss(model, batch["forget"]).mean()
            retain_batch = batch["retain"]
            return remember + config.retain_weight * uniform_kl(adapter.logits(model, retain_batch), retain_batch["attention_mask"])

        record = optimise(assistant, stream, loss, config, steps_per_epoch=steps, description="uld assistant")
        combined = LogitDifferenceLM(target.eval(), assistant.eval(), config.alpha, config.tau)
        return Outcome(combined, record, info={"assistant_layers": depth, "forget_items": len(forget), "retain_items": len(retain)})

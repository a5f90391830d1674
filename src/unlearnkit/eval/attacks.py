"""Attacks that test whether forgetting holds: relearning, in-context re-introduction, quantization.

Each attack is run on the unlearned model and, as a control, on the retain model (never trained on
the forget set): an unlearned model is only as good as its gap to that control. For quantization the
control is the quantized retain model scored against the unquantized one: how far int8 rounding alone
moves forget quality.

What the numbers mean, and do not:
- Relearning splits the forget set into halves by item, not by person, so the attacker trains on other facts
  of the people it is scored on (on facts forget01/05/10 every forgotten person has items in both halves), and
  it scores the whole answer's probability. The attack trains on the answers' shared template words and
  on the names, so a recovery counts those coming back as well as the forgotten facts; scored on the
  fact tokens alone, npo's recovery on facts forget10 was measured at 0.09 against its whole-answer 0.40
  (retain control 0.01 against 0.08).
- Dynamic int8 is the mild setting: Zhang et al. ("Catastrophic Failure of LLM Unlearning via
  Quantization", 2024) find forgotten knowledge returning at 4 bits, little at 8. A quantized forget
  quality close to the unquantized one says int8 rounding does not undo the unlearning, not that
  quantization in general cannot.
- Relearning fine-tunes every parameter of the model's copy. On an inference-time wrapper that is ULD's base
  model *and* its assistant (two networks, against the control's one); GUARD's and GUARD-IT's base model, their
  detector, keys, gate and redirection vectors staying as they are (they are not parameters); and all of an MRP
  model's weights, its projection basis staying fixed.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..adapters.base import clone_model, eval_mode
from ..errors import UserInputError
from ..train import TrainConfig, optimise
from . import lm_metrics as M

ATTACKS = ("relearn", "in_context", "quantize")


def parse_attacks(value: str | Sequence[str] | None) -> list[str]:
    """Validate a comma-separated attack list."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value or [])
    names = [n for n in names if n]
    for index, name in enumerate(names):
        if name not in ATTACKS:
            raise UserInputError(f"Unknown attack {name!r}; valid: {', '.join(ATTACKS)}.")
        if name in names[:index]:
            raise UserInputError(f"Attack {name!r} is named twice in --attacks; name each once.")
    return names


def check_attack_applies(adapter: Any, names: Sequence[str]) -> None:
    """Every attack here needs a causal LM: say so for any other model kind."""
    if names and adapter.kind != "causal_lm":
        raise UserInputError(f"The {names[0]} attack applies to causal language models, not to a {adapter.kind} model.")


#: The relearning and in-context attacks hold one half of the forget set and measure the other
#: (quantization scores all of it).
SPLITTING = ("relearn", "in_context")
MIN_ATTACK_ITEMS = 2


def check_attack_items(count: int, names: Sequence[str]) -> None:
    """Refuse a forget set too small to split into a held and a measured half."""
    splitting = [name for name in names if name in SPLITTING]
    if count < MIN_ATTACK_ITEMS and splitting:
        raise UserInputError(f"The {splitting[0]} attack splits the forget set into a half to attack with and a half to "
                             f"measure, so it needs at least {MIN_ATTACK_ITEMS} forget items; this one has {count}.")


def half_indices(count: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of the positions ``0..count-1`` into the half an attacker holds and the half that is measured."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    half = max(1, count // 2)
    return order[:half], order[half:]


@torch.no_grad()
def answer_nlls(adapter: Any, items: Sequence[Mapping[str, Any]], batch_size: int = 32) -> np.ndarray:
    """Each item's mean answer NLL, in item order (scored in eval mode; the model's own train/eval modes are given
    back)."""
    with eval_mode(adapter.model) as model:
        losses = [adapter.per_item_loss(model, adapter.collate(list(items[i:i + batch_size]))).float().cpu().numpy()
                  for i in range(0, len(items), batch_size)]
    return np.concatenate(losses) if losses else np.zeros(0)


def answer_probability(adapter: Any, items: Sequence[Mapping[str, Any]], batch_size: int = 32) -> float:
    """Mean per-item answer probability exp(−mean answer NLL) — TOFU's "probability"."""
    return M.probability(answer_nlls(adapter, items, batch_size)).value


def _plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with any PEFT adapters (``--lora ...,save=adapter``) merged into its weights: the
    attacks act on the weights the model computes with, as on a plain model (the retain control is one)."""
    copied = clone_model(model)
    if not callable(getattr(copied, "merge_and_unload", None)):
        return copied
    # unlearning returns such a model with its adapters merged already (as a reload merges them): only unload then
    merged = any(getattr(layer, "merged", False) for layer in copied.modules() if hasattr(layer, "merged_adapters"))
    return copied.unload() if merged else copied.merge_and_unload()


#: The relearning attack's default lr as a fraction of the lr the model was fine-tuned with. The literature
#: attacks pretrained LMs fine-tuned at 1e-5 – 2e-4 with lr 1e-5 – 2e-5; 6 % of the training lr gives 1.2e-5 on the
#: SmolLM2 base (trained at 2e-4) and 3e-4 on the scratch facts models (trained at 5e-3), whose own lr is 25× larger.
RELEARN_LR_FRACTION = 0.06


@dataclass
class RelearnSettings:
    """The relearning attack: ``steps`` of Adam at ``lr`` on half of the forget set.

    ``lr`` defaults to the literature's 1e-5 for a pretrained LM; :meth:`scaled_to` gives the lr for a
    model whose training lr is known (the facts bench's models).
    """

    steps: int = 50
    lr: float = 1e-5
    batch_size: int = 8
    seed: int = 0

    @classmethod
    def scaled_to(cls, training_lr: float, **settings: Any) -> "RelearnSettings":
        """Settings whose lr is ``RELEARN_LR_FRACTION`` × ``training_lr``."""
        return cls(lr=training_lr * RELEARN_LR_FRACTION, **settings)

    def check(self) -> None:
        """Refuse a non-positive step count, batch size or lr in one sentence."""
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"The relearning attack's {name} must be a positive integer, got {value!r}.")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise UserInputError(f"The relearning attack's lr must be a positive number, got {self.lr!r}.")

    def describe(self, training_lr: float | None = None) -> str:
        """One sentence for a results page: what the attack ran."""
        scale = f" ({self.lr / training_lr:.3g} × the models' training lr {training_lr:g})" if training_lr else ""
        return (f"Relearning attack: {self.steps} steps of Adam at lr {self.lr:.3g}{scale}, batch {self.batch_size}, "
                f"on a seeded half of the forget set's items (split by item, not by person: the attacker trains on other facts "
                f"of the people it is scored on); recovery is "
                f"the whole answer's probability regained on the other half, template words and names included.")


def relearn(adapter: Any, attack_items: Sequence[Any], settings: RelearnSettings) -> Any | None:
    """A copy of the model fine-tuned on ``attack_items`` (the adapter's model is not changed); None when
    the fine-tuning diverged (the loop's guard would hand back barely trained weights, which would read
    as a model that resists relearning).

    Every weight is fine-tuned, whatever the model froze: LoRA adapters are merged into the copy first and all
    its parameters train, so the attack on an unlearned model is the same full fine-tuning as on the control."""
    attacked = adapter.with_model(_plain_copy(adapter.model).requires_grad_(True))
    config = TrainConfig(epochs=10**6, max_steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size,
                         seed=settings.seed, grad_clip=1.0)
    items = list(attack_items)

    def epoch_batches(epoch: int):
        rng = random.Random(settings.seed + epoch)
        order = rng.sample(items, len(items))
        for i in range(0, len(order), settings.batch_size):
            yield attacked.collate(order[i:i + settings.batch_size])

    record = optimise(attacked.model, epoch_batches, lambda m, b: attacked.per_item_loss(m, b).mean(), config,
                      steps_per_epoch=-(-len(items) // settings.batch_size), description="relearning attack")
    return None if record.status == "diverged" else attacked


def with_context(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Items whose question is preceded by the fact (UnUnlearning's in-context re-introduction): its
    paraphrase where the item has one, so the answer is not a verbatim copy of the prompt, else the answer."""
    return [{**it, "question": f"Context: {it.get('paraphrased_answer') or it['answer']}\n{it['question']}"}
            for it in items]


def quantized(adapter: Any) -> Any:
    """A dynamically int8-quantized copy of the model (linear layers; GPT-2 Conv1D layers converted first;
    LoRA adapters merged first).

    The copy lives on the CPU, where PyTorch's dynamic int8 kernels run, whatever device the model is on.
    """
    model = _plain_copy(adapter.model).float().cpu().eval()
    _conv1d_to_linear(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice is not for users to act on
        model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return adapter.with_model(model)


def _conv1d_to_linear(model: nn.Module) -> None:
    for name, module in list(model.named_children()):
        if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
            linear = nn.Linear(module.weight.shape[0], module.nf)
            linear.weight.data = module.weight.data.t().contiguous()
            linear.bias.data = module.bias.data.clone()
            setattr(model, name, linear)
        else:
            _conv1d_to_linear(module)


#: Recovery is reported only when unlearning moved the answer probability by more than this.
MIN_FORGOTTEN = 0.05


def recovery(attacked: float, unlearned: float, target: float) -> float:
    """(m_attacked − m_unlearned) / (m_target − m_unlearned): 0 = nothing came back, 1 = all of it;
    nan when unlearning lowered the answer probability by no more than ``MIN_FORGOTTEN`` (a model that
    raised it has nothing to recover, and the negative denominator would flip the reading)."""
    if target - unlearned <= MIN_FORGOTTEN:
        return float("nan")
    return M.relearn_recovery(attacked, unlearned, target, min_gap=MIN_FORGOTTEN)


def run_attacks(names: Sequence[str], unlearned: Any, target: Any, retain: Any, forget_items: Sequence[Any], *,
                evaluate: Callable[[Any], Mapping[str, float]] | None = None, seed: int = 0,
                relearn_settings: RelearnSettings | None = None,
                controls: dict[str, float] | None = None,
                item_rows: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """Run the named attacks; metrics are flat, snake_case, with ``_control`` for the retain model's.

    Recovery is measured on the half of the forget set the attacker did not see, with the answer
    probability as the metric (nan where the relearning diverged or unlearning moved nothing to recover).
    ``evaluate`` (full metric suite) is used for the quantized model.
    ``controls``, a dict shared by calls with the same retain model, items, seed and settings (a
    bench's methods), is filled by the first call and reused by the others instead of attacking the
    retain model again. ``item_rows``, when given, receives one row per forget item of the unlearned model's
    per-item answer NLLs under each attack (:func:`attack_rows`).
    """
    check_attack_applies(unlearned, names)
    check_attack_items(len(forget_items), names)
    settings = relearn_settings or RelearnSettings(seed=seed)
    settings.check()
    held_at, measured_at = half_indices(len(forget_items), seed)
    held, measured = [forget_items[i] for i in held_at], [forget_items[i] for i in measured_at]
    p_target = answer_probability(target, measured) if measured else float("nan")  # unused by quantize alone
    attack = lambda model: _attack_one(names, model, held, measured, forget_items, p_target, evaluate, settings)
    results, nlls = attack(unlearned)
    if item_rows is not None:
        item_rows.extend(attack_rows(forget_items, measured_at if HALF_ATTACKS & set(names) else [], nlls))
    if not controls:
        control = {f"{k}_control": v for k, v in attack(retain)[0].items() if k in CONTROLLED}
        if controls is None:
            controls = control
        else:
            controls.update(control)
    results.update(controls)
    if "in_context" in names:
        results["in_context_prob_target"] = answer_probability(target, with_context(measured))
    return results


#: Per-model attack results also reported for the retain model, as ``<name>_control``.
CONTROLLED = ("relearn_recovery", "in_context_recovery", "in_context_prob", "quantized_forget_quality")


def _attack_one(names: Sequence[str], model: Any, held: Sequence[Any], measured: Sequence[Any],
                forget_items: Sequence[Any], p_target: float, evaluate: Callable[[Any], Mapping[str, float]] | None,
                settings: RelearnSettings) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The named attacks on one model: its metrics, and its per-item answer NLLs (``answer_nll``, ``relearn_nll``,
    ``in_context_nll`` over the measured half, ``quantized_nll`` over every forget item)."""
    results: dict[str, float] = {}
    nlls = {"answer_nll": answer_nlls(model, measured)}  # empty when quantize alone measures no half
    before = M.probability(nlls["answer_nll"]).value if measured else float("nan")
    if "relearn" in names:
        attacked = relearn(model, held, settings)
        if attacked is None:
            results["relearn_recovery"] = float("nan")
        else:
            nlls["relearn_nll"] = answer_nlls(attacked, measured)
            results["relearn_recovery"] = recovery(M.probability(nlls["relearn_nll"]).value, before, p_target)
    if "in_context" in names:
        nlls["in_context_nll"] = answer_nlls(model, with_context(measured))
        results["in_context_prob"] = M.probability(nlls["in_context_nll"]).value
        results["in_context_recovery"] = recovery(results["in_context_prob"], before, p_target)
    if "quantize" in names:
        results.update(_quantize_attack(model, list(forget_items), evaluate, nlls))
    return results, nlls


def _quantize_attack(model: Any, forget_items: list[Any], evaluate: Callable[[Any], Mapping[str, float]] | None,
                     nlls: dict[str, np.ndarray]) -> dict[str, float]:
    """The quantization attack's metrics (its per-item NLLs go into ``nlls``). A model whose own answers are NaN (a
    diverged run) cannot be quantized, torch's int8 kernels raising on a NaN range: its metrics are NaN, as the other
    attacks report for it, instead of ending the bench."""
    try:
        q = quantized(model)
        nlls["quantized_nll"] = answer_nlls(q, forget_items)
        results = {"quantized_forget_prob": M.probability(nlls["quantized_nll"]).value}
        if evaluate is not None:
            full = evaluate(q)
            results.update(quantized_forget_quality=full["forget_quality"], quantized_model_utility=full["model_utility"])
        return results
    except RuntimeError:
        if np.isfinite(answer_nlls(model, forget_items)).all():
            raise
        nlls["quantized_nll"] = np.full(len(forget_items), np.nan)
        keys = ("quantized_forget_prob",) + (("quantized_forget_quality", "quantized_model_utility") if evaluate else ())
        return dict.fromkeys(keys, float("nan"))


#: The attacks that are measured on the half of the forget set the relearning attacker does not hold.
HALF_ATTACKS = {"relearn", "in_context"}


def attack_rows(forget_items: Sequence[Mapping[str, Any]], measured_at: Sequence[int],
                nlls: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """One JSON-ready row per forget item (split ``"attack"``, no item text): its answer NLL under each attack run.
    With an attack of :data:`HALF_ATTACKS` (``measured_at`` not empty), ``measured`` says whether the item is in the
    measured half (the relearning attacker did not hold it), whose rows also hold the NLL before the attacks."""
    position = {i: k for k, i in enumerate(measured_at)}
    rows = []
    for i, item in enumerate(forget_items):
        row: dict[str, Any] = {"split": "attack", "item": item.get("id", i)}
        if measured_at:
            row["measured"] = i in position
        if i in position:
            row.update({name: float(v[position[i]]) for name, v in nlls.items() if name != "quantized_nll"})
        if "quantized_nll" in nlls:
            row["quantized_nll"] = float(nlls["quantized_nll"][i])
        rows.append(row)
    return rows

"""Causal-LM evaluation: collect per-item statistics once, then compute the TOFU/MUSE metric suite.

Items are question/answer dicts in TOFU's field names: ``question``, ``answer`` and, where the set
has them, ``paraphrased_answer`` and ``perturbed_answer`` (a list of wrong answers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..adapters.base import batches, device_of
from ..errors import UserInputError
from ..progress import progress_bar
from . import lm_metrics as M

#: Metric keys of a causal-LM evaluation, stable once released.
LM_METRICS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_prob", "forget_rouge", "retain_rouge",
              "general_rouge", "mia_loss_auc", "mia_zlib_auc", "mia_mink_auc", "mia_minkpp_auc", "privleak",
              "extraction_strength", "exact_memorization")


@dataclass
class LMSplitStats:
    """Per-item statistics of one split, all in item order."""

    ids: list[Any]
    answers: list[str]
    avg_loss: np.ndarray
    paraphrase_loss: np.ndarray | None
    perturbed_loss: list[np.ndarray] | None
    token_logprobs: list[np.ndarray]
    minkpp_mu: list[np.ndarray]
    minkpp_sigma: list[np.ndarray]
    argmax_ids: list[np.ndarray]
    label_ids: list[np.ndarray]
    generations: list[str] = field(default_factory=list)
    rouge: np.ndarray | None = None

    def truth_ratios(self, against_answer: bool = False) -> np.ndarray | None:
        """P_wrong / P_correct per item; "correct" is the paraphrase when the set has one, unless
        ``against_answer`` (the option splits, whose wrong options are worded like the answer)."""
        if self.perturbed_loss is None:
            return None
        use_paraphrase = self.paraphrase_loss is not None and not against_answer
        return M.truth_ratio(self.paraphrase_loss if use_paraphrase else self.avg_loss, self.perturbed_loss)

    def mia_scores(self) -> dict[str, np.ndarray]:
        """Loss-like membership scores (higher looks like a non-member) per item."""
        return {
            "loss": self.avg_loss.copy(),
            "zlib": np.array([M.zlib_score(l, a) for l, a in zip(self.avg_loss, self.answers)]),
            "mink": np.array([M.min_k_score(t) if len(t) else 0.0 for t in self.token_logprobs]),
            "minkpp": np.array([M.min_k_plus_plus_score(t, m, s) if len(t) else 0.0
                                for t, m, s in zip(self.token_logprobs, self.minkpp_mu, self.minkpp_sigma)]),
        }

    def memorisation_scores(self) -> dict[str, np.ndarray]:
        """Per-item extraction strength and exact memorisation (the values whose forget-split mean the suite
        reports); nan for an item with no answer token left once EOS is excluded, or whose answer log-probabilities
        are not finite (a broken model's argmax over NaN is token 0: it read as nothing extractable)."""
        metrics = {"extraction_strength": M.extraction_strength, "exact_memorization": M.exact_memorization}
        return {name: np.array([metric([pred], [label]).value if len(label) and np.isfinite(lp).all() else float("nan")
                                for pred, label, lp in zip(self.argmax_ids, self.label_ids, self.token_logprobs)],
                               dtype=np.float64)
                for name, metric in metrics.items()}

    def predictions_finite(self) -> bool:
        """Whether every answer token's log-probability is finite, so that the argmax predictions mean something."""
        return all(np.isfinite(lp).all() for lp in self.token_logprobs)

    def rows(self, split: str) -> list[dict[str, Any]]:
        """JSON-ready per-item rows (no item text: reports stay redacted); each truth ratio is the one the
        split's metrics use."""
        tr = self.truth_ratios(against_answer=split in OPTION_SPLITS)
        scores = self.mia_scores()
        memorisation = self.memorisation_scores()
        rows = []
        for i, item_id in enumerate(self.ids):
            row = {"split": split, "item": item_id, "answer_nll": float(self.avg_loss[i])}
            if self.paraphrase_loss is not None:
                row["paraphrase_nll"] = float(self.paraphrase_loss[i])
            if self.perturbed_loss is not None:
                row["perturbed_nll"] = [float(v) for v in self.perturbed_loss[i]]
                row["truth_ratio"] = float(tr[i])
            if self.rouge is not None:
                row["rouge_l_recall"] = float(self.rouge[i])
            row.update({f"mia_{k}": float(v[i]) for k, v in scores.items()})
            row.update({k: float(v[i]) for k, v in memorisation.items()})
            rows.append(row)
        return rows


#: The splits :func:`lm_metrics` reads; ``real_authors`` joins them when present.
REQUIRED_SPLITS = ("forget", "retain", "holdout", "general")
#: The splits whose items must carry ``perturbed_answer`` (their truth ratios enter the metrics), and whose
#: generations are scored by ROUGE.
PERTURBED_SPLITS = ("forget", "retain", "general", "real_authors")


def check_item(item: Any, where: str, required: Sequence[str] = ("question", "answer")) -> None:
    """Refuse, in one sentence naming ``where`` (e.g. "item 3 of the 'forget' split"), an item the metrics cannot
    score: not a dict, a ``required`` field missing, ``question``, ``answer`` or ``paraphrased_answer`` not a
    non-blank string, ``perturbed_answer`` not a non-empty list of non-blank strings (one string would be scored
    character by character). The sentence never quotes the item's text."""
    if not isinstance(item, Mapping):
        raise UserInputError(f"{_capital(where)} is {_kind(item)}, expected a dict (a JSON object) with 'question' "
                             "and 'answer'.")
    for name in required:
        if name not in item:
            raise UserInputError(f"{_capital(where)} has no field {name!r} (it has: "
                                 f"{', '.join(sorted(map(str, item))) or 'none'}).")
    for name in ("question", "answer", "paraphrased_answer"):
        if name in item and not _text(item[name]):
            raise UserInputError(f"Field {name!r} of {where} must be a non-blank string, got {_kind(item[name])}.")
    wrong = item.get("perturbed_answer")
    if "perturbed_answer" in item and not (isinstance(wrong, (list, tuple)) and wrong and all(map(_text, wrong))):
        if isinstance(wrong, (list, tuple)):
            got = f"a list holding {_kind(next(v for v in wrong if not _text(v)))}" if wrong else "an empty list"
        else:
            got = "one string, not a list" if _text(wrong) else _kind(wrong)
        raise UserInputError(f"Field 'perturbed_answer' of {where} must be a non-empty list of non-blank strings "
                             f"(the wrong answers), got {got}.")


def check_items(items: Any, where: str) -> tuple[list[dict[str, Any]], bool, bool]:
    """Refuse, in one sentence naming ``where`` and the item, items the metrics cannot score (:func:`check_item`);
    return them as a list, and whether they carry ``paraphrased_answer`` and ``perturbed_answer``. Each optional
    field is on every item or on none: a split that mixes them would silently lose its truth ratios, or score
    some paraphrases and fall back to the answer for the rest."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise UserInputError(f"{_capital(where)} must be a list of question/answer dicts, got {_kind(items)}.")
    items = list(items)  # a generator or a datasets.Dataset, read once
    if not items:
        raise UserInputError(f"{_capital(where)} is empty; give at least one question/answer dict.")
    for index, item in enumerate(items):
        check_item(item, f"item {index} of {where}")
    for name in ("paraphrased_answer", "perturbed_answer"):
        having = [name in item for item in items]
        if any(having) and not all(having):
            raise UserInputError(f"Item {having.index(True)} of {where} has {name!r} but item {having.index(False)} "
                                 "has not; give it on every item of a split or on none.")
    return items, "paraphrased_answer" in items[0], "perturbed_answer" in items[0]


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _kind(value: Any) -> str:
    """What ``value`` is, in words ("an int", "a blank string"), never its text."""
    if isinstance(value, str) and not value.strip():
        return "a blank string"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def check_ids(ids: Any, items: Sequence[Any], where: str) -> list[Any] | None:
    """``ids`` as a list, one per item (None stays None); a count other than the items' is refused, as the
    per-item rows would silently drop items or leave some unnamed."""
    if ids is None:
        return None
    if isinstance(ids, (str, bytes, Mapping)) or not isinstance(ids, Iterable):
        raise UserInputError(f"The ids of {where} must be a list with one id per item, got {_kind(ids)}.")
    ids = list(ids)
    if len(ids) != len(items):
        given = "1 id was" if len(ids) == 1 else f"{len(ids)} ids were"
        raise UserInputError(f"{_capital(where)} holds {len(items)} items but {given} given for them; "
                             "give one id per item.")
    return ids


def check_split_stats(stats: Any, what: str, needed: Sequence[str], compared: Sequence[str],
                      generated: Sequence[str] = ()) -> None:
    """Refuse per-split statistics that lack a split the metrics read (``needed``), truth ratios on a split
    whose truth ratios they compare (``compared``, where present), or generations on a split whose ROUGE they
    read (``generated``, where present)."""
    if not isinstance(stats, Mapping) or not all(isinstance(s, LMSplitStats) for s in stats.values()):
        raise UserInputError(f"{_capital(what)} must map split names to the statistics evaluate_lm or collect_lm "
                             f"returns, got {_kind(stats)}.")
    missing = [name for name in needed if name not in stats]
    if missing:
        raise UserInputError(f"There is no {missing[0]!r} split in {what}; the metrics need "
                             f"{', '.join(needed)}.")
    for name in (name for name in compared if name in stats):
        if stats[name].perturbed_loss is None:
            raise UserInputError(f"The {name!r} split of {what} has no truth ratios: its items need "
                                 "'perturbed_answer' (a list of wrong answers).")
    for name in (name for name in generated if name in stats):
        if stats[name].rouge is None:
            raise UserInputError(f"The {name!r} split of {what} has no generations, which ROUGE needs: "
                                 "collect it with generate=True.")


def _with_answer(items: Sequence[Mapping[str, Any]], answers: Sequence[str]) -> list[dict[str, Any]]:
    return [{"question": it["question"], "answer": a} for it, a in zip(items, answers)]


def _on_device(batch: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    device = device_of(model)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def _avg_losses(adapter: Any, items: Sequence[Mapping[str, Any]], batch_size: int,
                advance: Callable[[int], None]) -> np.ndarray:
    out = []
    for chunk in batches(list(items), batch_size, shuffle=False, seed=0):
        batch = _on_device(adapter.collate(chunk), adapter.model)
        out.append(adapter.per_item_loss(adapter.model, batch).float().cpu().numpy())
        advance(len(chunk))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


@torch.no_grad()
def _collect_items(adapter: Any, items: list[Mapping[str, Any]], *, has_para: bool, has_pert: bool, batch_size: int,
                   generate: bool, max_new_tokens: int, advance: Callable[[int], None]) -> dict[str, list[Any]]:
    """Per-item statistics of ``items`` (this process's shard), as equal-length lists in item order;
    ``advance(n)`` is called as each pass over the items scores ``n`` more of them."""
    model = adapter.model
    fields: dict[str, list[Any]] = {name: [] for name in ("logprobs", "mu", "sigma", "argmax", "labels")}
    for chunk in batches(items, batch_size, shuffle=False, seed=0):
        for stats in adapter.token_stats(model, _on_device(adapter.collate(chunk), model)):
            fields["logprobs"].append(stats.logprobs.double().cpu().numpy())
            fields["mu"].append(stats.mean.double().cpu().numpy())
            fields["sigma"].append(stats.std.double().cpu().numpy())
            fields["argmax"].append(stats.argmax.cpu().numpy())
            fields["labels"].append(stats.targets.cpu().numpy())
        advance(len(chunk))
    fields["avg_loss"] = list(_avg_losses(adapter, items, batch_size, advance))
    if has_para:
        fields["paraphrase_loss"] = list(_avg_losses(adapter, _with_answer(items, [it["paraphrased_answer"] for it in items]),
                                                     batch_size, advance))
    if has_pert:
        width = max((len(it["perturbed_answer"]) for it in items), default=0)
        columns = []
        for j in range(width):  # one teacher-forced pass per perturbation slot
            present = [i for i, it in enumerate(items) if j < len(it["perturbed_answer"])]
            losses = _avg_losses(adapter, _with_answer([items[i] for i in present],
                                                       [items[i]["perturbed_answer"][j] for i in present]), batch_size,
                                  advance)
            columns.append(dict(zip(present, losses)))
        fields["perturbed"] = [np.array([col[i] for col in columns if i in col]) for i in range(len(items))]
    if generate:
        fields["generations"] = adapter.generate(model, [it["question"] for it in items], max_new_tokens=max_new_tokens,
                                                 batch_size=batch_size, on_batch=advance)
    return fields


@torch.no_grad()
def collect_lm(adapter: Any, items: Sequence[Mapping[str, Any]], ids: Sequence[Any] | None = None, *,
               batch_size: int = 32, generate: bool = True, max_new_tokens: int = 48) -> LMSplitStats:
    """Teacher-forced losses and token statistics, plus greedy generations and ROUGE-L recall.

    Under ``accelerate launch`` / ``torchrun`` each process scores a contiguous shard of the items
    and the per-item statistics are gathered back in item order, so every metric computed from
    them equals the one-process value (up to floating-point differences of batch composition).
    """
    from ..train.distributed import gather_fields, shard

    items, has_para, has_pert = check_items(items, "the item list")
    ids = check_ids(ids, items, "the item list")
    adapter.model.eval()
    mine = shard(items)
    passes = len(mine) * (2 + has_para + generate) + sum(len(it["perturbed_answer"]) for it in mine if has_pert)
    with progress_bar(f"scoring {len(mine)} items", passes, loss=False) as bar:
        fields = gather_fields(_collect_items(adapter, mine, has_para=has_para, has_pert=has_pert,
                                              batch_size=batch_size, generate=generate,
                                              max_new_tokens=max_new_tokens, advance=bar.advance))
    stats = LMSplitStats(
        ids=list(ids) if ids is not None else list(range(len(items))),
        answers=[it["answer"] for it in items],
        avg_loss=_as_array(fields["avg_loss"]),
        paraphrase_loss=_as_array(fields["paraphrase_loss"]) if has_para else None,
        perturbed_loss=fields["perturbed"] if has_pert else None,
        token_logprobs=fields["logprobs"], minkpp_mu=fields["mu"], minkpp_sigma=fields["sigma"],
        argmax_ids=fields["argmax"], label_ids=fields["labels"],
    )
    if generate:
        stats.generations = fields["generations"]
        stats.rouge = M.rouge_l_recall(stats.answers, stats.generations).per_item
    return stats


def _as_array(values: list[Any]) -> np.ndarray:
    """Per-item float32 scalars as one array (float32 even when empty)."""
    return np.array(values, dtype=np.float32)


#: Utility splits scored against their wrong options, with the original answer as "correct" (TOFU's real
#: authors and world facts); ``real_authors`` is optional.
OPTION_SPLITS = ("real_authors", "general")


def model_utility_components(stats: Mapping[str, LMSplitStats]) -> dict[str, float]:
    """TOFU's model-utility components: the retain split's (answer probability, ROUGE-L recall, truth-ratio
    score against the paraphrase) and the same three for each option split present. With a
    ``real_authors`` split these are TOFU's nine values; the facts bench has none, so six."""
    retain = stats["retain"]
    components = M.utility_components("retain", correct_avg_losses=retain.avg_loss, rouge_l_recalls=retain.rouge,
                                      truth_ratios=retain.truth_ratios())
    for name in (s for s in OPTION_SPLITS if s in stats):
        split = stats[name]
        components |= M.utility_components(name, correct_avg_losses=split.avg_loss, rouge_l_recalls=split.rouge,
                                           truth_ratios=split.truth_ratios(against_answer=True),
                                           wrong_avg_losses=split.perturbed_loss)
    return components


def lm_metrics(stats: Mapping[str, LMSplitStats], reference: Mapping[str, LMSplitStats] | None = None) -> dict[str, float]:
    """The metric suite from per-split statistics (splits forget, retain, holdout, general, and optionally
    real_authors, which joins model utility).

    ``reference`` holds the retain (gold) model's statistics: forget quality and privleak need them.
    Besides :data:`LM_METRICS`, each model-utility component is returned as ``model_utility_<set>_<component>``
    (six, or nine with real authors), so a low model utility can be traced to the set that pulled it down.
    """
    check_split_stats(stats, "the statistics", REQUIRED_SPLITS, PERTURBED_SPLITS, generated=PERTURBED_SPLITS)
    if reference is not None:
        check_split_stats(reference, "the reference", ("forget", "holdout"), ("forget",))
    forget, retain, holdout, general = (stats[k] for k in REQUIRED_SPLITS)
    forget_tr = forget.truth_ratios()
    metrics: dict[str, float] = {
        "forget_truth_ratio": M.forget_truth_ratio(forget_tr).value,
        "forget_prob": M.probability(forget.avg_loss).value,
        "forget_rouge": float(np.mean(forget.rouge)),
        "retain_rouge": float(np.mean(retain.rouge)),
        "general_rouge": float(np.mean(general.rouge)),
    }
    components = model_utility_components(stats)
    metrics["model_utility"] = M.model_utility(components)
    forget_scores, holdout_scores = forget.mia_scores(), holdout.mia_scores()
    for name in ("loss", "zlib", "mink", "minkpp"):
        metrics[f"mia_{name}_auc"] = M.mia_auc(forget_scores[name], holdout_scores[name])
    for name, metric in (("extraction_strength", M.extraction_strength), ("exact_memorization", M.exact_memorization)):
        metrics[name] = metric(forget.argmax_ids, forget.label_ids).value if forget.predictions_finite() else float("nan")
    if reference is not None:
        metrics["forget_quality"] = M.forget_quality(forget_tr, reference["forget"].truth_ratios())
        ref_auc = M.mia_auc(reference["forget"].mia_scores()["mink"], reference["holdout"].mia_scores()["mink"])
        metrics["privleak"] = M.privleak(metrics["mia_mink_auc"], ref_auc)
    else:
        metrics["forget_quality"] = metrics["privleak"] = float("nan")
    return {k: metrics[k] for k in LM_METRICS} | {f"model_utility_{k}": v for k, v in components.items()}


def evaluate_lm(adapter: Any, splits: Mapping[str, Sequence[Mapping[str, Any]]],
                reference: Mapping[str, LMSplitStats] | None = None, *,
                ids: Mapping[str, Sequence[Any]] | None = None, **collect_options: Any):
    """Collect statistics on every split and compute the metrics; returns ``(metrics, stats)``."""
    if not collect_options.get("generate", True):
        raise UserInputError("evaluate_lm needs generations (ROUGE-L and model utility score them); "
                             "generate=False is for collect_lm alone.")
    if not isinstance(splits, Mapping):
        raise UserInputError(f"evaluate_lm needs splits as a dict of split name to items, got {_kind(splits)}.")
    missing = [name for name in REQUIRED_SPLITS if name not in splits]
    if missing:
        raise UserInputError(f"evaluate_lm needs the splits {', '.join(REQUIRED_SPLITS)}; {missing[0]!r} is missing.")
    if reference is not None:
        check_split_stats(reference, "the reference", ("forget", "holdout"), ("forget",))
    if ids is not None and not isinstance(ids, Mapping):
        raise UserInputError(f"evaluate_lm's ids must be a dict of split name to item ids, got {_kind(ids)}.")
    ids = ids or {}
    unknown = [name for name in ids if name not in splits]
    if unknown:
        raise UserInputError(f"ids are given for the split {unknown[0]!r}, which is not one of the splits.")
    listed, named = {}, {}
    for name, items in splits.items():  # every split, before any is scored
        listed[name], _, has_perturbed = check_items(items, f"the {name!r} split")
        if name in PERTURBED_SPLITS and not has_perturbed:
            raise UserInputError(f"The items of the {name!r} split need 'perturbed_answer' (a list of wrong answers): "
                                 "its truth ratios compare the answer with them.")
        named[name] = check_ids(ids.get(name), listed[name], f"the {name!r} split")
    stats = {name: collect_lm(adapter, items, named[name], **collect_options) for name, items in listed.items()}
    return lm_metrics(stats, reference), stats

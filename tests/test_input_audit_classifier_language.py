"""Input audit: a classifier's class count against its logits, and causal-LM evaluation items given directly.

A. ClassifierAdapter's ``num_classes`` was never compared with the model's output width, and labels past that
   width crashed some paths with raw index errors (scrub, ``unlearnkit.evaluate``) or were silently wrapped
   (random_label without retain data). Every forward of the adapter is now checked, so each is one sentence
   before the first update or the first metric.
B. ``collect_lm`` / ``evaluate_lm`` / ``lm_metrics`` took items as given: one ``perturbed_answer`` string was
   scored character by character, a field on some items but not others silently dropped (or half-used) the
   truth ratios, and a missing split failed with a KeyError after every split had been scored.
"""

from __future__ import annotations

import copy

import pytest
import torch

import unlearnkit
from lm_fixtures import tiny_lm, tiny_qa
from unlearnkit import ForgetRequest
from unlearnkit.adapters import ClassifierAdapter
from unlearnkit.errors import UserInputError
from unlearnkit.eval import language
from unlearnkit.eval.language import collect_lm, evaluate_lm, lm_metrics

# ---------------------------------------------------------------------------------------------- classifiers


def _data(n: int = 24, classes: int = 3, width: int = 4) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(width, generator=g), i % classes) for i in range(n)]


def _model(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, classes)


def _splits(data):
    return {"forget": data[:6], "retain": data[6:18], "test": data[18:]}


@pytest.mark.parametrize("declared", [2, 5])
@pytest.mark.parametrize("method", ["gradient_ascent", "bad_teacher"])
def test_unlearn_refuses_num_classes_other_than_the_models_output_width(method, declared):
    # before: num_classes was stored and never read, so a 5-class declaration ran on a 3-class model
    model, data = _model(3), _data()
    before = copy.deepcopy(model.state_dict())
    request = ForgetRequest(data, range(6), range(6, 24))
    unlearnkit.unlearn(model, request, method, adapter=ClassifierAdapter(model, 3), max_steps=1)  # the right count runs
    with pytest.raises(UserInputError, match=rf"^num_classes is {declared} but the model returns 3 class scores per "
                                             r"item; give the model's own number of classes\.$"):
        unlearnkit.unlearn(model, request, method, adapter=ClassifierAdapter(model, declared))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_evaluate_refuses_num_classes_other_than_the_models_output_width():
    # before: the metrics were computed as if nothing were wrong
    model, data = _model(3), _data()
    with pytest.raises(UserInputError, match="^num_classes is 10 but the model returns 3 class scores"):
        unlearnkit.evaluate(model, _splits(data), adapter=ClassifierAdapter(model, 10))


@pytest.mark.parametrize("label", [3, -1])
def test_evaluate_refuses_labels_outside_the_models_classes_in_one_sentence(label):
    # before: RuntimeError "index 3 is out of bounds for dimension 1 with size 3" from the metrics' gather
    data = _data()
    data[2] = (data[2][0], label)
    # evaluate checks each split's items first, as unlearn does, and names the item
    with pytest.raises(UserInputError, match=rf"^Item 2 of the 'forget' split has label {label}, but the model's classes "
                                             r"are 0\.\.2\.$"):
        unlearnkit.evaluate(_model(3), _splits(data))


@pytest.mark.parametrize("method, settings", [("scrub", {}), ("bad_teacher", {}), ("random_label", {"retain_weight": 0})])
def test_methods_that_read_only_logits_refuse_labels_past_the_models_classes(method, settings):
    # before: scrub raised IndexError "Target 4 is out of bounds"; bad_teacher trained and reported ok;
    # random_label without retain data wrapped label 4 around the 3 classes and trained on it
    data = [(x, 4 if i < 6 else y) for i, (x, y) in enumerate(_data())]
    request = ForgetRequest(data, range(6), range(6, 24))
    with pytest.raises(UserInputError, match=r"^Item 0 of the forget set has label 4, but the model's classes are 0\.\.2\.$"):
        unlearnkit.unlearn(_model(3), request, method, **settings)


class _OneScore(torch.nn.Module):
    """A binary 'classifier' with a single output, optionally squeezed to shape (B,)."""

    def __init__(self, squeeze: bool) -> None:
        super().__init__()
        self.linear, self.squeeze = torch.nn.Linear(4, 1), squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out.squeeze(-1) if self.squeeze else out


def test_evaluate_refuses_outputs_that_are_not_logits_of_two_classes_or_more():
    data = [(x, 0) for x, _ in _data()]
    # before: IndexError "Dimension out of range" from the metrics' gather
    with pytest.raises(UserInputError, match=r"^A classifier must return logits of shape \(batch, classes\); for a "
                                             r"batch of 2 inputs it returned shape \(2,\)\.$"):  # the items' check
        unlearnkit.evaluate(_OneScore(squeeze=True), _splits(data))
    # before: every accuracy 1.0 and every loss 0, as if the model were perfect
    with pytest.raises(UserInputError, match="^A classifier must return a score for each of at least 2 classes"):
        unlearnkit.evaluate(_OneScore(squeeze=False), _splits(data))


def test_evaluate_takes_a_dataset_and_refuses_a_loader_in_one_sentence():
    """A TensorDataset's slice is a batch, so the item check read a row of inputs as a label; a DataLoader or a
    generator ended in a raw TypeError."""
    from torch.utils.data import DataLoader, TensorDataset

    data = _data()
    listed = _splits(data)
    datasets = {name: TensorDataset(torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]))
                for name, items in listed.items()}
    assert unlearnkit.evaluate(_model(), datasets).metrics == unlearnkit.evaluate(_model(), listed).metrics
    for loose in (DataLoader(datasets["test"], batch_size=4), (item for item in data)):
        with pytest.raises(UserInputError, match=f"evaluate's 'test' split is a {type(loose).__name__}; give a list"):
            unlearnkit.evaluate(_model(), {**_splits(data), "test": loose})


def test_evaluate_scores_an_untracked_batchnorm_model_at_any_split_size_and_refuses_non_finite_scores():
    """A split of 257 items left one item alone in the last 256-item chunk: a BatchNorm keeping no running statistics
    raised torch's ValueError. A model of non-finite weights ended in scikit-learn's 'Input X contains NaN'."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8, track_running_stats=False),
                                torch.nn.Linear(8, 3))
    data = _data(257)
    metrics = unlearnkit.evaluate(model, {"forget": data[:10], "retain": data, "test": data}).metrics
    assert 0 <= metrics["retain_acc"] <= 1
    broken = _model()
    with torch.no_grad():
        broken.weight[0, 0] = float("nan")
    with pytest.raises(UserInputError, match="The model returns NaN or infinite class scores"):
        unlearnkit.evaluate(broken, _splits(_data()))


def test_unlearn_refuses_a_label_past_the_models_classes_before_any_work(monkeypatch):
    # before: the label was met only in the batch that held it, after the earlier batches had been trained on
    from unlearnkit.methods.registry import get_method

    model, data = _model(3), _data()
    data[-1] = (data[-1][0], 3)  # the last retain item

    def trained(*args, **kwargs):
        raise AssertionError("the method ran before the request was checked")

    monkeypatch.setattr(type(get_method("finetune")), "unlearn", trained)
    with pytest.raises(UserInputError, match=r"^Item 17 of the retain set has label 3, but the model's classes are 0\.\.2\.$"):
        unlearnkit.unlearn(model, ForgetRequest(data, range(6), range(6, 24)), "finetune")


def test_unlearn_refuses_a_one_output_model_instead_of_ascending_a_zero_loss():
    # before: gradient ascent ran with a constant 0 loss and reported ok
    data = [(x, 0) for x, _ in _data()]
    with pytest.raises(UserInputError, match="at least 2 classes; this model returns 1 per item"):
        unlearnkit.unlearn(_OneScore(squeeze=False), ForgetRequest(data, range(6), range(6, 24)), "gradient_ascent")


# ---------------------------------------------------------------------------------------------- language


@pytest.fixture(scope="module")
def lm():
    items = tiny_qa(12)
    return tiny_lm(items), items


def _with(items, index, **fields):
    changed = copy.deepcopy(items)
    changed[index].update(fields)
    return changed


def _without(items, index, name):
    changed = copy.deepcopy(items)
    del changed[index][name]
    return changed


@pytest.mark.parametrize("value, described", [
    ("Alia was born in Oslo .", "one string, not a list"),  # before: scored as 23 one-character wrong answers
    ([], "an empty list"),  # before: the whole split silently lost its truth ratios
    (None, "a NoneType"),  # before: likewise
    (["Alia was born in Oslo .", ""], "a list holding a blank string"),  # before: an EOS-only "answer" was scored
    (["Alia was born in Oslo .", 3], "a list holding an int"),  # before: a sentence about 'question' and 'answer'
    ({"a": "b"}, "a dict"),  # before: KeyError 0
    (5, "an int"),  # before: TypeError "object of type 'int' has no len()"
])
def test_collect_lm_refuses_a_perturbed_answer_that_is_not_a_list_of_strings(lm, value, described):
    adapter, items = lm
    good = collect_lm(adapter, items[:3], generate=False)
    assert [len(p) for p in good.perturbed_loss] == [3, 3, 3]
    with pytest.raises(UserInputError, match=rf"^Field 'perturbed_answer' of item 1 of the item list must be a non-empty "
                                             rf"list of non-blank strings \(the wrong answers\), got {described}\.$"):
        collect_lm(adapter, _with(items[:3], 1, perturbed_answer=value), generate=False)


@pytest.mark.parametrize("value, described", [(None, "a NoneType"), ("  ", "a blank string"), (["x"], "a list")])
def test_collect_lm_refuses_a_paraphrase_that_is_not_text(lm, value, described):
    # before: a sentence about 'question' and 'answer' for non-strings; a blank paraphrase was scored
    adapter, items = lm
    with pytest.raises(UserInputError, match=rf"^Field 'paraphrased_answer' of item 0 of the item list must be a "
                                             rf"non-blank string, got {described}\.$"):
        collect_lm(adapter, _with(items[:3], 0, paraphrased_answer=value), generate=False)


@pytest.mark.parametrize("field", ["perturbed_answer", "paraphrased_answer"])
def test_collect_lm_refuses_a_field_given_on_some_items_only(lm, field):
    # before: perturbed_answer missing on one item dropped the split's truth ratios; paraphrased_answer missing on
    # one item made every item's truth ratio use the answer instead of the paraphrase
    adapter, items = lm
    with pytest.raises(UserInputError, match=rf"^Item 0 of the item list has '{field}' but item 2 has not; give it on "
                                             r"every item of a split or on none\.$"):
        collect_lm(adapter, _without(items[:3], 2, field), generate=False)


def test_collect_lm_refuses_non_dict_items_and_ids_of_another_count(lm):
    adapter, items = lm
    # before: AttributeError "'tuple' object has no attribute 'get'"
    with pytest.raises(UserInputError, match=r"^Item 1 of the item list is a tuple, expected a dict"):
        collect_lm(adapter, [items[0], ("question", "answer")], generate=False)
    # before: accepted, and the per-item rows silently left the third item out
    with pytest.raises(UserInputError, match=r"^The item list holds 3 items but 2 ids were given for them"):
        collect_lm(adapter, items[:3], ids=["a", "b"], generate=False)


@pytest.fixture()
def no_scoring(monkeypatch):
    """Fail the test if evaluate_lm starts scoring: every refusal must come before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("evaluate_lm scored a split before refusing its input")

    monkeypatch.setattr(language, "collect_lm", refuse)


def _lm_splits(items):
    return {"forget": items[0:3], "retain": items[3:6], "holdout": items[6:9], "general": items[9:12]}


@pytest.mark.parametrize("change, message", [
    # before: KeyError 'general', raised after every other split had been scored
    (lambda s: {k: v for k, v in s.items() if k != "general"},
     r"^evaluate_lm needs the splits forget, retain, holdout, general; 'general' is missing\.$"),
    # before: "truth_ratios must be a non-empty 1-D sequence of numbers, got shape ()", after scoring
    (lambda s: {**s, "forget": [_without([it], 0, "perturbed_answer")[0] for it in s["forget"]]},
     r"^The items of the 'forget' split need 'perturbed_answer'"),
    # before: "ground_truths and generations must be non-empty ...", after scoring
    (lambda s: {**s, "holdout": []}, r"^The 'holdout' split is empty"),
    # before: scored character by character
    (lambda s: {**s, "retain": _with(s["retain"], 2, perturbed_answer="x")},
     r"^Field 'perturbed_answer' of item 2 of the 'retain' split must be a non-empty list"),
    # before: AttributeError "'list' object has no attribute 'items'"
    (lambda s: list(s.items()), r"^evaluate_lm needs splits as a dict of split name to items, got a list\.$"),
])
def test_evaluate_lm_refuses_bad_splits_before_scoring_any(lm, no_scoring, change, message):
    adapter, items = lm
    with pytest.raises(UserInputError, match=message):
        evaluate_lm(adapter, change(_lm_splits(items)))


def test_evaluate_lm_refuses_a_reference_without_the_splits_forget_quality_reads(lm, no_scoring):
    # before: KeyError 'holdout' once every split had been scored
    adapter, items = lm
    reference = {"forget": collect_lm(adapter, items[:3], generate=False)}  # the module's own, not the patched one
    with pytest.raises(UserInputError, match=r"^There is no 'holdout' split in the reference; the metrics need forget, "
                                             r"holdout\.$"):
        evaluate_lm(adapter, _lm_splits(items), reference)


def test_lm_metrics_refuses_statistics_without_a_needed_split(lm):
    # before: KeyError 'general'
    adapter, items = lm
    stats = {name: collect_lm(adapter, part, generate=False) for name, part in _lm_splits(items).items()
             if name != "general"}
    with pytest.raises(UserInputError, match=r"^There is no 'general' split in the statistics"):
        lm_metrics(stats)


def test_lm_metrics_refuses_statistics_collected_without_generations(lm):
    # before: TypeError from np.mean(None), deep in the ROUGE averages
    adapter, items = lm
    stats = {name: collect_lm(adapter, part, generate=False) for name, part in _lm_splits(items).items()}
    with pytest.raises(UserInputError, match=r"^The 'forget' split of the statistics has no generations.*generate=True\.$"):
        lm_metrics(stats)

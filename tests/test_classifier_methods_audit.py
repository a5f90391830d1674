"""Checks added by an audit of the classifier methods against their papers: the caller's model is left as it
was by SSD's importance pass, and settings that would silently do nothing (or the opposite of what they
name) are refused before any work."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unlearnkit.adapters.classifier import ClassifierAdapter
from unlearnkit.api import unlearn
from unlearnkit.errors import UserInputError
from unlearnkit.methods.registry import get_method
from unlearnkit.request import ForgetRequest
from unlearnkit.train.config import build_config


def toy_request(seed: int = 0) -> tuple[nn.Module, ForgetRequest]:
    """A small MLP with dropout (3 classes) and 40 items: 8 to forget, 32 to keep."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.3), nn.ReLU(), nn.Linear(6, 3))
    inputs = torch.randn(40, 4, generator=generator)
    labels = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0.5).long()
    data = [(inputs[i], int(labels[i])) for i in range(40)]
    return model, ForgetRequest(data, forget=list(range(8)), retain=list(range(8, 40)))


def config(method: str, **settings):
    return build_config(get_method(method).Config, settings, owner=f"Method {method!r}")


def test_ssd_importance_file_leaves_the_callers_model_modes_and_gradients(tmp_path):
    """save_full_importance runs on the user's own trained model (the README's example): it must hand it back in
    the train/eval modes it came in, each module's own, with the gradients it held (it switched the whole model to
    eval mode and dropped its gradients)."""
    from unlearnkit.methods.ssd import full_training_items, importance, save_full_importance

    model, request = toy_request()
    model.train()
    model[3].eval()  # a mixed state that one model.train(...) could not restore
    held = torch.full_like(model[0].weight, 0.25)
    model[0].weight.grad = held
    modes = [module.training for module in model.modules()]
    save_full_importance(ClassifierAdapter(model, 3), full_training_items(request), tmp_path / "imp.safetensors", 8)
    assert [module.training for module in model.modules()] == modes
    assert model[0].weight.grad is held and model[3].weight.grad is None
    # the importance itself is still taken in eval mode: dropout off, so two passes agree exactly
    first = importance(ClassifierAdapter(model, 3), request.forget_items(), 4)
    second = importance(ClassifierAdapter(model, 3), request.forget_items(), 4)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert model.training and model[0].weight.grad is held


@pytest.mark.parametrize("max_epochs, epochs", [(2, 2), (3, 2), (1, 1)])
def test_scrub_refuses_max_epochs_that_do_not_end_with_min_steps(max_epochs, epochs):
    """Each epoch is a min pass then (in the first max_epochs epochs) a max pass, so max_epochs ≥ epochs ended the
    run on a max pass, with none of the min-steps the paper closes with, and max epochs past epochs never ran."""
    with pytest.raises(UserInputError, match=rf"SCRUB max_epochs must be less than epochs.*got max_epochs={max_epochs} "
                                             rf"with epochs={epochs}"):
        config("scrub", max_epochs=max_epochs, epochs=epochs)


def test_scrub_still_allows_runs_that_end_with_min_steps():
    assert config("scrub", max_epochs=0, epochs=1).max_epochs == 0  # min-steps only
    assert config("scrub", max_epochs=1, epochs=2).max_epochs == 1  # the defaults' shape


@pytest.mark.parametrize("settings, message", [
    ({"alpha": -1.0}, r"SCRUB alpha must be a finite non-negative number, got alpha=-1\.0"),
    ({"gamma": math.nan}, r"SCRUB gamma must be a finite non-negative number, got gamma=nan"),
    ({"temperature": math.inf}, r"SCRUB temperature must be a finite positive number, got temperature=inf"),
    ({"temperature": math.nan}, r"SCRUB temperature must be a finite positive number, got temperature=nan"),
    ({"max_epochs": 0.5}, r"hyper-parameter max_epochs must be an integer, got 0\.5"),
])
def test_scrub_refuses_weights_and_temperatures_that_cannot_work(settings, message):
    with pytest.raises(UserInputError, match=message):
        config("scrub", **settings)


def test_l1_sparse_refuses_a_nan_alpha_that_switched_the_penalty_off():
    """γ_t = NaN failed ``gamma > 0``, so the run was plain fine-tuning with no sign of it."""
    for alpha in (math.nan, math.inf):
        with pytest.raises(UserInputError, match="l1_sparse alpha must be a finite non-negative number"):
            config("l1_sparse", alpha=alpha)
    assert config("l1_sparse", alpha=0.0).alpha == 0.0


@pytest.mark.parametrize("method, label", [("random_label", "random_label"), ("salun", "SalUn")])
@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf])
def test_relabelling_methods_refuse_a_retain_weight_that_cannot_keep_the_retain_set(method, label, weight):
    """β < 0 turned the retain term into ascent on the retain set; NaN made every loss NaN."""
    with pytest.raises(UserInputError, match=rf"{label} retain_weight must be a finite non-negative number"):
        config(method, retain_weight=weight)
    assert config(method, retain_weight=0.0).retain_weight == 0.0
    with pytest.raises(UserInputError, match=rf"{label} reads no retain items with retain_weight=0, so sampling=cyclic"):
        config(method, retain_weight=0.0, sampling="cyclic")  # it would do nothing
    assert config(method, retain_weight=1.0, sampling="cyclic").sampling == "cyclic"


def test_bad_teacher_refuses_an_infinite_temperature_that_made_the_loss_zero():
    """At τ = ∞ every softmax is uniform: the KL and its gradient are 0 and the model came back unchanged."""
    for temperature in (math.inf, math.nan):
        with pytest.raises(UserInputError, match="Bad Teacher temperature must be a finite positive number"):
            config("bad_teacher", temperature=temperature)


def test_every_classifier_method_default_still_passes_its_checks():
    model, request = toy_request()
    for method in ("ssd", "salun", "scrub", "l1_sparse", "bad_teacher", "random_label", "finetune", "neggrad_plus",
                   "retrain"):
        config(method)
    unlearned, record = unlearn(model, request, "scrub", batch_size=8)
    assert record.status == "ok" and record.steps > 0


@pytest.mark.parametrize("method, setting", [("ssd", "lr"), ("ssd", "epochs"), ("guard_it", "optimizer"),
                                             ("guard", "max_steps"), ("kfade", "epochs"), ("kfade", "grad_clip"),
                                             ("first_epoch_ga", "optimizer")])
def test_a_setting_the_method_never_reads_is_refused_not_ignored(method, setting):
    """Methods that take no optimizer steps inherited every loop setting and dropped any value given for it."""
    with pytest.raises(UserInputError, match=f"{method}' does not use hyper-parameter '{setting}' \\(it takes no "):
        config(method, **{setting: 2})


def test_unused_settings_are_not_recorded_or_listed_as_defaults():
    from unlearnkit.methods.registry import get_method
    from unlearnkit.report.cards import card

    recorded = config("kfade", lr=1e-3).to_dict()
    assert recorded["lr"] == 1e-3 and not {"epochs", "optimizer", "max_steps"} & set(recorded)
    assert "`epochs`" not in card(type(get_method("ssd")), []) and "`alpha`" in card(type(get_method("ssd")), [])


def test_random_label_with_its_retain_term_off_runs_without_retain_data():
    """β = 0 trains on the relabelled forget items only, so it needs no retain set (it used to refuse the request);
    with β > 0 the retain set is still required."""
    model, request = toy_request()
    forget_only = ForgetRequest(request.data, forget=request.forget)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unlearned, record = unlearn(model, forget_only, "random_label", retain_weight=0.0, epochs=2, lr=0.05)
    assert record.status == "ok" and record.steps > 0
    assert any(not torch.equal(before[k], v) for k, v in unlearned.state_dict().items())
    with pytest.raises(UserInputError, match="retain"):
        unlearn(model, forget_only, "random_label", retain_weight=1.0)


# --------------------------------------------------------------------------- review: BatchNorm and bad items


def batchnorm_request(forget: int, retain: int) -> tuple[nn.Module, ForgetRequest]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).eval()
    inputs = torch.randn(forget + retain, 4, generator=generator)
    data = [(inputs[i], int(inputs[i, 0] > 0)) for i in range(len(inputs))]
    return model, ForgetRequest(data, forget=list(range(forget)), retain=list(range(forget, forget + retain)))


@pytest.mark.parametrize("method, forget, retain", [
    ("gradient_ascent", 1, 8),  # a one-record request: every batch holds one item
    ("neggrad_plus", 1, 8),
    ("scrub", 1, 8),
    ("finetune", 4, 9),  # 9 retain items at batch 8: one left over
])
def test_a_batch_of_one_trains_a_batchnorm_model(method, forget, retain):
    """BatchNorm cannot take batch statistics of one item: these runs raised torch's ValueError."""
    model, request = batchnorm_request(forget, retain)
    epochs = {"epochs": 2, "max_epochs": 1} if method == "scrub" else {"epochs": 1}
    unlearned, record = unlearn(model, request, method, batch_size=8, **epochs)
    assert record.status == "ok"
    assert not torch.equal(unlearned[0].weight, model[0].weight)


def test_a_batch_of_one_leaves_the_running_statistics_alone():
    model, request = batchnorm_request(2, 0)
    adapter = ClassifierAdapter(model.train(), 2)
    before = model[1].running_mean.clone()
    adapter.logits(model, adapter.collate(request.forget_items()[:1]))
    assert torch.equal(model[1].running_mean, before) and model[1].training  # running statistics used, mode kept
    adapter.logits(model, adapter.collate(request.forget_items()))
    assert not torch.equal(model[1].running_mean, before)  # two items: batch statistics, as before


def test_a_batchnorm_without_running_statistics_is_accepted_and_a_batch_of_one_through_it_is_one_sentence():
    """The one-item probe before any work raised torch's ValueError for a model whose BatchNorm keeps no running
    statistics (it normalises with the batch's own, even in evaluation), though every real batch worked."""
    _, request = batchnorm_request(4, 16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(), nn.Linear(8, 2))
    unlearned, record = unlearn(model, request, "finetune", batch_size=8, epochs=1)
    assert record.status == "ok" and not torch.equal(unlearned[0].weight, model[0].weight)
    with pytest.raises(UserInputError, match="keeps no running statistics .* cannot normalise a batch of one item"):
        unlearn(model, request, "finetune", batch_size=5, epochs=1)  # 16 retain items at batch 5: one left over


@pytest.mark.parametrize("value", [0.5, True, 1.0])
def test_l1_sparse_refuses_a_penalty_free_epoch_count_that_is_not_an_integer(value):
    """0.5 or True ran 'ok' with an undocumented penalty schedule."""
    with pytest.raises(UserInputError, match=f"hyper-parameter no_l1_epochs must be an integer, got {value}"):
        config("l1_sparse", no_l1_epochs=value, epochs=3)


def test_items_the_model_cannot_take_are_one_sentence_from_the_api():
    """Inputs of another width raised torch's RuntimeError from unlearnkit.unlearn and unlearnkit.evaluate."""
    from unlearnkit.api import evaluate

    model, request = toy_request()
    wide = [(torch.randn(5), 0) for _ in range(4)]
    with pytest.raises(UserInputError, match=r"The model cannot take the items of the forget set \(input shape \(5,\)\)"):
        unlearn(model, ForgetRequest(wide + request.retain_items(), forget=[0, 1]), "gradient_ascent")
    with pytest.raises(UserInputError, match="The model cannot take the items of the 'test' split"):
        evaluate(model, {"forget": request.forget_items(), "retain": request.retain_items(), "test": wide})


@pytest.mark.parametrize("item, message", [
    ({"input": [1.0, 2.0, 3.0, 4.0], "label": 1}, "must be an \\(input, label\\) pair, got a dict"),  # took the keys
    ((torch.zeros(4), 2 ** 63), "The class label 9223372036854775808 is beyond any model's classes"),
])
def test_items_that_are_not_pairs_or_have_impossible_labels_are_refused(item, message):
    with pytest.raises(UserInputError, match=message):
        ClassifierAdapter(None, 3).collate([item])


def test_a_one_image_batch_still_takes_batchnorm2d_statistics_over_its_pixels():
    """Only a layer that would see one value per channel falls back to running statistics; BatchNorm2d over one
    image's 4×4 pixels trains as torch trains it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(48, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).train()
    adapter = ClassifierAdapter(model, 2)
    image_stats, flat_stats = model[1].running_mean.clone(), model[5].running_mean.clone()
    adapter.logits(model, adapter.collate([(torch.randn(1, 4, 4), 1)]))
    assert not torch.equal(model[1].running_mean, image_stats)  # batch statistics over the pixels, as before
    assert torch.equal(model[5].running_mean, flat_stats) and model[5].training  # one value per channel: running


@pytest.mark.parametrize("item", [b"xy", bytearray(b"xy")])
def test_bytes_are_not_an_input_label_pair(item):
    with pytest.raises(UserInputError, match="must be an \\(input, label\\) pair"):
        ClassifierAdapter(None, 3).collate([item])


def test_bad_teacher_refuses_a_parameter_it_cannot_redraw_naming_its_random_teacher():
    """The refusal told the user to give the module a reset "to retrain from scratch", which bad_teacher never does."""

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.scale = nn.Linear(4, 3), nn.Parameter(torch.ones(1))  # a learnable logit scale

        def forward(self, x):
            return self.body(x) * self.scale

    _, request = toy_request()
    with pytest.raises(UserInputError, match=r"'scale'.*give it one to draw bad_teacher's random \(incompetent\) teacher\.$"):
        unlearn(Scaled(), request, "bad_teacher")


def test_a_last_step_that_overflows_the_forward_is_diverged_not_ok():
    """The loop checks each loss before a step; a last step to finite but huge weights came back 'ok' with NaN
    forget losses (gradient_ascent lr=1e20)."""
    model, request = toy_request()
    _, record = unlearn(model, request, "gradient_ascent", lr=1e20)
    assert record.status == "diverged" and "losses are NaN or infinite" in record.message
    assert record.steps >= 1 and record.losses  # the loop's own record, marked diverged
    _, fine = unlearn(model, request, "gradient_ascent")
    assert fine.status == "ok"


@pytest.mark.parametrize("setting", [{"lr": 1e300}, {"weight_decay": 1e300}, {"lr": 1e39, "optimizer": "sgd"}])
def test_a_step_size_beyond_float32_is_one_sentence(setting):
    # torch's optimizers raised "value cannot be converted to type float without overflow" mid-run
    model, request = toy_request()
    with pytest.raises(UserInputError, match=r"must be at most 3.4e\+38 \(the largest float32\)"):
        unlearn(model, request, "finetune", **setting)


def test_validate_runs_names_a_single_string_or_settings_that_are_no_mapping():
    from unlearnkit.api import validate_runs

    model, request = toy_request()
    adapter = ClassifierAdapter(model)
    with pytest.raises(UserInputError, match=r"a list of names, such as \['ssd'\], not a single string"):
        validate_runs("ssd", {}, adapter, request)  # read as the methods s, s, d: "named twice"
    with pytest.raises(UserInputError, match="a mapping of method names to mappings of settings"):
        validate_runs(["ssd"], {"ssd": 3}, adapter, request)  # a TypeError before


def test_an_ssd_importance_file_that_is_a_folder_is_called_a_folder(tmp_path):
    model, request = toy_request()
    with pytest.raises(UserInputError, match=r"importance file .* is a folder\.$"):
        unlearn(model, request, "ssd", full_importance=str(tmp_path))

"""ForgetRequest validation, config checks, the divergence guard and the public API contract."""

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import unlearnkit
from unlearnkit.adapters.classifier import ClassifierAdapter
from unlearnkit.errors import UserInputError
from unlearnkit.methods.base import item_stream
from unlearnkit.request import ForgetRequest
from unlearnkit.train import TrainConfig, optimise

DATA = [(torch.randn(4), i % 2) for i in range(10)]


@pytest.mark.parametrize(
    "forget, retain, message",
    [
        ([], None, "forget set is empty"),
        ([10], None, "item id 10"),
        ([-1], None, "item id -1"),
        ([1, 2], [2, 3], "overlap"),
        ([1, 1], None, "more than once"),
        ([1], [0, 99], "retain set has item id 99"),
    ],
)
def test_request_rejects_bad_ids(forget, retain, message):
    with pytest.raises(UserInputError, match=message):
        ForgetRequest(DATA, forget, retain)


def test_request_items_in_order():
    request = ForgetRequest(DATA, [3, 1], [0, 2], neighbours={"near": [4]})
    assert request.forget_items() == [DATA[3], DATA[1]]
    assert request.retain_items() == [DATA[0], DATA[2]]
    assert request.neighbour_items("near") == [DATA[4]]
    with pytest.raises(UserInputError, match="no neighbour set 'far'"):
        request.neighbour_items("far")


@pytest.mark.parametrize("overrides, message", [
    ({"lr": 0}, "learning rate"), ({"lr": -1e-3}, "learning rate"), ({"epochs": 0}, "epoch count"),
    ({"optimizer": "lbfgs"}, "Unknown optimizer"), ({"bogus": 1}, "no hyper-parameter 'bogus'"),
])
def test_bad_hyperparameters_are_refused(overrides, message):
    request = ForgetRequest(DATA, [0], list(range(1, 10)))
    with pytest.raises(UserInputError, match=message):
        unlearnkit.unlearn(nn.Linear(4, 2), request, "gradient_ascent", **overrides)


def test_method_needing_retain_data_refuses_a_request_without_it():
    with pytest.raises(UserInputError, match="needs retain data"):
        unlearnkit.unlearn(nn.Linear(4, 2), ForgetRequest(DATA, [0]), "ssd")


def test_unknown_method_lists_valid_names():
    with pytest.raises(UserInputError, match="valid methods: .*ssd"):
        unlearnkit.unlearn(nn.Linear(4, 2), ForgetRequest(DATA, [0]), "no_such_method")


def test_unlearn_never_modifies_the_input_model():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unlearned, record = unlearnkit.unlearn(model, ForgetRequest(DATA, [0, 1]), "gradient_ascent", lr=0.1, epochs=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(unlearned.weight, model.weight)
    assert record.steps == 3 and record.status == "ok" and record.seconds > 0


class _NaNAfter(nn.Module):
    """A linear model whose output turns NaN once it has been called ``after`` times in training."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.linear, self.after, self.calls = nn.Linear(4, 2), after, 0

    def forward(self, x):
        self.calls += 1
        out = self.linear(x)
        return out * float("nan") if self.training and self.calls > self.after else out


def _nan_after_five(guard_every: int):
    """A run whose 6th forward pass gives NaN; the model, its record and the weights each forward pass saw."""
    torch.manual_seed(0)
    model = _NaNAfter(after=5)
    adapter = ClassifierAdapter(model)
    config = TrainConfig(epochs=10, lr=0.1, batch_size=2, guard_every=guard_every, grad_clip=None)
    weights_seen = []

    def loss(m, batch):
        weights_seen.append(m.linear.weight.detach().clone())
        return adapter.per_item_loss(m, batch).mean()

    stream, steps = item_stream(adapter, DATA, config)
    return model, optimise(model, stream, loss, config, steps_per_epoch=steps), weights_seen


def test_divergence_guard_restores_last_good_weights():
    model, record, weights_seen = _nan_after_five(guard_every=1)
    assert record.status == "diverged" and "restored" in record.message
    assert record.steps == 5 and all(math.isfinite(v) for v in record.losses)
    # The restored weights are those of the last step whose loss was finite (the 5th forward pass).
    assert torch.equal(model.linear.weight, weights_seen[4])
    assert torch.isfinite(model.linear.weight).all()


def test_the_guard_snapshots_every_guard_every_steps():
    model, record, weights_seen = _nan_after_five(guard_every=3)
    assert record.status == "diverged" and record.message.endswith("restored the weights of step 3")
    assert torch.equal(model.linear.weight, weights_seen[3])


class _WithMask(nn.Module):
    """A classifier holding a −inf buffer by design, as an attention mask does."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.register_buffer("mask", torch.full((2, 2), float("-inf")).triu(1))

    def forward(self, x):
        return self.linear(x)


def test_a_buffer_that_is_infinite_by_design_is_no_divergence():
    # every run on such a model ended "diverged" and its training was thrown away
    torch.manual_seed(0)
    model = _WithMask()
    before = model.linear.weight.detach().clone()
    adapter = ClassifierAdapter(model)
    config = TrainConfig(epochs=2, lr=0.1, batch_size=2)
    stream, steps = item_stream(adapter, DATA, config)
    record = optimise(model, stream, lambda m, b: adapter.per_item_loss(m, b).mean(), config, steps_per_epoch=steps)
    assert record.status == "ok" and not torch.equal(model.linear.weight, before)


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        return self.used(x)


def test_a_nan_in_weights_no_loss_reads_is_never_snapshotted():
    # the loss stays finite, so the guard took the NaN weights as good and "restored" them
    torch.manual_seed(0)
    model = _TwoHeads()
    adapter = ClassifierAdapter(model)
    config = TrainConfig(epochs=3, lr=0.1, batch_size=2, guard_every=1)

    def poison(net):
        with torch.no_grad():
            net.unused.weight[0, 0] = float("nan")

    stream, steps = item_stream(adapter, DATA, config)
    record = optimise(model, stream, lambda m, b: adapter.per_item_loss(m, b).mean(), config, steps_per_epoch=steps,
                      after_step=poison)
    assert record.status == "diverged"
    assert record.message == "the weights became non-finite by step 1; restored the weights of step 0"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _documented_lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """The multiplier of ``lr`` at 0-based ``step`` as ``make_schedule`` documents it, written out independently:
    a linear warm-up (k+1)/(w+1) for the first w steps, then constant / linear / half-cosine decay from 1
    over the remaining ``total − w`` steps, where ``total`` counts the steps actually run (``max_steps`` cuts it)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / (total - warmup)
    return {"constant": 1.0, "linear": 1.0 - progress, "cosine": (1 + math.cos(math.pi * progress)) / 2}[schedule]


@pytest.mark.parametrize("schedule, warmup", [("cosine", 0), ("cosine", 2), ("linear", 3), ("constant", 2)])
def test_lr_schedule_and_max_steps(schedule, warmup):
    # loss = w has gradient 1, so plain SGD (no momentum, no clipping) moves w by exactly −lr·factor(step)
    model = nn.Linear(1, 1, bias=False).double()  # float64: the steps are exact far below the tolerance
    with torch.no_grad():
        model.weight.fill_(1.0)
    lr = 0.01
    config = TrainConfig(epochs=100, max_steps=7, lr=lr, batch_size=5, schedule=schedule, warmup_steps=warmup,
                         optimizer="sgd", momentum=0.0, grad_clip=None)
    stream, steps = item_stream(ClassifierAdapter(nn.Linear(4, 2)), DATA, config)
    assert steps * config.epochs > config.max_steps  # max_steps, not the epochs, must end the run
    weights = [1.0]
    record = optimise(model, stream, lambda m, b: m.weight.sum(), config, steps_per_epoch=steps,
                      after_step=lambda m: weights.append(float(m.weight.detach().double())))
    assert record.steps == 7 and len(weights) == 8
    expected = [lr * _documented_lr_factor(k, 7, schedule, warmup) for k in range(7)]
    taken = [weights[k] - weights[k + 1] for k in range(7)]
    assert taken == pytest.approx(expected, rel=0, abs=1e-12)


def test_registry_lists_core_methods_with_metadata():
    registry = unlearnkit.list_methods()
    for name in ("ssd", "gradient_ascent"):
        assert name in registry
        cls = registry[name]
        assert cls.paper and cls.kinds and "classifier" in cls.kinds


def test_atomic_dir_leaves_nothing_behind_when_the_block_fails(tmp_path):
    from unlearnkit.io import atomic_dir

    (tmp_path / "kept").mkdir()
    for final in (tmp_path / "new" / "deeper" / "out", tmp_path / "kept" / "out"):
        with pytest.raises(RuntimeError):
            with atomic_dir(final) as tmp:
                (tmp / "half.txt").write_text("half")
                raise RuntimeError("the work failed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]
    with atomic_dir(tmp_path / "new" / "out") as tmp:
        (tmp / "done.txt").write_text("done")
    assert (tmp_path / "new" / "out" / "done.txt").read_text() == "done"


def test_atomic_dir_outputs_are_not_left_private(tmp_path):
    # transformers' save_pretrained writes model.safetensors through mkstemp (mode 0600)
    import os
    import tempfile

    from unlearnkit.io import atomic_dir

    with atomic_dir(tmp_path / "out") as tmp:
        handle, name = tempfile.mkstemp(dir=tmp)
        os.close(handle)
        os.replace(name, tmp / "model.safetensors")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "secret").write_text("kept as the writer chose")
        (tmp / "sub" / "secret").chmod(0o640)
    assert (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out" / "sub" / "secret").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("out, kwargs, message", [
    ("", {}, "names no folder of its own"),
    ("..", {"overwrite": True}, "names no folder of its own"),
    ("a_file/sub", {}, "lies under"),
    ("a_file", {"overwrite": True}, "is a file; folder output cannot replace it"),
    ("a_folder", {"overwrite": True, "file": True}, "is a folder; file output cannot replace it"),
    ("a_folder", {}, "already exists; choose another or pass --overwrite"),
    ("a_folder", {"overwrite": True, "inputs": ["a_folder/data.jsonl"]}, "holds the input a_folder/data.jsonl"),
])
def test_check_output_refuses_paths_a_run_cannot_write_or_would_destroy(tmp_path, monkeypatch, out, kwargs, message):
    from unlearnkit.io import check_output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    kwargs.setdefault("overwrite", False)
    with pytest.raises(UserInputError, match=re.escape(message)):
        check_output(out, **kwargs)
    with pytest.raises(UserInputError, match="the current folder or one above it"):
        check_output(str(tmp_path.parent), overwrite=True)
    check_output("a_folder/new", overwrite=False, inputs=["a_folder/data.jsonl"])  # beside an input is fine


def test_seeds_are_integers_in_the_32_bit_range_numpy_ones_included():

    from unlearnkit.train.config import check_seed

    for good in (0, np.int64(3), 2**32 - 1):
        check_seed(good)
    for bad in (-1, 2**32, 1.0, True, "3"):
        with pytest.raises(UserInputError, match="--seed must be an integer from 0 to 4294967295"):
            check_seed(bad)


def test_a_weights_file_that_is_no_checkpoint_is_named_as_such(tmp_path):
    from unlearnkit.io import load_state_dict

    (tmp_path / "rows.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(UserInputError, match="neither safetensors nor a torch.save checkpoint"):
        load_state_dict(tmp_path / "rows.jsonl")
    with pytest.raises(UserInputError, match="is a folder"):
        load_state_dict(tmp_path)


def _tiny_run(config: TrainConfig, **kwargs):
    model = nn.Sequential(nn.Linear(4, 2))
    adapter = ClassifierAdapter(model)
    stream, steps = item_stream(adapter, DATA, config)
    record = optimise(model, stream, lambda m, b: adapter.per_item_loss(m, b).mean(), config,
                      steps_per_epoch=steps, **kwargs)
    return model, record


def test_optimise_keeps_the_callers_random_state():
    model = nn.Sequential(nn.Linear(4, 2))
    adapter = ClassifierAdapter(model)
    config = TrainConfig(epochs=1, batch_size=2, seed=7)
    stream, steps = item_stream(adapter, DATA, config)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    optimise(model, stream, lambda m, b: adapter.per_item_loss(m, b).mean(), config, steps_per_epoch=steps)
    assert torch.equal(torch.rand(3), expected)


def test_weights_made_non_finite_by_the_last_step_are_caught():
    config = TrainConfig(epochs=1, batch_size=len(DATA), guard_every=1)
    last = []

    def poison(model):  # the final update leaves a NaN that no later loss will show
        last.append(model[0].weight.detach().clone())
        with torch.no_grad():
            model[0].weight[0, 0] = float("nan")

    model, record = _tiny_run(config, after_step=poison)
    assert record.status == "diverged" and "non-finite" in record.message
    assert torch.isfinite(model[0].weight).all()


def test_cpu_runs_need_no_accelerate_state(monkeypatch):
    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", lambda **_: pytest.fail("accelerate was used for a cpu=True run"))
    model, record = _tiny_run(TrainConfig(epochs=2, batch_size=2), cpu=True)
    assert record.status == "ok" and record.steps > 0 and next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("setting, message", [
    ({"grad_clip": -1.0}, "grad_clip must be a non-negative number"),
    ({"grad_clip": float("nan")}, "grad_clip must be a non-negative number"),
    ({"weight_decay": -0.1}, "weight_decay must be a non-negative number"),
    ({"warmup_steps": -3}, "warmup_steps must be a non-negative integer"),
    ({"guard_every": 0}, "guard_every must be a positive integer"),  # ran, copying the weights at every step
])
def test_bad_training_settings_are_refused(setting, message):
    with pytest.raises(UserInputError, match=message):
        TrainConfig(**setting).check()


def test_clipping_reads_only_the_trained_parameters():
    model = nn.Sequential(nn.Linear(4, 2))
    other = nn.Linear(4, 2)  # part of the module, not of this run
    model.add_module("other", other)
    other.weight.grad = torch.full_like(other.weight, 1e6)  # a stale gradient left by an earlier run
    adapter = ClassifierAdapter(nn.Sequential(model[0]))
    config = TrainConfig(epochs=1, batch_size=len(DATA), grad_clip=1.0, lr=0.1, optimizer="sgd", momentum=0.0)
    stream, steps = item_stream(adapter, DATA, config)
    before = model[0].weight.detach().clone()
    loss = lambda m, b: adapter.per_item_loss(m[0], b).mean()
    optimise(model, stream, loss, config, steps_per_epoch=steps, params=list(model[0].parameters()))
    moved = (model[0].weight.detach().cpu() - before).norm()  # the loop leaves the model on its device
    assert moved > 1e-3  # the huge stale gradient did not scale this run's step down to nothing


@pytest.mark.parametrize("ids, message", [
    ([1.7], "must be integers; 1.7 is not one"),
    ([3, "Jane Doe"], "must be integers; the one at position 1 is a str."),  # a name is never repeated
    ("19", "must be a sequence of integers, got str"),
    ([True], "True is not one"),
    (None, "got NoneType"),
    (torch.tensor([False, True]), "(not a mask); an array of booleans is a mask"),
    ([torch.tensor(True)], "(not a mask)"),
])
def test_forget_ids_must_be_integers_never_rounded_or_split(ids, message):

    with pytest.raises(UserInputError, match=re.escape(message)):
        ForgetRequest(DATA, ids)
    assert ForgetRequest(DATA, np.array([1, 2])).forget == (1, 2) == ForgetRequest(DATA, torch.tensor([1, 2])).forget


def test_evaluate_leaves_the_models_training_flag_and_float64_models_work():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).double().train()
    request = ForgetRequest(DATA, range(2), range(2, len(DATA)))
    splits = {"forget": request.forget_items(), "retain": request.retain_items(), "test": request.retain_items()}
    unlearnkit.evaluate(model, splits)
    assert model.training  # evaluated in eval mode, then handed back as it came
    unlearned, record = unlearnkit.unlearn(model, request, "gradient_ascent", epochs=1)
    assert record.status == "ok" and next(unlearned.parameters()).dtype == torch.float64


@pytest.mark.parametrize("setting, message", [
    ({"lr": True}, "Method 'gradient_ascent': hyper-parameter lr must be a number, got True."),
    ({"batch_size": 2.5}, "hyper-parameter batch_size must be an integer, got 2.5."),
    ({"warmup_steps": None}, "hyper-parameter warmup_steps must be an integer, got None."),
    ({"max_steps": 2.0}, "hyper-parameter max_steps must be an integer or None, got 2.0."),
])
def test_settings_of_the_wrong_type_are_refused(setting, message):
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(UserInputError, match=re.escape(message)):
        unlearnkit.unlearn(model, ForgetRequest(DATA, range(2), range(2, len(DATA))), "gradient_ascent", **setting)


def test_a_fully_frozen_classifier_is_refused_in_one_sentence():
    model = nn.Sequential(nn.Linear(4, 2)).requires_grad_(False)
    with pytest.raises(UserInputError, match="Every parameter of the model is frozen"):
        unlearnkit.unlearn(model, ForgetRequest(DATA, range(2), range(2, len(DATA))), "finetune")


def test_labels_outside_the_models_classes_or_not_integers_get_one_sentence():
    model = nn.Sequential(nn.Linear(4, 2))
    for data, message in (([(torch.randn(4), 7)] * 4, "Item 0 of the forget set has label 7, but the model's classes are 0..1."),
                          ([(torch.randn(4), 1.9)] * 4, "A class label must be an integer, got 1.9"),
                          *[([(torch.randn(4), flag)] * 4, "A class label must be an integer, got ")  # not class 1
                            for flag in (True, np.True_, torch.tensor(True))]):
        with pytest.raises(UserInputError, match=re.escape(message)):
            unlearnkit.unlearn(model, ForgetRequest(data, range(1), range(1, 4)), "gradient_ascent")


def test_a_language_model_without_its_adapter_and_a_mismatched_adapter_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    from unlearnkit.adapters.classifier import ClassifierAdapter

    lm = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=1))
    request = ForgetRequest(DATA, range(2), range(2, len(DATA)))
    with pytest.raises(UserInputError, match="is a language model: wrap it with its tokenizer"):
        unlearnkit.unlearn(lm, request, "gradient_ascent")
    one, other = nn.Sequential(nn.Linear(4, 2)), nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(UserInputError, match="The model and adapter.model differ"):
        unlearnkit.unlearn(one, request, "gradient_ascent", adapter=ClassifierAdapter(other))


def test_evaluate_and_forget_request_refuse_arguments_they_cannot_use():
    model = nn.Sequential(nn.Linear(4, 2))
    request = ForgetRequest(DATA, range(2), range(2, len(DATA)))
    for splits in ({"forget": request.forget_items(), "retain": request.retain_items()},
                   {"forget": [], "retain": request.retain_items(), "test": request.retain_items()}, [1, 2]):
        with pytest.raises(UserInputError, match="evaluate needs splits as a dict with non-empty 'forget', 'retain'"):
            unlearnkit.evaluate(model, splits)
    full = {"forget": request.forget_items(), "retain": request.retain_items(), "test": request.retain_items()}
    for splits, settings, message in (  # a misspelt split was ignored; the others raised KeyError or numpy errors
            ({**full, "forget-test": full["test"]}, {}, "evaluate knows no split 'forget-test'"),
            ({**full, "forget_test": []}, {}, "evaluate's 'forget_test' split is empty"),
            (full, {"reference": {"forget_acc": 0.5}}, "evaluate's reference must map each of forget_acc, retain_acc"),
            (full, {"seed": -1}, "evaluate's seed must be an integer from 0")):
        with pytest.raises(UserInputError, match=message):
            unlearnkit.evaluate(model, splits, **settings)
    other = ClassifierAdapter(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(UserInputError, match="The model and adapter.model differ"):  # the first adapter was ignored
        unlearnkit.unlearn(ClassifierAdapter(model), request, "gradient_ascent", adapter=other, max_steps=1)
    pd = pytest.importorskip("pandas")  # installed with datasets
    with pytest.raises(UserInputError, match="is a DataFrame, whose \\[i\\] is a column"):
        ForgetRequest(pd.DataFrame({"x": [1, 2, 3], "label": [0, 1, 0]}), forget=[0], retain=[1, 2])
    bench = unlearnkit.load_benchmark("digits")
    for options, message in (({"fraction": 0}, "fraction must lie strictly between 0 and 1, got 0"),
                             ({"fraction": 1.5}, "got 1.5")):
        with pytest.raises(UserInputError, match=re.escape(message)):
            unlearnkit.forget_request(bench, "random", **options)
    with pytest.raises(UserInputError, match="forget_class must be in 0..9, got 1.5"):
        unlearnkit.forget_request(bench, "class", forget_class=1.5)
    with pytest.raises(UserInputError, match="needs a benchmark from unlearnkit.load_benchmark, got a NoneType"):
        unlearnkit.forget_request(None, "class")
    # the other scenario's option was ignored (class 3 asked, a random tenth given); a misspelt one a TypeError
    with pytest.raises(UserInputError, match="The 'random' scenario of digits has no option 'forget_class'; valid: fraction"):
        unlearnkit.forget_request(bench, "random", forget_class=3)
    with pytest.raises(UserInputError, match="The 'class' scenario of digits has no option 'forget_clas'; valid: forget_class"):
        unlearnkit.forget_request(bench, "class", forget_clas=3)
    with pytest.raises(UserInputError, match="seed must be an integer from 0"):
        unlearnkit.load_benchmark("digits", seed=-1)
    with pytest.raises(UserInputError, match="test_fraction must lie strictly between 0 and 1, got 1.5"):
        unlearnkit.load_benchmark("digits", test_fraction=1.5)
    with pytest.raises(UserInputError, match="Benchmark 'digits' has no option 'colour'; valid: test_fraction"):
        unlearnkit.load_benchmark("digits", colour="red")
    with pytest.raises(UserInputError, match="Benchmark 'facts' has no option 'colour'; valid: people"):
        unlearnkit.load_benchmark("facts", colour="red")


@pytest.mark.parametrize("method, setting", [
    ("rmu", {"layer": 7}),  # documented: a layer name or its index
    ("mrp", {"layers": 1}),
    ("kfade", {"include_head": np.True_}),
    ("npo", {"beta": np.float32(0.5)}),
    # passed the type check, then "gu_rank must be a positive integer, got gu_rank=4" or a generator's TypeError
    ("gradient_ascent", {"epochs": np.int64(2), "lr": np.float32(0.5), "seed": np.int64(3), "early_stop": "holdout_nll",
                         "stop_every": np.int64(2)}),
    ("npo", {"project": "gu", "gu_rank": np.int64(4)}),
])
def test_settings_given_as_documented_or_as_numpy_scalars_pass_the_type_check(method, setting):
    from unlearnkit.methods.registry import method_config

    config = method_config(method, setting)
    assert all(getattr(config, name) == value for name, value in setting.items())
    assert not any(isinstance(getattr(config, name), np.generic) for name in setting)  # held as Python's own numbers


def test_a_numpy_seed_runs():
    """check_seed took np.int64(3), then torch's generator refused it halfway through the run."""
    from unlearnkit.api import unlearn
    from unlearnkit.request import ForgetRequest

    torch.manual_seed(0)
    data = [(torch.randn(4), i % 2) for i in range(12)]
    model, record = unlearn(nn.Linear(4, 2), ForgetRequest(data, forget=[0, 1, 2]), "gradient_ascent", seed=np.int64(3))
    assert record.status == "ok" and record.params["seed"] == 3


def test_a_path_names_a_settings_file(tmp_path):
    """README: save_full_importance(..., path, 64), then full_importance=path."""
    from unlearnkit.methods.registry import method_config

    path = tmp_path / "imp.safetensors"
    path.write_bytes(b"")
    assert method_config("ssd", {"full_importance": path}).full_importance == path

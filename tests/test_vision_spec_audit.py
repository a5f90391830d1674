"""The image-classifier path: classifier spec folders, the classifier adapter's batches and the vision benchmarks.

Every bad input here is one sentence (UserInputError), never a traceback, and writes nothing."""

import json
import math

import numpy as np
import pytest
import torch

from unlearnkit.adapters import classifier_spec
from unlearnkit.adapters.classifier import ClassifierAdapter
from unlearnkit.adapters.classifier_spec import build_classifier, read_spec, save_classifier
from unlearnkit.benchmarks.vision import VisionBenchmark, forget_request, load_vision_benchmark
from unlearnkit.cli import main
from unlearnkit.errors import UserInputError
from unlearnkit.train import TrainConfig

MLP_SPEC = {"kind": "classifier", "architecture": "mlp", "input_dim": 4, "hidden": [8], "num_classes": 3}
CNN_SPEC = {"kind": "classifier", "architecture": "small_cnn", "image_size": 8, "num_classes": 3, "width": 4}


def _spec_folder(tmp_path, content: bytes):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "unlearnkit.json").write_bytes(content)
    return folder


# --- spec files ---------------------------------------------------------------------------------------------

def test_a_spec_that_is_not_utf8_is_one_sentence(tmp_path):
    folder = _spec_folder(tmp_path, b'{"kind": "classifier", "note": "caf\xe9"}')
    with pytest.raises(UserInputError, match="not text in UTF-8"):
        read_spec(folder)


def test_a_spec_with_a_byte_order_mark_is_read(tmp_path):
    folder = _spec_folder(tmp_path, b"\xef\xbb\xbf" + json.dumps(MLP_SPEC).encode())
    assert read_spec(folder) == MLP_SPEC


@pytest.mark.parametrize("text, message", [
    ('{"kind": "classifier", "num_classes": 2, "num_classes": 10}', "names the field 'num_classes' twice"),
    ('{"kind": "classifier", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"kind": "classifier", "num_classes": ' + "9" * 5000 + "}", "number too long"),
])
def test_malformed_spec_json_is_one_sentence(tmp_path, text, message):
    # a field named twice was silently read as its last value; deep nesting and long numbers were tracebacks
    with pytest.raises(UserInputError, match=message):
        read_spec(_spec_folder(tmp_path, text.encode()))


@pytest.mark.parametrize("spec", [
    {**MLP_SPEC, "input_dim": 10**7, "hidden": [10**6]},  # 40 TB of weights: an allocation traceback
    {**MLP_SPEC, "input_dim": 10**30},                     # beyond int64: an overflow traceback
    {**CNN_SPEC, "image_size": 10**6, "width": 64},
])
def test_a_spec_too_large_to_build_is_refused_before_allocating(spec):
    with pytest.raises(UserInputError, match="more than the 1,073,741,824 parameters a classifier spec may have"):
        build_classifier(spec)


@pytest.mark.parametrize("spec", [
    MLP_SPEC, {**MLP_SPEC, "hidden": []}, {**MLP_SPEC, "hidden": [5, 7, 2]},
    CNN_SPEC, {**CNN_SPEC, "image_size": 4}, {**CNN_SPEC, "image_size": 11, "width": 3}, {**CNN_SPEC, "width": 32},
])
def test_the_parameter_count_checked_is_the_models_own(spec, monkeypatch):
    assert classifier_spec.MAX_PARAMETERS >= 10**9  # room for any classifier these specs are meant for
    numel = sum(p.numel() for p in build_classifier(spec).parameters())
    monkeypatch.setattr(classifier_spec, "MAX_PARAMETERS", numel)
    build_classifier(spec)  # exactly at the limit: built
    monkeypatch.setattr(classifier_spec, "MAX_PARAMETERS", numel - 1)
    with pytest.raises(UserInputError, match=f"{numel:,} parameters"):
        build_classifier(spec)


@pytest.mark.parametrize("side", [1, 2, 3])
def test_a_small_cnn_too_small_to_pool_twice_is_refused(side):
    # it was built, and its first forward pass failed deep inside max_pool2d
    with pytest.raises(UserInputError, match="'image_size' must be at least 4"):
        build_classifier({**CNN_SPEC, "image_size": side})


@pytest.mark.parametrize("spec", [{**MLP_SPEC, "num_classes": 1}, {**CNN_SPEC, "num_classes": 1}])
def test_a_one_class_classifier_is_refused(spec):
    # with one class every cross-entropy is 0: no method could change anything, yet runs were reported ok
    with pytest.raises(UserInputError, match="'num_classes' must be at least 2"):
        build_classifier(spec)


def test_a_null_width_is_named_as_null_not_as_missing():
    with pytest.raises(UserInputError, match="'width' must be a positive whole number, got None"):
        build_classifier({**CNN_SPEC, "width": None})


def test_input_shape_checks_the_spec():
    assert classifier_spec.input_shape(CNN_SPEC) == (1, 8, 8)
    with pytest.raises(UserInputError, match="'image_size'"):
        classifier_spec.input_shape({**CNN_SPEC, "image_size": "8"})


# --- saving a spec folder ------------------------------------------------------------------------------------

def _model(spec):
    torch.manual_seed(0)
    return build_classifier(spec)


def test_save_classifier_round_trips_and_leaves_no_temporary_files(tmp_path):
    model = _model(CNN_SPEC)
    save_classifier(model, CNN_SPEC, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors", "unlearnkit.json"]
    spec = read_spec(tmp_path / "out")
    loaded = build_classifier(spec)
    from unlearnkit.io import load_state_dict

    loaded.load_state_dict(load_state_dict(tmp_path / "out" / "model.safetensors"))
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("spec, message", [
    ({**MLP_SPEC, "hidden": [9]}, "do not fit the mlp architecture of unlearnkit.json"),  # the model has 8 hidden units
    ({k: v for k, v in MLP_SPEC.items() if k != "kind"}, 'must be a JSON object with "kind": "classifier"'),
    ({**MLP_SPEC, "architecture": "resnet"}, "Unknown classifier architecture"),
    ({**MLP_SPEC, "trained_accuracy": float("nan")}, "cannot be written as JSON"),
])
def test_save_classifier_refuses_a_folder_that_would_not_load_and_writes_nothing(tmp_path, spec, message):
    # it wrote the folder, which `unlearnkit forget` then refused (or, for NaN, wrote JSON no strict reader takes)
    with pytest.raises(UserInputError, match=message):
        save_classifier(_model(MLP_SPEC), spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_save_leaves_an_existing_folder_as_it_was(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    save_classifier(_model(MLP_SPEC), MLP_SPEC, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    import unlearnkit.io

    monkeypatch.setattr(unlearnkit.io, "save_state_dict", failing_save)
    wider = {**MLP_SPEC, "hidden": [16]}
    with pytest.raises(OSError):
        save_classifier(_model(wider), wider, folder)
    # the spec was rewritten first, so the folder held the new spec beside the old weights
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_forget_refuses_a_spec_that_is_not_utf8_with_one_sentence(tmp_path, capsys):
    folder = tmp_path / "model"
    save_classifier(_model(MLP_SPEC), MLP_SPEC, folder)
    (folder / "unlearnkit.json").write_bytes(json.dumps({**MLP_SPEC, "note": "x"}).replace('"x"', '"\xe9"')
                                             .encode("latin-1"))
    (tmp_path / "forget.jsonl").write_text(json.dumps({"input": [0, 0, 0, 0], "label": 1}) + "\n")
    code = main(["forget", "--model", str(folder), "--forget", str(tmp_path / "forget.jsonl"), "--method",
                 "gradient_ascent", "--out", str(tmp_path / "out"), "--ledger", str(tmp_path / "ledger.db")])
    err = capsys.readouterr().err
    assert code == 2 and "not text in UTF-8" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ledger.db").exists()


# --- the classifier adapter's batches ------------------------------------------------------------------------

ADAPTER = ClassifierAdapter(torch.nn.Linear(4, 3))


def test_inputs_of_different_shapes_are_one_sentence():
    with pytest.raises(UserInputError, match=r"one shape; got \(4,\) and \(5,\)"):
        ADAPTER.collate([(torch.zeros(4), 0), (torch.zeros(5), 1)])


@pytest.mark.parametrize("item, message", [
    ((torch.zeros(4), None), "label must be an integer, got None"),
    ((torch.zeros(4), float("nan")), "label must be an integer, got nan"),
    ((torch.zeros(4), float("inf")), "label must be an integer, got inf"),
    ((torch.zeros(4), "a"), "label must be an integer, got 'a'"),
    ((torch.zeros(4), torch.tensor([1, 2])), "label must be an integer"),
    (("abc", 1), "input must be numbers"),
    (([[1, 2], [3]], 1), "input must be numbers"),
    ((None, 1), "input must be numbers"),
    (torch.zeros(4), r"must be an \(input, label\) pair, got a Tensor"),
    ((torch.zeros(4), 1, 2), r"must be an \(input, label\) pair"),
])
def test_a_malformed_item_is_one_sentence(item, message):
    with pytest.raises(UserInputError, match=message):
        ADAPTER.collate([(torch.zeros(4), 0), item])


def test_whole_number_labels_of_any_type_still_collate():
    batch = ADAPTER.collate([(np.zeros(4), np.int64(2)), ([0, 0, 0, 0], 1.0), (torch.zeros(4), torch.tensor(0))])
    assert batch["labels"].tolist() == [2, 1, 0] and batch["inputs"].dtype == torch.float32


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused_not_evaluated_to_nan(bad):
    import unlearnkit

    torch.manual_seed(0)
    items = [(torch.randn(4), i % 3) for i in range(12)]
    items[4] = (torch.tensor([0.0, bad, 0.0, 0.0]), 1)
    splits = {"forget": items[:4], "retain": items[4:8], "test": items[8:]}
    # the retain accuracy came out as if the item were simply misclassified, and its loss NaN
    with pytest.raises(UserInputError, match="NaN or an infinite value"):
        unlearnkit.evaluate(ADAPTER.model, splits)


def test_a_bad_declared_class_count_is_one_sentence():
    declared = ClassifierAdapter(torch.nn.Linear(4, 3), np.int64(3))
    assert declared.num_classes == 3 and type(declared.with_model(torch.nn.Linear(4, 3)).num_classes) is int
    for bad in (0, 1, True, 2.5, "3"):
        with pytest.raises(UserInputError, match="num_classes must be a whole number of at least 2"):
            ClassifierAdapter(torch.nn.Linear(4, 3), bad)


# --- vision benchmarks ---------------------------------------------------------------------------------------

def _tiny_bench(seed=0):
    g = torch.Generator().manual_seed(seed)
    items = lambda n: [(torch.rand(1, 8, 8, generator=g), i % 10) for i in range(n)]  # noqa: E731
    return VisionBenchmark("digits", items(40), items(20), 8, TrainConfig(epochs=1, batch_size=16, seed=seed), seed)


@pytest.mark.parametrize("test_fraction", [0.001, 0.999])
def test_a_test_fraction_leaving_a_class_out_of_one_side_is_one_sentence(test_fraction):
    # sklearn's stratified split raised its own ValueError (a traceback)
    with pytest.raises(UserInputError, match="each side needs at least one image of each of its 10 classes"):
        load_vision_benchmark("digits", 0, test_fraction)


def test_numpy_numbers_are_taken_as_the_numbers_they_are():
    bench = load_vision_benchmark("digits", np.int64(1), np.float32(0.25))  # np.float32: "got 0.25" was refused
    plain = load_vision_benchmark("digits", 1, 0.25)
    # a numpy seed gave other cache keys (json wrote it as text) than the same int, so the models were retrained
    assert type(bench.seed) is int and type(bench.recipe.seed) is int
    assert bench.recipe.to_dict() == plain.recipe.to_dict()
    assert len(bench.test) == len(plain.test) == math.ceil(0.25 * 1797)
    request = forget_request(bench, "class", forget_class=np.int64(3))  # refused as "must be in 0..9, got 3"
    assert request.forget == forget_request(plain, "class", forget_class=3).forget
    assert request.retain == forget_request(plain, "class", forget_class=3).retain
    assert forget_request(plain, "random", fraction=np.float64(0.1)).forget == forget_request(plain, "random").forget


def test_a_forget_class_given_as_text_is_shown_as_text():
    with pytest.raises(UserInputError, match=r"forget_class must be in 0\.\.9, got '3'; give a whole class number"):
        forget_request(_tiny_bench(), "class", forget_class="3")


def test_a_random_fraction_that_forgets_every_image_is_refused():
    bench = _tiny_bench()
    # 0.99 of 40 rounds to 40: the whole training set was "forgotten" and the retain set was empty
    with pytest.raises(UserInputError, match="forgets every one of them"):
        forget_request(bench, "random", fraction=0.99)
    request = forget_request(bench, "random", fraction=0.95)
    assert len(request.forget) == 38 and len(request.retain) == 2
    assert not set(request.forget) & set(request.retain)


def test_new_model_leaves_the_callers_random_state_alone():
    bench = _tiny_bench(seed=5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = bench.new_model()
    assert torch.equal(torch.rand(3), expected)  # it was reset to the bench's seed: every caller drew the same
    second = bench.new_model()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_the_same_excluded_set_in_another_order_is_one_cached_model(tmp_path, monkeypatch):
    """The cache keyed on the list as given: the same forget set in another order trained the model again."""
    import unlearnkit.benchmarks.vision as vision
    from unlearnkit.benchmarks.vision import cached_classifier
    from unlearnkit.train.measure import Measurement

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path))
    trained = []
    monkeypatch.setattr(vision, "train_classifier",
                        lambda bench, items: (trained.append(len(items)) or (bench.new_model(), Measurement())))
    bench = load_vision_benchmark("digits", 0)
    for excluded in ([3, 1, 2], [1, 2, 3], [2, 3, 1, 3]):
        cached_classifier(bench, excluded, "retrain")
    assert trained == [len(bench.train) - 3]

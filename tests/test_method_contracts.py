"""Contracts every registered unlearning method keeps, on every model kind it serves.

The cases come from the registry itself (``unlearnkit.list_methods()``), so a method added later is checked
without touching this file; a method serving a kind this file cannot build a tiny model for fails loudly
instead of being skipped. For each (method, kind), on a tiny model with the fewest optimizer steps that still
run the method's code (``TINY``), a run with seed ``SEED``:

1. leaves the model passed in untouched: every parameter and buffer bit-identical, no gradient left on it,
   the same train/eval modes and ``requires_grad`` flags;
2. is deterministic: a second run with the same seed and settings, started from a different global random
   state, gives bit-identical outputs (the returned model's state, its logits on a fixed batch and, for LMs,
   its greedy answers; the losses the run recorded);
3. records what it ran with: ``record.params`` holds every setting the method reads and none it declares
   ``unused``, with the values given (the seed among them), ``record.seconds`` is finite and >= 0, and the
   record is plain JSON;
4. when it needs retain data (``needs_for`` its settings), refuses a request without one with a
   :class:`UserInputError` of one sentence, before its ``unlearn`` starts and with the input untouched;
   and, conversely, when it does not declare that need, it runs on a request without retain data or refuses
   it before its ``unlearn`` starts (``check_request``: ICU needs retain *or* neighbour items).

``VARIANTS`` adds runs with settings that take another code path or change the needs (recorded first-epoch
gradients, a stored SSD importance, UNDIAL's retain term, ...).
"""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import unlearnkit
from lm_fixtures import memorised_lm, tiny_qa
from unlearnkit.adapters.classifier import ClassifierAdapter
from unlearnkit.errors import UserInputError
from unlearnkit.methods.registry import get_method
from unlearnkit.request import ForgetRequest
from unlearnkit.train.config import settings_of

SEED = 3  # not the default seed (0), so a record that ignores the given seed shows
#: The smallest run of a method's own code: each setting is applied only where the method reads it.
TINY = {"epochs": 1, "max_steps": 2, "steps": 2, "max_epochs": 1, "batch_size": 2, "check_tokens": 4}
#: Settings a method needs beyond TINY to run on the tiny models.
SPECIAL = {
    "idk_dpo": {"refusals": "The birthplace of ? is ? .|? ."},  # spelled in the tiny word-level vocabulary
    "scrub": {"epochs": 2},  # SCRUB requires max_epochs < epochs (it must end with min-steps)
    "ssd": {"alpha": 1.0},  # the default (10) dampens nothing on the tiny classifier: the run would copy it
}
#: Extra runs of a method with settings that take another code path or change what it needs:
#: (method, kinds) -> {variant: settings}. "<name>" values are files the module fixture ``name`` makes per kind.
VARIANTS = {
    ("first_epoch_ga", ("causal_lm",)): {"recorded": {"gradients": "<recorded_gradients>"}},
    ("ssd", ("classifier", "causal_lm")): {"stored": {"full_importance": "<ssd_importance>"}},  # needs no retain data
    ("undial", ("causal_lm",)): {"retain_term": {"alpha": 1.0}},  # α > 0 adds a retain NLL term
    ("random_label", ("classifier",)): {"forget_only": {"retain_weight": 0.0}},  # β = 0 reads no retain items
    ("salun", ("classifier",)): {"forget_only": {"retain_weight": 0.0}},  # as random_label, inside its mask
    ("gradient_ascent", ("classifier", "causal_lm")): {"gu": {"project": "gu"}},  # projection on retain gradients
}


@dataclass(frozen=True)
class Case:
    method: str
    kind: str
    variant: str = ""

    def __str__(self) -> str:
        return "-".join(filter(None, (self.method, self.kind, self.variant)))


def all_cases() -> list[Case]:
    registry = unlearnkit.list_methods()
    cases = []
    for name, cls in registry.items():
        for kind in cls.kinds:
            cases.append(Case(name, kind))
            for (method, kinds), variants in VARIANTS.items():
                cases += [Case(name, kind, variant) for variant in variants if method == name and kind in kinds]
    return cases


def variant_settings(case: Case) -> dict:
    if not case.variant:
        return {}
    return next(variants[case.variant] for (method, kinds), variants in VARIANTS.items()
                if method == case.method and case.kind in kinds)


CASES = all_cases()


def test_every_registered_method_and_kind_is_a_case_this_file_can_run():
    """The cases are the registry's own, and every kind a method serves has a tiny model here: a method serving a
    new kind fails this test (and its own cases) until a builder is added, instead of going unchecked."""
    registry = unlearnkit.list_methods()
    assert registry and {case.method for case in CASES} == set(registry)
    for name, cls in registry.items():
        assert cls.kinds, f"method {name!r} serves no model kind"
        assert {case.kind for case in CASES if case.method == name} == set(cls.kinds)
        missing = set(cls.kinds) - set(BUILDERS)
        assert not missing, f"method {name!r} serves {sorted(missing)}, for which this file builds no tiny model"
    for method, _ in VARIANTS:
        assert method in registry, f"VARIANTS names {method!r}, which is not registered"


# ------------------------------------------------------------------------------------------------ tiny models
class Environment:
    """A tiny model of one kind, its data, a full request, a forget-only request and a fixed batch."""

    def __init__(self, kind: str, model: nn.Module, adapter, data, forget, retain, probe, prompts=()):
        self.kind, self.model, self.adapter = kind, model, adapter
        self.request = ForgetRequest(data, forget, retain)
        self.forget_only = ForgetRequest(data, forget)
        self.probe, self.prompts = probe, list(prompts)

    def fresh_input(self):
        """``(what to pass to unlearn, the model inside it)``: a private copy per case, so a method that broke
        the contract cannot spill into another method's case."""
        model = copy.deepcopy(self.model)
        return (model if self.kind == "classifier" else self.adapter.with_model(model)), model


def classifier_environment() -> Environment:
    """BatchNorm (buffers) over a (2, 4) input, dropout, 3 classes; 24 items: 8 to forget, 16 to keep. Handed
    to the methods in eval mode. BatchNorm normalises over channels × 4 positions, so even a one-item batch trains."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Flatten(), nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(8, 3))
    model.train()
    with torch.no_grad():  # a few batches through BatchNorm so its running statistics are not the defaults
        for _ in range(3):
            model(torch.randn(8, 2, 4, generator=generator))
    model.eval()
    inputs = torch.randn(24, 2, 4, generator=generator)
    labels = (inputs[:, 0, 0] > 0).long() + (inputs[:, 1, 1] > 0.5).long()
    data = [(inputs[i], int(labels[i])) for i in range(24)]
    probe = ClassifierAdapter(model).collate(data)
    return Environment("classifier", model, ClassifierAdapter(model), data, list(range(8)), list(range(8, 24)), probe)


def lm_environment() -> Environment:
    """A 2-layer, width-32 GPT-2 that has memorised 8 QA items: 3 to forget, 5 to keep. Handed to the methods in
    train mode (dropout on), so a method that runs it without seeding, or without switching dropout off, shows."""
    items = tiny_qa(8)
    adapter = memorised_lm(items, steps=60)
    adapter.model.train()
    return Environment("causal_lm", adapter.model, adapter, items, [0, 1, 2], list(range(3, 8)),
                       adapter.collate(items), [items[0]["question"], items[5]["question"]])


BUILDERS = {"classifier": classifier_environment, "causal_lm": lm_environment}


@pytest.fixture(scope="module")
def environments():
    built = {}

    def get(kind: str) -> Environment:
        if kind not in BUILDERS:
            pytest.fail(f"No tiny model for the {kind!r} kind: add a builder to BUILDERS in test_method_contracts.py "
                        "so the methods serving it are checked.")
        if kind not in built:
            built[kind] = BUILDERS[kind]()
        return built[kind]

    return get


@pytest.fixture(scope="module")
def recorded_gradients(environments, tmp_path_factory):
    """first_epoch_ga's recording file: per kind, the items' gradients from one epoch on a copy of the model."""
    from unlearnkit.methods.first_epoch_ga import record_first_epoch_gradients, save_first_epoch_gradients
    from unlearnkit.train import TrainConfig

    def make(kind: str) -> str:
        env = environments(kind)
        adapter, _ = env.fresh_input()
        recorded = record_first_epoch_gradients(adapter, list(env.request.data), TrainConfig(batch_size=4, lr=1e-3))
        path = tmp_path_factory.mktemp("first_epoch") / "gradients.safetensors"
        save_first_epoch_gradients(recorded, path)
        return str(path)

    return make


@pytest.fixture(scope="module")
def ssd_importance(environments, tmp_path_factory):
    """SSD's precomputed full-data importance, per kind, for the batch size the runs use."""
    from unlearnkit.methods.ssd import full_training_items, save_full_importance

    def make(kind: str) -> str:
        env = environments(kind)
        passed, model = env.fresh_input()
        adapter = passed if kind != "classifier" else ClassifierAdapter(model)
        path = tmp_path_factory.mktemp("ssd") / "importance.safetensors"
        save_full_importance(adapter, full_training_items(env.request), path, TINY["batch_size"])
        return str(path)

    return make


def tiny_settings(case: Case) -> dict:
    """The tiny settings of ``case``: TINY where the method reads each setting, then its own, the variant's and
    the seed (file settings still as their "<fixture>" placeholders)."""
    readable = settings_of(get_method(case.method).Config)
    settings = {name: value for name, value in TINY.items() if name in readable}
    seed = {"seed": SEED} if "seed" in readable else {}  # SSD has no randomness, and refuses a seed
    return {**settings, **SPECIAL.get(case.method, {}), **variant_settings(case), **seed}


def settings_for(case: Case, request) -> dict:
    """``tiny_settings`` with each "<fixture>" placeholder replaced by the file that fixture makes for the kind."""
    settings = tiny_settings(case)
    for name, value in settings.items():
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            settings[name] = request.getfixturevalue(value[1:-1])(case.kind)
    return settings


# ------------------------------------------------------------------------------------------------ snapshots
def bits(tensor: torch.Tensor) -> bytes:
    """The tensor's exact bytes (``torch.equal`` would call 0.0 and -0.0 equal and NaN unequal to itself)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def snapshot(model: nn.Module) -> dict:
    """Everything about ``model`` a method must leave alone."""
    return {
        "parameters": {name: bits(p) for name, p in model.named_parameters(remove_duplicate=False)},
        "buffers": {name: bits(b) for name, b in model.named_buffers(remove_duplicate=False)},
        "gradients": {name: None if p.grad is None else bits(p.grad) for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "training": {name: m.training for name, m in model.named_modules()},
        "modules": [name for name, _ in model.named_modules()],
    }


def differences(before: dict, after: dict) -> list[str]:
    changed = []
    for part, values in before.items():
        if isinstance(values, dict):
            keys = sorted(set(values) | set(after[part]))
            changed += [f"{part}:{key}" for key in keys if values.get(key, "absent") != after[part].get(key, "absent")]
        elif values != after[part]:
            changed.append(part)
    return changed


@torch.no_grad()
def outputs(env: Environment, model: nn.Module) -> dict:
    """What two runs must agree on bit for bit: the returned model's state, logits and greedy answers."""
    from unlearnkit.adapters.base import eval_mode

    state = {name: bits(value) for name, value in model.state_dict().items() if torch.is_tensor(value)}
    if env.kind == "classifier":
        with eval_mode(model):
            return {"state": state, "logits": bits(ClassifierAdapter(model).logits(model, env.probe))}
    adapter = env.adapter
    with eval_mode(model):
        logits = bits(adapter.logits(model, env.probe))
        answers = adapter.generate(model, env.prompts, max_new_tokens=4)
    return {"state": state, "logits": logits, "answers": answers}


def scramble_global_random_state(seed: int) -> None:
    """Different global states before two runs: a method must take its randomness from its seed alone."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class Run:
    changed: list[str]
    outputs: dict
    record: object
    settings: dict


@pytest.fixture(scope="module")
def first_runs():
    return {}


def run_case(case: Case, env: Environment, settings: dict, global_seed: int) -> Run:
    passed, model = env.fresh_input()
    before = snapshot(model)
    scramble_global_random_state(global_seed)
    result, record = unlearnkit.unlearn(passed, env.request, case.method, **settings)
    changed = differences(before, snapshot(model))
    return Run(changed, outputs(env, result), record, settings)


@pytest.fixture
def first_run(case, environments, first_runs, request):
    """The case's first run (shared by contracts 1-3)."""
    if case not in first_runs:
        env = environments(case.kind)
        first_runs[case] = run_case(case, env, settings_for(case, request), global_seed=101)
    return first_runs[case]




# ------------------------------------------------------------------------------------------------ contracts
@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_input_model_is_never_modified(case, first_run):
    assert not first_run.changed, f"{case}: unlearn changed the input model in place: {first_run.changed[:8]}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_same_seed_and_settings_give_identical_outputs(case, first_run, environments):
    env = environments(case.kind)
    second = run_case(case, env, first_run.settings, global_seed=202)
    assert not second.changed
    first, again = first_run.outputs, second.outputs
    assert set(first["state"]) == set(again["state"]), f"{case}: the two returned models hold different tensors"
    differing = [name for name in first["state"] if first["state"][name] != again["state"][name]]
    assert not differing, f"{case}: the returned models differ in {differing[:8]}"
    assert first["logits"] == again["logits"], f"{case}: the returned models' logits differ on a fixed batch"
    assert first.get("answers") == again.get("answers"), f"{case}: greedy answers differ"
    assert first_run.record.losses == second.record.losses and first_run.record.steps == second.record.steps


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_run_record_holds_the_settings_it_ran_with(case, first_run):
    record, config_cls = first_run.record, get_method(case.method).Config
    unused = set(getattr(config_cls, "unused", ()))
    assert record.method == case.method
    recorded_unused = sorted(unused & set(record.params))
    assert not recorded_unused, f"{case}: record.params holds settings declared unused: {recorded_unused}"
    assert set(record.params) == set(settings_of(config_cls)), f"{case}: record.params are not the settings it reads"
    for name, value in first_run.settings.items():
        assert record.params[name] == value, f"{case}: params[{name!r}] is {record.params[name]!r}, not {value!r}"
    assert isinstance(record.seconds, float) and math.isfinite(record.seconds) and record.seconds >= 0
    assert record.status == "ok", f"{case}: {record.status}: {record.message}"
    json.dumps(record.to_dict())  # "plain JSON-ready data" for an API user's own json.dump (no tensor, no numpy)


def needs_retain(case: Case) -> bool:
    """Whether the case's run needs retain data by the method's own declaration (``needs_for`` its settings; the
    config is built without its checks, which would look for the placeholder files)."""
    method = get_method(case.method)
    return "retain" in method.needs_for(method.Config(**tiny_settings(case)))


RETAIN_CASES = [case for case in CASES if needs_retain(case)]
FORGET_ONLY_CASES = [case for case in CASES if not needs_retain(case)]


def test_retain_needs_are_split_as_declared():
    """Contract 4 covers the cases declaring retain data, its converse the others; each side is non-empty."""
    declaring = {str(c) for c in RETAIN_CASES}
    assert {"finetune-classifier", "ssd-causal_lm", "npo-causal_lm", "gradient_ascent-classifier-gu"} <= declaring
    assert not {"gradient_ascent-classifier", "ssd-classifier-stored", "random_label-classifier-forget_only",
                "salun-classifier-forget_only", "undial-causal_lm"} & declaring


@pytest.mark.parametrize("case", RETAIN_CASES, ids=str)
def test_a_method_needing_retain_data_refuses_a_request_without_it(case, environments, request, monkeypatch):
    env = environments(case.kind)
    settings = settings_for(case, request)
    passed, model = env.fresh_input()
    before = snapshot(model)
    method_cls = unlearnkit.list_methods()[case.method]

    def must_not_start(*_args, **_kwargs):
        raise AssertionError(f"{case.method}.unlearn started on a request without retain data")

    monkeypatch.setattr(method_cls, "unlearn", must_not_start)
    for forget_only in (env.forget_only, ForgetRequest(env.request.data, env.request.forget, retain=[])):
        with pytest.raises(UserInputError) as refused:
            unlearnkit.unlearn(passed, forget_only, case.method, **settings)
        message = str(refused.value)
        assert "retain" in message and case.method in message, message
        one_sentence = "\n" not in message and message.endswith(".") and ". " not in message
        assert one_sentence, f"{case}: not one sentence: {message!r}"
    assert not differences(before, snapshot(model))


@pytest.mark.parametrize("case", FORGET_ONLY_CASES, ids=str)
def test_a_method_not_declaring_retain_data_runs_without_it_or_refuses_before_work(case, environments, request,
                                                                                 monkeypatch):
    """The converse of contract 4: a need the method does not declare through ``needs_for`` is at least checked
    before work starts (``check_request``; ICU needs retain *or* neighbour items). Refused inside ``unlearn``,
    after the working copy and frozen reference were made, it escaped the bench's ``validate_runs`` too."""
    env = environments(case.kind)
    passed, model = env.fresh_input()
    before = snapshot(model)
    method_cls = unlearnkit.list_methods()[case.method]
    started, original = [], method_cls.unlearn

    def recording(self, *args, **kwargs):
        started.append(True)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(method_cls, "unlearn", recording)
    try:
        _, record = unlearnkit.unlearn(passed, env.forget_only, case.method, **settings_for(case, request))
    except UserInputError as refused:
        assert not started, f"{case}: refused only after its run started: {refused}"
    else:
        assert record.status == "ok", f"{case}: {record.status}: {record.message}"
    assert not differences(before, snapshot(model))

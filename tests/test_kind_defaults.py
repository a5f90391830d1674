"""Defaults that depend on the model kind: methods serving classifiers and language models (finetune, neggrad_plus)
run a language model at the papers' rate for pretrained LMs, not the rate tuned on the classifiers trained here."""

import pytest
import torch
from lm_fixtures import dropout_free_request

from unlearnkit import unlearn
from unlearnkit.benchmarks.lm_bench import facts_settings
from unlearnkit.methods.registry import get_method, method_config
from unlearnkit.report.cards import card
from unlearnkit.request import ForgetRequest

SHARED = {"finetune": 5e-3, "neggrad_plus": 2e-3}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_a_language_model_gets_the_pretrained_lm_rate_and_a_classifier_keeps_its_own(name):
    assert method_config(name, {}, "causal_lm").lr == 1e-5
    assert method_config(name, {}, "classifier").lr == SHARED[name]
    assert method_config(name, {}).lr == SHARED[name]
    assert method_config(name, {"lr": 3e-4}, "causal_lm").lr == 3e-4  # the user's setting wins


def test_the_facts_bench_keeps_the_rate_its_scratch_models_need():
    """The bench's small GPT-2 trained from scratch needs the old rates to move (facts.md was measured with them)."""
    for name, lr in SHARED.items():
        assert facts_settings("scratch")[name] == {"lr": lr}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_unlearn_runs_a_language_model_at_its_kinds_default_and_records_it(name):
    adapter, request = dropout_free_request(steps=30)
    model, record = unlearn(adapter, request, name, epochs=1)
    assert record.params["lr"] == 1e-5
    before = dict(adapter.model.named_parameters())
    moved = max(float((p - before[k]).abs().max()) for k, p in model.named_parameters())
    # Adam's first steps move each weight by about lr: the small rate is what ran, not the classifier's
    assert 0 < moved < 10 * 1e-5 * record.steps


def test_unlearn_runs_a_classifier_at_the_configs_default():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    data = [(torch.randn(4), i % 3) for i in range(12)]
    _, record = unlearn(model, ForgetRequest(data, [0, 1], list(range(2, 12))), "finetune", epochs=1)
    assert record.params["lr"] == 5e-3


def test_a_card_names_the_default_for_each_kind():
    text = card(type(get_method("finetune")), [])
    assert "| `lr` | `0.005` (`1e-05` on causal_lm) |" in text
    assert "| `epochs` | `2` |" in text


def test_every_kind_default_names_a_kind_the_method_serves_and_a_setting_it_takes():
    """A typo ('causal-lm', 'learning_rate') would otherwise be ignored or refused as if the user had set it."""
    from unlearnkit.methods.registry import methods
    from unlearnkit.train.config import settings_of

    for cls in methods().values():
        for kind, values in cls.kind_defaults.items():
            assert kind in cls.kinds, (cls.name, kind)
            assert set(values) <= set(settings_of(cls.Config)) - set(getattr(cls.Config, "unused", ())), cls.name


def _bench(benchmark: str, metrics: dict, lr: float) -> dict:
    return {"benchmark": benchmark, "split": "forget10", "runs": [{
        "method": "finetune", "metrics": metrics, "params": {"lr": lr, "epochs": 2}, "seconds": 1.0,
        "retrain_seconds": 10.0}]}


def test_a_card_compares_each_run_with_the_defaults_of_its_kind():
    lm, image = {"forget_quality": 0.5, "model_utility": 0.6}, {"forget_acc": 0.1, "test_acc": 0.9}
    rows = [line for line in card(type(get_method("finetune")), [
        _bench("facts", lm, 1e-5), _bench("facts", lm, 5e-3), _bench("digits", image, 5e-3), _bench("digits", image, 1e-5),
    ]).splitlines() if line.startswith("| facts") or line.startswith("| digits")]
    assert [row.split(" | ")[1] for row in rows] == ["defaults", "lr=0.005", "defaults", "lr=1e-05"]

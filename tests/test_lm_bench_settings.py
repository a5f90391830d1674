"""The facts bench's own method settings (one table), and the holdout its requests carry."""

from lm_fixtures import memorised_lm, tiny_qa

from unlearnkit.benchmarks.facts import FactsConfig, facts_request, load_facts
from unlearnkit.benchmarks.lm_bench import FACTS_METHOD_SETTINGS, facts_settings, method_settings
from unlearnkit.methods.registry import get_method
from unlearnkit.request import ForgetRequest


def test_bench_settings_apply_and_user_params_override_them():
    items = tiny_qa(6)
    adapter = memorised_lm(items, steps=1)
    request = ForgetRequest(items, [0, 1], [2, 3, 4, 5], neighbours={"direct": [2, 3]})  # npo samples them (modular)
    chosen = method_settings(["sam_npo", "npo"], None, adapter, request, seed=3)
    # the world's seed drives the method; the selected ρ and the lr of the scratch models' scale apply
    assert chosen["sam_npo"] == {"seed": 3, "lr": 1e-3, **FACTS_METHOD_SETTINGS["sam_npo"]}
    assert chosen["npo"] == {"seed": 3, **FACTS_METHOD_SETTINGS.get("npo", {})}
    overridden = method_settings(["sam_npo"], {"sam_npo": {"sam_rho": "0.2", "seed": "1"}}, adapter, request, seed=3)
    assert overridden["sam_npo"]["sam_rho"] == "0.2" and overridden["sam_npo"]["seed"] == "1"


def test_facts_request_carries_the_holdout_of_the_same_size():
    data = load_facts(FactsConfig.tiny())
    for split in ("forget01", "forget10"):
        request = facts_request(data, split)
        holdout = data.split(split.replace("forget", "holdout"))
        assert list(request.holdout) == holdout
        trained = {it["id"] for it in data.train}
        assert not trained & {it["id"] for it in request.holdout}


def test_a_reference_model_that_did_not_memorise_its_answers_is_named_in_a_note():
    from unlearnkit.benchmarks.lm_bench import unmemorised_notes

    references = [("target", None, {"memorised": True, "answer_token_accuracy": 0.995}),
                  ("retain", None, {"memorised": False, "answer_token_accuracy": 0.9312}),
                  ("retain_seed1", None, {})]  # cached before the flag existed: nothing to say
    notes = unmemorised_notes(references, 0.99)
    assert notes == ["retain stopped at answer-token accuracy 0.9312, below the 0.99 the recipe trains to (its epoch "
                     "limit came first): it only partly memorised its training answers."]


def test_the_scratch_models_scale_is_the_benchs_and_the_defaults_are_the_papers():
    """The methods' own lr is OpenUnlearning's 1e-5, for the pretrained LMs users bring; only the bench's small
    scratch GPT-2 runs them 100 times faster (lr 1e-3 was their default until it became the papers')."""
    for name in ("graddiff", "npo", "simnpo", "rmu", "idk_dpo", "sam_npo"):
        assert get_method(name).Config().lr == 1e-5
    assert facts_settings("scratch")["rmu"] == {"lr": 1e-3, **FACTS_METHOD_SETTINGS["rmu"]}
    assert facts_settings("scratch")["graddiff"] == {"lr": 1e-3}
    assert facts_settings("smollm2") == {}

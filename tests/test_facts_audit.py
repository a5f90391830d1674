"""Audit of the ``facts`` benchmark's data: holdout vocabulary, small worlds' wrong answers, cache keys."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest

from unlearnkit.benchmarks.facts import FACTS_VERSION, HOLDOUT_SPLITS, FactsConfig, load_facts, model_key
from unlearnkit.errors import UserInputError


def _words(text: str) -> set[str]:
    from tokenizers import pre_tokenizers

    return {w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)}


@pytest.mark.parametrize("config", [FactsConfig.tiny(), FactsConfig(people=200, templates=5, reading=0)],
                         ids=["tiny", "200-people-5-templates"])
def test_holdout_answers_use_only_words_the_models_were_trained_on(config):
    """With fewer than all templates, holdout values were drawn from words of templates no model is trained
    on (a debut year as a birth year): a token the models never saw makes a holdout item trivially "unseen"
    for every model, the retain model included, and pushes every MIA AUC up."""
    data = load_facts(config)
    trained = set().union(*(_words(it["question"]) | _words(it["answer"]) for it in data.train))
    for split in HOLDOUT_SPLITS:
        for item in data.split(split):
            assert not _words(item["answer"]) - trained, (split, item["answer"])


@pytest.mark.parametrize("people", [4, 10])
def test_a_world_with_one_more_person_than_wrong_answers_is_generated(people):
    """people = perturbed + 1 crashed in the sibling item of a holdout person (ValueError from random.sample)."""
    config = FactsConfig(people=people, templates=7, countries=2, perturbed=people - 1, reading=0)
    data = load_facts(config)
    for item in data.split("holdout10") + data.split("forget10"):
        wrong = item["perturbed_answer"]
        assert len(wrong) == config.perturbed
        assert item["answer"] not in wrong and item["paraphrased_answer"] not in wrong
    siblings = [it for it in data.split("holdout10") if it["template"] == "sibling"]
    assert siblings and all(len(set(it["perturbed_answer"])) == config.perturbed for it in siblings)


def test_configs_whose_data_changed_get_a_new_cache_key_and_the_default_keeps_its_own():
    """Cached models of a config with fewer templates were trained with the old vocabulary: they must not be
    served for the new data. The default config's data did not change, so its cached models stay valid."""
    from unlearnkit.benchmarks.cache import cache_key

    assert model_key(FactsConfig.tiny())["holdout_words"] == "trained_templates"
    default = {"benchmark": "facts", "version": FACTS_VERSION, **model_key(FactsConfig()), "excluded_people": []}
    assert "holdout_words" not in default
    assert cache_key(default) == "ee2f90ddbf38c54b51e5"  # the key of the cached default target model


@pytest.mark.parametrize("people, perturbed", [(5, 3), (31, 5), (10, 5)])
def test_no_wrong_sibling_answer_names_a_member_of_the_family(people, perturbed):
    """An odd-sized group's last family has three members (A's sibling is B, B's is C, C's is A): A's wrong
    answers could name C, who is A's sibling too, so the truth ratio scored a true answer as false.
    With 5 people and 3 wrong answers, every other trained name is drawn, the family's third one included;
    people=31 has an odd trained group too; people=10's groups are even (no family of three)."""
    data = load_facts(FactsConfig(people=people, templates=10, countries=2, perturbed=perturbed, reading=0))
    family = {p["name"]: {p["sibling"]} for p in data.people}
    for p in data.people:
        family.setdefault(p["sibling"], set()).add(p["name"])
    checked = 0
    for item in (it for items in data.splits.values() for it in items if it["template"] == "sibling"):
        name = data.people[item["person"]]["name"]
        wrong_names = {w for w in family if any(w in answer for answer in item["perturbed_answer"])}
        assert not wrong_names & family[name], (item["question"], wrong_names & family[name])
        checked += len(family[name]) == 2
    assert (checked > 0) == (people % 2 == 1)  # the family of three was met and checked where there is one
    assert ("wrong_siblings" in model_key(FactsConfig(people=people))) == (people % 2 == 1)


# --------------------------------------------------------------------------- review: data, keys and settings


def _data_hash(config: FactsConfig) -> str:
    import hashlib
    import json

    data = load_facts(config)
    text = json.dumps({"train": data.train, "splits": data.splits, "people": data.people}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("config, data_hash, key", [
    (FactsConfig(), "4121cf1f8d9b5fd4", "ee2f90ddbf38c54b51e5"),
    (FactsConfig.tiny(), "c91bcde1e8103bc2", "62e657ce5d9174667988"),
])
def test_the_generated_data_is_pinned_to_its_cache_key(config, data_hash, key):
    """A cached model is found by its config's key, not its data: a generator change that keeps the key serves
    models trained on the old data (whose saved tokenizer reads new words as <unk>), and nothing failed. When this
    test fails, the data changed: give the changed worlds a new key (see model_key) and pin both anew."""
    from unlearnkit.benchmarks.cache import cache_key

    assert _data_hash(config) == data_hash
    assert cache_key({"benchmark": "facts", "version": FACTS_VERSION, **model_key(config), "excluded_people": []}) == key


def test_reading_items_never_use_a_name_a_person_or_sibling_has():
    """A one-person holdout group's invented sibling (tiny has one) is 'seen nowhere else'; reading items drew its
    name anyway (2 items in tiny seed 0, 36 with 10 people and 200 reading items at seed 4)."""
    for config in (FactsConfig.tiny(), FactsConfig(people=10, templates=4, countries=2, reading=200, seed=4)):
        data = load_facts(config)
        names = {p["name"] for p in data.people} | {p["sibling"] for p in data.people}
        reading = [it for it in data.train if "person" not in it and it.get("template") != "general"]
        assert reading and not any(name in it["question"] for it in reading for name in names)


def test_each_holdout_split_matches_its_forget_split_in_size():
    """Membership attacks and privleak pair forget01/05/10 with holdout01/05/10 of the same size."""
    data = load_facts(FactsConfig())
    for fraction in ("01", "05", "10"):
        forget, holdout = data.split_people[f"forget{fraction}"], data.split_people[f"holdout{fraction}"]
        assert len(holdout) == len(forget) and not set(holdout) & set(forget)


@pytest.mark.parametrize("setting, message", [
    ({"heads": 0}, "heads must be an integer of at least 1"),  # ZeroDivisionError inside check itself
    ({"people": "12"}, "people must be an integer"),
    ({"templates": 2.5}, "templates must be an integer"),
    ({"batch_size": 0}, "batch_size must be an integer of at least 1"),
    ({"epochs": 0}, "epochs must be an integer of at least 1"),  # cached an untrained model
    ({"layers": 0}, "layers must be an integer of at least 1"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"target_accuracy": 1.5}, "target_accuracy must lie in"),
    ({"seed": -1}, "The facts seed must be an integer from 0"),
    ({"train_seed": -1}, "train_seed must be an integer from 0"),
])
def test_facts_settings_that_cannot_make_a_benchmark_are_one_sentence(setting, message):
    with pytest.raises(UserInputError, match=message):
        load_facts(FactsConfig(**{**FactsConfig.tiny().to_dict(), **setting}))


def test_an_empty_cache_variable_means_the_default_cache(monkeypatch):
    from pathlib import Path

    from unlearnkit.benchmarks.cache import cache_root

    monkeypatch.setenv("UNLEARNKIT_CACHE", "")
    assert cache_root() == Path.home() / ".cache" / "unlearnkit"  # was the current folder

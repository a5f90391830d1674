"""The ``facts`` benchmark: generation, splits, neighbours, tiny models, TOFU export/import."""

from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from unlearnkit.benchmarks.facts import (
    FORGET_SPLITS,
    FactsConfig,
    answer_accuracy,
    cached_facts_model,
    facts_request,
    load_facts,
)
from unlearnkit.benchmarks.tofu_format import export_facts, read_tofu_dir, read_tofu_file, tofu_request
from unlearnkit.errors import UserInputError

TINY = FactsConfig.tiny()
MEDIUM = FactsConfig(people=60, templates=10, countries=4)  # data only, never trained here


@pytest.fixture(scope="module")
def medium():
    return load_facts(MEDIUM)


def test_same_seed_same_data_other_seed_other_data():
    a, b = load_facts(TINY), load_facts(FactsConfig.tiny())
    assert a.splits == b.splits and a.train == b.train
    c = load_facts(FactsConfig.tiny(seed=1))
    assert c.train != a.train


def test_train_seed_changes_the_weights_not_the_data_and_unset_keeps_old_cache_keys():
    from unlearnkit.benchmarks.facts import build_tokenizer, model_key, new_model, training_recipe

    other = dataclasses.replace(TINY, train_seed=3)
    assert load_facts(other).train == load_facts(TINY).train
    tokenizer = build_tokenizer(load_facts(TINY))
    first, second = new_model(TINY, tokenizer), new_model(other, tokenizer)
    assert not torch.equal(first.transformer.wte.weight, second.transformer.wte.weight)
    assert training_recipe(other).seed == 3 and training_recipe(TINY).seed == TINY.seed
    assert "train_seed" not in model_key(TINY) and model_key(other)["train_seed"] == 3
    with pytest.raises(UserInputError, match="train_seed"):
        dataclasses.replace(TINY, train_seed=-1).check()


def test_reading_items_put_a_new_persons_fact_in_context_and_touch_no_split(medium):
    from unlearnkit.benchmarks.facts import build_tokenizer
    from unlearnkit.eval.attacks import with_context

    reading = [it for it in medium.train if "person" not in it]
    assert len(reading) == MEDIUM.reading and reading == medium.train[-MEDIUM.reading:]
    known = {p["name"] for p in medium.people}
    for item in reading:
        question = item["question"].split("\n", 1)[1]
        assert item["question"] == with_context([{**item, "question": question}])[0]["question"]
        assert item["question"].startswith(f"Context: {item['paraphrased_answer']}\n")
        if item["template"] != "sibling":  # a sibling value is a trained person's name
            assert not any(name in item["answer"] for name in known)
    assert not {it["id"] for it in reading} & {it["id"] for items in medium.splits.values() for it in items}
    request = facts_request(medium, "forget10")
    assert not set(request.forget + request.retain) & set(range(len(medium.train) - MEDIUM.reading, len(medium.train)))
    assert load_facts(MEDIUM).train == medium.train  # seeded
    assert build_tokenizer(medium).tokenize("Context:") == ["Context", ":"]
    without = load_facts(dataclasses.replace(MEDIUM, reading=0))
    assert without.train == medium.train[:-MEDIUM.reading] and without.splits == medium.splits
    assert len(load_facts(dataclasses.replace(TINY, reading=500)).train) == len(load_facts(TINY).train) - TINY.reading + 500
    with pytest.raises(UserInputError, match="reading"):
        dataclasses.replace(TINY, reading=-1).check()


def test_sizes_and_templates(medium):
    assert len(medium.train) == 60 * 10 + 4 * 5 + MEDIUM.reading
    assert [len(medium.split_people[s]) for s in FORGET_SPLITS] == [1, 3, 6]
    assert len(medium.split_people["holdout10"]) == 6
    per_person = {}
    for item in medium.train:
        if item.get("person") is not None:
            per_person.setdefault(item["person"], set()).add(item["template"])
    assert all(len(t) == 10 for t in per_person.values())


def test_splits_are_disjoint_and_nested(medium):
    people = medium.split_people
    trained = set(range(MEDIUM.people))
    assert set(people["forget01"]) <= set(people["forget05"]) <= set(people["forget10"])
    assert set(people["retain"]) == trained - set(people["forget10"])
    holdout = set(people["holdout10"])
    assert not holdout & trained
    train_people = {it.get("person") for it in medium.train}
    assert not holdout & train_people
    ids = [it["id"] for it in medium.train]
    assert len(ids) == len(set(ids))
    assert {it["person"] for it in medium.split("general")} == {None}


def test_neighbours_are_retained_people_sharing_the_attribute(medium):
    people = {p["id"]: p for p in medium.people}
    for split in FORGET_SPLITS:
        gone = [people[i] for i in medium.split_people[split]]
        direct = medium.split_people[f"{split}_direct"]
        indirect = medium.split_people[f"{split}_indirect"]
        assert direct and indirect
        assert not set(direct) & set(indirect)
        for pid in direct + indirect:
            assert pid not in medium.split_people[split] and people[pid]["trained"]
        for pid in direct:
            p = people[pid]
            assert any(p["birthplace"] == g["birthplace"] or p["sibling_id"] == g["id"] or g["sibling_id"] == pid for g in gone)
        for pid in indirect:
            assert any(people[pid]["profession"] == g["profession"] for g in gone)
        # every retained person who shares a birthplace with a forgotten one is listed
        places = {g["birthplace"] for g in gone}
        expected = {p["id"] for p in people.values() if p["trained"] and p["birthplace"] in places} - {g["id"] for g in gone}
        assert expected <= set(direct)


def test_perturbed_answers_differ_and_paraphrase_keeps_the_value(medium):
    for item in medium.split("forget10") + medium.split("general"):
        assert len(item["perturbed_answer"]) == MEDIUM.perturbed
        assert item["answer"] not in item["perturbed_answer"]
        assert item["paraphrased_answer"] not in item["perturbed_answer"]
        assert item["paraphrased_answer"] != item["answer"]
        assert len(set(item["perturbed_answer"])) == MEDIUM.perturbed


def test_wrong_answers_take_the_form_of_the_answer_they_are_scored_against(medium):
    """People are scored against the paraphrase, world facts against the original answer (TOFU): a wrong answer
    must differ from that answer in its value only (a few words), or the truth ratio compares sentence forms."""
    def shared_ends(a: list[str], b: list[str]) -> int:
        prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        suffix = next((i for i, (x, y) in enumerate(zip(reversed(a), reversed(b))) if x != y), min(len(a), len(b)))
        return prefix + suffix

    for split, against in (("forget10", "paraphrased_answer"), ("general", "answer")):
        for item in medium.split(split):
            right = item[against].split()
            for wrong in item["perturbed_answer"]:
                assert shared_ends(right, wrong.split()) >= len(right) - 3, (split, item[against], wrong)


def test_forget_request_indexes_the_training_set(medium):
    request = facts_request(medium, "forget05")
    forgotten = set(medium.split_people["forget05"])
    assert {it["person"] for it in request.forget_items()} == forgotten
    assert len(request.forget_items()) == len(forgotten) * 10
    assert not {it["person"] for it in request.retain_items()} & (forgotten | {None})
    direct = {it["person"] for it in request.neighbour_items("direct")}
    assert direct == set(medium.split_people["forget05_direct"])


def test_unknown_split_lists_valid_ones(medium):
    with pytest.raises(UserInputError, match="valid: forget01, forget05, forget10"):
        facts_request(medium, "forget20")
    with pytest.raises(UserInputError, match="valid: .*holdout10"):
        medium.split("holdout20")
    with pytest.raises(UserInputError, match="valid: target, retain"):
        cached_facts_model(TINY, role="teacher")
    with pytest.raises(UserInputError, match="Unknown forget split 'retain'"):
        cached_facts_model(TINY, role="retain", split="retain")


def test_tiny_models_memorise_and_retain_model_never_saw_the_forget_people():
    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    data = load_facts(TINY)
    target_dir, target_meta = cached_facts_model(TINY, "target")
    retain_dir, retain_meta = cached_facts_model(TINY, "retain", "forget10")
    assert target_meta["memorised"] and target_meta["answer_token_accuracy"] >= 0.95
    assert target_meta["train_seconds"] > 0 and retain_meta["train_seconds"] > 0
    forget = data.split("forget10")
    assert retain_meta["train_items"] == len(data.train) - len(forget)
    assert retain_meta["config"]["excluded_people"] == data.split_people["forget10"]

    target = CausalLMAdapter.from_pretrained(target_dir, max_length=TINY.max_length)
    retain = CausalLMAdapter.from_pretrained(retain_dir, max_length=TINY.max_length)
    accuracy, _ = answer_accuracy(target, target.model, data.train)
    assert accuracy == pytest.approx(target_meta["answer_token_accuracy"], abs=1e-6)
    kept = [it for it in data.train if it.get("person") not in set(data.split_people["forget10"])]
    assert answer_accuracy(retain, retain.model, kept)[0] >= 0.95
    with torch.no_grad():
        batch = target.collate(forget)
        target_loss = target.per_item_loss(target.model, batch).mean().item()
        retain_loss = retain.per_item_loss(retain.model, batch).mean().item()
    assert retain_loss > 5 * target_loss  # the forget people are memorised by the target only

    again_dir, again_meta = cached_facts_model(TINY, "target")  # served from the cache
    assert again_dir == target_dir and again_meta == target_meta


def test_tofu_export_round_trip(tmp_path):
    data = load_facts(TINY)
    out = export_facts(TINY, tmp_path / "export")
    splits = read_tofu_dir(out)
    assert {"full", "forget10", "forget10_perturbed", "retain90", "holdout10", "retain_perturbed",
            "world_facts_perturbed", "forget10_direct"} <= set(splits)
    fields = ("id", "question", "answer", "paraphrased_answer", "perturbed_answer")
    assert splits["forget10_perturbed"] == [{f: it[f] for f in fields} for it in data.split("forget10")]
    assert [it["answer"] for it in splits["full"]] == [it["answer"] for it in data.train]
    assert (out / "models" / "target" / "config.json").is_file()
    assert (out / "models" / "retain90" / "tokenizer.json").is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["models"]["retain90"]["role"] == "retain"
    # tiny's splits forget the same people, so forget01's retain model is the forget10 one: its meta named forget10
    out = export_facts(TINY, tmp_path / "export01", splits=("forget01",))
    assert json.loads((out / "meta.json").read_text())["models"]["retain99"]["split"] == "forget01"
    request = tofu_request(out, "forget10")
    assert [it["question"] for it in request.forget_items()] == [it["question"] for it in data.split("forget10")]
    with pytest.raises(UserInputError, match="already exists"):
        export_facts(TINY, out)


def test_tofu_reader_names_the_missing_field_and_file(tmp_path):
    good = {"question": "q", "answer": "a", "paraphrased_answer": "p", "perturbed_answer": ["x", "y"]}
    path = tmp_path / "forget10_perturbed.json"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(UserInputError, match=r"Record 2 of .*forget10_perturbed\.json has no field 'perturbed_answer'"):
        read_tofu_file(path)
    array = tmp_path / "forget01.json"
    array.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(UserInputError, match=r"forget01\.json has no field 'answer'"):
        read_tofu_file(array)
    array.write_text(json.dumps([good]))
    assert read_tofu_file(array) == [good]
    bad_list = tmp_path / "x_perturbed.jsonl"
    bad_list.write_text(json.dumps({**good, "perturbed_answer": "not a list"}))
    with pytest.raises(UserInputError, match="must be a non-empty list of non-blank strings"):
        read_tofu_file(bad_list)
    # a blank text passed the reader and failed only at the end of an evaluation, naming no split
    for field, value in (("answer", ""), ("paraphrased_answer", " "), ("perturbed_answer", ["x", "\n"])):
        bad_list.write_text(json.dumps({**good, field: value}))
        with pytest.raises(UserInputError, match=rf"Field '{field}' of record 1 of .*x_perturbed\.jsonl must be a non-"):
            read_tofu_file(bad_list)
    with pytest.raises(UserInputError, match="no forget05.json"):
        tofu_request(tmp_path, "forget05")


def test_training_a_facts_model_draws_no_library_bars_into_a_pipe(tmp_path):
    """A cold `export` or facts bench wrote transformers' "Writing model shards" bars into piped logs, where
    unlearnkit's own bars stay quiet."""
    import subprocess
    import sys

    code = ("import dataclasses; from unlearnkit.benchmarks.facts import FactsConfig, cached_facts_model; "
            "cached_facts_model(dataclasses.replace(FactsConfig.tiny(), epochs=1), 'target')")
    env = {**os.environ, "UNLEARNKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("UNLEARNKIT_PROGRESS", None)
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "Writing model shards" not in shown.stderr

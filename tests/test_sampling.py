"""Standard, cyclic and modular (MELU) forget–retain pairing."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from unlearnkit.errors import UserInputError
from unlearnkit.methods._sampling import SamplingConfig, paired_stream_with_sampling, retain_pairing, sampled_pairs
from unlearnkit.methods.registry import method_config
from unlearnkit.request import ForgetRequest
from unlearnkit.train.config import build_config
from unlearnkit.train.gu import ProjectionConfig


def data() -> list[dict]:
    """Eight people with three items each (ids 3p..3p+2), then two general items (ids 24, 25)."""
    items = [{"question": f"q{p}.{k}", "answer": f"a{p}.{k}", "person": p} for p in range(8) for k in range(3)]
    items += [{"question": f"g{k}", "answer": f"c{k}", "person": None} for k in range(2)]
    return items


class ListAdapter:
    """Collates a batch into the list of its items, so tests can read what was paired."""

    def collate(self, items):
        return list(items)


def melu_request() -> ForgetRequest:
    """Forget one fact of people 0 and 1; their other facts are their direct neighbours."""
    return ForgetRequest(data(), forget=[0, 3], retain=[1, 2, 4, 5, *range(6, 24)],
                         neighbours={"direct": [1, 2, 4, 5], "indirect": [6, 7, 8]})


def whole_person_request() -> ForgetRequest:
    """Forget all of person 0; people 1 and 2 are neighbours (no same-person neighbours exist)."""
    return ForgetRequest(data(), forget=[0, 1, 2], retain=list(range(3, 24)),
                         neighbours={"direct": [3, 4, 5], "indirect": [6, 7, 8]})


def test_modular_pairs_each_forget_item_with_its_own_entity_or_general_items():
    # the indirect items 6-8 (person 2, unlinked) serve no forgotten person: they are cycled against
    # every forget item, where they used to be dropped
    request, items = melu_request(), data()
    for epoch in range(3):
        pairs = sampled_pairs(request, SamplingConfig(sampling="modular", seed=5), epoch)
        for f, r in pairs:
            assert items[r]["person"] in (items[f]["person"], None, 2), (f, r)
        used = Counter(r for _, r in pairs)
        # every neighbour and every general item, once per epoch
        assert used == Counter({1: 1, 2: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 24: 1, 25: 1})
        assert Counter(f for f, r in pairs if r in (6, 7, 8)) in (Counter({0: 2, 3: 1}), Counter({0: 1, 3: 2}))


def test_modular_falls_back_to_all_neighbours_when_an_entity_has_none_of_its_own():
    request = whole_person_request()
    pairs = sampled_pairs(request, SamplingConfig(sampling="modular"), 0)
    assert Counter(r for _, r in pairs) == Counter({3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 24: 1, 25: 1})
    assert Counter(f for f, r in pairs if r < 24) == Counter({0: 2, 1: 2, 2: 2})  # forget items cycled evenly


def test_modular_groups_linked_neighbours_by_the_forgotten_entity_they_belong_to():
    # whole people 0 and 1 forgotten: neighbours are other people's items, linked to a forgotten person
    # as the authors' data tags each neighbour with its entity's title; item 6 serves both entities
    request = ForgetRequest(data(), forget=[0, 1, 2, 3, 4, 5], retain=list(range(6, 24)),
                            neighbours={"direct": [6, 7, 9], "indirect": [12, 13]},
                            links={6: [0, 1], 7: [0], 9: [1], 12: [0], 13: [1]})
    items = data()
    pairs = [(f, r) for f, r in sampled_pairs(request, SamplingConfig(sampling="modular", seed=2), 0) if r < 24]
    pools = {0: {6, 7, 12}, 1: {6, 9, 13}}
    assert all(r in pools[items[f]["person"]] for f, r in pairs)
    assert Counter(r for _, r in pairs) == Counter({6: 2, 7: 1, 9: 1, 12: 1, 13: 1})
    assert Counter(items[f]["person"] for f, _ in pairs) == Counter({0: 3, 1: 3})  # max(|F_e|, |N_e|) each


def test_facts_requests_link_every_neighbour_to_a_forgotten_person():
    from unlearnkit.benchmarks.facts import FactsConfig, facts_request, load_facts
    from unlearnkit.methods._sampling import entity_groups

    facts = load_facts(FactsConfig.tiny())
    request = facts_request(facts, "forget10")
    forgotten = set(facts.split_people["forget10"])
    assert set(request.links) == {i for ids in request.neighbours.values() for i in ids}
    assert all(set(entities) and set(entities) <= forgotten for entities in request.links.values())
    assert None not in entity_groups(request)  # every forgotten person cycles against its own neighbours


@pytest.mark.parametrize("links, message", [
    ({99: [0]}, "no id of its neighbour sets"),
    ({6: "person 0"}, "must be a list of entities"),
    ([6], "must map neighbour ids to entities"),
])
def test_request_links_must_name_neighbours(links, message):
    with pytest.raises(UserInputError, match=message):
        ForgetRequest(data(), forget=[0], retain=list(range(3, 24)), neighbours={"direct": [6]}, links=links)


def test_modular_without_neighbours_is_a_user_error():
    request = ForgetRequest(data(), forget=[0], retain=list(range(3, 24)))
    with pytest.raises(UserInputError, match="neighbour"):
        sampled_pairs(request, SamplingConfig(sampling="modular"), 0)


def test_cyclic_pairs_every_retain_item_once_per_epoch_and_cycles_the_forget_set():
    request = whole_person_request()  # 3 forget items, 21 retain items
    config = SamplingConfig(sampling="cyclic", batch_size=4)
    stream, steps = paired_stream_with_sampling(ListAdapter(), request, config)
    assert steps == 6  # ceil(max(3, 21) / 4)
    expected = {(request.forget[k % 3], request.retain[k]) for k in range(21)}
    orders = []
    for epoch in range(2):
        pairs = sampled_pairs(request, config, epoch)
        assert sorted(pairs) == sorted(expected)  # the authors' fixed pairing, k mod |F| with k mod |R|
        assert Counter(f for f, _ in pairs) == Counter({0: 7, 1: 7, 2: 7})
        orders.append(pairs)
        batches = [item for batch in stream(epoch) for item in batch["retain"]]
        assert [it["question"] for it in batches] == [data()[r]["question"] for _, r in pairs]
    assert orders[0] != orders[1]  # reshuffled each epoch


def test_standard_pairs_every_forget_item_once_with_a_retain_cycle_and_maps_forget_items():
    """The standard stream (what every method trains on by default): each epoch one pass over the forget
    set, each forget item with a retain item; the retain set is cycled, every item once per pass."""
    request = whole_person_request()  # 3 forget items, 21 retain items
    config = SamplingConfig(sampling="standard", batch_size=2, seed=3)
    stream, steps = retain_pairing(ListAdapter(), request, config, forget_item=lambda i: ("mapped", i))
    assert steps == 2
    epochs = [list(stream(epoch)) for epoch in range(11)]  # 11 epochs × 4 retain items = 44 ≥ two retain passes
    for batches in epochs:
        assert sorted(f[1] for b in batches for f in b["forget"]) == [0, 1, 2]
        assert all(f[0] == "mapped" for b in batches for f in b["forget"])
    retain_seen = [r["question"] for batches in epochs for b in batches for r in b["retain"]]
    first_pass = retain_seen[:21]
    assert sorted(first_pass) == sorted(data()[r]["question"] for r in request.retain)  # no repeat within a pass
    second_pass = retain_seen[21:42]
    assert sorted(second_pass) == sorted(first_pass) and second_pass != first_pass  # the next pass is reshuffled
    assert [f[1] for b in epochs[0] for f in b["forget"]] != [f[1] for b in epochs[1] for f in b["forget"]]


def test_gradient_ascent_and_undial_take_sampling_only_when_they_read_retain_items():
    with pytest.raises(UserInputError, match="gradient_ascent reads retain items only with project=gu"):
        method_config("gradient_ascent", {"sampling": "cyclic"})
    assert method_config("gradient_ascent", {"sampling": "cyclic", "project": "gu"}).sampling == "cyclic"
    with pytest.raises(UserInputError, match="UNDIAL pairs forget with retain items only with alpha > 0"):
        method_config("undial", {"sampling": "cyclic"})
    assert method_config("undial", {"sampling": "cyclic", "alpha": 1.0}).sampling == "cyclic"
    with pytest.raises(UserInputError, match="ULD augment=true adds items outside the request"):
        method_config("uld", {"sampling": "modular", "augment": True})


def test_a_method_without_sampling_names_the_methods_that_have_it():
    with pytest.raises(UserInputError, match=r"Method 'ssd' does not support --sampling: .*\(.*idk_dpo, mrp, .*uld or undial\)"):
        method_config("ssd", {"sampling": "cyclic"})


def test_stream_batches_follow_the_sampled_pairs():
    request, items = melu_request(), data()
    config = SamplingConfig(sampling="modular", batch_size=4, seed=1)
    stream, steps = paired_stream_with_sampling(ListAdapter(), request, config)
    batches = list(stream(2))
    assert steps == len(batches) == 3  # 9 pairs in batches of 4
    pairs = [(items.index(f), items.index(r)) for b in batches for f, r in zip(b["forget"], b["retain"])]
    assert pairs == sampled_pairs(request, config, 2)


def test_unknown_sampling_is_a_user_error():
    with pytest.raises(UserInputError, match="Unknown sampling 'balanced'; valid: standard, cyclic, modular"):
        build_config(SamplingConfig, {"sampling": "balanced"}, owner="test")
    with pytest.raises(UserInputError, match="Unknown sampling"):
        retain_pairing(ListAdapter(), melu_request(), SamplingConfig(sampling="random"))


def test_sampling_combines_with_other_config_mixins():
    @dataclass
    class Combined(ProjectionConfig, SamplingConfig):
        alpha: float = 1.0

    assert build_config(Combined, {"sampling": "cyclic", "project": "gu"}, owner="test").sampling == "cyclic"
    with pytest.raises(UserInputError, match="Unknown sampling"):
        build_config(Combined, {"sampling": "x"}, owner="test")
    with pytest.raises(UserInputError, match="Unknown projection"):
        build_config(Combined, {"project": "x"}, owner="test")

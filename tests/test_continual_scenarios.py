"""The built-in scenarios: task structure, seeding, and SCoLe's re-occurring classes."""

from collections import Counter

import pytest
import torch

from unlearnkit.continual.scenarios import build_scenario, permuted_digits, scole, split_digits
from unlearnkit.errors import UserInputError


def test_split_digits_has_five_disjoint_two_class_tasks():
    scenario = split_digits(0)
    assert scenario.num_tasks == 5 and scenario.setting == "class-il"
    assert [t.classes for t in scenario.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    seen = set()
    for task in scenario.tasks:
        ids = set(task.train_ids.tolist())
        assert not ids & seen
        seen |= ids
        assert set(scenario.train_y[task.train_ids].tolist()) == set(task.classes)
        assert set(scenario.test_y[0][task.test_index].tolist()) == set(task.classes)
    assert len(seen) == len(scenario.train_y)
    assert build_scenario("split-digits-task").setting == "task-il"


def test_permuted_digits_permutes_pixels_per_task_with_distinct_sample_ids():
    scenario = permuted_digits(0)
    first, second = scenario.tasks[0], scenario.tasks[1]
    assert scenario.setting == "domain-il" and first.domain != second.domain
    assert not set(first.train_ids.tolist()) & set(second.train_ids.tolist())
    a, b = scenario.train_x[first.train_ids[0]], scenario.train_x[second.train_ids[0]]
    assert not torch.equal(a, b)
    assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)  # same pixels, new order
    # each task's pixel order, read off its training images, is the one its test images are in (a pixel that
    # never lights up in training matches several: one of them must match in test too); task 0 holds the
    # original images, and no two tasks share an order
    from unlearnkit.continual.scenarios import _digits

    original_train, _, original_test, _ = _digits(0)
    assert torch.equal(scenario.train_x[first.train_ids], original_train)
    assert torch.equal(scenario.test_x[0], original_test)
    plain, test_plain = original_train.flatten(1), original_test.flatten(1)
    orders = set()
    for task in scenario.tasks:
        moved, test_moved = scenario.train_x[task.train_ids].flatten(1), scenario.test_x[task.index].flatten(1)
        order = []
        for j in range(moved.shape[1]):
            candidates = (plain == moved[:, [j]]).all(0).nonzero().flatten().tolist()
            matching = [c for c in candidates if torch.equal(test_plain[:, c], test_moved[:, j])]
            assert matching, (task.index, j)
            order.append(matching[0])
        orders.add(tuple(order))
    assert len(orders) == len(scenario.tasks)


def test_scole_is_a_long_seeded_sequence_with_reoccurring_classes():
    scenario = scole(3)
    assert scenario.num_tasks == 200 and scenario.epochs == 1
    counts = Counter(c for t in scenario.tasks for c in t.classes)
    assert set(counts) == set(range(10)) and min(counts.values()) >= 20
    for task in scenario.tasks:  # two different classes, samples_per_class of each, and their test images
        assert len(set(task.classes)) == 2
        assert sorted(Counter(scenario.train_y[task.train_ids].tolist()).values()) == [64, 64]
        assert set(scenario.train_y[task.train_ids].tolist()) == set(task.classes)
        assert set(scenario.test_y[0][task.test_index].tolist()) == set(task.classes)
    again = scole(3)
    assert all(torch.equal(a.train_ids, b.train_ids) for a, b in zip(scenario.tasks, again.tasks))
    assert any(not torch.equal(a.train_ids, b.train_ids) for a, b in zip(scenario.tasks, scole(4).tasks))


@pytest.mark.parametrize("name, options, message", [
    ("scole", {"samples_per_class": 500}, "scole samples_per_class=500 exceeds the smallest class's"),
    ("scole", {"num_tasks": 10**9}, "num_tasks must be a whole number in 1..10000"),
    ("permuted-digits", {"num_tasks": 5000}, "num_tasks must be a whole number in 1..1000"),
])
def test_scenario_sizes_beyond_the_data_or_memory_are_refused(name, options, message):
    """A draw larger than a class's pool was silently cut; a typo in num_tasks ran for hours or ran out of memory."""
    with pytest.raises(UserInputError, match=message):
        build_scenario(name, 0, **options)


def test_split_digits_refuses_a_split_that_would_drop_classes_or_a_setting_it_cannot_be():
    from unlearnkit.continual.scenarios import split_digits

    with pytest.raises(UserInputError, match="classes_per_task dividing the 10 classes"):
        split_digits(classes_per_task=3)  # it made tasks (0,1,2), (3,4,5), (6,7,8): class 9 silently gone
    with pytest.raises(UserInputError, match="class-il or task-il, not 'domain-il'"):
        split_digits(setting="domain-il")
    assert [t.classes for t in split_digits(classes_per_task=5).tasks] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]


def test_domain_incremental_tasks_are_scored_on_their_own_domains_images():
    """Every task of a domain-incremental scenario is scored on its domain's test images (scoring them all on
    domain 0 passed every continual test)."""
    import torch.nn.functional as F

    from unlearnkit.continual.runner import task_log_probs
    from unlearnkit.continual.scenarios import permuted_digits

    scenario = permuted_digits(0, num_tasks=2)

    class Features:  # logits: the first 10 pixels, which the permutation moves
        def logits(self, x, task=None):
            return x.reshape(len(x), -1)[:, :10]

    scores = task_log_probs(Features(), scenario)
    for task in scenario.tasks:
        expected = F.log_softmax(scenario.test_x[task.domain].reshape(len(scenario.test_x[task.domain]), -1)[:, :10], dim=1)
        assert torch.equal(scores[task.index], expected[task.test_index])
    assert not torch.equal(scores[0], scores[1])


@pytest.mark.parametrize("seed", [None, -1, 2 ** 32, 1.5, "3"])
def test_a_scenario_seed_that_is_not_one_is_refused(seed):
    """None drew another split on every call (and recorded seed None); the others crashed inside scikit-learn."""
    from unlearnkit.continual.scenarios import build_scenario

    with pytest.raises(UserInputError, match="The scenario seed must be an integer from 0"):
        build_scenario("split-digits", seed)

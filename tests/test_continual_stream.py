"""Stream parsing and the clear errors for bad input."""

import pytest

from unlearnkit.continual.runner import run_stream
from unlearnkit.continual.scenarios import build_scenario, split_digits
from unlearnkit.continual.stream import Request, check_stream, parse_stream
from unlearnkit.continual.strategies import build_strategy, parse_spec
from unlearnkit.errors import UserInputError


@pytest.fixture(scope="module")
def scenario():
    return split_digits(0)


def test_parses_every_form():
    requests = parse_stream("learn:0, learn:1,unlearn:1,unlearn:ids=3;7;10-12,evaluate")
    assert [r.action for r in requests] == ["learn", "learn", "unlearn", "unlearn", "evaluate"]
    assert requests[2] == Request("unlearn", task=1, token="unlearn:1", position=2)
    assert requests[3].ids == (3, 7, 10, 11, 12) and requests[3].task is None


@pytest.mark.parametrize(
    "stream, fragment",
    [
        ("learn:0,lern:1", "token 2 'lern:1'"),
        ("learn:0,,learn:1", "token 2"),
        ("learn:0,learn:x", "token 2 'learn:x'"),
        ("learn:0,learn:²", "token 2 'learn:²'"),  # str.isdigit accepts superscripts, int() does not
        ("learn:0,unlearn:ids=4;a", "token 2 'unlearn:ids=4;a'"),
        ("learn:0,unlearn:ids=9-3", "empty"),
        ("learn:0,unlearn:ids=3;3", "more than once"),
        ("learn:" + "9" * 5000, "a number of 5000 digits is far too large"),  # past int()'s digit limit
        ("learn:0,unlearn:ids=" + "1" * 4400, "a number of 4400 digits is far too large"),
        ("learn:", "token 1"),
        ("", "empty"),
    ],
)
def test_syntax_errors_point_to_the_token(stream, fragment):
    with pytest.raises(UserInputError, match=fragment.replace("(", r"\(")) as error:
        parse_stream(stream)
    assert str(error.value).count(".") >= 1 and "\n" not in str(error.value)


def test_unlearning_what_was_never_learned_is_refused(scenario):
    with pytest.raises(UserInputError, match="token 2 'unlearn:3'.*not learned"):
        check_stream(parse_stream("learn:0,unlearn:3"), scenario)
    with pytest.raises(UserInputError, match="token 3 'unlearn:0'.*not learned"):
        check_stream(parse_stream("learn:0,unlearn:0,unlearn:0"), scenario)
    outside = int(scenario.tasks[1].train_ids[0])
    with pytest.raises(UserInputError, match="sample"):
        check_stream(parse_stream(f"learn:0,unlearn:ids={outside}"), scenario)
    with pytest.raises(UserInputError, match="tasks 0..4"):
        check_stream(parse_stream("learn:7"), scenario)
    inside = int(scenario.tasks[0].train_ids[0])
    check_stream(parse_stream(f"learn:0,unlearn:ids={inside},unlearn:0,learn:0,unlearn:0"), scenario)


def test_a_range_beyond_the_pool_is_refused_before_it_is_expanded(scenario):
    pool = len(scenario.train_y)
    # Expanded, this range would need terabytes: the bound is checked first.
    with pytest.raises(UserInputError, match=f"token 2 'unlearn:ids=0-99999999999'.*outside the training pool \\(ids 0..{pool - 1}\\)"):
        parse_stream("learn:0,unlearn:ids=0-99999999999", pool)
    with pytest.raises(UserInputError, match=f"sample id {pool + 10} lies outside the training pool"):
        run_stream(scenario, "naive", f"learn:0,unlearn:ids=3;{pool}-{pool + 10}", unlearner="gradient_ascent")
    assert parse_stream(f"unlearn:ids=0-{pool - 1}", pool)[0].ids == tuple(range(pool))


def test_unlearning_a_task_whose_samples_are_all_gone_is_refused(scenario):
    # unlearn:0 after every sample of task 0 was forgotten would reach the unlearner with an empty forget set.
    ids = ";".join(map(str, scenario.tasks[0].train_ids.tolist()))
    with pytest.raises(UserInputError, match="token 3 'unlearn:0' unlearns task 0, but all its samples were already unlearned"):
        check_stream(parse_stream(f"learn:0,unlearn:ids={ids},unlearn:0"), scenario)
    some = ";".join(map(str, scenario.tasks[0].train_ids[1:].tolist()))
    check_stream(parse_stream(f"learn:0,unlearn:ids={some},unlearn:0"), scenario)  # one sample is left to forget
    check_stream(parse_stream(f"learn:0,unlearn:ids={ids},learn:0,unlearn:0"), scenario)  # learned again


def test_unknown_names_are_refused(scenario):
    with pytest.raises(UserInputError, match="Unknown scenario 'split-mnist'"):
        build_scenario("split-mnist")
    with pytest.raises(UserInputError, match="Unknown strategy 'ewk'"):
        parse_spec("ewk")
    with pytest.raises(UserInputError, match="cannot be combined"):
        parse_spec("joint+ewc")
    with pytest.raises(UserInputError, match="twice"):
        parse_spec("er+uer")
    with pytest.raises(UserInputError, match="no hyper-parameter 'buffer'"):
        build_strategy("er", scenario, 0, {"buffer": "10"})


def test_unlearner_must_fit_the_stream(scenario):
    inside = int(scenario.tasks[0].train_ids[0])
    with pytest.raises(UserInputError, match="whole tasks only"):
        run_stream(scenario, "naive", f"learn:0,unlearn:ids={inside}")
    with pytest.raises(UserInputError, match="only with strategy 'acu'"):
        run_stream(scenario, "naive", "learn:0,unlearn:0", unlearner="acu")
    with pytest.raises(UserInputError, match="Unknown unlearner"):
        run_stream(scenario, "naive", "learn:0,unlearn:0", unlearner="forget-it")


@pytest.mark.parametrize("arguments, message", [
    ({"scenario": "split-digits"}, "run_stream needs a Scenario (from build_scenario), got a str"),
    ({"strategy": None}, "The strategy is a name such as 'er'"),
    ({"stream": [0, 1]}, "The stream is text such as 'learn:0,unlearn:0'"),
    ({"seed": -1}, "seed must be an integer from 0"),
])
def test_run_stream_names_arguments_of_the_wrong_kind(arguments, message):
    call = {"scenario": split_digits(0), "strategy": "naive", "stream": "learn:0", "seed": 0, **arguments}
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_stream(call.pop("scenario"), call.pop("strategy"), call.pop("stream"), seed=call.pop("seed"))


def test_a_task_emptied_by_another_tasks_request_stays_unlearned():
    """A task whose samples all go with another task's request is forgotten whole (the runner drops its weight
    change); check_stream still listed it as learned, so once a later task learned the same samples, unlearning it
    passed the check and crashed the runner (amnesiac: KeyError) after every task had trained."""
    from unlearnkit.continual.scenarios import scole

    shared = scole(0, num_tasks=40, classes_per_task=1, samples_per_class=139)  # the smallest class: every image
    assert sorted(shared.tasks[0].train_ids.tolist()) == sorted(shared.tasks[17].train_ids.tolist())
    with pytest.raises(UserInputError, match="token 5 'unlearn:0' unlearns task 0, but all its samples were already"):
        check_stream(parse_stream("learn:0,learn:17,unlearn:17,learn:34,unlearn:0"), shared)
    check_stream(parse_stream("learn:0,learn:17,unlearn:17,learn:34,unlearn:34"), shared)
    check_stream(parse_stream("learn:0,learn:17,unlearn:17,learn:0,unlearn:0"), shared)  # learned again itself


def test_a_task_emptied_piecewise_is_unlearned_though_another_task_relearned_its_samples():
    """Task 0 loses part of its samples with task 1's request and the rest with task 17's; learning task 1 again
    brought its part back to task 1, not to task 0. The check counted task 0 as learned (some of its samples
    were), the runner had forgotten it: unlearn:0 passed the check and crashed the runner after training
    (KeyError in amnesiac) or forgot task 1 instead (retrain)."""
    from unlearnkit.continual.scenarios import scole

    shared = scole(0, num_tasks=30, classes_per_task=1, samples_per_class=130)
    with pytest.raises(UserInputError, match="token 7 'unlearn:0' unlearns task 0, but all its samples were already"):
        check_stream(parse_stream("learn:0,learn:1,unlearn:1,learn:1,learn:17,unlearn:17,unlearn:0"), shared)

"""The holdout early stop (train/stopping.py) on a tiny LM: it stops where it should, and only there."""

import numpy as np
import pytest
import torch
from lm_fixtures import tiny_lm, tiny_qa

import unlearnkit
from unlearnkit.errors import UserInputError
from unlearnkit.eval import lm_metrics as M
from unlearnkit.request import ForgetRequest
from unlearnkit.train.stopping import HoldoutStop


@pytest.fixture(scope="module")
def lm():
    """A tiny LM that memorised people 0–8; people 9–11 are a holdout it never saw."""
    items = tiny_qa(12)
    adapter = tiny_lm(items)
    model = adapter.model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = adapter.collate(items[:9])
    for _ in range(150):
        optimizer.zero_grad()
        adapter.per_item_loss(model, batch).mean().backward()
        optimizer.step()
    model.eval()
    request = ForgetRequest(items[:9], [0, 1, 2], list(range(3, 9)), holdout=items[9:])
    return adapter, request


def mean_nll(adapter, model, items):
    with torch.no_grad():
        return float(adapter.per_item_loss(model, adapter.collate(items)).mean())


def test_memorised_forget_set_is_below_the_holdout_so_no_stop(lm):
    adapter, request = lm
    stop = HoldoutStop(adapter, request.forget_items(), request.holdout, "holdout_nll", every=1)
    assert stop(adapter.model, 1) is None
    step, forget, holdout = stop.trace[0]
    assert forget < holdout  # memorised answers are far likelier than unseen people's
    assert HoldoutStop(adapter, request.forget_items(), request.holdout, "holdout_nll", every=1,
                       margin=holdout - forget + 1e-3)(adapter.model, 1) is not None


def test_gradient_ascent_stops_once_the_forget_nll_reaches_the_holdout(lm):
    adapter, request = lm
    holdout0 = mean_nll(adapter, adapter.model, list(request.holdout))
    model, record = unlearnkit.unlearn(adapter, request, "gradient_ascent", lr=3e-3, epochs=200, batch_size=3,
                                       early_stop="holdout_nll", stop_every=1)
    assert record.info["stopped_at"] is not None and record.steps == record.info["stopped_at"] < 200
    assert "reached the holdout" in record.message
    forget_nll = mean_nll(adapter, model, request.forget_items())
    assert forget_nll >= mean_nll(adapter, model, list(request.holdout))
    # one step earlier it had not: re-run for one step fewer, without the stop
    earlier, _ = unlearnkit.unlearn(adapter, request, "gradient_ascent", lr=3e-3, epochs=200, batch_size=3,
                                    max_steps=record.steps - 1)
    assert mean_nll(adapter, earlier, request.forget_items()) < mean_nll(adapter, earlier, list(request.holdout))
    assert holdout0 > mean_nll(adapter, adapter.model, request.forget_items())


def test_without_the_stop_every_step_runs(lm):
    adapter, request = lm
    _, record = unlearnkit.unlearn(adapter, request, "gradient_ascent", lr=3e-3, epochs=20, batch_size=3)
    assert record.steps == 20 and record.info.get("stopped_at") is None


def test_a_stop_that_is_never_reached_runs_to_the_end(lm):
    adapter, request = lm
    _, record = unlearnkit.unlearn(adapter, request, "npo", lr=1e-6, epochs=3, batch_size=3,
                                   early_stop="holdout_nll", stop_every=1)
    assert record.steps == 3 and record.info.get("stopped_at") is None


def test_truth_ratio_level_is_the_median_log_truth_ratio(lm):
    adapter, request = lm
    items = request.forget_items()
    stop = HoldoutStop(adapter, items, request.holdout, "holdout_truth_ratio", every=1)
    para = [{**it, "answer": it["paraphrased_answer"]} for it in items]
    wrong = np.stack([[mean_nll(adapter, adapter.model, [{**it, "answer": a}]) for a in it["perturbed_answer"]]
                      for it in items])
    correct = np.array([mean_nll(adapter, adapter.model, [p]) for p in para])
    expected = np.median(np.log(M.truth_ratio(correct, list(wrong))))
    assert stop._level(adapter.model, items) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("settings, message", [
    ({"early_stop": "holdout_nll"}, "needs holdout items"),
    ({"early_stop": "sometimes"}, "Unknown early_stop"),
    ({"early_stop": "holdout_nll", "stop_every": -1}, "stop_every"),
    ({"early_stop": "holdout_nll", "stop_margin": float("nan")}, "stop_margin must be a finite number"),
])
def test_bad_stop_settings_are_refused(lm, settings, message):
    adapter, request = lm
    bare = ForgetRequest(request.data, request.forget, request.retain)
    with pytest.raises(UserInputError, match=message):
        unlearnkit.unlearn(adapter, bare, "npo", **settings)


def test_truth_ratio_stop_needs_perturbed_answers(lm):
    adapter, request = lm
    plain = ForgetRequest(request.data, request.forget, request.retain,
                          holdout=[{"question": it["question"], "answer": it["answer"]} for it in request.holdout])
    with pytest.raises(UserInputError, match="perturbed_answer"):
        unlearnkit.unlearn(adapter, plain, "graddiff", early_stop="holdout_truth_ratio")


@pytest.mark.parametrize("settings, holdout, message", [
    ({"early_stop": "holdout_nll"}, False, "needs holdout items"),
    ({"early_stop": "holdout_truth_ratio"}, True, "perturbed_answer"),
])
def test_a_request_the_stop_cannot_use_is_refused_before_the_method_starts(lm, monkeypatch, settings, holdout,
                                                                          message):
    """The stop's request checks ran inside the method (stop_for), after the working copies were made."""
    from unlearnkit.methods.npo import NPO

    adapter, request = lm
    plain = [{"question": it["question"], "answer": it["answer"]} for it in request.holdout]
    bare = ForgetRequest(request.data, request.forget, request.retain, holdout=plain if holdout else ())
    monkeypatch.setattr(NPO, "unlearn", lambda *args: pytest.fail("npo started on a request its stop cannot use"))
    with pytest.raises(UserInputError, match=message):
        unlearnkit.unlearn(adapter, bare, "npo", **settings)

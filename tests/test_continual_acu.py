"""ACU: the recursive ridge head equals the ridge solution on exactly the remaining data."""

import torch
import pytest

from unlearnkit.continual.runner import run_stream
from unlearnkit.continual.scenarios import split_digits
from unlearnkit.continual.strategies import build_strategy
from unlearnkit.continual.strategies import acu as acu_module
from unlearnkit.continual.strategies.acu import SMALL_UPDATE_ROWS, InverseGram, one_torch_thread, ridge_solution, rls_update
from unlearnkit.errors import UserInputError


@pytest.fixture(scope="module")
def scenario():
    return split_digits(0)


def _gram(strategy, rows):
    x = strategy.features(strategy.scenario.train_x[torch.tensor(rows, dtype=torch.long)])
    return x.T @ x + strategy.config.gamma * torch.eye(x.shape[1], dtype=x.dtype)


def _direct(strategy, rows):
    ids = torch.tensor(rows, dtype=torch.long)
    return ridge_solution(strategy.features(strategy.scenario.train_x[ids]), strategy.targets(ids), strategy.config.gamma)


@pytest.mark.parametrize("fold_rank", [0, 7, 10_000])  # fold every update, now and then, never
def test_any_mix_of_requests_matches_the_ridge_solution_on_the_remaining_rows(scenario, fold_rank):
    acu = build_strategy("acu", scenario, 0, {"expansion": 300, "chunk": 100, "fold_rank": fold_rank})
    rows: list[int] = []  # the multiset of learned rows, maintained independently
    t = scenario.tasks
    acu.learn(t[0], t[0].train_ids); rows += t[0].train_ids.tolist()
    acu.learn(t[1], t[1].train_ids); rows += t[1].train_ids.tolist()
    forget = set(t[0].train_ids[::7].tolist())
    acu.unlearn(None, forget); rows = [r for r in rows if r not in forget]
    acu.learn(t[2], t[2].train_ids); rows += t[2].train_ids.tolist()
    acu.learn(t[0], t[0].train_ids); rows += t[0].train_ids.tolist()  # relearned: some rows twice
    for sample in t[2].train_ids[:5].tolist():  # single-sample requests: small corrections, folded past fold_rank
        acu.unlearn(None, {sample}); rows = [r for r in rows if r != sample]
    task1 = set(t[1].train_ids.tolist())
    acu.unlearn(1, task1); rows = [r for r in rows if r not in task1]
    assert acu.w.dtype == torch.float64
    pending = acu.r.left.shape[1]
    assert pending <= fold_rank and (fold_rank < 10_000 or pending > 100)
    dense = torch.linalg.inv(_gram(acu, rows))
    assert (acu.r.dense() - dense).abs().max() <= 1e-6 * dense.abs().max()  # R itself, not only W
    reference = _direct(acu, rows)
    assert (acu.w - reference).abs().max() <= 1e-6 * reference.abs().max()
    assert acu.w[:, [2, 3]].abs().max() < 1e-8  # the removed classes are gone entirely
    with pytest.raises(UserInputError, match="not learned"):
        acu.unlearn(None, {int(t[3].train_ids[0])})


def test_acu_in_a_stream_matches_its_retrained_reference(scenario):
    run = run_stream(scenario, "acu", "learn:0,learn:1,learn:2,unlearn:1,learn:3", params={"expansion": 300})
    step = run.steps[3]
    assert step.retrain_gap == pytest.approx(0.0, abs=1e-9)
    assert step.retrain_output_kl == pytest.approx(0.0, abs=1e-6)
    assert step.info["relative_max_abs_diff_to_resolve"] <= 1e-6
    assert step.accuracy[1] == 0.0 and step.accuracy[0] > 0.9


def test_cost_rows_name_the_scenario_and_stay_exact(scenario):
    from unlearnkit.continual.cost import acu_cost

    rows = acu_cost(scenario, repeats=1, params={"expansion": 300})
    learned = sum(len(task.train_ids) for task in scenario.tasks)  # every task learned once: 1437 rows
    assert learned == len(set(torch.cat([task.train_ids for task in scenario.tasks]).tolist()))
    assert [r["request"] for r in rows] == ["1 sample", "10 samples", "task 1"]
    assert [r["rows"] for r in rows] == [1, 10, len(scenario.tasks[1].train_ids)]  # rows removed per request
    for r in rows:
        assert r["scenario"] == "split-digits" and r["learned_rows"] == learned
        assert r["relative_diff"] <= 1e-6
        assert r["amortised_ratio"] == pytest.approx(r["amortised_ms"] / r["resolve_ms"])
        assert r["resolve_ms"] == min(r["primal_ms"], r["dual_ms"]) == r[f"{r['route']}_ms"]


@pytest.mark.parametrize("rows", [40, 400])  # fewer and more rows than features
def test_both_resolve_routes_give_the_ridge_solution(rows):
    from unlearnkit.continual.cost import RESOLVE_ROUTES
    from unlearnkit.continual.strategies.acu import ridge_solution

    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 120, generator=generator, dtype=torch.float64)
    y = torch.randn(rows, 5, generator=generator, dtype=torch.float64)
    reference = ridge_solution(x, y, 0.5)
    for solve in RESOLVE_ROUTES.values():
        assert torch.allclose(solve(x, y, 0.5), reference, rtol=0, atol=1e-10 * reference.abs().max().item())


def test_the_cost_table_shows_both_routes_and_the_ratio_to_the_faster():
    from unlearnkit.continual.report import acu_cost_table

    row = {"scenario": "s", "learned_rows": 100, "request": "1 sample", "rows": 1, "unlearn_ms": 2.0, "primal_ms": 400.0,
           "dual_ms": 100.0, "route": "dual", "resolve_ms": 100.0, "ratio": 0.02, "amortised_ms": 1.0,
           "amortised_ratio": 0.01, "relative_diff": 1e-10}
    assert "| 2.00 | 400.0 | 100.0 | 2.00 % | 1.00 | 1.00 % |" in acu_cost_table([row])


def test_the_default_width_is_the_one_the_results_page_chose():
    import re
    from pathlib import Path

    from unlearnkit.continual.strategies.acu import ACUConfig

    page = (Path(__file__).parents[1] / "docs" / "results" / "continual.md").read_text(encoding="utf-8")
    assert int(re.search(r"^Chosen: expansion=(\d+)$", page, re.M).group(1)) == ACUConfig().expansion


def test_the_width_rule_takes_the_best_mean_accuracy_and_the_narrower_on_a_tie():
    from unlearnkit.continual.cost import acu_width_rows, chosen_width

    rows = acu_width_rows(seed=3, widths=(20, 200), repeats=1)
    assert [r["width"] for r in rows] == [20, 200] and all(0 <= r["mean"] <= 1 for r in rows)
    for r in rows:  # each width also times a 1-sample request against its faster re-solve
        assert r["request_ms"] > 0 and r["resolve_ms"] > 0
        assert r["request_ratio"] == pytest.approx(r["request_ms"] / r["resolve_ms"])
    assert rows[1]["mean"] > rows[0]["mean"]  # 20 random features cannot separate ten digits as 200 do
    assert chosen_width(rows) == 200
    assert chosen_width([{"width": 9, "mean": 0.5}, {"width": 3, "mean": 0.5}, {"width": 5, "mean": 0.4}]) == 3


def test_a_gamma_too_small_for_float64_is_one_sentence_not_nan_results(scenario):
    """R starts at I/γ: at γ = 1e-300 its products overflow and the head, accuracies and KL came out NaN."""
    with pytest.raises(UserInputError, match="ACU's scores are not finite with gamma=1e-300; use a larger gamma"):
        run_stream(scenario, "acu", "learn:0,learn:1,unlearn:0", params={"gamma": 1e-300, "expansion": 64})


def test_the_width_table_shows_each_widths_request_cost_and_the_section_its_range():
    from unlearnkit.continual.report import acu_width_section

    rows = [{"width": 10, "r_mb": 0.0, "split-digits": 0.5, "permuted-digits": 0.7, "mean": 0.6, "request_ms": 0.5,
             "resolve_ms": 100.0, "request_ratio": 0.005},
            {"width": 20, "r_mb": 0.0, "split-digits": 0.6, "permuted-digits": 0.8, "mean": 0.7, "request_ms": 3.0,
             "resolve_ms": 150.0, "request_ratio": 0.02}]
    section = "\n".join(acu_width_section(rows))
    assert "| 10 | 0 | 0.5000 | 0.7000 | 0.6000 | 0.50 | 100.0 | 0.50 % |" in section
    assert "| 20 | 0 | 0.6000 | 0.8000 | 0.7000 | 3.00 | 150.0 | 2.00 % |" in section
    assert "the ratio ranges from 0.50 % to 2.00 % over these widths" in section
    assert "Chosen: expansion=20" in section


def test_each_route_of_the_product_with_r_equals_the_dense_one():
    generator = torch.Generator().manual_seed(0)
    r = InverseGram(60, 1.0, fold_rank=5)
    rows = torch.randn(36, 60, generator=generator, dtype=torch.float64)
    for start in range(0, 36, 4):  # learned rows: R₀ after folds plus a pending correction
        rls_update(r, torch.zeros(60, 3, dtype=torch.float64), rows[start : start + 4], torch.zeros(4, 3, dtype=torch.float64), +1)
        r.fold_if_due()
    assert 0 < r.left.shape[1] <= 5
    assert r.base.numpy().T.flags.f_contiguous  # what dsymv reads in place, without a copy
    column = torch.randn(60, 1, generator=generator, dtype=torch.float64)
    dense = r.dense()
    assert torch.allclose(r.times(column), dense @ column, rtol=0, atol=1e-12 * float(dense.abs().max()))
    for width in (3, SMALL_UPDATE_ROWS + 1):  # OpenBLAS's general product, then torch's
        columns = torch.randn(60, width, generator=generator, dtype=torch.float64)
        assert torch.allclose(r.times(columns), dense @ columns, rtol=0, atol=1e-12 * float(dense.abs().max()))


@pytest.fixture
def two_threads():
    """Torch on 2 threads for the test (the suite's workers run on 1, where a thread-count check cannot fail)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_torch_thread_restores_the_thread_count_also_after_an_error(two_threads):
    with pytest.raises(ZeroDivisionError):
        with one_torch_thread():
            assert torch.get_num_threads() == 1
            raise ZeroDivisionError
    assert torch.get_num_threads() == 2


def test_only_small_updates_run_torch_on_one_thread(scenario, monkeypatch, two_threads):
    monkeypatch.setattr(acu_module, "SMALL_UPDATE_ROWS", 2)
    t = scenario.tasks
    acu = build_strategy("acu", scenario, 0, {"expansion": 200})
    acu.learn(t[0], t[0].train_ids)
    threads = []
    features = acu.features
    monkeypatch.setattr(acu, "features", lambda x: threads.append(torch.get_num_threads()) or features(x))
    for rows in (t[0].train_ids[:1], t[0].train_ids[1:3], t[0].train_ids[3:6]):
        acu.unlearn(None, set(rows.tolist()))
    assert threads == [1, 1, 2] and torch.get_num_threads() == 2


@pytest.mark.parametrize("gamma", [1e-4, 1e-5])
def test_small_gammas_stay_exact_by_refinement_and_recomputation(scenario, monkeypatch, gamma):
    # The recursion alone, at expansion 300: 7.4e-4 (gamma 1e-4) and 4.1e-2 (1e-5) relative off the ridge solution after
    # these requests. Refinement from G and B brings W back, and R, which drifted too, is recomputed from G.
    calls = []
    recompute = acu_module.ACU._recompute
    monkeypatch.setattr(acu_module.ACU, "_recompute", lambda self, removed=None: (calls.append(1), recompute(self, removed))[1])
    acu = build_strategy("acu", scenario, 0, {"expansion": 300, "gamma": gamma, "chunk": 100})
    t = scenario.tasks
    for task in t[:3]:
        acu.learn(task, task.train_ids)
    for sample in t[2].train_ids[:10].tolist():
        acu.unlearn(None, {sample})
    acu.unlearn(0, set(t[0].train_ids.tolist()))
    acu.unlearn(1, set(t[1].train_ids.tolist()))
    rows = t[2].train_ids[10:].tolist()
    reference = _direct(acu, rows)
    assert (acu.w - reference).abs().max() <= 1e-6 * reference.abs().max()
    assert calls
    # G and B are the remaining rows' sums, whatever R's rounding
    gram = _gram(acu, rows)
    pending = acu.gram.rows.T @ (acu.gram.signs * acu.gram.rows)
    assert (acu.gram.base + pending - gram).abs().max() <= 1e-12 * gram.abs().max()
    x, y = acu.features(scenario.train_x[torch.tensor(rows)]), acu.targets(torch.tensor(rows))
    assert (acu.b - x.T @ y).abs().max() <= 1e-12 * (x.T @ y).abs().max()


@pytest.mark.parametrize("task", range(5))
def test_a_removal_after_learning_a_few_rows_at_small_gamma_stays_exact(scenario, task):
    # Learning 20 rows from R = I/γ (γ = 1e-4) left W ~1e-8 off; removing 3 of them (smallest squared pivot ~1e-4)
    # made that 7e-6 to 2e-5 without refinement (a first version estimated W's error from the pivots alone).
    acu = build_strategy("acu", scenario, 0, {"expansion": 100, "gamma": 1e-4})
    ids = scenario.tasks[task].train_ids[:20]
    acu.learn(scenario.tasks[task], ids)
    acu.unlearn(None, set(ids[:3].tolist()))
    reference = _direct(acu, ids[3:].tolist())
    assert (acu.w - reference).abs().max() <= 1e-6 * reference.abs().max()


def test_learning_after_removals_at_small_gamma_stays_exact(scenario):
    # 250 single-row removals at gamma 1e-5 left R 1e-4-ish off G⁻¹ while W, refined, was exact; refinement corrects W,
    # not R, so learning the next task row by row put R's error into every change of W (5.1e-6 off the ridge
    # solution). R's error, measured by each refinement, now sends it to a recomputation from G.
    acu = build_strategy("acu", scenario, 0, {"expansion": 100, "gamma": 1e-5, "chunk": 1, "fold_rank": 10**6})
    t = scenario.tasks
    for task in t[:4]:
        acu.learn(task, task.train_ids)
    acu.unlearn(None, set(t[0].train_ids[:250].tolist()))
    acu.learn(t[4], t[4].train_ids)
    reference = _direct(acu, acu.remaining_ids().tolist())
    assert (acu.w - reference).abs().max() <= 1e-6 * reference.abs().max()


@pytest.mark.parametrize("task", range(5))
def test_learning_a_whole_task_in_one_chunk_at_small_gamma_is_refined(scenario, task):
    # From R = I/γ (γ = 1e-5, 50 features), one 290-row chunk left W up to 2.5e-6 off the ridge solution: the rounding
    # bound must take trace(G) after the rows are added (before, G = γI says nothing of them).
    acu = build_strategy("acu", scenario, 0, {"expansion": 50, "gamma": 1e-5, "chunk": 10**6, "fold_rank": 10**6})
    acu.learn(scenario.tasks[task], scenario.tasks[task].train_ids)
    reference = _direct(acu, scenario.tasks[task].train_ids.tolist())
    assert (acu.w - reference).abs().max() <= 1e-6 * reference.abs().max()


def test_a_removal_without_a_cholesky_factor_of_i_minus_x_r_xt_is_taken_from_the_sums(scenario, monkeypatch):
    # where the recursion's removal cannot be factored in float64 (a small gamma, a drifted R), G − XᵀX can:
    # before, the request was refused ("use a larger gamma")
    acu = build_strategy("acu", scenario, 0, {"expansion": 300})
    t = scenario.tasks
    for task in t[:3]:
        acu.learn(task, task.train_ids)
    monkeypatch.setattr(acu_module, "rls_update", lambda *args: (_ for _ in ()).throw(acu_module.UnstableUpdate()))
    acu.unlearn(0, set(t[0].train_ids.tolist()))
    rows = [*t[1].train_ids.tolist(), *t[2].train_ids.tolist()]
    reference = _direct(acu, rows)
    assert (acu.w - reference).abs().max() <= 1e-9 * reference.abs().max()
    assert torch.allclose(acu.r.dense(), torch.linalg.inv(_gram(acu, rows)), rtol=0, atol=1e-9)


def test_the_gram_matrix_times_a_matrix_counts_its_pending_rows():
    generator = torch.Generator().manual_seed(0)
    gram = acu_module.GramMatrix(20, 0.5)
    added, removed = (torch.randn(k, 20, generator=generator, dtype=torch.float64) for k in (6, 2))
    gram.add(added, +1)
    gram.fold()
    gram.add(removed, -1)
    dense = added.T @ added - removed.T @ removed + 0.5 * torch.eye(20, dtype=torch.float64)
    columns = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    assert torch.allclose(gram.times(columns), dense @ columns, rtol=0, atol=1e-12)
    gram.fold()
    assert gram.rows.shape == (0, 20) and torch.allclose(gram.base, dense, rtol=0, atol=1e-12)


def test_a_gram_matrix_without_a_cholesky_factor_leaves_the_head_as_it_is(scenario, monkeypatch):
    # only a gamma near float64's limits gets here; the stream's check against a re-solve then judges the head
    acu = build_strategy("acu", scenario, 0, {"expansion": 50})
    acu.learn(scenario.tasks[0], scenario.tasks[0].train_ids)
    w, r = acu.w.clone(), acu.r.dense()
    acu.gram.base.neg_()
    monkeypatch.setattr(acu_module, "REFINE_STEPS", 0)  # straight to the recomputation
    acu._refine()
    assert torch.equal(acu.w, w) and torch.equal(acu.r.dense(), r)

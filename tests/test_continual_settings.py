"""Strategy and unlearner settings: impossible values are refused, the run's seed reaches every part, a
diverged training run is an error, and the retrain unlearner is not trained twice."""

import pytest

import unlearnkit.api
import unlearnkit.continual.runner as runner
from unlearnkit.continual.runner import run_stream
from unlearnkit.continual.scenarios import split_digits
from unlearnkit.continual.strategies import build_strategy
from unlearnkit.errors import UserInputError


@pytest.fixture(scope="module")
def scenario():
    return split_digits(0)


@pytest.mark.parametrize("spec, params, message", [
    ("ewc", {"ewc_lambda": "inf"}, "EWC needs a finite ewc_lambda ≥ 0"),
    ("ewc", {"ewc_lambda": "nan"}, "EWC needs a finite ewc_lambda ≥ 0"),
    ("l2", {"l2_lambda": "nan"}, "L2 needs a finite l2_lambda ≥ 0"),
    ("featkd", {"featkd_weight": "inf"}, "needs a finite featkd_weight ≥ 0"),
    ("lwf", {"lwf_alpha": "nan"}, "LwF needs a finite lwf_alpha ≥ 0 and temperature > 0"),
    ("lwf", {"temperature": "inf"}, "LwF needs a finite lwf_alpha ≥ 0 and temperature > 0"),
    ("uer", {"uer_scale": "inf"}, "UER needs a finite uer_scale > 0"),
    ("refresh+er", {"refresh_rate": "inf"}, "Refresh needs finite refresh_rate"),
    ("refresh+er", {"refresh_damping": "nan"}, "Refresh needs finite refresh_rate"),
    ("refresh+er", {"refresh_noise": "inf"}, "Refresh needs finite refresh_rate"),
    ("refresh+er", {"fisher_decay": "nan"}, "Refresh needs finite refresh_rate"),
    ("cuber", {"cuber_epsilon": "nan"}, "CUBER needs a finite cuber_epsilon ≥ 0"),
    ("acu", {"gamma": "inf"}, "ACU needs expansion ≥ 1, a finite gamma > 0"),
    ("uncle", {"beta": "nan"}, "finite beta, gamma and noise_std ≥ 0"),
    ("uncle", {"gamma": "inf"}, "finite beta, gamma and noise_std ≥ 0"),
    ("uncle", {"unlearn_decay": "0"}, "0 < unlearn_decay ≤ 1"),
    ("uncle", {"noise_std": "inf"}, "finite beta, gamma and noise_std ≥ 0"),
])
def test_non_finite_plugin_values_are_refused(scenario, spec, params, message):
    with pytest.raises(UserInputError, match=message):
        build_strategy(spec, scenario, 0, params)


@pytest.mark.parametrize("params", [{"gpm_threshold": 1}, {"gpm_threshold_deeper": 1}, {"gpm_threshold": 0}])
def test_gpm_thresholds_lie_strictly_between_0_and_1(scenario, params):
    # At 1 the bases would take every direction of a task's layer inputs.
    with pytest.raises(UserInputError, match="GPM needs 0 < gpm_threshold, gpm_threshold_deeper < 1"):
        build_strategy("gpm", scenario, 0, params)
    build_strategy("gpm", scenario, 0, {"gpm_threshold": 0.999, "gpm_threshold_deeper": 0.999})


@pytest.mark.parametrize("spec", ["naive", "ewc", "joint", "uncle", "acu"])
def test_a_seed_hyper_parameter_is_refused(scenario, spec):
    with pytest.raises(UserInputError, match=f"Strategy '{spec}' takes its seed from the run's --seed"):
        build_strategy(spec, scenario, 0, {"seed": "5"})


@pytest.mark.parametrize("spec", ["naive", "refresh+er", "joint", "uncle"])
def test_a_diverged_learning_step_is_an_error(scenario, spec):
    # An absurd learning rate makes the loss NaN within a few steps; the loop rolls the weights back and
    # stops, so going on would report a half-trained task as learned.
    with pytest.raises(UserInputError, match="Training diverged on (task 0|the joint retraining) \\(loss became nan at step"):
        run_stream(scenario, spec, "learn:0", params={"lr": 1e30, "epochs": 1})


def test_a_diverged_uncle_unlearning_step_is_an_error(scenario):
    with pytest.raises(UserInputError, match="Training diverged on the unlearning of task 0 \\(loss became inf at step 0\\)"):
        run_stream(scenario, "uncle", "learn:0,unlearn:0", params={"epochs": 1, "noise_std": 1e38}, reference=False)


def test_core_unlearners_get_the_runs_seed_unless_their_params_set_one(scenario, monkeypatch):
    seeds = []
    real = unlearnkit.api.unlearn

    def spy(model, request, method, **kwargs):
        seeds.append(kwargs.get("seed"))
        return real(model, request, method, **kwargs)

    monkeypatch.setattr(unlearnkit.api, "unlearn", spy)
    stream = "learn:0,unlearn:0"
    run_stream(scenario, "naive", stream, seed=3, params={"epochs": 1}, unlearner="gradient_ascent", reference=False)
    run_stream(scenario, "naive", stream, seed=3, params={"epochs": 1}, unlearner="gradient_ascent",
               unlearner_params={"seed": 7}, reference=False)
    assert seeds == [3, 7]


def test_the_retrain_unlearner_is_its_own_reference(scenario, monkeypatch):
    calls = []
    real = runner.retrain

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "retrain", counting)
    run = run_stream(scenario, "naive", "learn:0,learn:1,unlearn:1", params={"epochs": 1}, unlearner="retrain")
    assert calls == ["naive"]  # one retraining serves as both the unlearned model and the reference
    assert run.steps[2].retrain_gap == 0.0 and run.steps[2].retrain_output_kl == 0.0


def spy_on_training_seeds(module, monkeypatch) -> list[int]:
    """Record the seed of every ``optimise`` call the module makes."""
    seeds = []
    real = module.optimise

    def spy(model, stream, loss, config, **kwargs):
        seeds.append(config.seed)
        return real(model, stream, loss, config, **kwargs)

    monkeypatch.setattr(module, "optimise", spy)
    return seeds


def test_uncle_trains_and_unlearns_with_the_runs_seed(scenario, monkeypatch):
    import unlearnkit.continual.strategies.uncle as uncle

    seeds = spy_on_training_seeds(uncle, monkeypatch)
    run_stream(scenario, "uncle", "learn:0,learn:1,unlearn:0", seed=5, params={"epochs": 1}, reference=False)
    assert seeds == [5, 6, 5]  # task t learns with seed + t, like the shared strategies; unlearning uses the seed


def test_joint_retrains_with_the_runs_seed(scenario, monkeypatch):
    import unlearnkit.continual.strategies.joint as joint

    seeds = spy_on_training_seeds(joint, monkeypatch)
    run_stream(scenario, "joint", "learn:0,learn:1", seed=5, params={"epochs": 1}, reference=False)
    assert seeds == [5, 5]  # each retraining from scratch is seeded by the run, like its initialisation and batches


@pytest.mark.parametrize("params, message", [
    ({"hidden": True}, "hyper-parameter hidden must be an integer, got True"),  # built a layer of width 1
    ({"buffer_size": True}, "hyper-parameter buffer_size must be an integer, got True"),
])
def test_strategy_settings_of_the_wrong_type_are_refused(params, message):
    with pytest.raises(UserInputError, match=message):
        build_strategy("er", split_digits(0), 0, params)

"""The ``continual`` and ``continual-sweep`` commands; the main CLI calls :func:`register`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from ..errors import UserInputError


def parse_assignments(values: list[str] | None, option: str) -> dict[str, str]:
    """``["lr=0.01", "epochs=3"]`` → ``{"lr": "0.01", "epochs": "3"}``; malformed items are errors."""
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, text = value.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise UserInputError(f"{option} expects NAME=VALUE, got {value!r}.")
        if name.strip() in out:
            raise UserInputError(f"{option} {name.strip()} is given twice; give each setting once.")
        out[name.strip()] = text.strip()
    return out


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _user_errors(action: Callable[[], None]) -> None:
    """Run ``action``; a :class:`UserInputError` becomes one line on stderr and exit status 2."""
    try:
        action()
    except UserInputError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None


def check_continual_input(out: Path, *, scenario: str, data: str | None, seed: int, overwrite: bool) -> None:
    """The cheap checks of ``continual``, before the scenario is built: the seed, ``--data`` only with clofai,
    and an output folder that can be written without touching the dataset (``io.check_output``)."""
    from ..io import check_output
    from ..train.config import check_seed

    check_seed(seed, "--seed")
    if data is not None and scenario != "clofai":
        raise UserInputError(f"--data applies to the clofai scenario only, not {scenario!r}; drop it or pass --scenario clofai.")
    check_output(out, overwrite=overwrite, inputs=[data])


def parse_strategies(text: str | None) -> list[str]:
    """The sweep's strategies: all of them when ``text`` is None; an empty, unknown or repeated name is an error."""
    from .strategies import ALL_STRATEGIES, parse_spec

    if text is None:
        return list(ALL_STRATEGIES)
    names = [s.strip() for s in text.split(",")]
    if not all(names):
        raise UserInputError(f"--strategies expects comma-separated strategy names (omit it to run them all), got {text!r}.")
    seen: dict[tuple, str] = {}
    for name in names:
        base, plugins = parse_spec(name)
        key = (base, tuple(plugins))
        if key in seen:
            raise UserInputError(f"--strategies names the same strategy twice ({seen[key]!r} and {name!r}); list each once.")
        seen[key] = name
    return names


def _scenario(name: str, seed: int, data: str | None, options: list[str] | None, *, outline: bool = False):
    """The scenario; with ``outline``, a clofai folder's tasks, labels and split without its images read."""
    from .scenarios import build_scenario, check_scenario_options

    settings = {k: _number(v) for k, v in parse_assignments(options, "--scenario-param").items()}
    if outline and name == "clofai" and data:
        from .clofai import clofai_outline

        check_scenario_options(name, settings)
        return clofai_outline(data, seed, **settings)
    return build_scenario(name, seed, data=data, **settings)


def continual(
    out: Path = typer.Option(..., "--out", help="Output folder (results.json, accuracy.csv, accuracy.png)."),
    scenario: str = typer.Option("split-digits", help="split-digits, split-digits-task, permuted-digits, scole or clofai."),
    strategy: str = typer.Option("naive", help="A strategy, or plug-ins joined with '+', e.g. refresh+er."),
    stream: Optional[str] = typer.Option(None, help='Comma-separated requests, e.g. "learn:0,learn:1,unlearn:0,evaluate"; unlearn:ids=0;10;38-40 forgets samples by id (default: learn every task).'),
    unlearner: Optional[str] = typer.Option(None, help="amnesiac, retrain, acu, uncle or a core method (default: the strategy's own)."),
    seed: int = typer.Option(0, help="Seed for data, initialisation and batching."),
    param: Optional[List[str]] = typer.Option(None, "--param", help="Strategy hyper-parameter NAME=VALUE (repeatable)."),
    unlearner_param: Optional[List[str]] = typer.Option(None, "--unlearner-param", help="Core unlearning method hyper-parameter NAME=VALUE."),
    scenario_param: Optional[List[str]] = typer.Option(None, "--scenario-param", help="Scenario option NAME=VALUE, e.g. num_tasks=50."),
    data: Optional[str] = typer.Option(None, help="The CLOFAI folder (one sub-folder per task with real/ and fake/)."),
    reference: bool = typer.Option(True, help="Retrain a reference at each unlearning step (retrain_gap, retrain_output_kl)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Run a learn/unlearn stream with a continual strategy and write its results, accuracy table and heatmap."""

    def work() -> None:
        from ..io import atomic_dir, write_json_atomic, write_text_atomic
        from .report import matrix_csv, print_run, save_heatmap
        from .runner import plan_run, run_stream

        check_continual_input(out, scenario=scenario, data=data, seed=seed, overwrite=overwrite)
        params = parse_assignments(param, "--param")
        unlearn_params = parse_assignments(unlearner_param, "--unlearner-param")
        if scenario == "clofai":  # reading the images takes long: check everything else on the folder's outline first
            plan_run(_scenario(scenario, seed, data, scenario_param, outline=True), strategy, stream, seed=seed,
                     unlearner=unlearner, params=params, unlearner_params=unlearn_params)
        chosen = _scenario(scenario, seed, data, scenario_param)
        with atomic_dir(out, overwrite=overwrite) as folder:
            run = run_stream(chosen, strategy, stream, seed=seed, unlearner=unlearner, params=params,
                             unlearner_params=unlearn_params, reference=reference)
            write_json_atomic(folder / "results.json", run.to_dict())
            write_text_atomic(folder / "accuracy.csv", matrix_csv(run))
            save_heatmap(run, folder / "accuracy.png")
        print_run(run)
        typer.echo(f"wrote {out}/results.json, accuracy.csv, accuracy.png")

    _user_errors(work)


def continual_sweep(
    out: Path = typer.Option(Path("docs/results/continual.md"), "--out", help="The markdown page to write."),
    scenario: Optional[List[str]] = typer.Option(None, "--scenario", help="Scenario(s) to sweep (repeatable; default split-digits)."),
    strategies: Optional[str] = typer.Option(None, help="Comma-separated strategies (default: all)."),
    stream: Optional[List[str]] = typer.Option(None, "--stream", help="Stream(s) run on every scenario (default: learn every "
                                               "task; and the same with unlearn:k−1 right after learn:k, k = tasks // 2)."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds; tables show mean ± std."),
    acu_cost: bool = typer.Option(True, help="Add ACU's exactness, per-request cost and feature-width sections."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Run every strategy on the given scenarios and streams and write a markdown results page."""

    def work() -> None:
        from ..cli import parse_seeds
        from ..io import check_output, write_text_atomic

        check_output(out, overwrite=overwrite, file=True)
        names = parse_strategies(strategies)
        seed_list = parse_seeds(seeds, "--seeds")
        if not seed_list or len(set(seed_list)) < len(seed_list):
            raise UserInputError(f"--seeds must name distinct seeds, e.g. 0,1,2; got {seeds!r}.")
        for option, given in (("--scenario", scenario), ("--stream", stream)):
            repeated = [value for value in dict.fromkeys(given or []) if (given or []).count(value) > 1]
            if repeated:
                raise UserInputError(f"{option} {repeated[0]!r} is given twice; give each once.")
        plans = [sweep_plan(name, stream, seed_list, names) for name in scenario or ["split-digits"]]  # all checked first
        sections, acu_rows, width_rows = [], [], []
        for scenarios, streams in plans:
            sections += sweep_scenario(scenarios, names, streams)
            if acu_cost and "acu" in names:
                from .cost import acu_cost as measure

                acu_rows += measure(scenarios[seed_list[0]], seed_list[0])
        if acu_cost and "acu" in names:
            from .cost import acu_width_rows

            width_rows = acu_width_rows()
        from .report import sweep_page

        from ..cli import command_line

        write_text_atomic(out, sweep_page(command_line(), sections, acu_rows, width_rows))
        typer.echo(f"wrote {out}")

    _user_errors(work)


def default_streams(num_tasks: int) -> list[str]:
    """Learn every task; and the same with task ⌊T/2⌋−1 (task 0 when T = 1) unlearned right after task ⌊T/2⌋ is
    learned, T = ``num_tasks`` (5 tasks: ``unlearn:1`` after ``learn:2``)."""
    learn = [f"learn:{t}" for t in range(num_tasks)]
    middle = num_tasks // 2
    unlearn = learn[: middle + 1] + [f"unlearn:{middle - 1 if middle else 0}"] + learn[middle + 1 :]
    return [",".join(learn), ",".join(unlearn)]


def sweep_plan(name: str, streams: list[str] | None, seeds: list[int],
               strategies: list[str] | None = None) -> tuple[dict[int, Any], list[str]]:
    """One scenario per seed and the streams to run on it, each stream checked against every seed's scenario
    and every strategy's unlearner, so a bad scenario name, stream or pairing is refused before the first run."""
    from .scenarios import build_scenario
    from .stream import check_stream, parse_stream
    from .unlearners import resolve_unlearner

    if name == "clofai":  # the sweep has no --data: image folders are run one strategy at a time
        raise UserInputError("continual-sweep runs the built-in scenarios only; run clofai with "
                             "`unlearnkit continual --scenario clofai --data DIR --strategy NAME`.")
    scenarios = {seed: build_scenario(name, seed) for seed in seeds}
    chosen = streams or default_streams(scenarios[seeds[0]].num_tasks)
    for text in chosen:
        for seed, scenario in scenarios.items():
            try:
                requests = parse_stream(text, len(scenario.train_y))
                check_stream(requests, scenario)
            except UserInputError as error:
                if len(scenarios) == 1:
                    raise
                raise UserInputError(f"With seed {seed}: {error}") from None
        for strategy in strategies or []:
            resolve_unlearner(strategy, None, requests, in_sweep=True)
    return scenarios, chosen


def sweep_scenario(scenarios: dict[int, Any], strategies: list[str], streams: list[str]) -> list[tuple[str, str, str]]:
    """Run every (stream, strategy, seed) on one scenario (one instance per seed); one markdown section per stream."""
    from .report import sweep_table
    from .runner import run_stream

    name = next(iter(scenarios.values())).name
    sections = []
    for stream in streams:
        runs, seconds = {}, {}
        for strategy in strategies:
            for seed in scenarios:
                start = time.perf_counter()
                run = run_stream(scenarios[seed], strategy, stream, seed=seed)
                seconds.setdefault(strategy, []).append(time.perf_counter() - start)
                runs.setdefault(strategy, []).append(run)
                accuracy = run.metrics["avg_acc"]  # None when no task is learned at the end
                shown = "—" if accuracy is None else f"{accuracy:.3f}"
                typer.echo(f"{name} {strategy} seed {seed}: avg_acc {shown} ({seconds[strategy][-1]:.1f} s)", err=True)
        kind = "learn only" if "unlearn" not in stream else "with unlearning"
        sections.append((f"{name}, {kind}", stream if len(stream) <= 200 else stream[:200] + "…", sweep_table(runs, seconds)))
    return sections


def register(app: typer.Typer) -> None:
    """Add the ``continual`` and ``continual-sweep`` commands to ``app``."""
    from ..cli import examples

    app.command("continual", epilog=examples(
        'unlearnkit continual --scenario split-digits --strategy er --stream "learn:0,learn:1,learn:2,unlearn:1,learn:3,learn:4" '
        "--out out/cl-er",
        'unlearnkit continual --scenario split-digits --strategy acu --stream "learn:0,learn:1,unlearn:ids=0;10;38-40" '
        "--out out/cl-acu",
    ))(continual)
    app.command("continual-sweep", epilog=examples(
        "unlearnkit continual-sweep --scenario split-digits --strategies naive,er,uer,acu --seeds 0,1 --out out/continual.md",
    ))(continual_sweep)

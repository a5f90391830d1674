"""The ``unlearnkit`` command line."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .errors import UserInputError

app = typer.Typer(
    name="unlearnkit",
    help="Machine unlearning: many methods, one protocol, measured against retraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


BASE_HELP = ("facts: the model the benchmark trains: scratch (a small GPT-2 trained from scratch) or smollm2 "
             "(SmolLM2-135M-Instruct fine-tuned on a smaller subset; optional packages, see docs/smollm2.md).")


SYSTEM_PROMPT_HELP = "Causal LMs: a system prompt put before every question (the one the model was fine-tuned with)."
TEMPLATE_ARG_HELP = ("Causal LMs: a chat-template variable NAME=VALUE (repeatable), e.g. date_string='10 Apr 2025' "
                     "for Llama-3 templates.")


def template_args(values: list[str] | None) -> dict[str, str]:
    """``--template-arg NAME=VALUE`` options as a mapping."""
    pairs = [value.partition("=") for value in values or []]
    for value, (name, sep, _) in zip(values or [], pairs):
        if not sep or not name:
            raise UserInputError(f"--template-arg {value!r} is not of the form NAME=VALUE (e.g. date_string='10 Apr 2025').")
    return {name: raw for name, _, raw in pairs}


def parse_params(values: list[str] | None) -> dict[str, dict[str, Any]]:
    """Parse ``--param method.name=value`` options into ``{method: {name: value}}`` (values stay strings)."""
    parsed: dict[str, dict[str, Any]] = {}
    for value in values or []:
        key, sep, raw = value.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise UserInputError(f"--param {value!r} is not of the form METHOD.NAME=VALUE (e.g. ssd.alpha=5).")
        parsed.setdefault(method, {})[name] = raw
    return parsed


def split_list(value: str | None) -> list[str] | None:
    """Split a comma-separated option; None or empty gives None."""
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


def parse_seeds(value: str | None) -> list[int]:
    """Integers from a comma-separated option (none for None or empty)."""
    seeds = []
    for text in split_list(value) or []:
        if not text.lstrip("-").isdigit():
            raise UserInputError(f"--retrain-seeds takes comma-separated integers; {text!r} is not one.")
        seeds.append(int(text))
    return seeds


@app.command("methods")
def methods_command() -> None:
    """List every method: name, model kinds, what it needs, and its paper."""
    from rich.console import Console
    from rich.table import Table

    from .methods.registry import methods

    table = Table("method", "model kinds", "needs", "paper")
    for name, cls in methods().items():
        table.add_row(name, ", ".join(cls.kinds), ", ".join(sorted(cls.needs)) or "—", cls.paper)
    Console(width=200).print(table)


@app.command("bench")
def bench_command(
    benchmark: str = typer.Option("digits", help="Built-in benchmark: digits, mnist or facts."),
    scenario: str = typer.Option("random", help="Image benchmarks: random (10% of train) or class."),
    split: str = typer.Option("forget10", help="facts: forget01, forget05 or forget10."),
    preset: str = typer.Option("default", help="facts: default (200 people) or tiny (a few people, for smoke tests)."),
    base: str = typer.Option("scratch", help=BASE_HELP),
    methods: Optional[str] = typer.Option(None, help="Comma-separated method names (default: all that apply)."),
    out: Path = typer.Option(Path("out/bench"), help="Output directory (must not exist unless --overwrite)."),
    seed: int = typer.Option(0, help="Seed for data, splits, initialisation and batching."),
    param: Optional[list[str]] = typer.Option(None, help="Method setting METHOD.NAME=VALUE (repeatable)."),
    attacks: Optional[str] = typer.Option(None, help="facts: comma-separated attacks (relearn, in_context, quantize)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
    lora: Optional[str] = typer.Option(None, help="facts: train LoRA adapters, e.g. r=8,alpha=16,targets=c_attn,c_proj."),
    bf16: bool = typer.Option(False, help="facts: store and train the weights in bfloat16."),
    gradient_checkpointing: bool = typer.Option(False, help="facts: recompute activations in the backward pass."),
    retrain_seeds: Optional[str] = typer.Option(None, help="facts: comma-separated seeds; each adds the retain model "
                                                "retrained with that seed as a reference row (how far exact retraining "
                                                "alone moves each metric)."),
) -> None:
    """Unlearn with each method on a built-in benchmark and compare every result with retraining."""
    from .train.distributed import is_main_process, launched_processes
    from .train.lora import MemoryOptions

    command = "unlearnkit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    memory = MemoryOptions.from_cli(lora, bf16, gradient_checkpointing)
    if benchmark == "facts":
        from .benchmarks.lm_bench import run_lm_bench

        if scenario != "random":
            raise UserInputError("--scenario applies to the image benchmarks; facts forgets a --split of its people.")
        config = facts_preset(preset, seed, base)
        run_lm_bench(config, split, split_list(methods), out, params=parse_params(param), overwrite=overwrite,
                     command=command, attacks=split_list(attacks) or (), memory=memory,
                     retrain_seeds=parse_seeds(retrain_seeds))
    else:
        if retrain_seeds:
            raise UserInputError(f"--retrain-seeds applies to the facts benchmark, not {benchmark}.")
        if split != "forget10" or preset != "default":
            raise UserInputError(f"--split and --preset apply to the facts benchmark, not {benchmark} (use --scenario).")
        if attacks:
            raise UserInputError(f"Attacks apply to causal language models; the {benchmark} benchmark is a classifier.")
        if base != "scratch":
            raise UserInputError(f"--base applies to the facts benchmark; the {benchmark} benchmark trains its own classifier.")
        if memory.active:
            raise UserInputError(f"--lora, --bf16 and --gradient-checkpointing apply to causal language models; "
                                 f"the {benchmark} benchmark is a classifier.")
        if launched_processes() > 1:
            raise UserInputError(f"The {benchmark} bench runs in one process; start it without accelerate launch or torchrun.")
        from .benchmarks.classifier_bench import run_classifier_bench

        run_classifier_bench(benchmark, scenario, split_list(methods), out, seed=seed, params=parse_params(param),
                             overwrite=overwrite, command=command)
    if is_main_process():
        typer.echo((out / "results.md").read_text())


@app.command("evaluate")
def evaluate_command(
    data: Path = typer.Option(..., help="Folder of TOFU-format files (forgetXX_perturbed, retain_perturbed, holdoutXX, world_facts_perturbed; real_authors_perturbed joins model utility when present)."),
    model: Path = typer.Option(..., help="The model to score (a Hugging Face causal LM folder)."),
    retain_model: Path = typer.Option(..., help="The model trained without the forget set (the gold standard)."),
    split: str = typer.Option("forget10", help="Forget split: forget01, forget05 or forget10."),
    out: Path = typer.Option(Path("out/evaluate"), help="Output directory (must not exist unless --overwrite)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
    max_new_tokens: int = typer.Option(200, help="New tokens of each greedy answer scored by ROUGE (TOFU: 200)."),
    system_prompt: Optional[str] = typer.Option(None, help=SYSTEM_PROMPT_HELP),
    template_arg: Optional[list[str]] = typer.Option(None, help=TEMPLATE_ARG_HELP),
) -> None:
    """Score a causal LM with the TOFU/MUSE metric suite against its retain model."""
    from .benchmarks.lm_bench import run_lm_evaluate
    from .train.distributed import is_main_process

    prompt_format = {"system_prompt": system_prompt, "template_args": template_args(template_arg)}
    run_lm_evaluate(data, model, retain_model, split, out, overwrite=overwrite, max_new_tokens=max_new_tokens,
                    prompt_format=prompt_format,
                    command="unlearnkit " + " ".join(shlex.quote(a) for a in sys.argv[1:]), log=typer.echo)
    if is_main_process():
        typer.echo((out / "results.md").read_text())


@app.command("export")
def export_command(
    benchmark: str = typer.Option("facts", help="The benchmark to export (facts)."),
    format: str = typer.Option("tofu", help="Output layout (tofu)."),
    out: Path = typer.Option(..., help="Output directory (must not exist unless --overwrite)."),
    preset: str = typer.Option("default", help="facts preset: default or tiny."),
    base: str = typer.Option("scratch", help=BASE_HELP),
    seed: int = typer.Option(0, help="Seed of the generated data and models."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Write a built-in benchmark's data and trained target/retain models in another tool's layout."""
    if benchmark != "facts":
        raise UserInputError(f"Only the facts benchmark can be exported, not {benchmark!r}.")
    if format != "tofu":
        raise UserInputError(f"Unknown export format {format!r}; valid: tofu.")
    from .benchmarks.tofu_format import export_facts

    export_facts(facts_preset(preset, seed, base), out, overwrite=overwrite)
    typer.echo(f"wrote {out}")


@app.command("select-facts")
def select_facts_command(
    seed: int = typer.Option(1, help="World seed to select on; not 0, the world the facts bench reports."),
    split: str = typer.Option("forget10", help="facts: forget01, forget05 or forget10."),
    preset: str = typer.Option("default", help="facts: default (200 people) or tiny (a few people, for smoke tests)."),
    out: Path = typer.Option(Path("docs/results/facts-selection.md"), help="Markdown table to write."),
    overwrite: bool = typer.Option(False, help="Replace an existing table."),
) -> None:
    """Choose the facts bench's rmu and sam_npo settings on a held-out world (see benchmarks/selection.py)."""
    from .benchmarks.facts import FORGET_SPLITS
    from .benchmarks.selection import check_selection_world, select_facts_settings, write_selection

    config = facts_preset(preset, seed)
    check_selection_world(config)
    if split not in FORGET_SPLITS:
        raise UserInputError(f"Unknown forget split {split!r}; valid: {', '.join(FORGET_SPLITS)}.")
    if out.exists() and not overwrite:
        raise UserInputError(f"The output path {out} already exists; choose another or pass --overwrite.")
    chosen, rows = select_facts_settings(config, split, log=typer.echo)
    write_selection(out, config, split, chosen, rows, "unlearnkit " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    typer.echo(out.read_text())


@app.command("cards")
def cards_command(
    results: Optional[list[Path]] = typer.Option(None, help="Bench output folders whose numbers the cards quote (repeatable)."),
    out: Path = typer.Option(Path("docs/methods"), help="Folder for the cards."),
) -> None:
    """Write one Markdown card per method: what it needs, its update rule, defaults and measured numbers."""
    from .report.cards import write_cards

    for folder in results or []:
        if not (folder / "results.json").is_file():
            raise UserInputError(f"{folder} holds no results.json; pass folders written by 'unlearnkit bench'.")
    typer.echo(f"wrote {len(write_cards(out, results or []))} cards to {out}")


@app.command("forget")
def forget_command(
    model: Path = typer.Option(..., help="Folder of a Hugging Face causal LM, or of a classifier (unlearnkit.json + model.safetensors)."),
    forget: Path = typer.Option(..., help="Items to forget: .jsonl, .csv or .parquet."),
    method: str = typer.Option(..., help="Unlearning method (see 'unlearnkit methods')."),
    out: Path = typer.Option(..., help="Where to write the unlearned model (a new folder)."),
    retain: Optional[Path] = typer.Option(None, help="Items whose knowledge must be kept (same formats)."),
    param: Optional[list[str]] = typer.Option(None, help="Method setting NAME=VALUE (repeatable)."),
    ledger: str = typer.Option("unlearnkit-ledger.db", help="Ledger: a SQLite file or any SQLAlchemy URL."),
    salt_file: Optional[Path] = typer.Option(None, help="File holding the ledger's item salt (default: beside the ledger)."),
    subject: str = typer.Option("", help="Free text recorded in the ledger (e.g. the request's ticket); never shown to the model."),
    training_data: Optional[Path] = typer.Option(None, help="The model's training data: every forget item must be in it."),
    question_field: str = typer.Option("question", help="LM data: the question field."),
    answer_field: str = typer.Option("answer", help="LM data: the answer field."),
    input_field: str = typer.Option("input", help="Classifier data: the input field (a list of numbers)."),
    label_field: str = typer.Option("label", help="Classifier data: the label field."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    trust_pickle: bool = typer.Option(False, help="Classifiers: allow a pickled model.pt (only from sources you trust). "
                                                    "Causal LMs always load with safetensors or torch's weights-only loader."),
    show_examples: bool = typer.Option(False, help="Show forget-set text in report.html (redacted by default)."),
    lora: Optional[str] = typer.Option(None, help="Causal LMs: train LoRA adapters, e.g. r=8,alpha=16,targets=c_attn,c_proj "
                                                  "(add save=adapter to write only the adapter)."),
    bf16: bool = typer.Option(False, help="Causal LMs: store and train the weights in bfloat16."),
    gradient_checkpointing: bool = typer.Option(False, help="Causal LMs: recompute activations in the backward pass."),
    system_prompt: Optional[str] = typer.Option(None, help=SYSTEM_PROMPT_HELP),
    template_arg: Optional[list[str]] = typer.Option(None, help=TEMPLATE_ARG_HELP),
) -> None:
    """Unlearn items from your own model; write it atomically with a report, and record the request in the ledger.

    Runs unchanged under `accelerate launch` or `torchrun` (see docs/scale.md): one output folder and one ledger row.
    """
    from .forget_job import ForgetJob, run_forget
    from .train.lora import MemoryOptions

    settings = {name: value for name, value in (_setting(p) for p in param or [])}
    memory = MemoryOptions.from_cli(lora, bf16, gradient_checkpointing)
    run_forget(ForgetJob(model=model, forget=forget, method=method, out=out, retain=retain, params=settings,
                         ledger=ledger, salt_file=salt_file, subject=subject, overwrite=overwrite,
                         trust_pickle=trust_pickle, show_examples=show_examples, training_data=training_data,
                         question_field=question_field, answer_field=answer_field, input_field=input_field,
                         label_field=label_field, memory=memory, system_prompt=system_prompt,
                         template_args=template_args(template_arg)), log=typer.echo)


def _setting(value: str) -> tuple[str, str]:
    name, sep, raw = value.partition("=")
    if not sep or not name:
        raise UserInputError(f"--param {value!r} is not of the form NAME=VALUE (e.g. lr=1e-4).")
    return name, raw


def facts_preset(preset: str, seed: int, base: str = "scratch"):
    """The facts configuration of a named preset and base; the smollm2 base's packages are checked here,
    before anything is generated, trained or written."""
    from .benchmarks.facts import BASES, FactsConfig

    if base not in BASES:
        raise UserInputError(f"Unknown facts base {base!r}; valid: {', '.join(BASES)}.")
    if base == "smollm2":
        from .benchmarks.smollm2 import gguf_path, smollm2_config

        config = smollm2_config(preset, seed)
        gguf_path()  # the optional packages are installed, or one sentence saying how to install them
        return config
    presets = {"default": FactsConfig, "tiny": FactsConfig.tiny}
    if preset not in presets:
        raise UserInputError(f"Unknown facts preset {preset!r}; valid: {', '.join(presets)}.")
    return presets[preset](seed=seed)


def _register_subcommands() -> None:
    """Attach the commands that other parts of the package contribute."""
    import importlib

    for module_name in ("unlearnkit.ledger_cli", "unlearnkit.continual.cli"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; a user mistake prints one sentence and exits with status 2.

    Under ``accelerate launch`` / ``torchrun`` the process group is shut down on the way out.
    """
    _register_subcommands()
    finished = False
    try:
        code = _dispatch(argv)
        finished = True
        return code
    finally:
        if "torch.distributed" in sys.modules:  # nothing to shut down when torch was never loaded
            from .train.distributed import end

            end(wait=finished)


def _dispatch(argv: list[str] | None) -> int:
    try:
        # without standalone mode click returns a command's typer.Exit code instead of raising it
        code = app(args=argv, standalone_mode=False)
    except UserInputError as error:
        typer.echo(f"error: {error}", err=True)
        return 2
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except typer.Exit as done:
        return done.exit_code
    except Exception as error:  # click's own usage errors
        if isinstance(error, _click_exceptions()):
            error.show()
            return error.exit_code
        raise
    return code if isinstance(code, int) else 0


def _click_exceptions() -> tuple[type, ...]:
    """Click's usage-error class, and typer's own copy of it (typer ≥ 0.29 bundles click)."""
    import click

    found: list[type] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as BundledClickException
    except ImportError:
        pass
    else:
        found.append(BundledClickException)
    return tuple(found)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()

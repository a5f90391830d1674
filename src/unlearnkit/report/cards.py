"""Method cards: one Markdown page per method, from its code (docstring, needs, defaults) and bench results."""

from __future__ import annotations

import dataclasses
import inspect
import math
import shutil
from pathlib import Path
from typing import Any, Container, Mapping, Sequence

from ..benchmarks.results import is_number, read_bench_results
from ..errors import UserInputError
from ..io import atomic_dir, check_output, write_text_atomic
from ..train.config import settings_of

#: Metrics quoted on a card, by model kind of the bench that produced them.
CARD_METRICS = {
    "classifier": ("forget_acc", "retain_acc", "test_acc", "mia_efficacy", "avg_gap"),
    "causal_lm": ("forget_quality", "model_utility", "forget_truth_ratio", "mia_loss_auc", "privleak",
                  "relearn_recovery", "relearn_recovery_control"),
}


def _setting(results: dict[str, Any]) -> str:
    """The bench a row comes from, with its base model and seed where they are not the bench's defaults (scratch,
    seed 0), so that rows from two runs of one bench can be told apart."""
    where = results.get("scenario") or results.get("split") or ""
    base = (results.get("config") or {}).get("base", "scratch")
    bench = results.get("benchmark") if base == "scratch" else f"{results.get('benchmark')} ({base} base)"
    seed = f", seed {results['seed']}" if results.get("seed") not in (None, 0) else ""
    return f"{bench} {where}".strip() + seed


def _departures(run: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The run's settings that differ from the method's defaults (a file path shown by its name only)."""
    changed = []
    for key, value in (run.get("params") or {}).items():
        if key in defaults and value != defaults[key]:
            changed.append(f"{key}={Path(value).name if isinstance(value, str) and '/' in value else value}")
    return ", ".join(changed) or "defaults"


REFERENCE_LABEL = "bench reference (trained by the bench, not the method)"

#: The first line of the cards index (README.md); a README.md that starts otherwise is not the cards'.
INDEX_HEADING = "# Method cards"


def _card_heading(name: str) -> str:
    """The start of the first line of method ``name``'s card, by which an existing card is recognised."""
    return f"# `{name}` — "


def _method_run(name: str, runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The run of method ``name``: a run of the method itself (the bench renames one that shares a
    reference row's name, e.g. ``retrain``, to ``<name>_method``) before a reference row of that name."""
    own = [r for r in runs if not r.get("reference") and r["method"] in (name, f"{name}_method")]
    return own[0] if own else next((r for r in runs if r["method"] == name), None)


def _card_number(value: float) -> str:
    """A metric on a card: four significant digits, "—" for NaN or infinity (a metric that could not be measured
    in an older results.json), as the results pages show it."""
    return f"{value:.4g}" if math.isfinite(value) else "—"


def _measured(method_cls: type, defaults: dict[str, Any], results_list: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for results in results_list:
        run = _method_run(method_cls.name, results["runs"])
        if run is None:
            continue
        kind = "causal_lm" if "forget_quality" in run["metrics"] else "classifier"
        shown = [f"{k} {_card_number(run['metrics'][k])}" for k in CARD_METRICS[kind] if is_number(run["metrics"].get(k))]
        settings = _departures(run, {**defaults, **method_cls.kind_defaults.get(kind, {})})
        if run.get("reference"):
            settings = f"{REFERENCE_LABEL}: {settings}"
        lines.append(f"| {_setting(results)} | {settings} | {', '.join(shown)} | {_time(run)} | {run.get('status', 'ok')} |")
    if not lines:
        return ["Not yet part of a committed bench run."]
    return ["| bench | settings (where not the defaults) | metrics | time | status |", "|---|---|---|---|---|", *lines]


def _time(run: Mapping[str, Any]) -> str:
    """A run's seconds and their ratio to retraining, "—" where either was not measured (``evaluate`` times nothing)."""
    seconds, retrain = run.get("seconds"), run.get("retrain_seconds")
    if not (is_number(seconds) and math.isfinite(seconds)):
        return "—"
    ratio = seconds / retrain if is_number(retrain) and retrain else float("nan")
    return f"{seconds:.2f} s ({ratio:.3f} of retraining)" if math.isfinite(ratio) else f"{seconds:.2f} s"


def _kind_defaults(method_cls: type, setting: str) -> str:
    """``setting``'s defaults for particular model kinds (``Method.kind_defaults``), as a note after the default."""
    by_kind = [f"`{value!r}` on {kind}" for kind, values in method_cls.kind_defaults.items()
               for key, value in values.items() if key == setting]
    return f" ({', '.join(by_kind)})" if by_kind else ""


def card(method_cls: type, results_list: Sequence[dict[str, Any]]) -> str:
    """The Markdown card of one method."""
    doc = inspect.getdoc(inspect.getmodule(method_cls)) or ""
    title, _, body = doc.partition("\n")
    defaults = {name: f.default for name, f in settings_of(method_cls.Config).items() if f.default is not dataclasses.MISSING}
    return "\n".join([
        f"{_card_heading(method_cls.name)}{title}",
        "",
        f"- **Paper:** {method_cls.paper}",
        f"- **Model kinds:** {', '.join(method_cls.kinds)}",
        f"- **Needs:** {', '.join(sorted(method_cls.needs)) or 'only the forget set'}",
        f"- **When to use it:** {method_cls.use_when}",
        "",
        "## How it works",
        "",
        body.strip(),
        "",
        "## Defaults",
        "",
        "| setting | default |",
        "|---|---|",
        *(f"| `{key}` | `{value!r}`{_kind_defaults(method_cls, key)} |" for key, value in defaults.items()),
        "",
        "## Measured (generated by `unlearnkit bench`)",
        "",
        *_measured(method_cls, defaults, results_list),
        "",
    ])


def write_cards(out_dir: Path, results_dirs: Sequence[Path], *, overwrite: bool = False) -> list[Path]:
    """Write ``<out_dir>/<method>.md`` for every registered method and an index; return the paths.

    The folder is written whole under a temporary name and renamed into place. An existing ``out_dir`` is
    refused unless ``overwrite``, and even then unless it holds only cards (see :func:`_stale_cards`); its
    hidden files are kept, and the cards of methods no longer registered go."""
    from ..methods.registry import methods

    out_dir = Path(out_dir)
    results_list = [read_results(Path(d) / "results.json") for d in results_dirs]
    registry = methods()
    _stale_cards(out_dir, registry)  # a folder holding other files is refused, with or without overwrite
    check_output(out_dir, overwrite=overwrite, inputs=results_dirs)
    index = [INDEX_HEADING, "", "Generated by `unlearnkit cards` from the code and the bench results; do not edit.", "",
             "| method | kinds | paper |", "|---|---|---|"]
    pages = {}  # every card is rendered before any is written, so bad results leave the folder as it was
    for name, cls in registry.items():
        pages[f"{name}.md"] = card(cls, results_list)
        index.append(f"| [{name}]({name}.md) | {', '.join(cls.kinds)} | {cls.paper} |")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for hidden in sorted(out_dir.glob(".*")) if out_dir.is_dir() else []:
            if hidden.is_dir() and not hidden.is_symlink():
                shutil.copytree(hidden, tmp / hidden.name, symlinks=True)
            else:
                shutil.copy2(hidden, tmp / hidden.name, follow_symlinks=False)
        for name, text in pages.items():
            write_text_atomic(tmp / name, text)
        write_text_atomic(tmp / "README.md", "\n".join(index) + "\n")
    return [out_dir / name for name in pages]


def _starts_with(path: Path, heading: str) -> bool:
    """Whether ``path`` is a UTF-8 text file whose first line starts with ``heading``."""
    try:
        return path.is_file() and path.read_text(encoding="utf-8").startswith(heading)
    except (OSError, UnicodeDecodeError):
        return False


def _stale_cards(out_dir: Path, registered: Container[str]) -> list[Path]:
    """The cards in ``out_dir`` of methods no longer registered, which the new folder leaves out.

    Refuses a folder holding anything ``write_cards`` did not write (hidden files aside): only the cards index
    and ``<name>.md`` files that start with the card heading of ``<name>`` may be there, so no hand-written page
    is replaced or removed."""
    stale = []
    for path in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if path.name.startswith("."):
            continue
        if path.name == "README.md" and _starts_with(path, INDEX_HEADING + "\n"):
            continue
        if path.name != "README.md" and path.suffix == ".md" and _starts_with(path, _card_heading(path.stem)):
            if path.stem not in registered:
                stale.append(path)
            continue
        raise UserInputError(f"The cards folder {out_dir} holds {path.name}, which 'unlearnkit cards' did not write; "
                             "choose an empty folder or one holding only cards.")
    return stale


def read_results(path: Path) -> dict[str, Any]:
    """A bench ``results.json`` (see :func:`~unlearnkit.benchmarks.results.read_bench_results`)."""
    return read_bench_results(path)

"""One self-contained ``report.html`` for a bench (or forget) run.

The report holds the results table, a forget-vs-utility scatter with the Pareto front of the
unlearning methods, membership-inference score histograms (forget vs. held-out items, each method
beside the retrained reference; for a forget job, which has neither, forget vs. retained items beside
the original model), the training-loss curves of the runs that carry them, and the
forget items. Everything is inline: CSS in a ``<style>`` element and plots as base64 PNG data URIs,
so the file opens offline and can be archived or mailed alone.

Forget-set text never enters the report unless the caller passes ``show_examples=True``; otherwise
items appear only as short (unsalted) SHA-256 hashes of their ids.

Plots are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg canvas, never through
pyplot, so writing a report never changes the caller's matplotlib backend or leaks figures.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import UserInputError
from ..io import write_text_atomic

# Names under which the model trained without the forget set (the gold standard) appears in runs.
GOLD_REFERENCES = ("retrain", "retain")
DPI = 80
MAX_ITEM_ROWS = 100
HASH_CHARS = 12

# (x metric, x higher is better, y metric): the first pair found in the runs' metrics is plotted;
# y is always higher-is-better. Bench runs give the first two; forget jobs the last two.
SCATTER_AXES = (
    ("forget_quality", True, "model_utility"),
    ("forget_acc", False, "test_acc"),
    ("forget_acc", False, "retain_acc"),
    ("forget_prob", False, "retain_prob"),
)

# Per-item score of the MIA histograms (higher looks like a non-member for all of them) and the
# split the forget items are compared with.
MIA_SCORES = {"classifier": (("loss",), "test"), "causal_lm": (("mia_minkpp", "mia_loss"), "holdout")}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1d2330; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #d5d9e0; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #d5d9e0; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f1f3f6; } td.name, th.name { text-align: left; }
td.text { text-align: left; max-width: 40rem; white-space: pre-wrap; word-break: break-word; }
tr.reference td { background: #fbf8ec; } .tag { font-size: 0.7rem; color: #6b5d1f; margin-left: 0.3rem; }
tr.failed td { color: #a12b2b; } .front { font-weight: 600; }
.scroll { overflow-x: auto; } .note { color: #5a6272; font-size: 0.85rem; }
.warning { background: #fdecea; border: 1px solid #e6a19a; padding: 0.5rem 1rem; }
figure { margin: 1rem 0; } .figures { display: flex; flex-wrap: wrap; column-gap: 2rem; } figcaption { color: #5a6272; font-size: 0.85rem; }
img { max-width: 100%; height: auto; } code { font-size: 0.85rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.1rem 1rem; font-size: 0.9rem; }
dt { font-weight: 600; } dd { margin: 0; }
"""


# ----------------------------------------------------------------------------- public entry points


def write_report(
    path: str | os.PathLike,
    results: Mapping[str, Any],
    items: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    show_examples: bool = False,
    examples: Mapping[Any, str] | None = None,
) -> None:
    """Write a self-contained HTML report of ``results`` (the bench's ``results.json``) to ``path``.

    ``items`` maps a run's method name to its per-item rows (classifier rows carry ``loss``; language
    model rows carry ``answer_nll`` and the ``mia_*`` scores); it may be empty. ``examples`` maps an
    item id to its text and is used only when ``show_examples`` is true. Written atomically.
    """
    runs = _runs(results)
    kind = item_kind(items)
    sections = [
        _header(results, show_examples),
        _section("Results", _results_table(results, runs)),
        _section("Forgetting against utility", _figure_html(_scatter_figure(runs), _scatter_caption(runs))),
        _section("Membership inference scores", _mia_section(runs, items, kind)),
        _section("Training loss", _figure_html(_loss_figure(runs), "Loss per optimisation step of each run that trained.")),
        _section("Forget items", _items_section(runs, items, kind, show_examples, examples)),
        _section("Settings", _settings_html(results, runs)),
    ]
    title = html.escape(_title(results))
    body = "\n".join(part for part in sections if part)
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
    write_text_atomic(path, page)


def report_from_dir(
    out_dir: str | os.PathLike, show_examples: bool = False, examples: Mapping[Any, str] | None = None
) -> Path:
    """Read ``results.json`` and ``items/*.jsonl`` of a bench output folder; write and return ``out_dir/report.html``."""
    out_dir = Path(out_dir)
    results_path = out_dir / "results.json"
    if not results_path.is_file():
        raise UserInputError(f"The folder {out_dir} has no results.json; pass a folder written by `unlearnkit bench`.")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserInputError(f"The file {results_path} is not UTF-8 text.") from None
    except ValueError as error:  # JSONDecodeError, or a number too long to read
        raise UserInputError(f"The file {results_path} is not valid JSON ({error}).") from None
    items = {path.stem: _read_jsonl(path) for path in sorted((out_dir / "items").glob("*.jsonl"))}
    target = out_dir / "report.html"
    write_report(target, results, items, show_examples=show_examples, examples=examples)
    return target


def item_hash(item_id: Any) -> str:
    """The short, unsalted SHA-256 hash under which an item id appears in a redacted report."""
    return hashlib.sha256(str(item_id).encode("utf-8")).hexdigest()[:HASH_CHARS]


def item_kind(items: Mapping[str, Sequence[Mapping[str, Any]]]) -> str | None:
    """``"causal_lm"`` or ``"classifier"`` from the keys of the per-item rows; ``None`` when there are none."""
    for rows in items.values():
        for row in rows:
            if "answer_nll" in row or "mia_loss" in row:
                return "causal_lm"
            if "loss" in row:
                return "classifier"
    return None


def pareto_front(points: Sequence[tuple[float, float]], x_higher_is_better: bool) -> list[int]:
    """Indices of the points that no other point beats on both axes (y is higher-is-better)."""
    sign = 1.0 if x_higher_is_better else -1.0
    scored = [(sign * x, y) for x, y in points]
    front = []
    for i, (xi, yi) in enumerate(scored):
        dominated = any(xj >= xi and yj >= yi and (xj > xi or yj > yi) for xj, yj in scored)
        if not dominated:
            front.append(i)
    return front


def format_number(value: Any) -> str:
    """A table cell for a number: 4 decimals, 1 decimal from 100 on, scientific for tiny or huge values."""
    if value is None:
        return "—"
    if isinstance(value, numbers.Number) and hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return html.escape(str(value))


# ----------------------------------------------------------------------------------- input helpers


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"The file {path} is not UTF-8 text.") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:  # JSONDecodeError, or a number too long to read
            raise UserInputError(f"Line {number} of {path} is not valid JSON ({error}).") from None
        if not isinstance(row, Mapping):
            raise UserInputError(f"Line {number} of {path} is not a JSON object; expected one per-item row.")
        rows.append(row)
    return rows


def _runs(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    runs = results.get("runs") if isinstance(results, Mapping) else None
    if not isinstance(runs, list) or not all(isinstance(run, Mapping) and isinstance(run.get("method"), str)
                                             for run in runs):
        raise UserInputError("The results have no 'runs' list of objects with a 'method' name; pass a bench "
                             "results.json.")
    bad = next((run["method"] for run in runs if not isinstance(run.get("metrics") or {}, Mapping)), None)
    if bad is not None:
        raise UserInputError(f"The 'metrics' of run {bad!r} is not an object of metric names and values.")
    return runs


def _gold(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The retrained reference run, if the results have one."""
    for run in runs:
        if run.get("reference") and run["method"] in GOLD_REFERENCES:
            return run
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _metric_keys(results: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Declared metric order first (``metric_keys``), then any other metric in order of appearance."""
    present = {key for run in runs for key in (run.get("metrics") or {})}
    keys = [key for key in results.get("metric_keys", []) if key in present]
    for run in runs:
        keys += [key for key in (run.get("metrics") or {}) if key not in keys]
    return keys


def _title(results: Mapping[str, Any]) -> str:
    setting = results.get("scenario") or results.get("split")
    name = str(results.get("benchmark", "run"))
    return f"unlearnkit report — {name}" + (f" ({setting})" if setting else "")


# ----------------------------------------------------------------------------------- HTML sections


def _section(title: str, content: str) -> str:
    return f"<section>\n<h2>{html.escape(title)}</h2>\n{content}\n</section>" if content else ""


def _header(results: Mapping[str, Any], show_examples: bool) -> str:
    facts = [("benchmark", results.get("benchmark")), ("scenario", results.get("scenario")),
             ("split", results.get("split")), ("seed", results.get("seed")),
             ("retrain seconds", results.get("retrain_seconds"))]
    machine = results.get("machine") or {}
    facts += [(f"machine {key}", value) for key, value in machine.items()] if isinstance(machine, Mapping) else []
    rows = "".join(f"<dt>{html.escape(name)}</dt><dd>{format_number(value)}</dd>" for name, value in facts
                   if value is not None)
    command = results.get("command")
    parts = [f"<h1>{html.escape(_title(results))}</h1>", f"<dl>{rows}</dl>"]
    if command:
        parts.append(f"<p class=\"note\">Generated by <code>{html.escape(str(command))}</code>.</p>")
    if show_examples:
        parts.append('<p class="warning">This report shows forget-set text (<code>show_examples</code> was on): '
                     "share it only with people allowed to see that data.</p>")
    return "\n".join(parts)


def _results_table(results: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    keys = _metric_keys(results, runs)
    front = set(_front_methods(runs))
    head = "".join(f"<th>{html.escape(key)}</th>" for key in keys)
    header = (f'<tr><th class="name">method</th>{head}<th>seconds</th><th>time_vs_retrain</th>'
              "<th>peak_mem_mb</th><th>added_mem_mb</th><th>status</th></tr>")
    rows = [_result_row(run, keys, front, results.get("retrain_seconds")) for run in runs]
    note = ('<p class="note">Rows marked <span class="tag">reference</span> are the original and retrained models; '
            "<b>bold</b> methods are on the Pareto front of the scatter below. "
            "<code>time_vs_retrain</code> is the run's wall time over the retrained reference's training time.</p>")
    return f'<div class="scroll"><table>\n{header}\n' + "\n".join(rows) + f"\n</table></div>\n{note}"


def _result_row(run: Mapping[str, Any], keys: Sequence[str], front: set[str], retrain_seconds: Any) -> str:
    metrics = run.get("metrics") or {}
    name = html.escape(str(run["method"]))
    name = f'<span class="front">{name}</span>' if run["method"] in front else name
    if run.get("reference"):
        name += '<span class="tag">reference</span>'
    status = str(run.get("status", ""))
    message = run.get("message") or ""
    classes = ["reference"] if run.get("reference") else []
    classes += [] if status in ("ok", "") else ["failed"]
    row_class = " ".join(classes)
    seconds = run.get("seconds")
    baseline = run.get("retrain_seconds", retrain_seconds)
    ratio = seconds / baseline if _finite(seconds) and _finite(baseline) and baseline > 0 else None
    cells = "".join(f"<td>{format_number(metrics.get(key))}</td>" for key in keys)
    status_cell = html.escape(status) + (f": {html.escape(str(message))}" if message else "")
    return (f'<tr class="{row_class}"><td class="name">{name}</td>{cells}<td>{format_number(seconds)}</td>'
            f"<td>{format_number(ratio)}</td><td>{format_number(run.get('peak_mem_mb'))}</td>"
            f"<td>{format_number(run.get('added_mem_mb'))}</td>"
            f'<td class="name">{status_cell}</td></tr>')


def _settings_html(results: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    config = results.get("config")
    if isinstance(config, Mapping) and config:
        parts.append(_details("benchmark config", config))
    for run in runs:
        extra = {"params": run.get("params") or {}, "info": run.get("info") or {}}
        parts.append(_details(str(run["method"]), {key: value for key, value in extra.items() if value}))
    return "\n".join(parts)


def _details(title: str, data: Mapping[str, Any]) -> str:
    text = json.dumps(data, indent=1, sort_keys=True, default=str)
    return f"<details><summary>{html.escape(title)}</summary><pre>{html.escape(text)}</pre></details>"


def _figure_html(png: bytes | None, caption: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _items_section(
    runs: Sequence[Mapping[str, Any]],
    items: Mapping[str, Sequence[Mapping[str, Any]]],
    kind: str | None,
    show_examples: bool,
    examples: Mapping[Any, str] | None,
) -> str:
    """Forget items (hash, or text when asked) with each run's probability of the true answer."""
    texts = {str(key): value for key, value in (examples or {}).items()} if show_examples else {}
    ids = _forget_ids(items) or list(texts)
    if not ids:
        return ""
    order = [str(run["method"]) for run in runs if run["method"] in items]
    order += [method for method in items if method not in order]
    per_method = {method: _item_probabilities(items[method], kind) for method in order}
    per_method = {method: probs for method, probs in per_method.items() if probs}
    shown = ids[:MAX_ITEM_ROWS]
    label = "text" if show_examples else "item (SHA-256 of id)"
    header = f'<tr><th class="name">{label}</th>' + "".join(f"<th>{html.escape(m)}</th>" for m in per_method) + "</tr>"
    rows = []
    for item in shown:
        key = str(item)
        cell = (f'<td class="text">{html.escape(str(texts[key]))}</td>' if key in texts
                else f'<td class="name"><code>{item_hash(item)}</code></td>')
        values = "".join(f"<td>{format_number(probs.get(key))}</td>" for probs in per_method.values())
        rows.append(f"<tr>{cell}{values}</tr>")
    what = "p(true label)" if kind == "classifier" else "p(answer) = exp(−answer_nll)"
    note = (f'<p class="note">{len(shown)} of {len(ids)} forget items; numbers are each run\'s {what}. '
            + ("" if show_examples else "Items appear as hashes of their ids; their text is not in this report. ")
            + "</p>")
    return f'<div class="scroll"><table>\n{header}\n' + "\n".join(rows) + f"\n</table></div>\n{note}"


def _forget_ids(items: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Any]:
    seen: dict[str, Any] = {}
    for rows in items.values():
        for row in rows:
            if row.get("split") == "forget" and "item" in row:
                seen.setdefault(str(row["item"]), row["item"])
    return list(seen.values())


def _item_probabilities(rows: Iterable[Mapping[str, Any]], kind: str | None) -> dict[str, float]:
    probs = {}
    for row in rows:
        if row.get("split") != "forget":
            continue
        if kind == "classifier" and _finite(row.get("true_prob")):
            probs[str(row["item"])] = float(row["true_prob"])
        elif kind == "causal_lm" and _finite(row.get("answer_nll")):
            probs[str(row["item"])] = math.exp(-float(row["answer_nll"]))
    return probs


# ------------------------------------------------------------------------------------------- plots


def _plain(text: Any) -> str:
    """``text`` for a matplotlib label, its ``$`` escaped: never parsed as mathtext (a bad formula raises)."""
    return str(text).replace("$", r"\$")


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _scatter_axes(runs: Sequence[Mapping[str, Any]]) -> tuple[str, bool, str] | None:
    for x_key, x_higher, y_key in SCATTER_AXES:
        if any(_finite((run.get("metrics") or {}).get(x_key)) and _finite((run.get("metrics") or {}).get(y_key))
               for run in runs):
            return x_key, x_higher, y_key
    return None


def _scatter_points(runs: Sequence[Mapping[str, Any]], x_key: str, y_key: str) -> list[tuple[Mapping[str, Any], float, float]]:
    points = []
    for run in runs:
        metrics = run.get("metrics") or {}
        if _finite(metrics.get(x_key)) and _finite(metrics.get(y_key)):
            points.append((run, float(metrics[x_key]), float(metrics[y_key])))
    return points


def _front_methods(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Methods (not references) on the Pareto front of the scatter's two metrics."""
    axes = _scatter_axes(runs)
    if axes is None:
        return []
    x_key, x_higher, y_key = axes
    methods = [p for p in _scatter_points(runs, x_key, y_key) if not p[0].get("reference")]
    return [methods[i][0]["method"] for i in _front(runs, methods, x_key, x_higher)]


def _front(runs: Sequence[Mapping[str, Any]], methods: Sequence[tuple[Mapping[str, Any], float, float]], x_key: str,
           x_higher: bool) -> list[int]:
    """The Pareto front of ``methods``; a lower-is-better forgetting metric counts as its distance to the
    retrained model's value (the target: forgetting more than retraining would is no better)."""
    gold = _gold(runs)
    target = (gold.get("metrics") or {}).get(x_key) if gold and not x_higher else None
    if _finite(target):
        return pareto_front([(abs(x - float(target)), y) for _, x, y in methods], False)
    return pareto_front([(x, y) for _, x, y in methods], x_higher)


def _scatter_caption(runs: Sequence[Mapping[str, Any]]) -> str:
    axes = _scatter_axes(runs)
    if axes is None:
        return ""
    x_key, x_higher, y_key = axes
    return (f"{x_key} ({'higher' if x_higher else 'lower'} is better) against {y_key} (higher is better). "
            "Red points joined by a line are the Pareto front of the unlearning methods; stars are reference "
            "models; the dashed line marks the retrained model's forgetting, the target: a lower-is-better "
            "forgetting metric is ranked by its distance to it.")


def _scatter_figure(runs: Sequence[Mapping[str, Any]]) -> bytes | None:
    axes = _scatter_axes(runs)
    if axes is None:
        return None
    x_key, x_higher, y_key = axes
    points = _scatter_points(runs, x_key, y_key)
    methods = [p for p in points if not p[0].get("reference")]
    front = set(_front(runs, methods, x_key, x_higher))
    figure = _new_figure(6.4, 4.2)
    ax = figure.add_subplot()
    _plot_methods(ax, methods, front)
    _plot_references(ax, [p for p in points if p[0].get("reference")], x_key, runs)
    ax.set_xlabel(f"{x_key} ({'higher' if x_higher else 'lower'} is better)")
    ax.set_ylabel(f"{y_key} (higher is better)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return _png(figure)


def _plot_methods(ax, methods: Sequence[tuple[Mapping[str, Any], float, float]], front: set[int]) -> None:
    others = [p for i, p in enumerate(methods) if i not in front]
    on_front = sorted((p for i, p in enumerate(methods) if i in front), key=lambda p: p[1])
    if others:
        ax.scatter([p[1] for p in others], [p[2] for p in others], color="#6c8ebf", s=30, label="method")
    if on_front:
        ax.plot([p[1] for p in on_front], [p[2] for p in on_front], "-o", color="#c0392b", markersize=6,
                label="Pareto front")
    for run, x, y in methods:
        ax.annotate(_plain(run["method"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)


def _plot_references(ax, references: Sequence[tuple[Mapping[str, Any], float, float]], x_key: str,
                     runs: Sequence[Mapping[str, Any]]) -> None:
    for run, x, y in references:
        gold = run["method"] in GOLD_REFERENCES
        ax.scatter([x], [y], marker="*", s=160, color="#d4a017" if gold else "#444444", edgecolor="black",
                   zorder=3, label=_plain(f"{run['method']} (reference)"))
    gold_run = _gold(runs)
    gold_x = (gold_run.get("metrics") or {}).get(x_key) if gold_run else None
    if _finite(gold_x):
        ax.axvline(float(gold_x), color="#d4a017", linestyle="--", linewidth=1)


def _mia_section(runs: Sequence[Mapping[str, Any]], items: Mapping[str, Sequence[Mapping[str, Any]]],
                 kind: str | None) -> str:
    if kind is None:
        return ""
    keys, other_split = MIA_SCORES[kind]
    if kind == "classifier" and _has_split(items, "forget_test"):
        other_split = "forget_test"  # a forgotten class is compared with its own held-out images
    if not _has_split(items, other_split):
        other_split = "retain"  # a forget job has no held-out items, only the ones the model keeps
    score = next((key for key in keys if any(key in row for rows in items.values() for row in rows)), None)
    if score is None:
        return ""
    gold = _gold(runs) or _reference_with_items(runs, items)
    gold_rows = items.get(gold["method"]) if gold else None
    figures = []
    for run in runs:
        if run.get("reference") or run["method"] not in items:
            continue
        png = _mia_figure(run["method"], items[run["method"]], gold, gold_rows, score, other_split, kind)
        if png is not None:
            figures.append(_figure_html(png, f"{run['method']}: {score} of forget vs {other_split} items"))
    if not figures:
        return ""
    scale = "log10 of the loss" if kind == "classifier" else score
    compare = ("Good unlearning makes each method's panel look like the retrained model's on its right."
               if gold is None or gold["method"] in GOLD_REFERENCES else
               f"There is no retrained model here; the panel on each method's right is the {gold['method']} model's.")
    note = (f'<p class="note">Histograms of <code>{html.escape(score)}</code> (shown as {html.escape(scale)}; higher '
            f"looks unseen) on the forget items and the {html.escape(other_split)} items. {html.escape(compare)}</p>")
    return note + '\n<div class="figures">\n' + "\n".join(figures) + "\n</div>"


def _has_split(items: Mapping[str, Sequence[Mapping[str, Any]]], split: str) -> bool:
    return any(row.get("split") == split for rows in items.values() for row in rows)


def _reference_with_items(runs: Sequence[Mapping[str, Any]], items: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first reference run (e.g. the original model) that has per-item rows: the comparison panel when
    there is no retrained model."""
    return next((run for run in runs if run.get("reference") and run["method"] in items), None)


def _split_scores(rows: Sequence[Mapping[str, Any]], score: str, split: str, kind: str) -> list[float]:
    values = [float(row[score]) for row in rows if row.get("split") == split and _finite(row.get(score))]
    if kind == "classifier":  # cross-entropy spans 1e-6 .. 20: only a log scale shows both ends
        values = [math.log10(max(value, 1e-8)) for value in values]
    return values


def _mia_figure(method: str, rows, gold, gold_rows, score: str, other_split: str, kind: str) -> bytes | None:
    import numpy as np

    panels = [(method, rows)] + ([(f"{gold['method']} (reference)", gold_rows)] if gold_rows else [])
    data = [(title, _split_scores(r, score, "forget", kind), _split_scores(r, score, other_split, kind))
            for title, r in panels]
    data = [entry for entry in data if entry[1] and entry[2]]
    if not data or data[0][0] != method:
        return None
    edges = np.histogram_bin_edges(np.concatenate([np.asarray(f + o) for _, f, o in data]), bins=30)
    figure = _new_figure(3.4 * len(data), 2.4)
    for index, (title, forget, other) in enumerate(data, start=1):
        ax = figure.add_subplot(1, len(data), index)
        ax.hist(forget, bins=edges, density=True, histtype="stepfilled", alpha=0.55, color="#c0392b", label=f"forget (n={len(forget)})")
        ax.hist(other, bins=edges, density=True, histtype="stepfilled", alpha=0.55, color="#2e6da4", label=f"{other_split} (n={len(other)})")
        ax.set_title(_plain(title), fontsize=9)
        ax.set_xlabel(f"log10 {score}" if kind == "classifier" else score, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return _png(figure)


def _loss_figure(runs: Sequence[Mapping[str, Any]]) -> bytes | None:
    curves = [(str(run["method"]), run["losses"]) for run in runs
              if isinstance(run.get("losses"), list) and any(_finite(v) for v in run["losses"])]
    if not curves:
        return None
    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure = _new_figure(3.2 * columns, 2.2 * rows)
    for index, (method, losses) in enumerate(curves, start=1):
        ax = figure.add_subplot(rows, columns, index)
        values = [float(v) if _finite(v) else float("nan") for v in losses]
        ax.plot(range(1, len(values) + 1), values, color="#2e6da4", linewidth=1)
        ax.set_title(_plain(method), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return _png(figure)

"""Outputs of continual runs: the accuracy matrix as CSV and heatmap, terminal tables, the sweep page."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .cost import WIDTH_SCENARIOS, WIDTH_SEED, chosen_width
from .runner import ContinualRun, StepResult
from .strategies.acu import SMALL_UPDATE_ROWS, ACUConfig

METRIC_KEYS = ("avg_acc", "bwt", "fwt", "forgetting_last", "forgetting_max", "forgotten_acc", "relapse", "spillover",
               "retrain_gap", "retrain_output_kl")


def matrix_csv(run: ContinualRun) -> str:
    """Rows: the untrained model then every step; columns: every task's accuracy."""
    tasks = range(run.matrix.shape[1])
    lines = ["step,token," + ",".join(f"task_{t}" for t in tasks)]
    lines.append("init,untrained," + ",".join(f"{a:.4f}" for a in run.initial))
    lines += [f"{s.index},{s.token}," + ",".join(f"{a:.4f}" for a in s.accuracy) for s in run.steps]
    return "\n".join(lines) + "\n"


LABEL_WIDTH = 24


def step_label(step: StepResult) -> str:
    """A step's token short enough for a heatmap row or a table cell: a sample request listing many ids becomes
    ``unlearn:ids (N samples)``, any other long token is cut with an ellipsis (accuracy.csv keeps the full token)."""
    if len(step.token) <= LABEL_WIDTH:
        return step.token
    if step.action == "unlearn" and step.task is None:
        return f"unlearn:ids ({step.samples} sample{'' if step.samples == 1 else 's'})"
    return step.token[: LABEL_WIDTH - 1] + "…"


def save_heatmap(run: ContinualRun, path: str | Path) -> None:
    """The accuracy matrix (steps × tasks) as a PNG heatmap, drawn with matplotlib's Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.vstack([run.initial, run.matrix])
    labels = ["untrained"] + [step_label(s) for s in run.steps]
    rows, cols = matrix.shape
    figure = Figure(figsize=(min(2 + 0.6 * cols, 16), min(1.5 + 0.35 * rows, 16)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
    figure.colorbar(image, ax=axes, label="accuracy")
    axes.set_xlabel("task")
    axes.set_ylabel("after step")
    if rows <= 40:
        axes.set_yticks(range(rows), labels, fontsize=7)
    else:  # row r is the state after step r − 1: tick step indices, not row numbers
        from matplotlib.ticker import MaxNLocator

        indices = [int(v) for v in MaxNLocator(nbins=10, integer=True).tick_values(1, rows - 2) if 1 <= v <= rows - 2]
        axes.set_yticks([0] + [i + 1 for i in indices], ["untrained"] + [str(run.steps[i].index) for i in indices], fontsize=7)
    if cols <= 40:
        axes.set_xticks(range(cols), [str(c) for c in range(cols)], fontsize=7)
    if rows * cols <= 400:
        for (r, c), value in np.ndenumerate(matrix):
            axes.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white" if value < 0.6 else "black")
    axes.set_title(f"{run.scenario} · {run.strategy} · seed {run.seed}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def print_run(run: ContinualRun) -> None:
    """Metrics and (for up to 20 tasks) the accuracy matrix as rich tables on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    metrics = Table(title=f"{run.scenario} · {run.strategy} (unlearner {run.unlearner}) · seed {run.seed}")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for key, value in run.metrics.items():
        metrics.add_row(key, "—" if value is None else f"{value:.4f}")
    console.print(metrics)
    if run.matrix.shape[1] > 20:
        return
    matrix = Table(title="accuracy after each step")
    matrix.add_column("step")
    for t in range(run.matrix.shape[1]):
        matrix.add_column(f"t{t}", justify="right")
    matrix.add_row("untrained", *(f"{a:.2f}" for a in run.initial))
    for step in run.steps:
        matrix.add_row(step_label(step), *(f"{a:.2f}" for a in step.accuracy))
    console.print(matrix)


def _cell(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    if len(present) == 1:
        return f"{present[0]:.3f}"
    return f"{np.mean(present):.3f} ± {np.std(present):.3f}"


def sweep_table(runs: dict[str, list[ContinualRun]], seconds: dict[str, list[float]]) -> str:
    """A markdown table: one row per strategy, mean ± std over seeds of every metric and the run time."""
    header = "| strategy | unlearner | " + " | ".join(METRIC_KEYS) + " | seconds |"
    lines = [header, "|" + "---|" * (len(METRIC_KEYS) + 3)]
    for name, group in runs.items():
        cells = [_cell([r.metrics.get(k) for r in group]) for k in METRIC_KEYS]
        unlearns = any(step.action == "unlearn" for step in group[0].steps)
        lines.append(f"| {name} | {group[0].unlearner if unlearns else '—'} | " + " | ".join(cells) + f" | {_cell(seconds[name])} |")
    return "\n".join(lines)


def acu_cost_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ACU's exactness and per-request cost against a full re-solve."""
    lines = ["| scenario | rows learned | request | rows removed | unlearn ms (best of 5) | primal re-solve ms | dual re-solve ms "
             "| ratio to the faster | amortised ms (with folds) | amortised ratio | max abs diff / max abs W |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['learned_rows']} | {r['request']} | {r['rows']} | {r['unlearn_ms']:.2f} | "
                     f"{r['primal_ms']:.1f} | {r['dual_ms']:.1f} | "
                     f"{100 * r['ratio']:.2f} % | {r['amortised_ms']:.2f} | {100 * r['amortised_ratio']:.2f} % | "
                     f"{r['relative_diff']:.1e} |")
    return "\n".join(lines)


def acu_width_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ACU's accuracy per feature width, and what a 1-sample request costs at each."""
    first = WIDTH_SCENARIOS[0]
    lines = [f"| width | R (MB) | {' | '.join(WIDTH_SCENARIOS)} | mean | 1-sample request on {first} ms | "
             f"faster re-solve ms | ratio |", "|---" * (6 + len(WIDTH_SCENARIOS)) + "|"]
    for r in rows:
        cells = " | ".join(f"{r[name]:.4f}" for name in WIDTH_SCENARIOS)
        lines.append(f"| {r['width']} | {r['r_mb']:.0f} | {cells} | {r['mean']:.4f} | {r['request_ms']:.2f} | "
                     f"{r['resolve_ms']:.1f} | {100 * r['request_ratio']:.2f} % |")
    return "\n".join(lines)


def acu_width_section(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The page's section on ACU's feature width: the rule, the chosen width, the table and the cost range."""
    chosen = chosen_width(rows)
    edge = (" The widest width tried wins: the grid stops there because R (d² float64) and each learning pass grow "
            "with d²." if chosen == max(r["width"] for r in rows) else "")
    ratios = [100 * r["request_ratio"] for r in rows]
    return ["", "## ACU: feature width", "",
            f"ACU's default width (`expansion`) is chosen on scenario seed {WIDTH_SEED}, which the tables above do not "
            f"report: the width with the highest mean average accuracy over {' and '.join(WIDTH_SCENARIOS)} after "
            f"learning every task (the narrower on a tie).{edge} The last columns time one 1-sample request on "
            f"{WIDTH_SCENARIOS[0]} at each width as the cost table does (best of 5; the faster of the primal and dual "
            "re-solves): a narrower head makes the request cheaper, but its re-solve too, and the ratio ranges from "
            f"{min(ratios):.2f} % to {max(ratios):.2f} % over these widths.", "",
            f"Chosen: expansion={chosen}", "", acu_width_table(rows)]


def sweep_page(command: str, sections: Sequence[tuple[str, str, str]], acu_rows: Sequence[dict[str, Any]] | None,
               width_rows: Sequence[dict[str, Any]] | None = None) -> str:
    """The generated ``docs/results/continual.md``: sections of (title, stream, table), then ACU's cost and width."""
    parts = [
        "# Continual learning and unlearning: strategy sweep",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} ({torch.get_num_threads()} torch threads: training "
        "repeats exactly at the same seed and thread count); do not edit by hand.",
        "",
        "Metrics (see `unlearnkit.continual.metrics`): avg_acc, bwt and both forgetting forms over the tasks still "
        "learned at the end; fwt over every task learned after the first (accuracy just before its first learning minus "
        "the untrained model's); forgotten_acc = final accuracy of unlearned tasks; relapse = largest later rise of an unlearned "
        "task's accuracy; spillover = drop of untouched tasks at the unlearning step; retrain_gap / retrain_output_kl = "
        "distance to the same strategy retrained on the remaining data. Values are mean ± std over seeds; seconds is the "
        "whole run including evaluation and the retrained references.",
    ]
    for title, stream, table in sections:
        parts += ["", f"## {title}", "", f"Stream: `{stream}`", "", table]
    if acu_rows:
        parts += ["", "## ACU: exactness and cost per request", "",
                  "Recursive unlearning against re-solving the ridge head from all remaining data (features included), "
                  f"after learning every task of each scenario, float64, {ACUConfig().expansion} random features. A request reads the d×d "
                  f"matrix R once (R Xᵀ; a request of at most {SMALL_UPDATE_ROWS} rows takes it from OpenBLAS, a one-row one by dsymv, "
                  "which reads only one triangle of R's symmetric dense part, and runs torch on one thread so that torch's "
                  "idle threads do not take the cores BLAS uses) and keeps "
                  "its change to R as a low-rank correction, folded into R (a rewrite of all d² entries) once more than "
                  f"{ACUConfig().fold_rank} rows are pending, when the head is also refined from the exact sums XᵀX + γI "
                  "and XᵀY that ACU keeps beside R (one more d×d matrix, folded with R): `unlearn ms` is one request on a "
                  "fresh copy, "
                  "`amortised ms` the mean over a run of such requests long enough to include one fold. The ratios are "
                  "to the faster of two exact re-solves (best of 5 each), both by Cholesky with the Gram matrix from "
                  "OpenBLAS's syrk (one triangle): primal, on the d×d Gram matrix (about n·d²/2 + d³/3 multiply-adds for "
                  "n learned rows), and dual, W = Xᵀ(XXᵀ + γI)⁻¹Y on the n×n kernel matrix (about n²·d/2 + n³/3), the "
                  "faster one when n < d. A request of k rows costs at "
                  "least d²·k multiply-adds (R Xᵀ), so even at equal speed its ratio is at least d²·k over the faster "
                  "re-solve's count, and R Xᵀ runs slower per multiply-add than a re-solve's large products because "
                  "it is bound by reading R: the ratios fall as the learned data grows. Removing a whole task is a rank update as "
                  "large as the task, so it can cost more than a re-solve.", "",
                  acu_cost_table(acu_rows)]
    if width_rows:
        parts += acu_width_section(width_rows)
    return "\n".join(parts) + "\n"

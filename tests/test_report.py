"""report.html: self-contained, redacted by default, with its table and plots, and rendered by a real browser."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from unlearnkit.errors import UserInputError
from unlearnkit.report import item_hash, report_from_dir, write_report
from unlearnkit.report.html import format_number, pareto_front

IMAGE = '<img src="data:image/png;base64,'
SECRET = "<b>Alice Quux</b> & her secret birthplace"
LIMIT = 2 * 1024 * 1024


def _classifier_results(methods: list[str], *, steps: int = 30) -> dict:
    runs = [
        {"method": "original", "reference": True, "params": {"epochs": 15}, "seconds": 17.8, "retrain_seconds": 7.9,
         "peak_mem_mb": float("nan"), "status": "ok",
         "metrics": {"forget_acc": 1.0, "retain_acc": 0.9977, "test_acc": 0.9691, "mia_auc": 0.5815}},
        {"method": "retrain", "reference": True, "params": {"epochs": 15}, "seconds": 7.9, "retrain_seconds": 7.9,
         "peak_mem_mb": float("nan"), "status": "ok",
         "metrics": {"forget_acc": 0.0, "retain_acc": 1.0, "test_acc": 0.9753, "mia_auc": 0.0123}},
    ]
    for index, method in enumerate(methods):
        runs.append({"method": method, "reference": False, "params": {"lr": 1e-4}, "seconds": 0.25 + index,
                     "retrain_seconds": 7.9, "peak_mem_mb": 490.5, "status": "ok", "message": "",
                     "metrics": {"forget_acc": 0.1 * index + 0.0211, "retain_acc": 0.99 - 0.01 * index,
                                 "test_acc": 0.9630 - 0.02 * index, "mia_auc": 0.25 + 0.01 * index},
                     "losses": [2.0 / (step + 1) + 0.01 * index for step in range(steps)]})
    return {"benchmark": "digits", "scenario": "class", "seed": 0, "retrain_seconds": 7.9, "runs": runs}


def _classifier_items(methods: list[str], *, forget: int = 40, test: int = 60) -> dict[str, list[dict]]:
    rng = np.random.default_rng(0)
    items = {}
    for method in ["original", "retrain", *methods]:
        rows = []
        for split, count, offset in (("forget", forget, 0), ("test", test, 10_000)):
            for item in range(offset, offset + count):
                loss = float(rng.exponential(0.5 if split == "test" else 2.0))
                rows.append({"split": split, "item": item, "label": item % 10, "loss": loss,
                             "predicted": item % 10, "true_prob": math.exp(-loss)})
        items[method] = rows
    return items


def _lm_results() -> dict:
    def run(method: str, reference: bool, quality: float, utility: float) -> dict:
        return {"method": method, "reference": reference, "params": {}, "seconds": 5.5, "peak_mem_mb": 546.1,
                "status": "ok", "metrics": {"forget_quality": quality, "model_utility": utility,
                                            "forget_truth_ratio": 0.7382, "privleak": -99.99999997}}

    runs = [run("target", True, 0.2286, 0.6147), run("retain", True, 1.0, 0.6197),
            run("gradient_ascent", False, 0.3141, 0.5927), run("npo", False, 0.8765, 0.6012)]
    return {"benchmark": "facts", "split": "forget10", "seed": 0, "retrain_seconds": 5.5, "runs": runs,
            "metric_keys": ["forget_quality", "model_utility", "forget_truth_ratio", "privleak"]}


def _lm_items() -> dict[str, list[dict]]:
    rng = np.random.default_rng(1)
    items = {}
    for method in ("target", "retain", "gradient_ascent", "npo"):
        rows = []
        for split in ("forget", "holdout", "retain"):
            for person in range(8):
                nll = float(rng.exponential(1.0))
                rows.append({"split": split, "item": f"p{person:04d}.birthplace-{split}", "answer_nll": nll,
                             "paraphrase_nll": nll + 1, "perturbed_nll": [nll + 2, nll + 3], "truth_ratio": 0.8,
                             "rouge_l_recall": 0.5, "mia_loss": nll, "mia_zlib": nll / 40, "mia_mink": nll * 2,
                             "mia_minkpp": float(rng.normal())})
        items[method] = rows
    return items


def _external_references(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']?(?!data:|#)[^"'\s>]+""", page)


def _png_widths(page: str) -> list[int]:
    """Widths from the IHDR chunk of every embedded PNG, in page order."""
    widths = []
    for data in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)', page):
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        widths.append(struct.unpack(">I", png[16:20])[0])
    return widths


def test_classifier_report_has_table_plots_and_no_external_assets(tmp_path: Path) -> None:
    methods = ["ssd", "gradient_ascent"]
    results = _classifier_results(methods)
    results["runs"].append({"method": "scrub", "reference": False, "params": {}, "seconds": 0.5, "status": "diverged",
                            "message": "loss <not finite> at step 3", "metrics": {"forget_acc": float("nan")}})
    path = tmp_path / "report.html"
    write_report(path, results, _classifier_items(methods))
    page = path.read_text()
    assert path.stat().st_size <= LIMIT
    assert '<tr class="failed">' in page and "diverged: loss &lt;not finite&gt; at step 3" in page
    for value in ("0.9977", "0.0211", "0.9630", "0.1211", "17.8000", "490.5", "0.0316"):  # 0.0316 = 0.25 / 7.9
        assert f"<td>{value}</td>" in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert ">nan<" not in text.lower() and "<td>—</td>" in text  # NaN peak memory shows as a dash
    # scatter + one MIA histogram per unlearned method + the loss curves
    assert page.count(IMAGE) == 4
    assert "http://" not in page and "https://" not in page
    assert _external_references(page) == []


def test_language_model_report_uses_its_own_axes_and_scores(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_report(path, _lm_results(), _lm_items())
    page = path.read_text()
    assert "forget_quality (higher is better) against model_utility" in page
    assert "mia_minkpp" in page and "holdout" in page
    for value in ("0.3141", "0.6012", "0.7382", "-100.0000"):
        assert f"<td>{value}</td>" in page
    assert page.count(IMAGE) == 3  # scatter + histograms of gradient_ascent and npo (no losses in these runs)
    assert "http://" not in page and "https://" not in page
    assert _external_references(page) == []


def test_forget_text_and_ids_stay_out_unless_asked(tmp_path: Path) -> None:
    items = _lm_items()
    forget_ids = [row["item"] for row in items["npo"] if row["split"] == "forget"]
    examples = {forget_ids[0]: SECRET}

    hidden = tmp_path / "hidden.html"
    write_report(hidden, _lm_results(), items, examples=examples)
    page = hidden.read_text()
    assert "Alice Quux" not in page and "birthplace" not in page
    assert all(item_hash(item) in page for item in forget_ids)
    assert all(item not in page for item in forget_ids)

    shown = tmp_path / "shown.html"
    write_report(shown, _lm_results(), items, show_examples=True, examples=examples)
    page = shown.read_text()
    assert "&lt;b&gt;Alice Quux&lt;/b&gt; &amp; her secret birthplace" in page
    assert "<b>Alice Quux</b>" not in page  # escaped, never interpreted as markup
    assert item_hash(forget_ids[0]) not in page and item_hash(forget_ids[1]) in page


def test_ten_method_report_stays_under_two_megabytes(tmp_path: Path) -> None:
    methods = [f"method_{index}" for index in range(10)]
    path = tmp_path / "report.html"
    write_report(path, _classifier_results(methods, steps=500), _classifier_items(methods, forget=180, test=360))
    assert path.stat().st_size <= LIMIT
    assert path.read_text().count(IMAGE) == 12  # scatter, 10 histograms, one loss-curve grid


def test_report_of_a_forget_job_without_items(tmp_path: Path) -> None:
    """The shape ``unlearnkit forget`` writes: before/after metrics, one run with losses, no per-item rows."""
    runs = [{"method": "original", "reference": True, "metrics": {"forget_acc": 1.0, "retain_acc": 0.98},
             "seconds": 0.0, "status": "ok", "params": {}},
            {"method": "npo", "reference": False, "metrics": {"forget_acc": 0.1, "retain_acc": 0.95},
             "seconds": 1.5, "status": "ok", "params": {"lr": 1e-4}, "losses": [0.7, 0.5, 0.2]}]
    path = tmp_path / "report.html"
    write_report(path, {"benchmark": "forget", "seed": 0, "runs": runs}, {}, show_examples=True,
                 examples={0: SECRET})
    page = path.read_text()
    assert page.count(IMAGE) == 2  # scatter (forget_acc vs retain_acc) and the loss curve
    assert "forget_acc (lower is better) against retain_acc" in page
    assert "&lt;b&gt;Alice Quux" in page and "This report shows forget-set text" in page


def test_report_from_dir_reads_bench_output(tmp_path: Path) -> None:
    methods = ["ssd"]
    (tmp_path / "items").mkdir()
    (tmp_path / "results.json").write_text(json.dumps(_classifier_results(methods)))  # NaN as bench writes it
    for method, rows in _classifier_items(methods).items():
        (tmp_path / "items" / f"{method}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = report_from_dir(tmp_path)
    assert path == tmp_path / "report.html"
    page = path.read_text()
    assert page.count(IMAGE) == 3 and "<td>0.0211</td>" in page
    assert item_hash(0) in page


def test_bad_input_names_the_problem_and_keeps_the_old_report(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="results.json"):
        report_from_dir(tmp_path)
    path = tmp_path / "report.html"
    write_report(path, _lm_results(), {})
    before = path.read_bytes()
    with pytest.raises(UserInputError, match="runs"):
        write_report(path, {"benchmark": "facts"}, {})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary file left behind


def test_pareto_front_and_number_format() -> None:
    points = [(0.0, 0.9), (0.5, 0.95), (0.5, 0.90), (1.0, 0.99), (0.2, 0.8)]
    assert pareto_front(points, x_higher_is_better=False) == [0, 1, 3]
    assert pareto_front(points, x_higher_is_better=True) == [3]
    assert pareto_front([(0.1, 0.5), (0.1, 0.5)], x_higher_is_better=False) == [0, 1]  # ties both stay
    assert [format_number(v) for v in (0.96296, 123.456, 1.2e-5, float("nan"), 7, None)] == \
        ["0.9630", "123.5", "1.2e-05", "—", "7", "—"]


def test_front_ranks_forgetting_by_its_distance_to_the_retrained_model() -> None:
    from unlearnkit.report.html import _front_methods

    runs = [{"method": "retrain", "reference": True, "metrics": {"forget_acc": 0.9, "test_acc": 0.95}},
            {"method": "over", "metrics": {"forget_acc": 0.1, "test_acc": 0.94}},  # forgets far past retraining
            {"method": "close", "metrics": {"forget_acc": 0.88, "test_acc": 0.93}},
            {"method": "near", "metrics": {"forget_acc": 0.95, "test_acc": 0.94}}]
    assert sorted(_front_methods(runs)) == ["close", "near"]
    runs[0]["metrics"]["forget_acc"] = 0.0  # a forgotten class: distance is forget accuracy itself
    assert sorted(_front_methods(runs)) == ["over"]


_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const decoded = images.filter((img) => img.complete && img.naturalWidth > 0).map((img) => img.naturalWidth);
  document.body.setAttribute("data-decoded", decoded.join(",") + "/" + images.length);
});
</script>
</body>"""


def test_report_renders_with_its_images_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed, so report.html cannot be render-tested: run "
                    "`bash scripts/ensure-chromium.sh` (make test does this) and rerun.")
    methods = ["ssd", "gradient_ascent"]
    write_report(tmp_path / "report.html", _classifier_results(methods), _classifier_items(methods))
    page = (tmp_path / "report.html").read_text()
    # The report itself carries no script: a copy gets a probe that records what the browser decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE, 1))
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    match = re.search(r'data-decoded="([\d,]*)/(\d+)"', result.stdout)
    assert match, f"chromium did not render the report (exit {result.returncode}): {result.stderr[-2000:]}"
    widths = [int(w) for w in match.group(1).split(",") if w]
    assert int(match.group(2)) == 4
    assert widths == _png_widths(page)  # every image decoded, at the size matplotlib wrote

"""report.html audit: user-supplied names never break the plots, and malformed bench output is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnkit.errors import UserInputError
from unlearnkit.report import report_from_dir, write_report


def _results(method: str) -> dict:
    runs = [{"method": "original", "reference": True, "seconds": 0.0, "status": "ok",
             "metrics": {"forget_acc": 1.0, "retain_acc": 0.98}},
            {"method": method, "reference": False, "seconds": 1.5, "status": "ok",
             "metrics": {"forget_acc": 0.1, "retain_acc": 0.95}, "losses": [0.7, 0.5, 0.2]}]
    return {"benchmark": "forget", "seed": 0, "runs": runs}


def _items(method: str) -> dict[str, list[dict]]:
    rows = [{"split": split, "item": index, "loss": 0.1 * index + (split == "retain"), "true_prob": 0.5}
            for split in ("forget", "retain") for index in range(6)]
    return {"original": rows, method: rows}


@pytest.mark.parametrize("method", ["gu$\\notasymbol$", "cost $5 vs $6"])
def test_a_method_name_with_dollar_signs_is_drawn_as_plain_text(tmp_path: Path, method: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Matplotlib reads text between two ``$`` as mathtext: a bad expression crashed the whole report, a good
    one drew the name as a formula."""
    from matplotlib import cbook
    from matplotlib.text import Text

    from unlearnkit.report import html as report_html

    texts: list[str] = []
    png = report_html._png

    def recording_png(figure):
        texts.extend(text.get_text() for text in figure.findobj(Text))
        return png(figure)

    monkeypatch.setattr(report_html, "_png", recording_png)
    path = tmp_path / "report.html"
    write_report(path, _results(method), _items(method))
    assert path.read_text().count('<img src="data:image/png;base64,') == 3  # scatter, histograms, loss curve
    named = [text for text in texts if text.replace("\\$", "$").startswith(method)]
    assert len(named) >= 3  # the scatter point's label, the histogram title, the loss-curve title
    assert not any(cbook.is_math_text(text) for text in named)


def _bench_dir(tmp_path: Path, results, rows=None) -> Path:
    (tmp_path / "results.json").write_text(results if isinstance(results, str) else json.dumps(results))
    if rows is not None:
        (tmp_path / "items").mkdir()
        (tmp_path / "items" / "npo.jsonl").write_bytes(rows)
    return tmp_path


@pytest.mark.parametrize("results, rows, expected", [
    ([1, 2], None, "results"),
    ({"runs": [{"method": "npo", "metrics": [0.1, 0.2]}]}, None, "metrics"),
    ({"runs": [{"method": ["npo"], "metrics": {}}]}, None, "method"),
    ({"runs": [{"method": "npo", "metrics": {}}]}, b"[1, 2]\n", "Line 1"),
    ({"runs": [{"method": "npo", "metrics": {}}]}, b'{"split": "forget", "item": "\xff"}\n', "UTF-8"),
    ('{"runs": [], "seed": 1' + "0" * 5000 + "}", None, "results.json"),
])
def test_malformed_bench_output_is_one_clear_error_and_nothing_is_written(tmp_path: Path, results, rows,
                                                                         expected: str) -> None:
    folder = _bench_dir(tmp_path, results, rows)
    before = sorted(p.name for p in folder.rglob("*"))
    with pytest.raises(UserInputError, match=expected):
        report_from_dir(folder)
    assert sorted(p.name for p in folder.rglob("*")) == before

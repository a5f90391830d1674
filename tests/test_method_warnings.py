"""A method's warning about its own result (``info["warning"]``) reaches the user: forget prints it and its report
shows it, bench pages note it."""

import json
from pathlib import Path

import torch
from lm_fixtures import memorised_lm, tiny_qa

from unlearnkit.benchmarks.results import method_warnings
from unlearnkit.cli import main

SINGULAR = "retain answer tokens cannot fill a"


def _write_jsonl(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps({"question": it["question"], "answer": it["answer"]}) + "\n" for it in items))


def test_a_warning_in_a_runs_info_becomes_one_note_naming_the_method():
    runs = [{"method": "target", "reference": True},
            {"method": "kfade", "info": {"warning": "the factors are singular; raise damping."}},
            {"method": "npo", "info": {"layers": 3}},
            {"method": "odd", "info": "not a mapping"}]
    assert method_warnings(runs) == ["kfade warned: the factors are singular; raise damping."]


def test_forget_prints_the_methods_warning(tmp_path, capsys):
    """K-FADE on a retain set with fewer answer tokens than its factors' width: the factors are singular and the
    step may explode at the paper's damping; the user is told, not left with a quietly broken model."""
    items = tiny_qa(8)
    memorised_lm(items, steps=30).save_pretrained(tmp_path / "lm")
    _write_jsonl(tmp_path / "forget.jsonl", items[:2])
    _write_jsonl(tmp_path / "retain.jsonl", items[2:])
    args = ["forget", "--model", str(tmp_path / "lm"), "--forget", str(tmp_path / "forget.jsonl"), "--retain",
            str(tmp_path / "retain.jsonl"), "--out", str(tmp_path / "out"), "--ledger", str(tmp_path / "ledger.db")]
    assert main([*args, "--method", "kfade"]) == 0
    assert "warning: kfade: " in capsys.readouterr().out
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert SINGULAR in run["info"]["warning"]
    assert SINGULAR in (tmp_path / "out" / "report.html").read_text()  # the method's info is in the report too
    assert main([*args, "--method", "gradient_ascent", "--out", str(tmp_path / "out2"), "--param", "lr=0.01"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_the_facts_bench_notes_a_methods_warning(tmp_path):
    out = tmp_path / "facts"
    assert main(["bench", "--benchmark", "facts", "--preset", "tiny", "--methods", "kfade", "--out", str(out)]) == 0
    notes = json.loads((out / "results.json").read_text())["notes"]
    assert [n for n in notes if n.startswith("kfade warned: ") and SINGULAR in n]
    assert "kfade warned: " in (out / "results.md").read_text()


def test_ssd_warns_when_the_full_set_is_one_importance_batch_that_selects_broadly():
    from unlearnkit import unlearn
    from unlearnkit.methods.ssd import SSDConfig, one_batch_warning
    from unlearnkit.request import ForgetRequest

    # 48 items with 6 to forget in one batch: f/o = 8² = 64 > α = 10 for a weight only the forget items drive
    assert "(48/6)² = 64 > alpha=10.0" in one_batch_warning(48, 6, SSDConfig())["warning"]
    assert one_batch_warning(48, 6, SSDConfig(batch_size=8)) == {}  # over many batches f/o is about 48/6 = 8
    assert one_batch_warning(48, 24, SSDConfig()) == {}  # (48/24)² = 4 ≤ α: no broad selection
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    data = [(torch.randn(4), i % 3) for i in range(12)]
    request = ForgetRequest(data, [0, 1], list(range(2, 12)))
    _, record = unlearn(model, request, "ssd")
    assert "(12/2)² = 36" in record.info["warning"]
    _, record = unlearn(model, request, "ssd", batch_size=2)
    assert "warning" not in record.info

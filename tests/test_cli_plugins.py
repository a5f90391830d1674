"""``--project`` and ``--sampling`` on the command line: the plug-ins reach the method's settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from unlearnkit.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from lm_fixtures import memorised_lm, tiny_qa  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    items = tiny_qa(8)
    adapter = memorised_lm(items, steps=30)
    root = tmp_path_factory.mktemp("plugins")
    adapter.save_pretrained(root / "lm")
    for name, rows in (("forget", items[:2]), ("retain", items[2:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]})
                                                    + "\n" for r in rows))
    return root


def _forget(root: Path, out: Path, *extra: str) -> list[str]:
    return ["forget", "--model", str(root / "lm"), "--forget", str(root / "forget.jsonl"), "--retain",
            str(root / "retain.jsonl"), "--out", str(out), "--ledger", str(out.parent / f"{out.name}.db"),
            "--param", "epochs=1", "--param", "batch_size=2", *extra]


def test_project_and_sampling_options_reach_the_method(files, tmp_path):
    out = tmp_path / "out"
    assert main(_forget(files, out, "--method", "npo", "--project", "gu", "--sampling", "cyclic")) == 0
    params = json.loads((out / "run.json").read_text())["params"]
    assert params["project"] == "gu" and params["sampling"] == "cyclic"


@pytest.mark.parametrize("extra, message", [
    (["--method", "ssd", "--project", "gu"], "Method 'ssd' does not support --project gu"),
    (["--method", "finetune", "--sampling", "modular"], "Method 'finetune' does not support --sampling"),
    (["--method", "gradient_ascent", "--sampling", "cyclic"], "gradient_ascent reads retain items only with project=gu"),
    (["--method", "npo", "--sampling", "sideways"], "Unknown sampling 'sideways'"),
    (["--method", "npo", "--project", "gu", "--param", "project=gu"], "project is given both as --project and as --param"),
    (["--method", "npo", "--sampling", "modular"], "with sampling=modular needs a request with 'direct' or 'indirect'"),
])
def test_a_plugin_a_method_cannot_use_exits_2_and_writes_nothing(files, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(_forget(files, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.db").exists()

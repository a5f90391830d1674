"""`unlearnkit forget` on a user's own models: outputs, ledger rows, and every bad input writing nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unlearnkit.adapters.classifier_spec import MLP, save_classifier
from unlearnkit.cli import main
from unlearnkit.ledger import Ledger

SPEC = {"kind": "classifier", "architecture": "mlp", "input_dim": 4, "hidden": [16], "num_classes": 2}


def _rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return [{"input": row.tolist(), "label": int(row[0] > 0)} for row in x]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def workspace(tmp_path):
    torch.manual_seed(0)
    model = MLP(4, [16], 2)
    rows = _rows(40, 0)
    xs = torch.tensor([r["input"] for r in rows])
    ys = torch.tensor([r["label"] for r in rows])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xs), ys).backward()
        opt.step()
    save_classifier(model, SPEC, tmp_path / "model")
    _write_jsonl(tmp_path / "forget.jsonl", rows[:5])
    _write_jsonl(tmp_path / "retain.jsonl", rows[5:])
    _write_jsonl(tmp_path / "train.jsonl", rows)
    return tmp_path


def _args(ws, **overrides):
    args = {"--model": ws / "model", "--forget": ws / "forget.jsonl", "--retain": ws / "retain.jsonl",
            "--method": "gradient_ascent", "--out": ws / "out", "--ledger": ws / "ledger.db"}
    args.update(overrides)
    flat = []
    for key, value in args.items():
        if value is not None:
            flat += [key, str(value)]
    return ["forget", *flat]


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_forget_writes_model_report_and_ledger_row(workspace):
    before = _snapshot(workspace / "model")
    assert main(_args(workspace, **{"--subject": "ticket-17"}) + ["--param", "lr=0.05", "--param", "epochs=3"]) == 0
    out = workspace / "out"
    assert {"unlearnkit.json", "model.safetensors", "run.json", "report.html"} <= {p.name for p in out.iterdir()}
    run = json.loads((out / "run.json").read_text())
    assert run["metrics_after"]["forget_loss"] > run["metrics_before"]["forget_loss"]
    assert run["fingerprint_before"] != run["fingerprint_after"]
    assert _snapshot(workspace / "model") == before  # the input folder is untouched
    # the per-item values behind run.json's metrics were only in report.html (cut at 100 forget items, no retain items)
    for name, metrics in (("original", run["metrics_before"]), ("gradient_ascent", run["metrics_after"])):
        rows = [json.loads(line) for line in (out / "items" / f"{name}.jsonl").read_text().splitlines()]
        for split in ("forget", "retain"):
            losses = [r["loss"] for r in rows if r["split"] == split]
            assert len(losses) == run[f"{split}_items"] and sum(losses) / len(losses) == pytest.approx(metrics[f"{split}_loss"])
    report = (out / "report.html").read_text()
    assert f"{run['peak_mem_mb']:.1f}" in report or f"{run['peak_mem_mb']:.0f}" in report  # the report showed "—"
    with Ledger(workspace / "ledger.db") as ledger:
        rows = ledger.rows()
        assert len(rows) == 1 and rows[0].subject == "ticket-17" and rows[0].method == "gradient_ascent"
        assert ledger.verify().ok
        forgotten = json.loads((workspace / "forget.jsonl").read_text().splitlines()[0])
        assert ledger.check_item(forgotten)
    raw = b"".join(p.read_bytes() for p in workspace.glob("ledger.db*"))  # the WAL file too
    assert json.dumps(forgotten["input"]).encode() not in raw
    assert repr(forgotten["input"][0]).encode() not in raw  # not even one value of the forgotten item


def test_forget_with_training_data_check(workspace):
    assert main(_args(workspace, **{"--training-data": workspace / "train.jsonl"})) == 0


BAD_INPUTS = [
    ({"--model": "missing"}, "does not exist or is not a folder"),
    ({"--forget": "missing.jsonl"}, "does not exist"),
    ({"--retain": "missing.jsonl"}, "does not exist"),
    ({"--method": "nope"}, "Unknown method 'nope'"),
    ({"--method": "random_label", "--retain": None}, "needs retain data"),
    ({"--out": "model/inside"}, "lies inside the input folder"),
    ({"--forget": "empty.jsonl"}, "holds no records"),
    ({"--forget": "notjson.jsonl"}, "line 2 is not valid JSON"),
    ({"--forget": "nofield.jsonl"}, "line 1 has no field 'label'"),
    ({"--forget": "emptylabel.jsonl"}, "line 1 has an empty 'label'; every item needs a non-empty one"),
    ({"--forget": "data.txt"}, "unknown format"),
    ({"--forget": "short.jsonl"}, "line 1: field 'input' is not 4 numbers"),
    ({"--forget": "badlabel.jsonl"}, "label 7 is outside 0..1"),
    ({"--forget": "fraclabel.jsonl"}, "is not an integer label"),
    ({"--forget": "boollabel.jsonl"}, "is not an integer label"),
    ({"--forget": "inflabel.jsonl"}, "is not an integer label"),
    ({"--training-data": "other.jsonl"}, "is not in the training data"),
    ({"--ledger": "notaledger.db"}, "ledger"),
    ({"--ledger": "textfile.db"}, "ledger"),
    ({"--ledger": "no/such/dir/ledger.db"}, "ledger"),
    ({"--model": "nomodel"}, "holds no Hugging Face causal LM"),
    ({"--model": "badspec"}, "Unknown classifier architecture"),
    ({"--model": "pickled"}, "pickle"),
    ({"--method": "uld_not_here"}, "Unknown method"),
    ({"--template-arg": "date_string"}, "is not of the form NAME=VALUE"),
    ({"--out": "forget.jsonl/sub"}, "which is a file, not a folder"),
    ({"--forget": "nomodel"}, "The data file"),
    ({"--system-prompt": "Be brief."}, "holds a classifier"),
    ({"--param": "momentum=-1"}, "momentum must lie in [0, 1)"),
    ({"--param": "seed=-1"}, "seed must be an integer from 0"),
    ({"--param": "lr=1e30"}, "the run diverged (a lower lr may help); nothing was written"),  # was written as ok
    ({"--retain": None, "--project": "gu"}, "Method 'gradient_ascent' with project=gu needs retain data"),
    ({"--retain": "overlap.jsonl"}, "overlap.jsonl line 2 holds the same item as"),
    # a label written "01" trains as class 1, so this retain row is forget item 3 (it was missed: compared as text)
    ({"--retain": "overlap.csv"}, "overlap.csv line 3 holds the same item as"),
    ({"--forget": "nan.jsonl"}, "line 2: field 'input' holds NaN or an infinite value"),
    ({"--forget": "extra.csv"}, "extra.csv line 2 has 1 more value(s) than the header has column names"),
    # a repeated forget item was unlearned, scored and recorded twice
    ({"--forget": "twice.jsonl"}, "twice.jsonl line 3 holds the same item as its line 1; give each item once"),
    # an array's records were named by position as lines: "line 2" pointed at the first record's first line
    ({"--forget": "pretty.json"}, "pretty.json record 2 (line 11) has no field 'label'"),
    ({"--forget": "pretty.parquet"}, "pretty.parquet row 2 has no value for the field 'label'"),
    ({"--subject": "M\udcfcller"}, "The --subject holds '\\udcfc', which is not valid Unicode text"),
]
PATH_OPTIONS = ("--model", "--forget", "--retain", "--out", "--ledger", "--training-data")


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_exits_2_and_writes_nothing(workspace, capsys, overrides, message):
    ws = workspace
    _write_jsonl(ws / "empty.jsonl", [])
    (ws / "notjson.jsonl").write_text('{"input": [1, 2, 3, 4], "label": 0}\n{oops\n')
    _write_jsonl(ws / "nofield.jsonl", [{"input": [1, 2, 3, 4]}])
    _write_jsonl(ws / "emptylabel.jsonl", [{"input": [1, 2, 3, 4], "label": ""}])
    (ws / "data.txt").write_text("hello")
    _write_jsonl(ws / "short.jsonl", [{"input": [1, 2], "label": 0}])
    _write_jsonl(ws / "badlabel.jsonl", [{"input": [1, 2, 3, 4], "label": 7}])
    _write_jsonl(ws / "fraclabel.jsonl", [{"input": [1, 2, 3, 4], "label": 1.7}])
    _write_jsonl(ws / "boollabel.jsonl", [{"input": [1, 2, 3, 4], "label": True}])
    (ws / "inflabel.jsonl").write_text('{"input": [1, 2, 3, 4], "label": 1e400}\n')  # read as infinity
    _write_jsonl(ws / "other.jsonl", _rows(5, 99))
    _write_jsonl(ws / "overlap.jsonl", _rows(40, 0)[5:6] + [{**_rows(40, 0)[3], "label": float(_rows(40, 0)[3]["label"])}])
    (ws / "nan.jsonl").write_text('{"input": [1, 2, 3, 4], "label": 0}\n{"input": [NaN, 2, 3, 4], "label": 0}\n')
    (ws / "extra.csv").write_text('input,label\n"[1, 2, 3, 4]",0,surplus\n')
    _write_jsonl(ws / "twice.jsonl", _rows(40, 0)[:2] + _rows(40, 0)[:1])
    (ws / "pretty.json").write_text(json.dumps(_rows(40, 0)[:1] + [{"input": [1, 2, 3, 4]}], indent=2))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"input": "[1, 2, 3, 4]", "label": 0}, {"input": "[1, 2, 3, 4]", "label": None}]),
                   ws / "pretty.parquet")
    padded = [f'"{json.dumps(r["input"])}",0{r["label"]}' for r in _rows(40, 0)[5:6] + _rows(40, 0)[3:4]]
    (ws / "overlap.csv").write_text("input,label\n" + "\n".join(padded) + "\n")
    import sqlite3

    sqlite3.connect(ws / "notaledger.db").execute("create table t(x)").connection.commit()
    (ws / "textfile.db").write_text("not a database at all " * 10)
    (ws / "nomodel").mkdir()
    (ws / "badspec").mkdir()
    (ws / "badspec" / "unlearnkit.json").write_text(json.dumps({**SPEC, "architecture": "resnet"}))
    (ws / "pickled").mkdir()
    (ws / "pickled" / "unlearnkit.json").write_text(json.dumps(SPEC))
    torch.save({"state": MLP(4, [16], 2)}, ws / "pickled" / "model.pt")  # a pickled module, not plain tensors
    resolved = {k: (ws / v if isinstance(v, str) and k in PATH_OPTIONS else v) for k, v in overrides.items()}
    ledgers_before = {p.name: p.read_bytes() for p in ws.glob("*.db")}
    files_before = sorted(p.relative_to(ws) for p in ws.rglob("*"))
    assert main(_args(ws, **resolved)) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (ws / "out").exists()
    assert sorted(p.relative_to(ws) for p in ws.rglob("*")) == files_before
    assert {p.name: p.read_bytes() for p in ws.glob("*.db")} == ledgers_before


def test_existing_out_is_refused(workspace, capsys):
    (workspace / "out").mkdir()
    assert main(_args(workspace)) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (workspace / "ledger.db").exists()


def test_sigkill_mid_run_leaves_input_and_ledger_intact(workspace):
    """Kill a real `unlearnkit forget` subprocess while it trains: no output, input and ledger unchanged."""
    assert main(_args(workspace, **{"--out": workspace / "first"})) == 0
    ledger_before = (workspace / "ledger.db").read_bytes()
    model_before = _snapshot(workspace / "model")
    env = {**os.environ, "UNLEARNKIT_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "unlearnkit.cli", *_args(workspace), "--param", "epochs=100000"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(6)  # start-up and model loading take ~3 s; then it trains for far longer than this
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reaps the process and closes its pipes
    assert not (workspace / "out").exists()
    assert (workspace / "ledger.db").read_bytes() == ledger_before
    assert _snapshot(workspace / "model") == model_before
    with Ledger(workspace / "ledger.db") as ledger:
        assert ledger.verify().ok and len(ledger.rows()) == 1


def test_diverging_run_restores_weights_and_records_status(workspace):
    args = _args(workspace) + ["--param", "optimizer=sgd", "--param", "lr=1e30", "--param", "epochs=50", "--param", "grad_clip=none"]
    assert main(args) == 0
    run = json.loads((workspace / "out" / "run.json").read_text())
    assert run["status"] == "diverged" and "restored" in run["message"]
    assert all(v == v for v in run["metrics_after"].values())  # the restored weights give finite metrics
    assert run["message"] in (workspace / "out" / "report.html").read_text(encoding="utf-8")  # the report says why
    with Ledger(workspace / "ledger.db") as ledger:
        assert ledger.rows()[-1].status == "diverged"


def test_forget_on_a_hugging_face_causal_lm(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from lm_fixtures import memorised_lm, tiny_qa

    items = tiny_qa(8)
    adapter = memorised_lm(items, steps=60)
    adapter.save_pretrained(tmp_path / "lm")
    _write_jsonl(tmp_path / "forget.csv.jsonl", [{"q": it["question"], "a": it["answer"]} for it in items[:2]])
    _write_jsonl(tmp_path / "retain.jsonl", [{"q": it["question"], "a": it["answer"]} for it in items[2:]])
    args = ["forget", "--model", str(tmp_path / "lm"), "--forget", str(tmp_path / "forget.csv.jsonl"),
            "--retain", str(tmp_path / "retain.jsonl"), "--method", "graddiff", "--out", str(tmp_path / "out"),
            "--ledger", str(tmp_path / "ledger.db"), "--question-field", "q", "--answer-field", "a",
            "--param", "epochs=3", "--param", "lr=1e-3", "--system-prompt", "Answer briefly."]  # the tiny LM's scale
    assert main(args) == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["kind"] == "causal_lm"
    assert run["prompt_format"] == {"system_prompt": "Answer briefly.", "template_args": {}}
    assert run["metrics_after"]["forget_prob"] < run["metrics_before"]["forget_prob"]
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "report.html").is_file()
    html = (tmp_path / "out" / "report.html").read_text()
    assert items[0]["answer"] not in html  # forget text is redacted by default


def test_wrong_model_kind_for_method(workspace, capsys):
    assert main(_args(workspace, **{"--method": "npo"})) == 2
    assert "works on causal_lm models, not on a classifier model" in capsys.readouterr().err
    assert not (workspace / "out").exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_forget_reads_csv_and_parquet(workspace, fmt):
    rows = [{"input": json.dumps(r["input"]), "label": r["label"]} for r in _rows(40, 0)[:5]]
    path = workspace / f"forget.{fmt}"
    if fmt == "csv":
        import csv

        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["input", "label"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    args = _args(workspace, **{"--forget": path, "--training-data": workspace / "train.jsonl"})
    assert main(args + ["--param", "lr=0.05", "--param", "epochs=3"]) == 0
    run = json.loads((workspace / "out" / "run.json").read_text())
    assert run["forget_items"] == 5 and run["metrics_after"]["forget_loss"] > run["metrics_before"]["forget_loss"]


def test_a_float32_parquet_forget_set_holds_the_same_items_as_json(workspace, capsys):
    """Parquet float32 values were read as their float64 widenings (-1.1260000467300415): the JSONL training data
    "did not hold" the forget items, and check-item on the item from JSON said it was not forgotten."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"input": [round(v, 3) for v in r["input"]], "label": r["label"]} for r in _rows(40, 0)]
    _write_jsonl(workspace / "train.jsonl", rows)
    forget = pa.table({"input": pa.array([r["input"] for r in rows[:5]], pa.list_(pa.float32())),
                       "label": pa.array([r["label"] for r in rows[:5]], pa.int64())})
    pq.write_table(forget, workspace / "forget.parquet")
    assert main(_args(workspace, **{"--forget": workspace / "forget.parquet",
                                    "--training-data": workspace / "train.jsonl"})) == 0
    _write_jsonl(workspace / "item.json", rows[:1])
    capsys.readouterr()
    assert main(["ledger", "check-item", "--item", str(workspace / "item.json"), "--ledger",
                 str(workspace / "ledger.db")]) == 0
    assert "forgotten: row 1" in capsys.readouterr().out


def test_the_report_shows_a_parquet_forget_sets_examples_with_dates_and_text(workspace):
    # a column of dates (not used by the model) crashed --show-examples after the training; text came out escaped
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    when = datetime.datetime(2026, 12, 1, 9, 30)
    rows = [{"input": json.dumps(r["input"]), "label": r["label"], "created": when, "note": "Élodie"}
            for r in _rows(40, 0)[:3]]
    path = workspace / "forget.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert main(_args(workspace, **{"--forget": path}) + ["--show-examples"]) == 0
    page = (workspace / "out" / "report.html").read_text(encoding="utf-8")
    assert "2026-12-01 09:30:00" in page and "Élodie" in page


def test_csv_missing_field_names_file_field_and_line(workspace, capsys):
    path = workspace / "bad.csv"
    path.write_text("input,label\n\"[1, 2, 3, 4]\",0\n\"[1, 2, 3, 4]\",\n")
    assert main(_args(workspace, **{"--forget": path})) == 2
    err = capsys.readouterr().err
    assert "bad.csv line 3 has an empty 'label'" in err
    assert not (workspace / "out").exists()


@pytest.mark.parametrize("out, message", [
    ("", "holds the input"),  # the workspace itself
    ("model/..", "names no folder of its own"),
    ("ledger.db.salt", "holds the input"),  # the ledger's default salt file, even before it exists
])
def test_an_output_path_holding_the_inputs_is_refused_even_with_overwrite(workspace, capsys, out, message):
    files_before = sorted(p.relative_to(workspace) for p in workspace.rglob("*"))
    assert main(_args(workspace, **{"--out": f"{workspace}/{out}".rstrip("/")}) + ["--overwrite"]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.relative_to(workspace) for p in workspace.rglob("*")) == files_before


@pytest.mark.parametrize("break_salt", ["wrong salt in the environment", "salt file lost"])
def test_a_ledger_that_would_refuse_the_row_is_caught_before_anything_is_written(workspace, capsys, monkeypatch,
                                                                                break_salt):
    assert main(_args(workspace, **{"--out": workspace / "first"})) == 0
    ledger_before = (workspace / "ledger.db").read_bytes()
    if break_salt == "salt file lost":
        (workspace / "ledger.db.salt").unlink()
        message = "does not exist"
    else:
        monkeypatch.setenv("UNLEARNKIT_LEDGER_SALT", "another-salt-of-enough-length-0123456789")
        message = "salt does not match"
    assert main(_args(workspace)) == 2
    assert message in capsys.readouterr().err
    assert not (workspace / "out").exists()
    assert (workspace / "ledger.db").read_bytes() == ledger_before


@pytest.mark.parametrize("change, message", [
    ({"input_dim": "abc"}, "'input_dim' must be a positive whole number"),
    ({"input_dim": -4}, "'input_dim' must be a positive whole number"),
    ({"hidden": 8}, "'hidden' must be a list"),
    ({"hidden": [0]}, "'hidden' must be a positive whole number"),
    ({"num_classes": True}, "'num_classes' must be a positive whole number"),
])
def test_a_bad_classifier_spec_gets_one_sentence(workspace, capsys, change, message):
    spec_path = workspace / "model" / "unlearnkit.json"
    spec_path.write_text(json.dumps({**json.loads(spec_path.read_text()), **change}))
    assert main(_args(workspace)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (workspace / "out").exists()


def test_weights_that_are_not_a_state_dict_get_one_sentence(workspace, capsys):
    (workspace / "model" / "model.safetensors").unlink()
    torch.save([torch.zeros(2)], workspace / "model" / "model.pt")
    assert main(_args(workspace)) == 2
    assert "does not hold a mapping of parameter names to tensors" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_spec_name_the_keys(workspace, capsys):
    from safetensors.torch import load_file, save_file

    path = workspace / "model" / "model.safetensors"
    state = load_file(str(path))
    first = next(iter(state))
    renamed = {("0." + k.split(".", 1)[1] if k == first else k): v for k, v in state.items()}
    save_file(renamed, str(path))
    assert main(_args(workspace)) == 2
    err = capsys.readouterr().err
    assert f"missing {first}" in err and "unexpected 0." in err and "it expects" in err and err.count("\n") == 1, err
    assert not (workspace / "out").exists()


def test_training_data_check_compares_values_not_their_spelling(workspace):
    import csv

    rows = [{"input": json.dumps([float(v) for v in r["input"]], separators=(",", ":")), "label": f"{r['label']}.0"}
            for r in _rows(40, 0)[:5]]  # JSONL training rows hold the same values as plain lists and ints
    path = workspace / "forget.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["input", "label"])
        writer.writeheader()
        writer.writerows(rows)
    assert main(_args(workspace, **{"--forget": path, "--training-data": workspace / "train.jsonl"})) == 0


def test_the_ledger_records_the_used_fields_so_check_item_matches_across_formats(workspace, capsys):
    """A Parquet record with a timestamp column, a renamed label and float-spelt numbers: the ledger hashes the
    input and label only, by value, so the same item written as plain JSON is found."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    source = _rows(40, 0)[:3]
    rows = [{"input": json.dumps(r["input"]), "y": float(r["label"]), "when": datetime.datetime(2026, 1, 1)}
            for r in source]
    pq.write_table(pa.Table.from_pylist(rows), workspace / "stamped.parquet")
    assert main(_args(workspace, **{"--forget": workspace / "stamped.parquet", "--retain": None}) + ["--label-field", "y"]) == 0
    (workspace / "item.json").write_text(json.dumps(source[1]))  # {"input": [...], "label": 0 or 1}
    capsys.readouterr()
    assert main(["ledger", "check-item", "--ledger", str(workspace / "ledger.db"), "--item", str(workspace / "item.json")]) == 0
    assert "forgotten: row 1" in capsys.readouterr().out
    # a byte order mark (Windows editors write one) is not part of the item, as in the data files
    (workspace / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(source[1]).encode())
    assert main(["ledger", "check-item", "--ledger", str(workspace / "ledger.db"), "--item", str(workspace / "bom.json")]) == 0
    assert "forgotten: row 1" in capsys.readouterr().out
    (workspace / "other.json").write_text(json.dumps(_rows(40, 0)[10]))  # retained, never forgotten
    assert main(["ledger", "check-item", "--ledger", str(workspace / "ledger.db"), "--item", str(workspace / "other.json")]) == 1


def test_a_sqlite_url_to_a_new_file_starts_a_new_ledger(workspace):
    assert main(_args(workspace, **{"--ledger": f"sqlite:///{workspace}/url.db"})) == 0
    with Ledger(workspace / "url.db") as ledger:
        assert len(ledger.rows()) == 1 and ledger.verify().ok


def test_an_output_that_appears_during_the_run_is_not_replaced(workspace, capsys, monkeypatch):
    """Two runs with the same --out both pass the up-front check; the one that finishes second must fail."""
    import unlearnkit.forget_job as forget_job

    save = forget_job._save_model

    def save_while_another_run_finishes(*args):
        (workspace / "out").mkdir()
        (workspace / "out" / "run.json").write_text("the other run's output")
        save(*args)

    monkeypatch.setattr(forget_job, "_save_model", save_while_another_run_finishes)
    assert main(_args(workspace)) == 2
    assert "was created by something else while this run worked" in capsys.readouterr().err
    assert [p.name for p in (workspace / "out").iterdir()] == ["run.json"]
    assert (workspace / "out" / "run.json").read_text() == "the other run's output"
    assert not (workspace / "ledger.db").exists() and not list(workspace.glob(".out.*"))


def test_an_interrupt_at_the_final_rename_leaves_no_output_and_no_ledger_row(workspace, monkeypatch):
    """The ledger row is appended only once the output is in place, so a run stopped just before can leave
    neither; a refused append removes the output again."""
    rename = os.rename

    def interrupted(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".out.tmp-"):
            raise KeyboardInterrupt
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", interrupted)
    assert main(_args(workspace)) == 130
    assert not (workspace / "out").exists() and not list(workspace.glob(".out.*"))
    assert not (workspace / "ledger.db").exists()
    monkeypatch.setattr(os, "rename", rename)

    def refused(*args, **kwargs):
        from unlearnkit.errors import UserInputError

        raise UserInputError("The ledger refused the row.")

    monkeypatch.setattr(Ledger, "append", refused)
    assert main(_args(workspace)) == 2
    assert not (workspace / "out").exists() and not list(workspace.glob(".out.*"))


def test_the_forget_report_has_mia_histograms_and_hashed_items(workspace):
    from unlearnkit.report.html import item_hash

    assert main(_args(workspace)) == 0
    page = (workspace / "out" / "report.html").read_text(encoding="utf-8")
    assert "<h2>Membership inference scores</h2>" in page and "on the forget items and the retain items" in page
    assert page.count("data:image/png") == 3  # scatter, forget-vs-retain histograms, loss curve
    assert all(item_hash(i) in page for i in range(5))
    first = json.loads((workspace / "forget.jsonl").read_text().splitlines()[0])
    assert repr(first["input"][0]) not in page  # redacted without --show-examples


def test_a_setting_given_twice_is_refused_not_last_wins(workspace, capsys):
    args = _args(workspace) + ["--param", "epochs=2", "--param", "epochs=3"]
    assert main(args) == 2
    assert "--param epochs is given twice" in capsys.readouterr().err
    assert not (workspace / "out").exists() and not (workspace / "ledger.db").exists()


def test_a_trusted_pickle_that_cannot_be_unpickled_gets_one_sentence(tmp_path):
    from unlearnkit.errors import UserInputError
    from unlearnkit.io import load_state_dict

    broken = tmp_path / "model.pt"
    broken.write_bytes(b"\x80\x04\x95garbage that is no pickle")
    with pytest.raises(UserInputError, match=r"^The checkpoint .*model\.pt could not be unpickled \("):
        load_state_dict(broken, trust_pickle=True)


def test_a_legacy_pickle_checkpoint_is_recognised_as_one(tmp_path):
    from unlearnkit.errors import UserInputError
    from unlearnkit.io import load_state_dict

    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2), "module": MLP(4, [16], 2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UserInputError, match="is a pickle that cannot be loaded safely"):  # not "neither ... nor"
        load_state_dict(legacy)
    assert torch.equal(load_state_dict(legacy, trust_pickle=True)["w"], torch.zeros(2))


def test_forget_saves_the_kfade_update_beside_the_model_so_it_can_be_reapplied(tmp_path):
    """K-FADE keeps its total change for re-applying after later training; the CLI's output must carry it."""
    sys.path.insert(0, str(Path(__file__).parent))
    from transformers import AutoModelForCausalLM

    from lm_fixtures import memorised_lm, tiny_qa
    from unlearnkit.io import load_state_dict
    from unlearnkit.methods.kfade import apply_update

    items = tiny_qa(8)
    memorised_lm(items, steps=30).save_pretrained(tmp_path / "lm")
    _write_jsonl(tmp_path / "forget.jsonl", [{"question": it["question"], "answer": it["answer"]} for it in items[:2]])
    _write_jsonl(tmp_path / "retain.jsonl", [{"question": it["question"], "answer": it["answer"]} for it in items[2:]])
    args = ["forget", "--model", str(tmp_path / "lm"), "--forget", str(tmp_path / "forget.jsonl"),
            "--retain", str(tmp_path / "retain.jsonl"), "--method", "kfade", "--out", str(tmp_path / "out"),
            "--ledger", str(tmp_path / "ledger.db"), "--param", "damping=0.001", "--param", "lr=0.001"]
    assert main(args) == 0
    update = load_state_dict(tmp_path / "out" / "kfade_update.safetensors")
    before = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert update and max(v.abs().max().item() for v in update.values()) > 0
    apply_update(before, update)  # the input weights plus the saved update are the output weights
    saved = dict(after.named_parameters())
    assert all(torch.allclose(p, saved[n], atol=1e-6) for n, p in before.named_parameters())


def test_a_run_whose_forget_loss_did_not_rise_is_warned_about(workspace, capsys):
    # ssd with a dampening threshold no weight reaches changes nothing: status ok, yet nothing was forgotten
    assert main(_args(workspace, **{"--method": "ssd"}) + ["--param", "alpha=1e12"]) == 0
    out = capsys.readouterr().out
    assert "warning: the forget items' mean loss did not rise" in out
    assert main(_args(workspace, **{"--out": workspace / "out2"}) + ["--param", "lr=0.05", "--param", "epochs=3"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_an_lm_item_longer_than_the_run_reads_is_refused_not_cut(tmp_path, capsys):
    """An item cut to max_length would be unlearned and scored only in part, yet recorded whole in the ledger."""
    sys.path.insert(0, str(Path(__file__).parent))
    from lm_fixtures import memorised_lm, tiny_qa

    items = tiny_qa(4)
    memorised_lm(items, steps=5).save_pretrained(tmp_path / "lm")  # 64 positions
    long_answer = " ".join([items[0]["answer"]] * 3)  # 26 tokens with its prompt and EOS
    _write_jsonl(tmp_path / "forget.jsonl", [items[1], {"question": items[0]["question"], "answer": long_answer}])
    base = ["forget", "--model", str(tmp_path / "lm"), "--forget", str(tmp_path / "forget.jsonl"), "--method",
            "gradient_ascent", "--out", str(tmp_path / "out"), "--ledger", str(tmp_path / "ledger.db"),
            "--param", "epochs=1"]
    for extra, message in [(["--max-length", "16"], "forget.jsonl line 2 takes 26 tokens with its prompt, more than "
                                                    "the 16 read per item; give --max-length 26 or more (this model "
                                                    "takes up to 64)."),
                           (["--max-length", "65"], "max_length 65 is more than the 64 positions this model has.")]:
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists() and not (tmp_path / "ledger.db").exists()
    assert main(base + ["--max-length", "26"]) == 0
    assert json.loads((tmp_path / "out" / "run.json").read_text())["max_length"] == 26


def test_a_full_disk_is_one_sentence_and_leaves_nothing(workspace, capsys, monkeypatch):
    """A write that found the disk full ended in an OSError traceback (it also wrote nothing)."""
    import errno

    import unlearnkit.report.html as html

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(html, "write_report", full)
    assert main(_args(workspace)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: The disk is full (writing ") and "report.html" in err, err
    assert not (workspace / "out").exists() and not (workspace / "ledger.db").exists()


def test_a_run_that_left_the_weights_unchanged_is_not_said_to_have_changed_the_model(workspace, capsys):
    """SSD whose threshold selects no weight leaves the model as it was; the warning said "the model changed"."""
    assert main(_args(workspace, **{"--method": "ssd"}) + ["--param", "alpha=1e9"]) == 0
    run = json.loads((workspace / "out" / "run.json").read_text())
    assert run["fingerprint_after"] == run["fingerprint_before"]
    logged = capsys.readouterr()
    assert "the model's weights did not change" in logged.err + logged.out
    assert "the model changed" not in logged.err + logged.out


def test_one_input_written_nested_or_flat_is_one_item_and_booleans_are_refused(workspace, capsys):
    """The model reads [[a, b], [c, d]] as [a, b, c, d]: the overlap check, --training-data and the ledger compared
    the spellings and missed that one item was both forgotten and kept; true was read as 1.0."""
    rows = _rows(40, 0)
    nested = {"input": [rows[0]["input"][:2], rows[0]["input"][2:]], "label": rows[0]["label"]}
    _write_jsonl(workspace / "nested.jsonl", [nested])
    assert main(_args(workspace, **{"--forget": workspace / "nested.jsonl", "--retain": workspace / "train.jsonl"})) == 2
    assert "holds the same item as" in capsys.readouterr().err
    assert main(_args(workspace, **{"--forget": workspace / "nested.jsonl", "--retain": None,
                                    "--training-data": workspace / "train.jsonl"})) == 0
    _write_jsonl(workspace / "item.json", rows[:1])
    capsys.readouterr()
    assert main(["ledger", "check-item", "--item", str(workspace / "item.json"), "--ledger",
                 str(workspace / "ledger.db")]) == 0
    _write_jsonl(workspace / "bools.jsonl", [{"input": [True, False, 1, 2], "label": 1}])
    assert main(_args(workspace, **{"--forget": workspace / "bools.jsonl", "--out": workspace / "out2"})) == 2
    assert "is not 4 numbers" in capsys.readouterr().err and not (workspace / "out2").exists()


def test_a_trusted_pickle_of_the_whole_module_loads_its_weights(workspace):
    """`torch.save(model, "model.pt")` is refused with the advice to pass --trust-pickle; following that advice
    then failed with "does not hold a mapping of parameter names to tensors" instead of loading the weights."""
    from safetensors.torch import load_file

    from unlearnkit.io import fingerprint

    model = MLP(4, [16], 2)
    model.load_state_dict(load_file(workspace / "model" / "model.safetensors"))
    (workspace / "model" / "model.safetensors").unlink()
    torch.save(model, workspace / "model" / "model.pt")
    assert main(_args(workspace)) == 2  # untrusted: refused, nothing written
    assert main(_args(workspace) + ["--trust-pickle"]) == 0
    run = json.loads((workspace / "out" / "run.json").read_text())
    assert run["fingerprint_before"] == fingerprint(model.state_dict())

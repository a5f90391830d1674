"""Security review: files a user or an attacker hands over, and outputs that must never replace an input.

- a PEFT adapter folder of another type than LoRA (X-LoRA names further adapters, on the hub too) is refused
  before PEFT reads anything;
- a sharded checkpoint whose index names shard files outside the model folder is refused (transformers would
  load another model's weights from this machine);
- a CSV forget file without a header line does not put its first item's text into the error message;
- a file named by a method setting (``--param full_importance=FILE``) and the base model under an adapter folder
  given to ``evaluate`` are inputs: an ``--overwrite`` output may not replace them.
"""

import json

import pytest
import torch

from lm_fixtures import tiny_lm, tiny_qa
from unlearnkit.adapters.causal_lm import CausalLMAdapter
from unlearnkit.cli import main
from unlearnkit.errors import UserInputError
from unlearnkit.userdata import read_records, require_fields

SPEC = {"kind": "classifier", "architecture": "mlp", "input_dim": 4, "hidden": [8], "num_classes": 2}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def lm_dir(tmp_path):
    """A tiny GPT-2 folder (config.json, tokenizer, model.safetensors) and its QA items."""
    items = tiny_qa(4)
    adapter = tiny_lm(items)
    adapter.save_pretrained(tmp_path / "lm")
    return tmp_path / "lm", items


def _forget_lm(tmp_path, model, forget):
    return ["forget", "--model", str(model), "--forget", str(forget), "--method", "gradient_ascent",
            "--out", str(tmp_path / "out"), "--ledger", str(tmp_path / "ledger.db")]


# ------------------------------------------------------------------ PEFT adapter types
def test_an_adapter_folder_of_another_peft_type_is_refused_before_peft_reads_it(lm_dir, tmp_path, monkeypatch):
    """X-LoRA's adapter_config.json names further adapters, which PEFT fetches from the hub (or any local
    folder, adapter_model.bin included) while loading: only the LoRA adapters --lora writes are loaded."""
    from peft import PeftModel

    base, items = lm_dir
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "use_cache": False}))  # as X-LoRA demands
    adapter = tmp_path / "xlora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "XLORA", "base_model_name_or_path": str(base), "hidden_size": 32,
        "adapters": {"0": "someone/remote-adapter", "1": str(tmp_path / "elsewhere")}}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    calls = []
    monkeypatch.setattr(PeftModel, "from_pretrained", lambda *a, **k: calls.append(a) or pytest.fail("PEFT was called"))
    with pytest.raises(UserInputError, match="is of PEFT type 'XLORA'; only LoRA adapters"):
        CausalLMAdapter.from_pretrained(adapter)
    assert calls == []
    forget = _jsonl(tmp_path / "forget.jsonl", items[:2])
    assert main(_forget_lm(tmp_path, adapter, forget)) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "ledger.db").exists()


# ------------------------------------------------------------------ sharded checkpoints
def _point_index_at(folder, shard_name):
    """Replace the folder's weights by an index that maps every weight to ``shard_name``."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {key: shard_name for key in keys}}))


@pytest.mark.parametrize("shard", ["../victim/model.safetensors", "ABSOLUTE", "sub/model.safetensors", ".."])
def test_a_shard_index_naming_files_outside_the_model_folder_is_refused(tmp_path, shard, capsys):
    """transformers joins the index's shard names to the folder as given: ``../victim/model.safetensors`` or an
    absolute path loaded that other model's weights (which ``forget`` then wrote into its output)."""
    items = tiny_qa(4)
    tiny_lm(items, seed=1).save_pretrained(tmp_path / "victim")
    tiny_lm(items, seed=2).save_pretrained(tmp_path / "given")
    if shard == "ABSOLUTE":
        shard = str(tmp_path / "victim" / "model.safetensors")
    if shard.startswith("sub/"):
        (tmp_path / "given" / "sub").mkdir()
        (tmp_path / "victim" / "model.safetensors").rename(tmp_path / "given" / "sub" / "model.safetensors")
    _point_index_at(tmp_path / "given", shard)
    with pytest.raises(UserInputError, match="names shard files outside .*given; a shard must be a file name"):
        CausalLMAdapter.from_pretrained(tmp_path / "given")
    forget = _jsonl(tmp_path / "forget.jsonl", items[:2])
    assert main(_forget_lm(tmp_path, tmp_path / "given", forget)) == 2
    assert "names shard files outside" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ledger.db").exists()


def test_a_damaged_shard_index_is_one_sentence(lm_dir):
    base, _ = lm_dir
    (base / "model.safetensors.index.json").write_text('{"weight_map": [1, 2]}')
    with pytest.raises(UserInputError, match="is not a JSON object with a weight_map of shard file names"):
        CausalLMAdapter.from_pretrained(base)


def test_a_sharded_model_with_its_shards_in_its_folder_still_loads(tmp_path):
    items = tiny_qa(4)
    adapter = tiny_lm(items)
    adapter.model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    adapter.tokenizer.save_pretrained(tmp_path / "sharded")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    loaded = CausalLMAdapter.from_pretrained(tmp_path / "sharded")
    for (name, value), (_, original) in zip(loaded.model.state_dict().items(), adapter.model.state_dict().items()):
        assert torch.equal(value, original), name


# ------------------------------------------------------------------ forgotten text in error messages
def test_a_csv_without_a_header_line_keeps_its_first_item_out_of_the_error(tmp_path, capsys):
    """Without a header line, csv reads the first item as the column names; the missing-column error listed
    them, so the forget set's text reached stderr and whatever log collects it."""
    path = tmp_path / "forget.csv"
    path.write_text("Where was Alia Petrova born?,Alia Petrova was born in Varna.\nWhere?,Here.\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="line 1 names no column 'question'; the first line of a CSV file must "
                                             "name its columns, e.g. question,answer") as error:
        require_fields(read_records(path), ["question", "answer"], path)
    assert "Alia" not in str(error.value) and "Varna" not in str(error.value)
    model = tmp_path / "lm"  # the fields are checked before a language model is loaded
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert main(_forget_lm(tmp_path, model, path)) == 2
    err = capsys.readouterr().err
    assert "names no column 'question'" in err and "Alia" not in err and "Varna" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ledger.db").exists()


# ------------------------------------------------------------------ outputs never replace an input
@pytest.fixture()
def classifier(tmp_path):
    from unlearnkit.adapters.classifier_spec import MLP, save_classifier

    torch.manual_seed(0)
    model = MLP(4, [8], 2)
    save_classifier(model, SPEC, tmp_path / "model")
    g = torch.Generator().manual_seed(0)
    rows = [{"input": x.tolist(), "label": int(x[0] > 0)} for x in torch.randn(12, 4, generator=g)]
    _jsonl(tmp_path / "forget.jsonl", rows[:3])
    _jsonl(tmp_path / "retain.jsonl", rows[3:])
    return model, rows


def test_a_file_named_by_a_method_setting_is_an_input_that_overwrite_keeps(tmp_path, classifier, capsys):
    """``--param full_importance=out/importance.safetensors --out out --overwrite`` replaced the folder that held
    the importance file (a pass over the whole training set) with the new output, deleting it."""
    from unlearnkit.adapters.classifier import ClassifierAdapter
    from unlearnkit.methods.ssd import save_full_importance

    model, rows = classifier
    out = tmp_path / "out"
    out.mkdir()
    importance = out / "importance.safetensors"
    items = [(torch.tensor(r["input"]), r["label"]) for r in rows]
    save_full_importance(ClassifierAdapter(model, 2), items, importance, 64)
    kept = importance.read_bytes()
    args = ["forget", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.jsonl"),
            "--retain", str(tmp_path / "retain.jsonl"), "--method", "ssd", "--param", f"full_importance={importance}",
            "--out", str(out), "--ledger", str(tmp_path / "ledger.db"), "--overwrite"]
    assert main(args) == 2
    assert "holds the input" in capsys.readouterr().err
    assert importance.read_bytes() == kept and not (tmp_path / "ledger.db").exists()


def test_evaluate_keeps_the_base_model_under_an_adapter_folder(tmp_path, capsys):
    """``evaluate --model ADAPTER --out BASE --overwrite`` would have replaced the adapter's base model (read to
    score the adapter) with the results folder: only the adapter folder itself counted as an input."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "retain").mkdir()
    (tmp_path / "data").mkdir()
    args = ["evaluate", "--data", str(tmp_path / "data"), "--model", str(adapter), "--retain-model",
            str(tmp_path / "retain"), "--out", str(base), "--overwrite"]
    assert main(args) == 2
    assert "holds the input" in capsys.readouterr().err
    assert (base / "config.json").is_file()


def _facts_bench(out, params):
    from unlearnkit.benchmarks.facts import FactsConfig
    from unlearnkit.benchmarks.lm_bench import run_lm_bench

    run_lm_bench(FactsConfig.tiny(), "forget10", list(params), out, params=params, overwrite=True, log=lambda *_: None)


def _classifier_bench(out, params):
    from unlearnkit.benchmarks.classifier_bench import run_classifier_bench

    run_classifier_bench("digits", "class", list(params), out, params=params, overwrite=True, log=lambda *_: None)


@pytest.mark.parametrize("bench, method, setting", [(_facts_bench, "first_epoch_ga", "gradients"),
                                                    (_classifier_bench, "ssd", "full_importance")])
def test_a_bench_keeps_a_file_named_by_a_method_setting(tmp_path, bench, method, setting):
    out = tmp_path / "out"
    out.mkdir()
    (out / "named.safetensors").write_bytes(b"measured")
    with pytest.raises(UserInputError, match="holds the input"):
        bench(out, {method: {setting: str(out / "named.safetensors")}})
    assert (out / "named.safetensors").read_bytes() == b"measured"

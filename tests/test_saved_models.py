"""Every LM folder `unlearnkit forget` writes loads back (load_causal_lm) as the model whose scores it reported:
inference-time wrappers (uld, guard, guard_it) and MRP's projections included."""

import json
import sys
from pathlib import Path

import pytest
import torch

from unlearnkit.cli import main
from unlearnkit.errors import UserInputError
from unlearnkit.forget_job import _scores, _summary
from unlearnkit.methods.saved import WRAPPER_FILE, WRAPPER_TENSORS, load_causal_lm

sys.path.insert(0, str(Path(__file__).parent))
from lm_fixtures import memorised_lm, tiny_qa  # noqa: E402

METHOD_PARAMS = {"uld": ["epochs=2"], "guard": [], "guard_it": [], "mrp": ["epochs=2"]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    items = tiny_qa(8)
    memorised_lm(items, steps=300).save_pretrained(root / "lm")  # every answer memorised
    for name, rows in (("forget", items[:2]), ("retain", items[2:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n"
                                                   for r in rows))
    return root


def _forget(root, model, method, out, params=()):
    args = ["forget", "--model", str(model), "--forget", str(root / "forget.jsonl"), "--retain", str(root / "retain.jsonl"),
            "--method", method, "--out", str(out), "--ledger", str(root / "ledger.db")]
    for param in params:
        args += ["--param", param]
    return main(args)


def _items(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
def test_a_forget_output_loads_back_as_the_model_it_scored(workspace, method):
    out = workspace / f"out-{method}"
    assert _forget(workspace, workspace / "lm", method, out, METHOD_PARAMS[method]) == 0
    run = json.loads((out / "run.json").read_text())
    adapter = load_causal_lm(out)
    reloaded = _summary(_scores(adapter, _items(workspace / "forget.jsonl"), _items(workspace / "retain.jsonl")))
    assert reloaded == pytest.approx(run["metrics_after"], rel=1e-5)
    assert reloaded["forget_loss"] != pytest.approx(run["metrics_before"]["forget_loss"], rel=1e-3)  # not the input
    if method != "mrp":
        # no config.json of its own: a plain from_pretrained fails instead of loading the model before unlearning
        assert (out / WRAPPER_FILE).is_file() and not (out / "config.json").exists()
        assert (out / "base" / "config.json").is_file() and (out / "base" / "tokenizer_config.json").is_file()


def test_guard_restores_its_decoding_restriction(workspace):
    out = workspace / "out-guard-gen"
    assert _forget(workspace, workspace / "lm", "guard", out) == 0
    guarded, plain = load_causal_lm(out), load_causal_lm(out / "base")
    question = [_items(workspace / "forget.jsonl")[0]["question"]]
    answer = _items(workspace / "forget.jsonl")[0]["answer"]
    assert plain.generate(plain.model, question, max_new_tokens=8)[0].strip() == answer  # memorised
    restricted = guarded.generate(guarded.model, question, max_new_tokens=8)[0]
    assert answer.split()[-2] not in restricted.split()  # the city, a forbidden token of the flagged answer


def test_a_second_mrp_request_keeps_the_first_requests_directions(workspace):
    first, second = workspace / "mrp-1", workspace / "mrp-2"
    assert _forget(workspace, workspace / "lm", "mrp", first, ["epochs=1"]) == 0
    assert _forget(workspace, first, "mrp", second, ["epochs=1"]) == 0
    from safetensors import safe_open

    def basis(folder):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
            return weights.get_tensor("transformer.h.1.mrp_projection.basis")

    old, new = basis(first), basis(second)
    assert new.shape[0] == 2 * old.shape[0]
    # every earlier direction lies in the new span: the removal is cumulative
    residual = old - (old @ new.T) @ new
    assert residual.abs().max() < 1e-5


def test_a_wrapper_folder_is_refused_as_forget_input(workspace, capsys):
    out = workspace / "out-uld-again"
    assert _forget(workspace, workspace / "lm", "uld", workspace / "uld-src", ["epochs=1"]) == 0
    assert _forget(workspace, workspace / "uld-src", "npo", out) == 2
    err = capsys.readouterr().err
    assert "holds a uld model" in err and str(workspace / "uld-src" / "base") in err
    assert not out.exists()


def test_damaged_wrapper_files_are_refused_in_one_sentence(workspace, tmp_path):
    import shutil

    source = workspace / "out-guard_it"
    if not source.exists():
        assert _forget(workspace, workspace / "lm", "guard_it", source) == 0
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    meta = json.loads((bad / WRAPPER_FILE).read_text())
    (bad / WRAPPER_FILE).write_text(json.dumps({**meta, "method": "nonexistent"}))
    with pytest.raises(UserInputError, match="describes a 'nonexistent' wrapper"):
        load_causal_lm(bad)
    (bad / WRAPPER_FILE).write_text(json.dumps({**meta, "method": ["uld"]}))  # not a name: unhashable, it crashed
    with pytest.raises(UserInputError, match="is not a valid unlearnkit wrapper description"):
        load_causal_lm(bad)
    (bad / WRAPPER_FILE).write_text(json.dumps({**meta, "settings": {}}))
    with pytest.raises(UserInputError, match="wrapper in .* is incomplete or damaged"):
        load_causal_lm(bad)
    (bad / WRAPPER_FILE).write_text(json.dumps(meta))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(bad / WRAPPER_TENSORS))
    save_file({**tensors, "stray": torch.zeros(1)}, str(bad / WRAPPER_TENSORS))
    with pytest.raises(UserInputError, match=r"do not fit this model .*unexpected: stray"):
        load_causal_lm(bad)


def test_an_adapter_trained_on_an_mrp_output_loads_with_its_bases_projections(workspace):
    """A LoRA adapter saved alone over an MRP output was trained (and scored) with the projections on; loading
    it merged the adapter into the base's plain weights, without them (from_pretrained drops the bases)."""
    base, out = workspace / "mrp-base", workspace / "mrp-lora"
    assert _forget(workspace, workspace / "lm", "mrp", base, ["epochs=1"]) == 0
    args = ["--lora", "r=2,alpha=4,targets=c_attn,save=adapter"]
    assert main(["forget", "--model", str(base), "--forget", str(workspace / "forget.jsonl"), "--retain",
                 str(workspace / "retain.jsonl"), "--method", "npo", "--param", "epochs=1", *args, "--out", str(out),
                 "--ledger", str(workspace / "ledger.db")]) == 0
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    run = json.loads((out / "run.json").read_text())
    reloaded = _summary(_scores(load_causal_lm(out), _items(workspace / "forget.jsonl"), _items(workspace / "retain.jsonl")))
    assert reloaded == pytest.approx(run["metrics_after"], rel=1e-5)


def test_the_adapters_save_pretrained_writes_a_wrapper_that_loads_back(workspace, tmp_path):
    """CausalLMAdapter.save_pretrained called the wrapper's save_pretrained, which it has not: an AttributeError."""
    from unlearnkit.api import unlearn
    from unlearnkit.request import ForgetRequest

    adapter = load_causal_lm(workspace / "lm")
    items = _items(workspace / "forget.jsonl") + _items(workspace / "retain.jsonl")
    model, record = unlearn(adapter, ForgetRequest(items, [0, 1], range(2, len(items))), "uld", epochs=2)
    assert record.status == "ok" and not hasattr(model, "save_pretrained")
    adapter.save_pretrained(tmp_path / "uld", model=model)
    reloaded = load_causal_lm(tmp_path / "uld")
    batch = adapter.collate(items)
    with torch.no_grad():
        assert torch.allclose(reloaded.per_item_loss(reloaded.model, batch), adapter.per_item_loss(model, batch), atol=1e-6)

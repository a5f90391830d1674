"""Audit of the smollm2 base's GGUF loading (benchmarks/smollm2.py): bad files give one sentence, no
custom code is offered, incomplete files are refused, random state is kept, and the base is a llama.

Each test writes a two-layer GGUF of a few kilobytes with the ``gguf`` package (no SmolLM2 needed).
"""

from __future__ import annotations

import json

import pytest
import torch

from gguf_fixtures import HEADS, KV_HEADS, LAYERS, WIDTH, bpe, write_llama_gguf

from unlearnkit.benchmarks import smollm2
from unlearnkit.cli import main

pytest.importorskip("gguf", reason="the optional gguf package is not installed (pip install 'unlearnkit[test]')")

#: qwen2's attention biases, which make a complete qwen2 file of the same shapes.
QWEN2_BIASES = {f"blk.{i}.attn_{x}.bias": WIDTH if x == "q" else WIDTH // HEADS * KV_HEADS for i in range(LAYERS) for x in "qkv"}
TEXTS = ["Where was Ada Lovelace born?", "Ada Lovelace was born in London."] * 4


def write_gguf(path, architecture: str = "llama", drop: tuple[str, ...] = (), extra=None):
    """A tiny llama GGUF (see gguf_fixtures.write_llama_gguf) with a 300-token BPE of two sentences."""
    return write_llama_gguf(path, *bpe(TEXTS, 300), architecture, drop, extra)


@pytest.fixture
def gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path)
    return path


def test_a_directory_is_named_as_one(tmp_path):
    with pytest.raises(smollm2.UserInputError, match=r"is a directory; give the path of a \.gguf file"):
        smollm2.load_gguf_causal_lm(tmp_path)


def test_a_truncated_file_gives_one_sentence(gguf_file):
    # cut inside the metadata: gguf's reader raised struct.error, a traceback instead of a sentence
    gguf_file.write_bytes(gguf_file.read_bytes()[:200])
    with pytest.raises(smollm2.UserInputError, match=r"cannot be loaded as a causal LM \(") as caught:
        smollm2.load_gguf_causal_lm(gguf_file)
    assert "\n" not in str(caught.value)


def test_a_file_lacking_a_weight_is_refused_not_filled_with_random_values(tmp_path, capfd):
    path = tmp_path / "incomplete.gguf"
    write_gguf(path, drop=("blk.0.ffn_up.weight",))
    capfd.readouterr()
    with pytest.raises(smollm2.UserInputError, match=r"lacks 1 of its model's weights or holds them in other shapes "
                                                     r"\(e\.g\. model\.layers\.0\.mlp\.up_proj\.weight\)"):
        smollm2.load_gguf_causal_lm(path)
    assert "MISSING" not in capfd.readouterr().err  # transformers' own loading report stays quiet: one sentence


def test_a_tokenizer_without_merges_gives_one_sentence(tmp_path):
    # before: transformers' GGUF tokenizer reader raised a raw KeyError: 'scores'
    path = tmp_path / "no-merges.gguf"
    write_llama_gguf(path, bpe(TEXTS, 300)[0], [])
    # the cause in brackets is transformers' own, in its words: these are 5.24's and 5.17's
    with pytest.raises(smollm2.UserInputError, match=r"cannot be loaded as a causal LM \((no 'scores' field|"
                                                     r"tokens and scores need to be passed for a LLaMa tokenizer "
                                                     r"without merges to be instantiated)\)\.$"):
        smollm2.load_gguf_causal_lm(path)


@pytest.mark.parametrize("architecture, message", [
    # transformers reads gpt2's tensors in other shapes: it raised a RuntimeError (a traceback) after its report
    ("gpt2", r"lacks \d+ of its model's weights or holds them in other shapes \(e\.g\. transformer\."),
    # transformers knows mistral, gguf-py's name map does not: NotImplementedError, a traceback
    ("mistral", r"cannot be loaded as a causal LM \((Unknown gguf model_type: mistral|no 'mistral' field)"),
])
def test_a_gguf_transformers_cannot_read_as_its_architecture_gives_one_sentence(tmp_path, architecture, message):
    path = tmp_path / f"{architecture}.gguf"
    write_gguf(path, architecture=architecture)
    with pytest.raises(smollm2.UserInputError, match=message) as caught:
        smollm2.load_gguf_causal_lm(path)
    assert "\n" not in str(caught.value)


def test_custom_code_beside_the_file_is_never_offered(gguf_file, monkeypatch):
    # a tokenizer_config.json with auto_map next to the file: transformers asked on stdin whether to run
    # its code (and waited 15 s for an answer); the loader now refuses it without asking
    (gguf_file.parent / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}, "tokenizer_class": "XTokenizer"}))
    asked: list[str] = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "n")
    with pytest.raises(smollm2.UserInputError, match=r"cannot be loaded as a causal LM"):
        smollm2.load_gguf_causal_lm(gguf_file)
    assert asked == []


def test_loading_leaves_the_global_random_state_alone(gguf_file):
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    model, _ = smollm2.load_gguf_causal_lm(gguf_file)
    assert torch.equal(torch.rand(4), expected)
    # and the weights are the file's, not the fresh model's random init
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight, write_gguf(gguf_file.parent / "again.gguf")
                               .model.layers[0].mlp.up_proj.weight)


def test_the_smollm2_base_refuses_a_gguf_of_another_architecture(tmp_path, monkeypatch, capsys):
    # a complete qwen2 GGUF loads as a Qwen2ForCausalLM: the bench labelled it SmolLM2 and trained it
    path = tmp_path / "qwen2.gguf"
    write_gguf(path, architecture="qwen2", extra=QWEN2_BIASES)
    assert type(smollm2.load_gguf_causal_lm(path)[0]).__name__ == "Qwen2ForCausalLM"
    monkeypatch.setattr(smollm2, "gguf_path", lambda: path)
    with pytest.raises(smollm2.UserInputError, match=r"needs SmolLM2's llama-architecture GGUF, but .* a qwen2 model"):
        smollm2.smollm2_model_and_tokenizer(96)
    # the llama file of the same shape is accepted
    llama = tmp_path / "llama.gguf"
    write_gguf(llama)
    monkeypatch.setattr(smollm2, "gguf_path", lambda: llama)
    model, tokenizer, meta = smollm2.smollm2_model_and_tokenizer(96)
    assert model.config.model_type == "llama" and tokenizer.model_max_length == 96 and meta["load_seconds"] > 0


def test_the_bench_on_a_damaged_gguf_exits_2_with_one_sentence_and_writes_nothing(gguf_file, monkeypatch, tmp_path,
                                                                                   capsys):
    from unlearnkit.benchmarks.cache import cache_root

    gguf_file.write_bytes(gguf_file.read_bytes()[:200])
    monkeypatch.setattr(smollm2, "gguf_path", lambda: gguf_file)
    # a cache of its own: the suite's shared one gains other workers' entries meanwhile
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    before = sorted((cache_root() / "facts").glob("*")) if (cache_root() / "facts").is_dir() else []
    out = tmp_path / "bench"
    assert main(["bench", "--benchmark", "facts", "--base", "smollm2", "--preset", "tiny", "--methods",
                 "gradient_ascent", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"The GGUF file {gguf_file} cannot be loaded as a causal LM" in err, err
    assert not out.exists()
    after = sorted((cache_root() / "facts").glob("*")) if (cache_root() / "facts").is_dir() else []
    assert after == before


def test_loading_draws_no_dequantising_bar_where_unlearnkit_draws_none(gguf_file, monkeypatch, capfd):
    """transformers' GGUF loader draws its bar with tqdm directly, which its own switch for bars does not reach:
    it printed into pipes and CI logs."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    drawn = gguf_utils.tqdm
    monkeypatch.setenv("UNLEARNKIT_PROGRESS", "0")
    capfd.readouterr()
    smollm2.load_gguf_causal_lm(gguf_file)
    assert "de-quantizing" not in capfd.readouterr().err
    assert gguf_utils.tqdm is drawn  # given back

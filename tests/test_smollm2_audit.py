"""Audit of the smollm2 base's GGUF loading (benchmarks/smollm2.py): bad files give one sentence, no
custom code is offered, incomplete files are refused, random state is kept, and the base is a llama.

Each test writes a one-layer GGUF of a few kilobytes with the ``gguf`` package (no SmolLM2 needed).
"""

from __future__ import annotations

import json

import pytest
import torch

from unlearnkit.benchmarks import smollm2
from unlearnkit.cli import main

pytest.importorskip("gguf", reason="the optional gguf package is not installed (pip install 'unlearnkit[test]')")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WIDTH, HEADS = 16, 2
#: transformers' llama name -> GGUF tensor name, for the one layer written here.
TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           **{f"model.layers.0.{hf}.weight": f"blk.0.{name}.weight" for hf, name in (
               ("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
               ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
               ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
               ("mlp.down_proj", "ffn_down"))}}


def _tokens_and_merges() -> tuple[list[str], list[str]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["Where was Ada Lovelace born?", "Ada Lovelace was born in London."] * 4, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])], merges


def write_gguf(path, architecture: str = "llama", drop: tuple[str, ...] = (), extra: tuple[str, ...] = ()):
    """A random one-layer llama-shaped model (tied embeddings) and a byte-level BPE, as a GGUF file
    declaring ``architecture``, without the GGUF tensors named in ``drop`` and with zero vectors of
    the model's width named ``extra`` (e.g. the attention biases of qwen2)."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens, merges = _tokens_and_merges()
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=HEADS, num_key_value_heads=HEADS, tie_word_embeddings=True)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    torch.random.set_rng_state(generator_state)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(64)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(1)
    writer.add_feed_forward_length(32)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    state = model.state_dict()
    for hf, name in TENSORS.items():
        if name not in drop:
            writer.add_tensor(name, state[hf].detach().float().numpy())
    for name in extra:
        writer.add_tensor(name, torch.zeros(WIDTH).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


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


def test_a_file_lacking_a_weight_is_refused_not_filled_with_random_values(tmp_path):
    path = tmp_path / "incomplete.gguf"
    write_gguf(path, drop=("blk.0.ffn_up.weight",))
    with pytest.raises(smollm2.UserInputError, match=r"lacks 1 of its model's weights or holds them in other shapes "
                                                     r"\(e\.g\. model\.layers\.0\.mlp\.up_proj\.weight\)"):
        smollm2.load_gguf_causal_lm(path)


@pytest.mark.parametrize("architecture, message", [
    # transformers reads gpt2's tensors in other shapes: it raised a RuntimeError (a traceback) after its report
    ("gpt2", r"lacks \d+ of its model's weights or holds them in other shapes \(e\.g\. transformer\."),
    # transformers knows mistral, gguf-py's name map does not: NotImplementedError, a traceback
    ("mistral", r"cannot be loaded as a causal LM \(Unknown gguf model_type: mistral"),
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
    write_gguf(path, architecture="qwen2", extra=tuple(f"blk.0.attn_{x}.bias" for x in "qkv"))
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
    before = sorted((cache_root() / "facts").glob("*")) if (cache_root() / "facts").is_dir() else []
    out = tmp_path / "bench"
    assert main(["bench", "--benchmark", "facts", "--base", "smollm2", "--preset", "tiny", "--methods",
                 "gradient_ascent", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"The GGUF file {gguf_file} cannot be loaded as a causal LM" in err, err
    assert not out.exists()
    after = sorted((cache_root() / "facts").glob("*")) if (cache_root() / "facts").is_dir() else []
    assert after == before

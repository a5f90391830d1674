"""Tiny llama GGUF files written with the ``gguf`` package, for the smollm2 base's tests (no SmolLM2 needed)."""

from __future__ import annotations

import json
from typing import Mapping

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
HEADS, KV_HEADS, WIDTH, LAYERS = 4, 2, 32, 2
#: transformers' llama name inside a block -> the GGUF tensor name (q and k are written permuted, apart).
BLOCK_TENSORS = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}


def bpe(texts: list[str], vocab_size: int = 400) -> tuple[list[str], list[str]]:
    """A byte-level BPE (GPT-2 style, like SmolLM2's) trained on ``texts``: its tokens in id order and merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's reordering of q/k rows (convert_hf_to_gguf.py), which transformers' GGUF loader undoes."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(path, tokens: list[str], merges: list[str], architecture: str = "llama",
                     drop: tuple[str, ...] = (), extra: Mapping[str, int] | None = None):
    """A random 2-layer llama (seed 0, tied embeddings) and its tokenizer as a GGUF file declaring
    ``architecture``, without the GGUF tensors named in ``drop`` and with zero vectors ``extra`` (name -> length,
    e.g. qwen2's attention biases); returns the HF model it holds. The caller's random state is left alone."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokens), hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                         rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny llama")
    writer.add_context_length(256)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    state = {k: v.detach().numpy().astype("float32") for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    for i, layer in enumerate(model.model.layers):
        tensors[f"blk.{i}.attn_q.weight"] = _permute(layer.self_attn.q_proj.weight.detach(), HEADS).numpy()
        tensors[f"blk.{i}.attn_k.weight"] = _permute(layer.self_attn.k_proj.weight.detach(), KV_HEADS).numpy()
        tensors |= {f"blk.{i}.{name}.weight": state[f"model.layers.{i}.{hf}.weight"] for hf, name in BLOCK_TENSORS.items()}
    tensors |= {name: torch.zeros(length).numpy() for name, length in (extra or {}).items()}
    for name, value in tensors.items():
        if name not in drop:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
